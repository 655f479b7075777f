/*
 * fake_sim.c - the simulated device's time, shared by every process on the node; the same model
 * for the simulated GPUs (libcuda.so.1) and NPUs (libascendcl.so, tests/fake_driver/acl/), each
 * library with its own devices (the state files' names start with FAKE_STATE_PREFIX).
 *
 * Model (time-slicing without MPS): a physical device runs one kernel at a time, whichever
 * process or stream submitted it, in submission order. A kernel lasts exactly its duration of
 * device time; the stream worker that submitted it returns when it has ended.
 *
 * The schedule lives in a small shared file per physical device ($FLEXAI_SIM_STATE_DIR/dev<N>,
 * npu-dev<N> for the NPUs;
 * for the default directory see fake.h): a table of submitted kernels, each in a slot whose
 * robust mutex the submitting worker thread holds until its kernel has ended. A kernel starts
 * when every earlier kernel it conflicts with has ended (its start is that moment, not the
 * moment its worker wakes up, so handing the device over costs no device time), and the first
 * process that looks at the table after that fixes its start and end. Processes therefore take
 * turns kernel by kernel, and two processes saturating a device get half of it each.
 *
 * A process that dies (SIGKILL included) leaves its slot mutexes owner-dead; the next process to
 * look sees that, ends its running kernel at that moment and drops its queued ones, so a dead
 * process blocks the others for at most one polling interval. The table lock itself is a robust
 * mutex held for a few microseconds at a time.
 *
 * With FLEXAI_SIM_MPS=1 (a simple model of MPS spatial sharing) kernels of different processes
 * both marked MPS do not conflict and overlap freely; a process's own kernels still run one at a
 * time.
 *
 * If the state file cannot be used the device is simulated per process (no sharing), with a
 * warning on stderr. (The file's mapping and robust locks are fake_common.c's, shared with the
 * node's device memory.)
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fake.h"

#define SIM_MAGIC 0x31564544534d5846ull /* "FXMSDEV1" */
#define SIM_SLOTS 256
#define SIM_POLL_NS 1000000LL  /* a waiting kernel looks at the table at least this often */
#define SIM_SPIN_NS 50000LL    /* the last stretch before a kernel's end is spun, not slept */
#define SIM_FULL_NS 200000LL   /* back-off while every slot is taken */
#define NS_PER_S 1000000000LL

struct sim_slot {
    pthread_mutex_t owner; /* held by the submitting worker thread while the slot is in use */
    uint64_t seq;          /* submission order; 0: free */
    int32_t pid;
    int32_t mps;
    int32_t started;
    int32_t reserved;
    int64_t ns;    /* duration */
    int64_t floor; /* earliest start: submission, or the end of a kernel it waited for */
    int64_t start; /* once started */
    int64_t end;
};

struct sim_dev {
    struct fake_shared_header header;
    pthread_mutex_t lock; /* guards everything below */
    uint64_t next_seq;
    struct sim_slot slot[SIM_SLOTS];
};

static pthread_mutex_t map_lock = PTHREAD_MUTEX_INITIALIZER;
static struct sim_dev *_Atomic devs[FAKE_MAX_DEVICES];

/* ---- clock ------------------------------------------------------------------------------- */

int64_t fake_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * NS_PER_S + ts.tv_nsec;
}

static void sleep_until(int64_t t) {
    struct timespec ts = {.tv_sec = t / NS_PER_S, .tv_nsec = t % NS_PER_S};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

/* Sleeps, then spins the last SIM_SPIN_NS: a 10 us kernel should cost about 10 us. */
static void wait_until(int64_t deadline) {
    if (deadline - fake_now_ns() > SIM_SPIN_NS)
        sleep_until(deadline - SIM_SPIN_NS);
    while (fake_now_ns() < deadline) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    }
}

/* ---- the shared table -------------------------------------------------------------------- */

/* Fills a zeroed table (fake_state_map writes the header). */
static void dev_init(void *region) {
    struct sim_dev *d = region;
    fake_robust_init(&d->lock);
    for (int i = 0; i < SIM_SLOTS; i++)
        fake_robust_init(&d->slot[i].owner);
    d->next_seq = 1;
}

static void map_lock_take(void) {
    pthread_mutex_lock(&map_lock);
}

static void map_lock_drop(void) {
    pthread_mutex_unlock(&map_lock);
}

static void map_fork_register(void) {
    pthread_atfork(map_lock_take, map_lock_drop, map_lock_drop);
}

static struct sim_dev *sim_dev_get(int dev) {
    static pthread_once_t fork_once = PTHREAD_ONCE_INIT;
    struct sim_dev *d = atomic_load(&devs[dev]);
    if (d != NULL)
        return d;
    pthread_once(&fork_once, map_fork_register);
    pthread_mutex_lock(&map_lock);
    d = atomic_load(&devs[dev]);
    if (d == NULL) {
        char name[32];
        snprintf(name, sizeof(name), FAKE_STATE_PREFIX "dev%d", dev);
        d = fake_state_map(name, sizeof(*d), SIM_MAGIC, dev_init);
        if (d == NULL) {
            fprintf(stderr, "flexai fake driver: cannot use the device state file for device %d "
                            "(FLEXAI_SIM_STATE_DIR); kernels are not shared between processes\n",
                    dev);
            d = fake_state_private(sizeof(*d), SIM_MAGIC, dev_init);
        }
        atomic_store(&devs[dev], d);
    }
    pthread_mutex_unlock(&map_lock);
    return d;
}

