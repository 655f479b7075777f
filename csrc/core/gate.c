/* gate.c - the compute gate (see gate.h): a lease from timeshare.c, and a bound on the work
 * this process keeps in flight.
 *
 * Frameworks queue thousands of kernels ahead; throttling only at submission would then act
 * seconds late. So while scheduling is on, the process records an event every few launches
 * ("marks") and, before launching, waits until the work it still has in flight is estimated
 * below FX_INFLIGHT_NS. A decision (yield to a higher priority, end of quantum, out of tokens)
 * therefore takes effect within about that bound. When a slice has no cap, normal priority and
 * no device of the process is engaged, a launch costs a few loads of process-local and
 * read-mostly shared memory and goes straight to the driver. Events come from fx_backend;
 * nothing here knows the vendor.
 *
 * Threads: one mutex per device guards the gate's state, and it is never held across a sleep or
 * the driver's launch: a thread that waits (for the lease, for tokens, for work to drain) lets
 * the others in, and the launch itself runs unlocked between fx_gate_enter and fx_gate_leave,
 * counted in `launching` so that a release waits for it. Waits for marks have a bound: work that
 * never finishes (a kernel waiting on the host) cannot hang the process, and once the gate gave
 * up on such work it waits only briefly until a mark completes again (see fx_give_up).
 *
 * Handles: the gate's events belong to a context (the backend's, e.g. a CUDA context) and are
 * only recorded on queues of that context; a queue named relative to its thread (the CUDA
 * per-thread default stream) is marked only by the thread that launched there. The hooks tell
 * the gate when a queue or a context goes away (fx_gate_forget_queue, fx_gate_forget_context),
 * so no event or queue of the gate outlives its handle.
 */
#include "gate.h"

#include <string.h>
#include <sys/prctl.h>
#include <time.h>

#include "log.h"
#include "process.h"
#include "timeshare.h"
#include "util.h"

#define FX_RING 64
#define FX_INFLIGHT_NS 1000000ULL      /* normal bound on queued work */
#define FX_INFLIGHT_SHORT_NS 400000ULL /* while a higher priority may need the device */
#define FX_MAX_STREAMS 16
#define FX_READMIT_NS 50000ULL         /* a holder re-asks the scheduler at most this often */
#define FX_SETTLE_NS 2000000ULL        /* measured GPU time is charged in steps of about this */
#define FX_MAX_WAIT_NS 20000000ULL     /* longest sleep before asking the scheduler again */
#define FX_POLL_NS 10000ULL            /* sleep between polls of a mark while draining */
#define FX_EST_START_NS 50000ULL       /* first guess of the GPU time of one launch */
#define FX_EST_MIN_NS 1000ULL          /* an estimate never goes below this */
#define FX_SLACK_NS 5000UL             /* timer slack while the gate sleeps */
#define FX_MARKS_PER_BOUND 4           /* marks per short in-flight bound: cheap yet responsive */
#define FX_IDLE_GAP_NS 100000ULL       /* launches further apart than this are each marked, and a
                                        * pause this long ends the busy segment (see
                                        * fx_settle_idle): idle time is never charged */
#define FX_STUCK_NS 200000000ULL       /* work in flight this long without progress is given up
                                        * on: its estimate is charged and its marks forgotten */
#define FX_STUCK_SHORT_NS 5000000ULL   /* the same on a queue given up on, until one of its
                                        * marks completes again (see fx_give_up) */
#define FX_STUCK_BACKLOG_NS 20000000ULL /* at most this much estimated work is given up on after
                                         * FX_STUCK_SHORT_NS in one episode; then FX_STUCK_NS */

struct fx_mark {
    fx_event_t ev;
    fx_ctx_t ctx;    /* the event's context */
    fx_queue_t q;    /* the queue it was recorded on, as fx_stream tells queues apart */
    unsigned flags;
    uint64_t thread;
    uint64_t est_ns; /* estimated GPU time of the launches this mark closes */
    unsigned n[FX_WORK_KINDS]; /* how many of them of each kind (enum fx_work) */
};

/* An event kept for reuse, with its context. */
struct fx_spare {
    fx_event_t ev;
    fx_ctx_t ctx;
};

/* Launches not closed by a mark yet. */
struct fx_unmarked {
    unsigned launches;
    uint64_t est_ns;           /* their estimated GPU time */
    unsigned n[FX_WORK_KINDS]; /* how many of each kind */
};

/* A queue used since its last mark. */
struct fx_stream {
    fx_queue_t q;
    unsigned flags;
    fx_ctx_t ctx;
    uint64_t thread; /* the thread's own queue (fx_thread_self): only it may mark it; 0: any */
    struct fx_unmarked w;
};

