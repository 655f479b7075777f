/* shm.c - create, map, check and lock the node's shared region (layout in shm.h).
 *
 * The directory and files are shared by every user's processes on the node, so nothing here
 * follows a link, writes into a file it did not create, or waits without a bound. */
#include "shm.h"

#include <errno.h>
#include <signal.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <linux/futex.h>

#include "log.h"

_Static_assert(sizeof(pthread_mutex_t) <= sizeof(((struct fx_region *)0)->lock),
               "pthread_mutex_t does not fit the region's lock field");
_Static_assert(offsetof(struct fx_region, lock) % 16 == 0, "lock must be aligned");
_Static_assert(offsetof(struct fx_region, devs) % 64 == 0 && sizeof(struct fx_dev) == 128 &&
                   offsetof(struct fx_dev, lease_pid) == 64,
               "each device's read-mostly line and lease line are cache lines of their own");

/* flock, bounded: a process that keeps a lock file locked (stopped, or hostile) must not hang
 * every newcomer; after FX_LOCK_WAIT_NS the caller fails closed with a clear error. */
static int fx_flock_bounded(int fd, int op)
{
    uint64_t waited = 0;
    for (;;) {
        if (flock(fd, op | LOCK_NB) == 0) return 0;
        if (errno != EWOULDBLOCK && errno != EINTR) return -1;
        if (waited >= FX_LOCK_WAIT_NS) {
            errno = ETIMEDOUT;
            return -1;
        }
        struct timespec t = {0, (long)FX_LOCK_POLL_NS};
        nanosleep(&t, NULL);
        waited += FX_LOCK_POLL_NS;
    }
}

static int fx_mutex_init(struct fx_region *r)
{
    pthread_mutexattr_t a;
    pthread_mutex_t *m = (pthread_mutex_t *)(void *)r->lock;
    if (pthread_mutexattr_init(&a) != 0) return ENOMEM;
    int rc = pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    if (rc == 0) rc = pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    if (rc == 0) rc = pthread_mutex_init(m, &a);
    pthread_mutexattr_destroy(&a);
    return rc;
}

static int fx_init_region(struct fx_region *r, flexai_error *err)
{
    int rc = fx_mutex_init(r);
    if (rc != 0)
        return fx_fail(err, FLEXAI_E_SYSTEM, "state: cannot create robust lock: %s",
                       strerror(rc));
    r->version = FX_LAYOUT_VERSION;
    r->size = sizeof *r;
    /* magic last: a creator that dies before this line leaves an invalid region, which the
     * next opener (serialized by the lock file, and alone on the file) initializes again. */
    __atomic_store_n(&r->magic, FX_MAGIC, __ATOMIC_RELEASE);
    return 0;
}

/* Whether the mapped file holds a region of this layout; fills err otherwise. */
static int fx_region_valid(const struct fx_region *r, const char *path, flexai_error *err)
{
    uint64_t magic = __atomic_load_n(&r->magic, __ATOMIC_ACQUIRE);
    if (magic != FX_MAGIC)
        return fx_fail(err, FLEXAI_E_STATE, "state file %s is not a flexai state file (bad "
                       "magic)", path);
    if (r->version != FX_LAYOUT_VERSION || r->size != sizeof *r)
        return fx_fail(err, FLEXAI_E_STATE, "state file %s has layout version %u; this "
                       "libflexai expects %u: stop the processes using it or set another "
                       "FLEXAI_STATE_DIR", path, r->version, FX_LAYOUT_VERSION);
    return 0;
}

/* The state directory: opened without following a link, and only when nobody but root or the
 * caller can have planted files in it (owned by root or the caller; writable by others only
 * with the sticky bit). Created 01777 when missing: every user's processes share one state. */