/* ---- scheduling (table lock held) -------------------------------------------------------- */

/* Whether b, submitted after a, must wait for a to end. */
static int conflicts(const struct sim_slot *a, const struct sim_slot *b) {
    return a->pid == b->pid || !(a->mps && b->mps);
}

/* Frees slot i. Later kernels that waited for it keep "not before end" as their floor, so
 * dropping a finished kernel from the table never lets a later one move back in time. */
static void slot_remove(struct sim_dev *d, int i, int64_t end) {
    struct sim_slot *s = &d->slot[i];
    for (int k = 0; k < SIM_SLOTS; k++) {
        struct sim_slot *o = &d->slot[k];
        if (o->seq > s->seq && !o->started && conflicts(s, o) && o->floor < end)
            o->floor = end;
    }
    s->seq = 0;
}

/* Drops the kernels of threads that died: a running one ends now, a queued one never ran. */
static void reap_dead(struct sim_dev *d, int self, int64_t now) {
    for (int i = 0; i < SIM_SLOTS; i++) {
        struct sim_slot *s = &d->slot[i];
        if (s->seq == 0 || i == self)
            continue;
        int r = pthread_mutex_trylock(&s->owner);
        if (r == EBUSY)
            continue; /* its worker is alive */
        if (r == EOWNERDEAD)
            pthread_mutex_consistent(&s->owner);
        if (r == 0 || r == EOWNERDEAD)
            pthread_mutex_unlock(&s->owner);
        else
            fake_robust_init(&s->owner);
        if (s->started)
            slot_remove(d, i, s->end < now ? s->end : now);
        else
            s->seq = 0;
    }
}

/* Projects every waiting kernel's start in submission order, starts those whose turn has come
 * (at the moment the device became free for them) and returns slot self's projected start. */
static int64_t schedule(struct sim_dev *d, int self, int64_t now) {
    int order[SIM_SLOTS];
    int64_t end[SIM_SLOTS];
    int n = 0;
    int64_t mine = now;

    for (int i = 0; i < SIM_SLOTS; i++) {
        if (d->slot[i].seq == 0)
            continue;
        int k = n++;
        while (k > 0 && d->slot[order[k - 1]].seq > d->slot[i].seq) {
            order[k] = order[k - 1];
            k--;
        }
        order[k] = i;
    }
    for (int a = 0; a < n; a++) {
        struct sim_slot *s = &d->slot[order[a]];
        if (s->started) {
            end[a] = s->end;
            continue;
        }
        int64_t start = s->floor;
        for (int b = 0; b < a; b++)
            if (end[b] > start && conflicts(&d->slot[order[b]], s))
                start = end[b];
        if (start <= now) {
            s->started = 1;
            s->start = start;
            s->end = start + s->ns;
        }
        end[a] = start + s->ns;
        if (order[a] == self)
            mine = start;
    }
    return mine;
}

/* Takes a free slot and holds its owner mutex; -1 while the table is full. */
static int slot_take(struct sim_dev *d) {
    for (int i = 0; i < SIM_SLOTS; i++) {
        if (d->slot[i].seq != 0)
            continue;
        int r = pthread_mutex_trylock(&d->slot[i].owner);
        if (r == EOWNERDEAD)
            pthread_mutex_consistent(&d->slot[i].owner);
        if (r == 0 || r == EOWNERDEAD)
            return i;
    }
    return -1;
}

int64_t fake_sim_kernel(int dev, int64_t ns, int64_t floor) {
    const struct fake_config *cfg = fake_config_get();
    struct sim_dev *d = sim_dev_get(dev);
    int i;

    if (d == NULL) {
        int64_t now = fake_now_ns();
        int64_t end = (floor < now ? floor : now) + ns;
        wait_until(end);
        return end;
    }
    fake_robust_lock(&d->lock);
    while ((i = slot_take(d)) < 0) {
        pthread_mutex_unlock(&d->lock);
        sleep_until(fake_now_ns() + SIM_FULL_NS);
        fake_robust_lock(&d->lock);
    }
    struct sim_slot *s = &d->slot[i];
    s->seq = d->next_seq++;
    s->pid = (int32_t)getpid();
    s->mps = cfg != NULL && cfg->mps;
    s->started = 0;
    s->ns = ns;
    s->floor = floor < fake_now_ns() ? floor : fake_now_ns(); /* a GPU starts it when queued */
    for (;;) {
        int64_t now = fake_now_ns();
        reap_dead(d, i, now);
        int64_t start = schedule(d, i, now);
        if (s->started)
            break;
        pthread_mutex_unlock(&d->lock);
        sleep_until(start < now + SIM_POLL_NS ? start : now + SIM_POLL_NS);
        fake_robust_lock(&d->lock);
    }
    int64_t end = s->end;
    pthread_mutex_unlock(&d->lock);

    wait_until(end);

    fake_robust_lock(&d->lock);
    slot_remove(d, i, end);
    pthread_mutex_unlock(&s->owner);
    pthread_mutex_unlock(&d->lock);
    return end;
}