/* GPU time is measured on the device: a "segment" starts with an event recorded when none of
 * our work is in flight and grows with each completed mark (event elapsed time from the
 * segment's start). Under a lease only our work runs, so the sum is the slice's GPU time. */
struct fx_gate {
    pthread_mutex_t mu;  /* guards all below; never held across a sleep or a launch */
    uint32_t dev;        /* node device id (this entry's index) */
    int holding;
    int releasing;       /* a thread drains and gives the lease back: others wait */
    unsigned launching;  /* launches between fx_gate_enter and fx_gate_leave */
    uint64_t held_since;
    uint64_t busy_ns;     /* GPU time measured during the current lease */
    uint64_t next_admit;  /* holding: skip the scheduler (and its lock) until then */
    struct fx_mark ring[FX_RING];
    struct fx_spare spare[FX_RING];
    unsigned head, count, nspare;
    unsigned since_mark;  /* launches since the last mark (all of streams[] and loose) */
    uint64_t since_mark_ns; /* their estimated GPU time */
    struct fx_stream streams[FX_MAX_STREAMS]; /* queues used since their last mark */
    int nstreams;
    struct fx_unmarked loose; /* launches no queue holds (past FX_MAX_STREAMS, or on a queue
                               * that could not be marked): the next mark closes them */
    uint64_t est_ns[FX_WORK_KINDS]; /* estimated GPU time of one launch, by kind */
    fx_event_t seg_start;    /* start of the current busy segment, NULL when none is open */
    fx_ctx_t seg_ctx;        /* its context: marks of another are estimated, not measured */
    uint64_t seg_counted; /* GPU time of the segment already added to busy_ns */
    unsigned unmeasured[FX_WORK_KINDS]; /* launches measured since the segment last grew */
    uint64_t last_leave_ns; /* when the last launch through the gate returned */
    int stuck;            /* gave up on the work of queue stuck_* and none of its marks
                           * completed since (an episode, see fx_give_up) */
    fx_queue_t stuck_q;   /* that queue, told apart as fx_stream does */
    unsigned stuck_flags;
    fx_ctx_t stuck_ctx;
    uint64_t stuck_thread;
    uint64_t stuck_ns;    /* estimated work given up on after FX_STUCK_SHORT_NS in the episode */
    unsigned moved;       /* counts pops and give-ups: a waiting thread sees that the oldest mark
                           * changed while it slept (another thread gave up on the one it timed) */
};

static struct fx_gate fx_ld[FLEXAI_MAX_DEVICES];
static pthread_once_t fx_ld_once = PTHREAD_ONCE_INIT;
static int fx_ld_used; /* a gate was entered: there may be something to forget */

/* The context of the launch between fx_gate_enter and fx_gate_leave on this thread. */
static __thread fx_ctx_t fx_launch_ctx;

/* A number for the calling thread, never reused in the process (a pthread_t may be). */
static uint64_t fx_thread_self(void)
{
    static uint64_t next = 1;
    static __thread uint64_t id;
    if (!id) id = __atomic_fetch_add(&next, 1, __ATOMIC_RELAXED);
    return id;
}

/* The thread a queue belongs to (fx_stream.thread): the caller for a queue named relative to
 * its thread, 0 for one any thread may use. */
static uint64_t fx_queue_thread(fx_queue_t q, unsigned flags)
{
    return fx_backend->queue_per_thread && fx_backend->queue_per_thread(q, flags)
               ? fx_thread_self()
               : 0;
}

static void fx_ld_reset(void)
{
    for (int i = 0; i < FLEXAI_MAX_DEVICES; i++) {
        pthread_mutex_init(&fx_ld[i].mu, NULL);
        fx_ld[i].dev = (uint32_t)i;
        for (int k = 0; k < FX_WORK_KINDS; k++) fx_ld[i].est_ns[k] = FX_EST_START_NS;
    }
}

/* A forked child holds no lease and none of its parent's events. (A fork while another thread
 * is inside the gate leaves that gate's state to the parent; the child starts clean.) */
static void fx_ld_postfork_child(void)
{
    memset(fx_ld, 0, sizeof fx_ld);
    fx_ld_reset();
}

static void fx_ld_init(void)
{
    fx_ld_reset();
    pthread_atfork(NULL, NULL, fx_ld_postfork_child);
}

/* Sleep, not spin or sched_yield: beside a CPU-bound thread on the same core, a yield can cost
 * a whole scheduler slice (milliseconds), which would leave the GPU idle. The thread's timer
 * slack (50 us by default) is lowered for the sleep so short waits stay short. The gate's mutex
 * is let go meanwhile, so the process's other launching threads are never held up by it. */