static int fx_dir_open(const char *dir, flexai_error *err)
{
    struct stat st;
    int created = mkdir(dir, 01777) == 0;
    if (!created && errno != EEXIST)
        return fx_fail(err, FLEXAI_E_STATE, "FLEXAI_STATE_DIR %s: cannot create: %s", dir,
                       strerror(errno));
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return fx_fail(err, FLEXAI_E_STATE, "FLEXAI_STATE_DIR %s: %s", dir,
                       errno == ELOOP || errno == ENOTDIR ? "not a directory (a symbolic link?)"
                                                          : strerror(errno));
    if (created) (void)fchmod(fd, 01777); /* umask must not win; only what we just made */
    if (fstat(fd, &st) != 0 || !S_ISDIR(st.st_mode)) {
        close(fd);
        return fx_fail(err, FLEXAI_E_STATE, "FLEXAI_STATE_DIR %s: not a directory", dir);
    }
    if (st.st_uid != 0 && st.st_uid != geteuid()) {
        close(fd);
        return fx_fail(err, FLEXAI_E_STATE, "FLEXAI_STATE_DIR %s belongs to uid %u, another "
                       "user: refusing it (have root create it with mode 1777, e.g. "
                       "install -d -m 1777 %s)", dir, (unsigned)st.st_uid, dir);
    }
    if ((st.st_mode & (S_IWGRP | S_IWOTH)) && !(st.st_mode & S_ISVTX)) {
        close(fd);
        return fx_fail(err, FLEXAI_E_STATE, "FLEXAI_STATE_DIR %s is writable by others without "
                       "the sticky bit: refusing it (expected mode 1777, e.g. chmod 1777 %s)",
                       dir, dir);
    }
    return fd;
}

/* Open (creating when missing) a file in the state directory, never through a link, never a
 * file that is not a plain file of its own (hard links to another file are refused). Only a
 * file this call created has its mode changed. */
static int fx_file_open(int dirfd, const char *dir, const char *name, flexai_error *err)
{
    struct stat st;
    int fd = openat(dirfd, name, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666);
    if (fd >= 0) {
        (void)fchmod(fd, 0666); /* shared by every user's processes; umask must not win */
        return fd;
    }
    if (errno == EEXIST)
        fd = openat(dirfd, name, O_RDWR | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return fx_fail(err, FLEXAI_E_STATE, "state file %s/%s: %s", dir, name,
                       errno == ELOOP ? "is a symbolic link: refusing it" : strerror(errno));
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_nlink != 1) {
        close(fd);
        return fx_fail(err, FLEXAI_E_STATE, "state file %s/%s is not a plain file of its own "
                       "(a device, a pipe or a hard link): refusing it", dir, name);
    }
    return fd;
}

/* ---- a truncated file must not kill the process --------------------------------------------
 * Any user of the node can truncate the (world-writable) state file; the next access to a page
 * past its new end raises SIGBUS in every process that maps it. A SIGBUS handler, installed once
 * and chained to whatever handler was there before, recognizes faults inside a mapped region,
 * replaces the region with zero pages (so the access completes) and returns: the zeroed region
 * then fails its magic check at the next lock, and the process fails closed instead of dying.
 * Faults anywhere else go to the previous handler, or take the default action. */
#define FX_MAX_MAPS 8
static struct fx_region *volatile fx_maps[FX_MAX_MAPS];
static struct sigaction fx_prev_bus;
static pthread_once_t fx_bus_once = PTHREAD_ONCE_INIT;

static void fx_on_sigbus(int sig, siginfo_t *info, void *ctx)
{
    char *addr = info ? (char *)info->si_addr : NULL;
    for (int i = 0; i < FX_MAX_MAPS; i++) {
        char *lo = (char *)fx_maps[i];
        if (lo && addr >= lo && addr < lo + sizeof(struct fx_region)) {
            mmap(lo, sizeof(struct fx_region), PROT_READ | PROT_WRITE,
                 MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            return; /* the access is retried on zero pages */
        }
    }
    if (fx_prev_bus.sa_flags & SA_SIGINFO) {
        if (fx_prev_bus.sa_sigaction) fx_prev_bus.sa_sigaction(sig, info, ctx);
    } else if (fx_prev_bus.sa_handler != SIG_DFL && fx_prev_bus.sa_handler != SIG_IGN) {
        fx_prev_bus.sa_handler(sig);
    } else {
        sigaction(SIGBUS, &fx_prev_bus, NULL); /* default action when the access repeats */
    }
}

static void fx_bus_install(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = fx_on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGBUS, &sa, &fx_prev_bus) != 0) FX_WARN("cannot watch SIGBUS on the state");
}

static void fx_maps_add(struct fx_region *r)
{
    pthread_once(&fx_bus_once, fx_bus_install);
    for (int i = 0; i < FX_MAX_MAPS; i++)
        if (__sync_bool_compare_and_swap(&fx_maps[i], NULL, r)) return;
}