static void fx_wait(struct fx_gate *ld, uint64_t ns)
{
    pthread_mutex_unlock(&ld->mu);
    int old = prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0);
    if (old > (int)FX_SLACK_NS) prctl(PR_SET_TIMERSLACK, FX_SLACK_NS, 0, 0, 0);
    struct timespec t = {(time_t)(ns / 1000000000ULL), (long)(ns % 1000000000ULL)};
    nanosleep(&t, NULL);
    if (old > (int)FX_SLACK_NS) prctl(PR_SET_TIMERSLACK, (unsigned long)old, 0, 0, 0);
    pthread_mutex_lock(&ld->mu);
}

static uint64_t fx_inflight_ns(const struct fx_gate *ld)
{
    uint64_t n = ld->since_mark_ns;
    for (unsigned i = 0; i < ld->count; i++) n += ld->ring[(ld->head + i) % FX_RING].est_ns;
    return n;
}

/* Tell the others we hold the lease for a reason: we are here, and our work runs until ~busy. */
static void fx_touch(uint32_t dev, struct fx_gate *ld)
{
    uint64_t now = fx_now_ns();
    if (ld->holding) fx_ts_touch(fx_self.shm.r, dev, fx_self.pid, now, now + fx_inflight_ns(ld));
}

/* An event of context ctx: a spare one, or a new one. */
static fx_event_t fx_event(struct fx_gate *ld, fx_ctx_t ctx)
{
    fx_event_t ev = NULL;
    for (unsigned i = ld->nspare; i-- > 0;) {
        if (ld->spare[i].ctx != ctx) continue;
        ev = ld->spare[i].ev;
        ld->spare[i] = ld->spare[--ld->nspare];
        return ev;
    }
    return fx_backend->event_create(&ev, ctx) == 0 ? ev : NULL;
}

static void fx_event_done(struct fx_gate *ld, fx_event_t ev, fx_ctx_t ctx)
{
    if (ld->nspare < FX_RING) ld->spare[ld->nspare++] = (struct fx_spare){ev, ctx};
    else fx_backend->event_destroy(ev);
}

static void fx_unmarked_add(struct fx_unmarked *to, const struct fx_unmarked *w)
{
    to->launches += w->launches;
    to->est_ns += w->est_ns;
    for (int k = 0; k < FX_WORK_KINDS; k++) to->n[k] += w->n[k];
}

/* since_mark* from the queues' unmarked launches and the loose ones. */
static void fx_recount(struct fx_gate *ld)
{
    struct fx_unmarked all = ld->loose;
    for (int i = 0; i < ld->nstreams; i++) fx_unmarked_add(&all, &ld->streams[i].w);
    ld->since_mark = all.launches;
    ld->since_mark_ns = all.est_ns;
}

/* Every launch counts as marked (charged or given up on by the caller). */
static void fx_forget_unmarked(struct fx_gate *ld)
{
    ld->nstreams = 0;
    ld->loose = (struct fx_unmarked){0};
    fx_recount(ld);
}

/* Add the GPU time from the segment's start to completed mark m, and correct the estimates of
 * the kinds of work it closed by how far off their sum was (mixed kernels and graphs keep
 * separate estimates, so a graph is not taken for one small kernel). */
static void fx_measure(struct fx_gate *ld, const struct fx_mark *m)
{
    uint64_t upto = 0;
    if (!ld->seg_start || m->ctx != ld->seg_ctx) {
        ld->busy_ns += m->est_ns; /* no segment of its context to measure from: estimated */
        return;
    }
    if (fx_backend->event_elapsed_ns(ld->seg_start, m->ev, &upto) != 0) return;
    /* Marks of several queues complete in any order: the progress a mark shows may include
     * work of marks that show none. So the progress is weighed against every launch measured
     * since the segment last grew, at today's estimates (the estimates they were launched with
     * may be long corrected: weighing against those would correct them again and again). */
    double est = 0;
    for (int k = 0; k < FX_WORK_KINDS; k++) {
        ld->unmeasured[k] += m->n[k];
        est += (double)ld->unmeasured[k] * (double)ld->est_ns[k];
    }
    if (upto <= ld->seg_counted) return;
    uint64_t inc = upto - ld->seg_counted;
    unsigned n[FX_WORK_KINDS];
    memcpy(n, ld->unmeasured, sizeof n);
    memset(ld->unmeasured, 0, sizeof ld->unmeasured);
    ld->seg_counted = upto;
    ld->busy_ns += inc;
    if (est <= 0) return;
    for (int k = 0; k < FX_WORK_KINDS; k++) {
        if (!n[k]) continue;
        /* est *= (3 + inc/est_sum) / 4, in integers */
        uint64_t e = ld->est_ns[k];
        uint64_t scaled = (uint64_t)((double)e * (double)inc / est);
        e = (3 * e + scaled) / 4;
        ld->est_ns[k] = e < FX_EST_MIN_NS ? FX_EST_MIN_NS : e;
    }
}

static void fx_segment_end(struct fx_gate *ld)
{
    memset(ld->unmeasured, 0, sizeof ld->unmeasured);
    if (!ld->seg_start) return;
    fx_event_done(ld, ld->seg_start, ld->seg_ctx);
    ld->seg_start = NULL;
}

/* Whether the gate gave up on the work of this queue and none of its marks completed since. */
static int fx_stuck_queue(const struct fx_gate *ld, fx_queue_t q, unsigned flags, fx_ctx_t ctx,
                          uint64_t thread)
{
    return ld->stuck && q == ld->stuck_q && flags == ld->stuck_flags && ctx == ld->stuck_ctx &&
           thread == ld->stuck_thread;
}

static void fx_stuck_end(struct fx_gate *ld)
{
    FX_DEBUG("work the gate gave up on completes again");
    ld->stuck = 0;
    ld->stuck_ns = 0;
}

/* Pop the oldest mark if its work is done; 1 when popped. */
static int fx_pop_if_done(struct fx_gate *ld)
{
    if (ld->count == 0) return 0;
    struct fx_mark *m = &ld->ring[ld->head];
    if (fx_backend->event_query(m->ev) == FX_EV_PENDING) return 0;
    fx_measure(ld, m);
    fx_event_done(ld, m->ev, m->ctx);
    ld->head = (ld->head + 1) % FX_RING;
    ld->count--;
    ld->moved++;
    if (ld->count == 0 && ld->since_mark == 0) fx_segment_end(ld); /* all our work is done */
    if (ld->stuck && fx_stuck_queue(ld, m->q, m->flags, m->ctx, m->thread)) fx_stuck_end(ld);
    return 1;
}

/* The oldest mark in flight made no progress for FX_STUCK_NS (a kernel waits on the host, a
 * stream waits on an event nobody records): stop waiting for the work in flight. Its estimate is
 * charged, its events are destroyed (legal while pending: the driver frees them once reached)
 * and the segment ends.
 *
 * The next launches on that queue, while it is still held, queue behind the same work, so until
 * one of its marks completes again (fx_pop_if_done) the gate waits only FX_STUCK_SHORT_NS for a
 * mark of that queue (an episode): a queue held for seconds costs one long wait, not one per
 * bound of work. Marks of the process's other queues, whose work runs, are waited for as
 * always. The short wait is still several bounds long, so a process adds at most about a bound
 * of work per short wait, and only FX_STUCK_BACKLOG_NS of work is given up on that quickly per
 * episode: what queues behind a stuck queue runs when it resumes, and that must stay short. */
static void fx_give_up(struct fx_gate *ld)
{
    const struct fx_mark *m = &ld->ring[ld->head]; /* the one that showed no progress */
    uint64_t ns = fx_inflight_ns(ld);
    if (ld->count && !fx_stuck_queue(ld, m->q, m->flags, m->ctx, m->thread)) {
        FX_INFO("work in flight made no progress for %llu ms: no longer waiting for it",
                (unsigned long long)(FX_STUCK_NS / 1000000ULL));
        ld->stuck = 1;
        ld->stuck_q = m->q;
        ld->stuck_flags = m->flags;
        ld->stuck_ctx = m->ctx;
        ld->stuck_thread = m->thread;
        ld->stuck_ns = 0;
    } else {
        ld->stuck_ns += ns;
    }
    ld->busy_ns += ns;
    ld->moved++;
    for (; ld->count; ld->count--, ld->head = (ld->head + 1) % FX_RING)
        fx_backend->event_destroy(ld->ring[ld->head].ev);
    fx_forget_unmarked(ld);
    if (ld->seg_start) fx_backend->event_destroy(ld->seg_start);
    ld->seg_start = NULL;
}

/* How long the oldest mark may show no progress before the gate gives up (see fx_give_up). */
static uint64_t fx_patience_ns(const struct fx_gate *ld)
{
    const struct fx_mark *m = &ld->ring[ld->head];
    return ld->stuck && ld->stuck_ns < FX_STUCK_BACKLOG_NS &&
                   fx_stuck_queue(ld, m->q, m->flags, m->ctx, m->thread)
               ? FX_STUCK_SHORT_NS
               : FX_STUCK_NS;
}

/* Wait, the mutex let go, until fewer than `left` marks remain in flight and the in-flight
 * estimate is under `bound` (0: until all is done); gives up after fx_patience_ns without a
 * mark completing. */