static void fx_maps_remove(struct fx_region *r)
{
    for (int i = 0; i < FX_MAX_MAPS; i++) __sync_bool_compare_and_swap(&fx_maps[i], r, NULL);
}

static void *fx_map(int fd)
{
    void *map = mmap(NULL, sizeof(struct fx_region), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    return map == MAP_FAILED ? NULL : map;
}

/* Every attached process holds a shared flock on the state file for as long as it is attached,
 * so a newcomer that can take it exclusively knows nobody uses the file: it may then replace a
 * file it cannot use (another layout version, a crashed creator, junk) by a new one (unlink and
 * create: it never writes into a file it did not make). Newcomers serialize on a separate lock
 * file, which is only held for the few system calls of attaching. */
int fx_shm_open(struct fx_shm *s, const char *dir, flexai_error *err)
{
    struct stat st;
    struct fx_region *map = NULL;
    int fd = -1, lockfd = -1, dirfd;

    s->r = NULL;
    s->fd = -1;
    s->dirfd = -1;
    s->size_checked_ns = 0;
    if ((dirfd = fx_dir_open(dir, err)) < 0) return -1;
    if ((lockfd = fx_file_open(dirfd, dir, "state.lock", err)) < 0) goto fail;
    if (fx_flock_bounded(lockfd, LOCK_EX) != 0) {
        fx_fail(err, FLEXAI_E_STATE, "state lock %s/state.lock: %s", dir,
                errno == ETIMEDOUT ? "held by another process for over 2 s" : strerror(errno));
        goto fail;
    }
    if ((fd = fx_file_open(dirfd, dir, "state", err)) < 0) goto fail;
    int alone = flock(fd, LOCK_EX | LOCK_NB) == 0;
    if (!alone && fx_flock_bounded(fd, LOCK_SH) != 0) {
        fx_fail(err, FLEXAI_E_STATE, "state file %s/state: flock: %s", dir, strerror(errno));
        goto fail;
    }
    if (fstat(fd, &st) != 0) {
        fx_fail(err, FLEXAI_E_STATE, "state file %s/state: %s", dir, strerror(errno));
        goto fail;
    }
    if ((size_t)st.st_size == sizeof(struct fx_region)) {
        if (!(map = fx_map(fd))) {
            fx_fail(err, FLEXAI_E_STATE, "state file %s/state: mmap: %s", dir, strerror(errno));
            goto fail;
        }
        if (fx_region_valid(map, dir, err) != 0) {
            if (!alone) goto fail; /* someone uses it: never pull it from under them */
            munmap(map, sizeof *map);
            map = NULL;
        }
    } else if (!alone) {
        fx_fail(err, FLEXAI_E_STATE, "state file %s/state has %lld bytes; this libflexai "
                "expects %zu (layout version %u): stop the processes using it or set another "
                "FLEXAI_STATE_DIR", dir, (long long)st.st_size, sizeof(struct fx_region),
                FX_LAYOUT_VERSION);
        goto fail;
    }
    if (!map) {
        /* unusable or new, and nobody uses it: a fresh file of our own replaces it */
        if (st.st_size != 0)
            FX_WARN("state file %s/state was unusable and unused: replacing it", dir);
        close(fd);
        fd = -1;
        if (unlinkat(dirfd, "state", 0) != 0 && errno != ENOENT) {
            fx_fail(err, FLEXAI_E_STATE, "state file %s/state: cannot replace it: %s", dir,
                    strerror(errno));
            goto fail;
        }
        fd = openat(dirfd, "state", O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666);
        if (fd < 0 || fchmod(fd, 0666) != 0 || flock(fd, LOCK_EX | LOCK_NB) != 0 ||
            ftruncate(fd, (off_t)sizeof(struct fx_region)) != 0 || !(map = fx_map(fd))) {
            fx_fail(err, FLEXAI_E_STATE, "state file %s/state: cannot create it: %s", dir,
                    strerror(errno));
            goto fail;
        }
        if (fx_init_region(map, err) != 0) goto fail;
        alone = 1;
    }
    if (alone && fx_flock_bounded(fd, LOCK_SH) != 0) { /* exclusive to shared: we stay a user */
        fx_fail(err, FLEXAI_E_STATE, "state file %s/state: flock: %s", dir, strerror(errno));
        goto fail;
    }
    close(lockfd);
    fx_maps_add(map);
    s->r = map;
    s->fd = fd;
    s->dirfd = dirfd;
    return 0;
fail:
    if (map) munmap(map, sizeof *map);
    if (fd >= 0) close(fd); /* also drops its flock */
    if (lockfd >= 0) close(lockfd);
    close(dirfd);
    return -1;
}

void fx_shm_close(struct fx_shm *s)
{
    if (s->r) {
        fx_maps_remove(s->r);
        munmap(s->r, sizeof *s->r);
    }
    if (s->fd >= 0) close(s->fd);
    if (s->dirfd >= 0) close(s->dirfd);
    s->r = NULL;
    s->fd = -1;
    s->dirfd = -1;
}

/* The last holder died inside a critical section. Everything that section may have left half
 * done is derived data or guarded by an in_use flag written last, so rebuilding the slices'
 * usage from their processes' usage restores every invariant. */
static void fx_repair(struct fx_region *r)
{
    for (uint32_t s = 0; s < FX_MAX_SLICES; s++)
        memset(r->slices[s].mem_used, 0, sizeof r->slices[s].mem_used);
    for (uint32_t p = 0; p < FX_MAX_PROCS; p++) {
        struct fx_proc *pr = &r->procs[p];
        if (!pr->in_use || pr->slice >= FX_MAX_SLICES) continue;
        for (int d = 0; d < FLEXAI_MAX_DEVICES; d++)
            r->slices[pr->slice].mem_used[d] += pr->mem_used[d];
        /* the holder may have died between a process's usage and its seal */
        if (!fx_proc_intact(r, p)) fx_proc_seal(r, p);
    }
    for (uint32_t s = 0; s < FX_MAX_SLICES; s++) fx_usage_seal(r, s);
    r->generation++;
}

/* The thread group (process) of thread `tid`, or tid itself when /proc does not say. */
static pid_t fx_tgid_of(pid_t tid)
{
    char path[48], line[128];
    snprintf(path, sizeof path, "/proc/%d/status", (int)tid);
    FILE *f = fopen(path, "re");
    if (!f) return tid;
    pid_t tgid = tid;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "Tgid:", 5) == 0) {
            tgid = (pid_t)strtol(line + 5, NULL, 10);
            break;
        }
    fclose(f);
    return tgid;
}