static void fx_wait_marks(uint32_t dev, struct fx_gate *ld, uint64_t bound)
{
    uint64_t stuck_since = 0;
    unsigned moved = ld->moved;
    while (ld->count && (bound == 0 || fx_inflight_ns(ld) >= bound)) {
        if (fx_pop_if_done(ld)) continue;
        if (ld->moved != moved) { /* another mark is the oldest now: its own time starts */
            moved = ld->moved;
            stuck_since = 0;
        }
        uint64_t now = fx_now_ns();
        if (!stuck_since) stuck_since = now;
        if (now - stuck_since >= fx_patience_ns(ld)) {
            fx_give_up(ld);
            return;
        }
        fx_touch(dev, ld);
        fx_wait(ld, FX_POLL_NS);
    }
}

/* Record a mark behind launches w on queue e; 0 when recorded. A queue that began capturing a
 * graph meanwhile is left alone (an event recorded there would become part of the user's
 * graph), and so is one that cannot be used now (the legacy stream while another captures). */
static int fx_mark_stream(struct fx_gate *ld, const struct fx_stream *e,
                          const struct fx_unmarked *w)
{
    if (ld->count == FX_RING || fx_backend->queue_capturing(e->q, e->flags)) return -1;
    fx_event_t ev = fx_event(ld, e->ctx);
    if (!ev) return -1;
    if (fx_backend->event_record(ev, e->q, e->flags, e->ctx) != 0) {
        fx_backend->event_destroy(ev);
        return -1;
    }
    struct fx_mark *m = &ld->ring[(ld->head + ld->count) % FX_RING];
    *m = (struct fx_mark){ev, e->ctx, e->q, e->flags, e->thread, w->est_ns, {0}};
    memcpy(m->n, w->n, sizeof m->n);
    ld->count++;
    return 0;
}

/* Where the unmarked launches on queue `key` are counted: its entry (added when new), or the
 * loose ones past FX_MAX_STREAMS queues. */
static struct fx_unmarked *fx_stream_slot(struct fx_gate *ld, const struct fx_stream *key)
{
    for (int i = 0; i < ld->nstreams; i++) {
        const struct fx_stream *e = &ld->streams[i];
        if (e->q == key->q && e->flags == key->flags && e->ctx == key->ctx &&
            e->thread == key->thread)
            return &ld->streams[i].w;
    }
    if (ld->nstreams == FX_MAX_STREAMS) return &ld->loose;
    ld->streams[ld->nstreams] = *key;
    return &ld->streams[ld->nstreams++].w;
}

/* The estimate of the unmarked work this thread can mark (not another thread's own queue). */
static uint64_t fx_markable_ns(const struct fx_gate *ld)
{
    uint64_t me = fx_thread_self(), ns = ld->loose.est_ns;
    for (int i = 0; i < ld->nstreams; i++)
        if (!ld->streams[i].thread || ld->streams[i].thread == me) ns += ld->streams[i].w.est_ns;
    return ns;
}

/* Close the launches since the last mark with one event per queue they used (the first
 * FX_MAX_STREAMS of them), except another thread's own queue, which that thread marks. What
 * cannot be marked now goes with the next mark. No device-wide synchronize: it is illegal while
 * any stream captures. */
static void fx_mark_all(struct fx_gate *ld)
{
    if (ld->since_mark == 0) return;
    uint64_t me = fx_thread_self();
    struct fx_unmarked carry = ld->loose;
    int kept = 0;
    for (int i = 0; i < ld->nstreams; i++) {
        struct fx_stream e = ld->streams[i];
        if (e.thread && e.thread != me) {
            ld->streams[kept++] = e;
            continue;
        }
        fx_unmarked_add(&carry, &e.w);
        if (fx_mark_stream(ld, &e, &carry) == 0) carry = (struct fx_unmarked){0};
    }
    ld->nstreams = kept;
    ld->loose = carry;
    fx_recount(ld);
}

/* A busy segment must not stretch over time the device spent idle for us (the program was busy
 * on the CPU, loading data, waiting for requests): its end would be measured at the next mark,
 * idle time included. So before new work, take every mark that completed, and after a pause
 * close a segment whose last launches were never marked (a burst's tail) with the estimate of
 * their GPU time instead of the wall time since. */
static void fx_settle_idle(struct fx_gate *ld, uint64_t now)
{
    while (fx_pop_if_done(ld)) continue;
    if (ld->count || !ld->since_mark || !ld->seg_start || ld->launching) return;
    uint64_t tail = ld->since_mark_ns, paused = now - ld->last_leave_ns;
    if (paused <= FX_IDLE_GAP_NS || paused <= 2 * tail) return;
    ld->busy_ns += tail;
    fx_forget_unmarked(ld);
    fx_segment_end(ld);
}

/* Drain our work and charge the GPU time it used to the lease (also a lease we lost). Other
 * threads of the process wait meanwhile (releasing), launches already on their way first
 * reach the driver (launching), so nothing of ours runs after the lease is given back. */
static void fx_release_lease(uint32_t dev, struct fx_gate *ld)
{
    struct fx_region *r = fx_self.shm.r;
    ld->releasing = 1;
    while (ld->launching) fx_wait(ld, FX_POLL_NS);
    fx_mark_all(ld);
    fx_wait_marks(dev, ld, 0);
    /* What no mark of this thread could close (another thread's own queue, a queue that takes
     * no mark now) is charged at its estimate, and the segment ends: it must not stay open
     * over the wait for the next lease. */
    ld->busy_ns += ld->since_mark_ns;
    fx_forget_unmarked(ld);
    fx_segment_end(ld);
    if (fx_shm_lock(&fx_self.shm, NULL) == 0) {
        fx_ts_release(r, fx_self.slice, fx_self.pid, dev, ld->busy_ns, fx_now_ns());
        fx_shm_unlock(&fx_self.shm);
    }
    ld->holding = 0;
    ld->busy_ns = 0;
    ld->releasing = 0;
}

/* Our slice's verified settings (fx_self.own_*) after a change of its seal (a resize) or when
 * they look damaged; the hot path then decides from that process-local copy. */
static int32_t fx_own_refresh(void)
{
    flexai_error err = {0, ""};
    if (fx_shm_lock(&fx_self.shm, &err) != 0) {
        FX_ERROR("%s", err.message);
        return err.code;
    }
    int32_t st = fx_own_check(fx_self.shm.r);
    fx_shm_unlock(&fx_self.shm);
    if (st != FLEXAI_OK)
        FX_ERROR("this process's slice or entry in the node's state is damaged; failing closed");
    return st;
}

/* Whether the gate can work at all: a region, a slice, and the backend's event operations. */
static int fx_gate_usable(void)
{
    const struct fx_backend *b = fx_backend;
    return fx_self.shm.r && fx_self.slice != FX_NONE && b && b->event_create &&
           b->event_destroy && b->event_record && b->event_query && b->event_elapsed_ns &&
           b->queue_capturing;
}

/* Whether work on node device d must go through the gate: our own slice is scheduled there
 * (process-local, verified copy) or a scheduled slice engaged the device lately. The clock is
 * read only when the device was ever engaged, and the coarse clock is enough (the engagement
 * lasts FX_TS_ENGAGED_NS, 100 ms). */
static int fx_needs_gate(const struct fx_region *r, uint32_t d, uint64_t *now)
{
    if (fx_self.own_sched[d]) return 1;
    uint64_t until = __atomic_load_n(&r->devs[d].sched_until_ns, __ATOMIC_RELAXED);
    if (!until) return 0;
    if (!*now) *now = fx_now_coarse_ns();
    return until > *now;
}

/* The lease (or, in spatial mode, the right to submit): loop until the scheduler says GO.
 * Mutex held on entry and return; let go while waiting. FLEXAI_OK or why the launch fails. */
static int32_t fx_admit(uint32_t dev, struct fx_gate *ld)
{
    struct fx_region *r = fx_self.shm.r;
    /* Tiny kernels come by the hundred per millisecond: a holder asks again only every
     * FX_READMIT_NS, which keeps decisions prompt and the launch path short. */
    while (!(ld->holding && !ld->releasing && fx_now_ns() < ld->next_admit)) {
        if (ld->releasing) { /* another thread gives the lease back: wait for it */
            fx_wait(ld, FX_POLL_NS);
            continue;
        }
        flexai_error err = {0, ""};
        if (fx_shm_lock(&fx_self.shm, &err) != 0) {
            /* cannot schedule: the work must not run unlimited, the launch fails (closed) */
            FX_ERROR("%s", err.message);
            return err.code;
        }
        if (ld->busy_ns >= FX_SETTLE_NS) {
            /* long runs are charged as they go, so tokens and `flexai ps` stay current */
            fx_ts_charge(r, fx_self.slice, dev, ld->busy_ns, fx_now_ns());
            ld->busy_ns = 0;
        }
        if (!fx_slice_intact(r, fx_self.slice) || fx_own_check(r) != FLEXAI_OK) {
            fx_shm_unlock(&fx_self.shm);
            FX_ERROR("this process's slice settings in the node's state are damaged; failing "
                     "closed");
            return FLEXAI_E_STATE;
        }
        uint64_t used = ld->holding ? ld->busy_ns + fx_inflight_ns(ld) : 0;
        struct fx_ts_decision v =
            fx_self.spatial
                ? fx_ts_admit_spatial(r, fx_self.slice, dev, fx_now_ns(), used, ld->holding)
                : fx_ts_admit(r, fx_self.slice, fx_self.pid, dev, fx_now_ns(), used);
        fx_shm_unlock(&fx_self.shm);
        if (v.verdict == FX_TS_GO) {
            if (!ld->holding || (!fx_self.spatial && ld->held_since != v.lease_start_ns)) {
                ld->holding = 1; /* a new lease: its GPU time starts from zero */
                ld->held_since = v.lease_start_ns;
                ld->busy_ns = 0;
            }
            ld->next_admit = fx_now_ns() + FX_READMIT_NS;
            return FLEXAI_OK;
        }
        if (v.verdict == FX_TS_RELEASE || ld->holding) {
            /* quantum over, out of tokens, a higher priority came, or we lost the lease */
            fx_release_lease(dev, ld);
            if (v.verdict == FX_TS_RELEASE) continue;
        }
        /* wake at least every FX_MAX_WAIT_NS: a resize or a freed lease is noticed within it */
        uint64_t held_back = fx_now_ns();
        fx_wait(ld, v.retry_after_ns < FX_MAX_WAIT_NS ? v.retry_after_ns : FX_MAX_WAIT_NS);
        /* statistics for `flexai ps`, metrics and top: added without the region's lock */
        __atomic_add_fetch(&r->slices[fx_self.slice].throttled_ns[dev], fx_now_ns() - held_back,
                           __ATOMIC_RELAXED);
    }
    return FLEXAI_OK;
}