/* Whether the thread named in the lock word belongs to a process attached to this state: every
 * attached process (and every node handle) holds a flock on the state file for as long as it is
 * attached, and /proc/locks lists each lock's process and file. A word that names any other
 * live thread (pid 1, after one flipped bit) is garbage, not a holder. When nothing can be
 * read, the owner counts as attached: failing closed is the safe side. */
static int fx_owner_attached(const struct fx_shm *s, uint32_t tid)
{
    struct stat st;
    if (fstat(s->fd, &st) != 0) return 1;
    FILE *f = fopen("/proc/locks", "re");
    if (!f) return 1;
    pid_t tgid = fx_tgid_of((pid_t)tid);
    char line[256];
    int found = 0;
    while (!found && fgets(line, sizeof line, f)) {
        /* "1: FLOCK  ADVISORY  READ 1234 00:2d:5678 0 EOF" (blocked waiters add "->") */
        char *p = strchr(line, ':'), *save = NULL;
        if (!p) continue;
        char *tok[8];
        int n = 0;
        for (char *t = strtok_r(p + 1, " \t\n", &save); t && n < 8;
             t = strtok_r(NULL, " \t\n", &save))
            if (strcmp(t, "->") != 0) tok[n++] = t;
        unsigned maj, min;
        unsigned long long ino;
        if (n < 5 || strcmp(tok[0], "FLOCK") != 0) continue;
        if (sscanf(tok[4], "%x:%x:%llu", &maj, &min, &ino) != 3) continue;
        found = (pid_t)strtol(tok[3], NULL, 10) == tgid && ino == (unsigned long long)st.st_ino &&
                maj == major(st.st_dev) && min == minor(st.st_dev);
    }
    fclose(f);
    return found;
}

/* The lock word of a glibc robust mutex holds the owner's thread id (and two flag bits). */
#define FX_FUTEX_TID_MASK 0x3fffffffu