struct fx_gate *fx_gate_enter(fx_queue_t stream, unsigned flags, int32_t *status)
{
    struct fx_region *r = fx_self.shm.r;
    *status = FLEXAI_OK;
    if (!fx_gate_usable()) return NULL;
    if (__atomic_load_n(&r->slices[fx_self.slice].sealed, __ATOMIC_RELAXED) !=
        __atomic_load_n(&fx_self.own_seal, __ATOMIC_ACQUIRE)) {
        /* our settings changed (a resize) or were damaged: look again under the lock */
        if (fx_self.proc == FX_NONE) return NULL;
        *status = fx_own_refresh();
        if (*status != FLEXAI_OK) return NULL;
    }
    /* The common case, nothing scheduled on any device this process sees, is decided without
     * asking the driver which device is current (and mostly without a clock). */
    uint64_t now = 0;
    int quiet = 1;
    for (int i = 0; i < fx_self.ndev && quiet; i++)
        quiet = fx_self.dev[i] == FX_NONE || !fx_needs_gate(r, fx_self.dev[i], &now);
    if (quiet) return NULL;
    uint32_t dev = fx_current_dev();
    if (dev == FX_NONE || !fx_needs_gate(r, dev, &now)) return NULL;
    /* work captured into a graph is not run now: it is gated when the graph is launched (and
     * the legacy stream while a blocking stream captures must not get a mark either) */
    if (fx_backend->queue_capturing(stream, flags)) return NULL;
    fx_ctx_t ctx = fx_backend->queue_context ? fx_backend->queue_context(stream, flags) : NULL;
    fx_launch_ctx = ctx;
    pthread_once(&fx_ld_once, fx_ld_init);
    if (!__atomic_load_n(&fx_ld_used, __ATOMIC_RELAXED))
        __atomic_store_n(&fx_ld_used, 1, __ATOMIC_RELEASE);
    struct fx_gate *ld = &fx_ld[dev];
    pthread_mutex_lock(&ld->mu);
    fx_settle_idle(ld, fx_now_ns());
    *status = fx_admit(dev, ld);
    if (*status == FLEXAI_OK) {
        /* bound the work in flight so the next decision takes effect quickly */
        uint64_t bound = fx_ts_outranked(r, fx_self.slice, dev, fx_now_ns())
                             ? FX_INFLIGHT_SHORT_NS
                             : FX_INFLIGHT_NS;
        fx_wait_marks(dev, ld, bound);
        /* nothing of ours in flight: the GPU is idle for us, a new busy segment starts here
         * (not on a queue the gate gave up on: the start would be reached only once it resumes,
         * and no mark could be measured until then) */
        if (!ld->seg_start && ld->count == 0 && ld->since_mark == 0 && !ld->launching &&
            !(ld->stuck &&
              fx_stuck_queue(ld, stream, flags, ctx, fx_queue_thread(stream, flags)))) {
            ld->seg_start = fx_event(ld, ctx);
            ld->seg_ctx = ctx;
            ld->seg_counted = 0;
            memset(ld->unmeasured, 0, sizeof ld->unmeasured);
            if (ld->seg_start &&
                fx_backend->event_record(ld->seg_start, stream, flags, ctx) != 0) {
                fx_backend->event_destroy(ld->seg_start);
                ld->seg_start = NULL;
            }
        }
        ld->launching++;
    }
    pthread_mutex_unlock(&ld->mu);
    return *status == FLEXAI_OK ? ld : NULL;
}

/* After the launch: count it, remember its stream, and mark every so often. */
void fx_gate_leave(struct fx_gate *ld, int submitted, fx_queue_t stream, unsigned flags,
                   enum fx_work kind)
{
    if (!ld) return;
    pthread_mutex_lock(&ld->mu);
    ld->launching--;
    if (submitted) {
        struct fx_unmarked w = {1, ld->est_ns[kind], {0}};
        w.n[kind] = 1;
        fx_ctx_t ctx = fx_launch_ctx;
        uint64_t thread = fx_queue_thread(stream, flags);
        struct fx_stream key = {stream, flags, ctx, thread, {0}};
        fx_unmarked_add(fx_stream_slot(ld, &key), &w);
        ld->since_mark++;
        ld->since_mark_ns += w.est_ns;
        fx_touch(ld->dev, ld);
        uint64_t now = fx_now_ns();
        int lone = now - ld->last_leave_ns > FX_IDLE_GAP_NS; /* launches come slowly */
        ld->last_leave_ns = now;
        if (lone || fx_markable_ns(ld) >= FX_INFLIGHT_SHORT_NS / FX_MARKS_PER_BOUND)
            fx_mark_all(ld);
    }
    pthread_mutex_unlock(&ld->mu);
}

/* ---- handles going away -------------------------------------------------------------------- */

/* Each gate that was ever used, locked in turn. */
#define FX_EACH_GATE(ld)                                                                       \
    for (struct fx_gate *ld = fx_ld; ld < fx_ld + FLEXAI_MAX_DEVICES; ld++)

void fx_gate_forget_queue(fx_queue_t queue)
{
    if (!__atomic_load_n(&fx_ld_used, __ATOMIC_ACQUIRE)) return;
    FX_EACH_GATE(ld) {
        if (!__atomic_load_n(&ld->nstreams, __ATOMIC_RELAXED) &&
            !__atomic_load_n(&ld->stuck, __ATOMIC_RELAXED))
            continue;
        pthread_mutex_lock(&ld->mu);
        if (ld->stuck && ld->stuck_q == queue) fx_stuck_end(ld); /* its handle may be reused */
        int kept = 0;
        for (int i = 0; i < ld->nstreams; i++) {
            struct fx_stream e = ld->streams[i];
            if (e.q != queue) {
                ld->streams[kept++] = e;
                continue;
            }
            /* its work still runs after the queue is destroyed: close it with a mark now */
            struct fx_unmarked w = e.w;
            fx_unmarked_add(&w, &ld->loose);
            ld->loose = (struct fx_unmarked){0};
            if (fx_mark_stream(ld, &e, &w) != 0) ld->loose = w;
        }
        ld->nstreams = kept;
        fx_recount(ld);
        pthread_mutex_unlock(&ld->mu);
    }
}

void fx_gate_forget_context(fx_ctx_t ctx, int alive)
{
    if (!__atomic_load_n(&fx_ld_used, __ATOMIC_ACQUIRE)) return;
    FX_EACH_GATE(ld) {
        pthread_mutex_lock(&ld->mu);
        /* marks of the context: their work ends with it, charged at its estimate */
        unsigned kept = 0;
        for (unsigned i = 0; i < ld->count; i++) {
            struct fx_mark m = ld->ring[(ld->head + i) % FX_RING];
            if (m.ctx != ctx) {
                ld->ring[(ld->head + kept++) % FX_RING] = m;
                continue;
            }
            ld->busy_ns += m.est_ns;
            if (alive) fx_backend->event_destroy(m.ev);
        }
        ld->count = kept;
        for (unsigned i = ld->nspare; i-- > 0;) {
            if (ld->spare[i].ctx != ctx) continue;
            if (alive) fx_backend->event_destroy(ld->spare[i].ev);
            ld->spare[i] = ld->spare[--ld->nspare];
        }
        int n = 0;
        for (int i = 0; i < ld->nstreams; i++) {
            if (ld->streams[i].ctx == ctx) ld->busy_ns += ld->streams[i].w.est_ns;
            else ld->streams[n++] = ld->streams[i];
        }
        ld->nstreams = n;
        fx_recount(ld);
        if (ld->stuck && ld->stuck_ctx == ctx) fx_stuck_end(ld);
        if (ld->seg_start && ld->seg_ctx == ctx) {
            if (alive) fx_backend->event_destroy(ld->seg_start);
            ld->seg_start = NULL; /* later marks of other contexts are estimated */
        }
        pthread_mutex_unlock(&ld->mu);
    }
}