/* The lock could not be taken within FX_LOCK_WAIT_NS. If its owner still exists (stopped,
 * frozen, or just slow) we fail closed. If it is gone without the kernel marking the lock
 * (it unmapped the region before dying) or the word is garbage, one repairer at a time (under
 * state.lock) re-creates the mutex, rebuilds the derived data and wakes the waiters. */
static int fx_lock_rescue(struct fx_shm *s, flexai_error *err)
{
    volatile uint32_t *word = (volatile uint32_t *)(void *)s->r->lock;
    uint32_t seen = *word, tid = seen & FX_FUTEX_TID_MASK;
    if (seen == 0) return 0; /* free now: try again */
    if (tid != 0 && (kill((pid_t)tid, 0) == 0 || errno == EPERM) && fx_owner_attached(s, tid))
        return fx_fail(err, FLEXAI_E_STATE, "the node's state lock has been held for over 2 s "
                       "by thread %u (stopped or frozen?); failing closed until it lets go",
                       tid);
    int lockfd = openat(s->dirfd, "state.lock", O_RDWR | O_NOFOLLOW | O_CLOEXEC);
    if (lockfd < 0 || fx_flock_bounded(lockfd, LOCK_EX) != 0) {
        if (lockfd >= 0) close(lockfd);
        return fx_fail(err, FLEXAI_E_STATE, "the node's state lock is wedged and cannot be "
                       "repaired now: %s", strerror(errno));
    }
    if (*word == seen) {
        fx_mutex_init(s->r);
        fx_repair(s->r);
        syscall(SYS_futex, word, FUTEX_WAKE, INT32_MAX, NULL, NULL, 0);
        FX_WARN("repaired the node's state lock (left held by a thread that is gone, or "
                "overwritten)");
    }
    close(lockfd);
    return 0;
}

/* The file behind the mapping must still have its full size: a truncated file would make the
 * next access fault (SIGBUS). A system call per lock would double the cost of an allocation,
 * so the size is checked before a lock at most every FX_SIZE_CHECK_NS (and on every attach);
 * a truncation inside that window can still fault (docs/security.md). */
static int fx_size_ok(struct fx_shm *s, flexai_error *err)
{
    struct stat st;
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &t);
    uint64_t now = (uint64_t)t.tv_sec * 1000000000ULL + (uint64_t)t.tv_nsec;
    uint64_t last = __atomic_load_n(&s->size_checked_ns, __ATOMIC_RELAXED);
    if (last && now - last < FX_SIZE_CHECK_NS) return 0;
    if (fstat(s->fd, &st) == 0 && (size_t)st.st_size == sizeof *s->r) {
        __atomic_store_n(&s->size_checked_ns, now, __ATOMIC_RELAXED);
        return 0;
    }
    return fx_fail(err, FLEXAI_E_STATE, "the node's state file was truncated or replaced under "
                   "this process: failing closed");
}

int fx_shm_lock(struct fx_shm *s, flexai_error *err)
{
    pthread_mutex_t *m = (pthread_mutex_t *)(void *)s->r->lock;
    if (fx_size_ok(s, err) != 0) return -1;
    for (int attempt = 0;; attempt++) {
        int rc = pthread_mutex_trylock(m); /* the common case: free, no clock needed */
        if (rc == EBUSY) {
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            uint64_t ns = (uint64_t)until.tv_nsec + FX_LOCK_WAIT_NS;
            until.tv_sec += (time_t)(ns / 1000000000ULL);
            until.tv_nsec = (long)(ns % 1000000000ULL);
            rc = pthread_mutex_timedlock(m, &until);
        }
        if (rc == EOWNERDEAD) {
            fx_repair(s->r);
            pthread_mutex_consistent(m);
            FX_INFO("recovered the state lock from a process that died holding it");
            rc = 0;
        }
        if (rc == 0) break;
        if (attempt > 0 || fx_lock_rescue(s, err) != 0) {
            if (attempt > 0)
                fx_fail(err, FLEXAI_E_STATE, "the node's state lock: %s", strerror(rc));
            return -1;
        }
    }
    /* zero-filled or overwritten while we waited: never trust it */
    if (fx_region_valid(s->r, "(mapped)", err) != 0) {
        pthread_mutex_unlock(m);
        return -1;
    }
    return 0;
}

void fx_shm_unlock(struct fx_shm *s)
{
    pthread_mutex_unlock((pthread_mutex_t *)(void *)s->r->lock);
}
