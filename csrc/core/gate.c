/* gate.c - the compute gate (see gate.h): a lease from timeshare.c, and a bound on the work
 * this process keeps in flight.
 *
 * Frameworks queue thousands of kernels ahead; throttling only at submission would then act
 * seconds late. So while scheduling is on, the process records an event every few launches
 * ("marks") and, before launching, waits until the work it still has in flight is estimated
 * below FX_INFLIGHT_NS. A decision (yield to a higher priority, end of quantum, out of tokens)
 * therefore takes effect within about that bound. When a slice has no cap, normal priority and
 * no device of the process is engaged, a launch costs one shared-memory load per device and
 * goes straight to the driver. Events come from fx_backend; nothing here knows the vendor.
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
#define FX_AVG_START_NS 50000ULL       /* first guess of the GPU time of one launch */
#define FX_AVG_MIN_NS 1000ULL          /* the estimate never goes below this */
#define FX_SLACK_NS 5000UL             /* timer slack while the gate sleeps */
#define FX_MARKS_PER_BOUND 4           /* marks per short in-flight bound: cheap yet responsive */
#define FX_IDLE_GAP_NS 100000ULL       /* launches further apart than this are each marked, and a
                                        * pause this long ends the busy segment (see
                                        * fx_settle_idle): idle time is never charged */

struct fx_mark {
    fx_event_t ev;
    uint32_t launches; /* launches this mark closes */
};

/* GPU time is measured on the device: a "segment" starts with an event recorded when none of
 * our work is in flight and grows with each completed mark (event elapsed time from the
 * segment's start). Under a lease only our work runs, so the sum is the slice's GPU time. */
struct fx_gate {
    pthread_mutex_t mu;  /* one thread of this process at a time through the gate */
    uint32_t dev;        /* node device id (this entry's index) */
    int holding;
    uint64_t held_since;
    uint64_t busy_ns;     /* GPU time measured during the current lease */
    uint64_t next_admit;  /* holding: skip the scheduler (and its lock) until then */
    struct fx_mark ring[FX_RING];
    fx_event_t spare[FX_RING];
    unsigned head, count, nspare;
    unsigned since_mark;  /* launches since the last mark */
    fx_queue_t streams[FX_MAX_STREAMS];
    unsigned stream_flags[FX_MAX_STREAMS];
    int nstreams;         /* streams used since the last mark (past FX_MAX_STREAMS: unmarked) */
    uint64_t avg_ns;      /* estimated GPU time per launch */
    fx_event_t seg_start;    /* start of the current busy segment, NULL when none is open */
    uint64_t seg_counted; /* GPU time of the segment already added to busy_ns */
    uint64_t last_leave_ns; /* when the last launch through the gate returned */
};

static struct fx_gate fx_ld[FLEXAI_MAX_DEVICES];
static pthread_once_t fx_ld_once = PTHREAD_ONCE_INIT;

static void fx_ld_reset(void)
{
    for (int i = 0; i < FLEXAI_MAX_DEVICES; i++) {
        pthread_mutex_init(&fx_ld[i].mu, NULL);
        fx_ld[i].dev = (uint32_t)i;
        fx_ld[i].avg_ns = FX_AVG_START_NS;
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
 * slack (50 us by default) is lowered for the sleep so short waits stay short. */
static void fx_wait(uint64_t ns)
{
    int old = prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0);
    if (old > (int)FX_SLACK_NS) prctl(PR_SET_TIMERSLACK, FX_SLACK_NS, 0, 0, 0);
    struct timespec t = {(time_t)(ns / 1000000000ULL), (long)(ns % 1000000000ULL)};
    nanosleep(&t, NULL);
    if (old > (int)FX_SLACK_NS) prctl(PR_SET_TIMERSLACK, (unsigned long)old, 0, 0, 0);
}

static uint64_t fx_inflight_ns(const struct fx_gate *ld)
{
    uint64_t n = ld->since_mark;
    for (unsigned i = 0; i < ld->count; i++) n += ld->ring[(ld->head + i) % FX_RING].launches;
    return n * ld->avg_ns;
}

/* Tell the others we hold the lease for a reason: we are here, and our work runs until ~busy. */
static void fx_touch(uint32_t dev, struct fx_gate *ld)
{
    uint64_t now = fx_now_ns();
    if (ld->holding) fx_ts_touch(fx_self.shm.r, dev, fx_self.pid, now, now + fx_inflight_ns(ld));
}

static fx_event_t fx_event(struct fx_gate *ld)
{
    fx_event_t ev = NULL;
    if (ld->nspare) return ld->spare[--ld->nspare];
    return fx_backend->event_create(&ev) == 0 ? ev : NULL;
}

static void fx_event_done(struct fx_gate *ld, fx_event_t ev)
{
    if (ld->nspare < FX_RING) ld->spare[ld->nspare++] = ev;
    else fx_backend->event_destroy(ev);
}

/* Add the GPU time from the segment's start to completed mark `ev`. */
static void fx_measure(struct fx_gate *ld, fx_event_t ev, uint32_t launches)
{
    uint64_t upto = 0;
    if (!ld->seg_start || fx_backend->event_elapsed_ns(ld->seg_start, ev, &upto) != 0) return;
    if (upto <= ld->seg_counted) return;
    uint64_t inc = upto - ld->seg_counted;
    ld->seg_counted = upto;
    ld->busy_ns += inc;
    if (launches) {
        ld->avg_ns = (3 * ld->avg_ns + inc / launches) / 4;
        if (ld->avg_ns < FX_AVG_MIN_NS) ld->avg_ns = FX_AVG_MIN_NS;
    }
}

/* Pop the oldest mark if its work is done; 1 when popped. */
static int fx_pop_if_done(struct fx_gate *ld)
{
    if (ld->count == 0) return 0;
    struct fx_mark *m = &ld->ring[ld->head];
    if (fx_backend->event_query(m->ev) == FX_EV_PENDING) return 0;
    fx_measure(ld, m->ev, m->launches);
    fx_event_done(ld, m->ev);
    ld->head = (ld->head + 1) % FX_RING;
    ld->count--;
    if (ld->count == 0 && ld->since_mark == 0 && ld->seg_start) {
        fx_event_done(ld, ld->seg_start); /* all our work is done: the segment ends */
        ld->seg_start = NULL;
    }
    return 1;
}

static void fx_mark_stream(struct fx_gate *ld, fx_queue_t q, unsigned flags, uint32_t launches)
{
    if (ld->count == FX_RING) return;
    fx_event_t ev = fx_event(ld);
    if (!ev) return;
    if (fx_backend->event_record(ev, q, flags) != 0) {
        fx_backend->event_destroy(ev);
        return;
    }
    ld->ring[(ld->head + ld->count) % FX_RING] = (struct fx_mark){ev, launches};
    ld->count++;
}

/* Close the launches since the last mark with one event per stream they used (the first
 * FX_MAX_STREAMS of them). A stream that began capturing a graph meanwhile is left alone: an
 * event recorded there would become part of the user's graph. No device-wide synchronize
 * either: it is illegal while any stream captures. */
static void fx_mark_all(struct fx_gate *ld)
{
    if (ld->since_mark == 0) return;
    int n = ld->nstreams < FX_MAX_STREAMS ? ld->nstreams : FX_MAX_STREAMS;
    uint32_t launches = ld->since_mark;
    for (int i = 0; i < n; i++) {
        if (fx_backend->queue_capturing(ld->streams[i], ld->stream_flags[i])) continue;
        fx_mark_stream(ld, ld->streams[i], ld->stream_flags[i], launches);
        launches = 0;
    }
    ld->since_mark = 0;
    ld->nstreams = 0;
}

/* A busy segment must not stretch over time the device spent idle for us (the program was busy
 * on the CPU, loading data, waiting for requests): its end would be measured at the next mark,
 * idle time included. So before new work, take every mark that completed, and after a pause
 * close a segment whose last launches were never marked (a burst's tail) with the estimate of
 * their GPU time instead of the wall time since. */
static void fx_settle_idle(struct fx_gate *ld, uint64_t now)
{
    while (fx_pop_if_done(ld)) continue;
    if (ld->count || !ld->since_mark || !ld->seg_start) return;
    uint64_t tail = ld->since_mark * ld->avg_ns, paused = now - ld->last_leave_ns;
    if (paused <= FX_IDLE_GAP_NS || paused <= 2 * tail) return;
    ld->busy_ns += tail;
    ld->since_mark = 0;
    ld->nstreams = 0;
    fx_event_done(ld, ld->seg_start);
    ld->seg_start = NULL;
}

/* Wait until everything this process submitted on the device has finished. */
static void fx_drain(uint32_t dev, struct fx_gate *ld)
{
    fx_mark_all(ld);
    while (ld->count) {
        if (!fx_pop_if_done(ld)) {
            fx_touch(dev, ld);
            fx_wait(FX_POLL_NS);
        }
    }
}

/* Drain our work and charge the GPU time it used to the lease (also a lease we lost). */
static void fx_release_lease(uint32_t dev, struct fx_gate *ld)
{
    struct fx_region *r = fx_self.shm.r;
    fx_drain(dev, ld);
    if (fx_shm_lock(&fx_self.shm, NULL) == 0) {
        fx_ts_release(r, fx_self.slice, fx_self.pid, dev, ld->busy_ns, fx_now_ns());
        fx_shm_unlock(&fx_self.shm);
    }
    ld->holding = 0;
    ld->busy_ns = 0;
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

struct fx_gate *fx_gate_enter(fx_queue_t stream, unsigned flags, int32_t *status)
{
    struct fx_region *r = fx_self.shm.r;
    *status = FLEXAI_OK;
    if (!fx_gate_usable()) return NULL;
    uint64_t now = fx_now_ns();
    if (__atomic_load_n(&r->slices[fx_self.slice].sealed, __ATOMIC_RELAXED) !=
        __atomic_load_n(&fx_self.own_seal, __ATOMIC_ACQUIRE)) {
        /* our settings changed (a resize) or were damaged: look again under the lock */
        if (fx_self.proc == FX_NONE) return NULL;
        *status = fx_own_refresh();
        if (*status != FLEXAI_OK) return NULL;
    }
    /* The common case, nothing scheduled on any device this process sees, is decided without
     * asking the driver which device is current. */
    int quiet = 1;
    for (int i = 0; i < fx_self.ndev && quiet; i++) {
        uint32_t d = fx_self.dev[i];
        quiet = d == FX_NONE || !(fx_self.own_sched[d] || fx_ts_engaged(r, d, now));
    }
    if (quiet) return NULL;
    uint32_t dev = fx_current_dev();
    if (dev == FX_NONE || !(fx_self.own_sched[dev] || fx_ts_engaged(r, dev, now))) return NULL;
    /* work captured into a graph is not run now: it is gated when the graph is launched */
    if (fx_backend->queue_capturing(stream, flags)) return NULL;
    pthread_once(&fx_ld_once, fx_ld_init);
    struct fx_gate *ld = &fx_ld[dev];
    pthread_mutex_lock(&ld->mu);
    fx_settle_idle(ld, now);
    /* Tiny kernels come by the hundred per millisecond: a holder asks again only every
     * FX_READMIT_NS, which keeps decisions prompt and the launch path short. */
    for (; !(ld->holding && now < ld->next_admit);) {
        flexai_error err = {0, ""};
        if (fx_shm_lock(&fx_self.shm, &err) != 0) {
            /* cannot schedule: the work must not run unlimited, the launch fails (closed) */
            FX_ERROR("%s", err.message);
            pthread_mutex_unlock(&ld->mu);
            *status = err.code;
            return NULL;
        }
        if (ld->busy_ns >= FX_SETTLE_NS) {
            /* long runs are charged as they go, so tokens and `flexai ps` stay current */
            fx_ts_charge(r, fx_self.slice, dev, ld->busy_ns, fx_now_ns());
            ld->busy_ns = 0;
        }
        if (!fx_slice_intact(r, fx_self.slice) || fx_own_check(r) != FLEXAI_OK) {
            fx_shm_unlock(&fx_self.shm);
            pthread_mutex_unlock(&ld->mu);
            FX_ERROR("this process's slice settings in the node's state are damaged; failing "
                     "closed");
            *status = FLEXAI_E_STATE;
            return NULL;
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
            break;
        }
        if (v.verdict == FX_TS_RELEASE || ld->holding) {
            /* quantum over, out of tokens, a higher priority came, or we lost the lease */
            fx_release_lease(dev, ld);
            if (v.verdict == FX_TS_RELEASE) continue;
        }
        /* wake at least every FX_MAX_WAIT_NS: a resize or a freed lease is noticed within it */
        fx_wait(v.retry_after_ns < FX_MAX_WAIT_NS ? v.retry_after_ns : FX_MAX_WAIT_NS);
    }
    /* bound the work in flight so the next decision takes effect quickly */
    uint64_t bound =
        fx_ts_outranked(r, fx_self.slice, dev, now) ? FX_INFLIGHT_SHORT_NS : FX_INFLIGHT_NS;
    while (ld->count && fx_inflight_ns(ld) >= bound) {
        if (!fx_pop_if_done(ld)) {
            fx_touch(dev, ld);
            fx_wait(FX_POLL_NS);
        }
    }
    /* nothing of ours in flight: the GPU is idle for us, a new busy segment starts here */
    if (!ld->seg_start && ld->count == 0 && ld->since_mark == 0) {
        ld->seg_start = fx_event(ld);
        ld->seg_counted = 0;
        if (ld->seg_start && fx_backend->event_record(ld->seg_start, stream, flags) != 0) {
            fx_backend->event_destroy(ld->seg_start);
            ld->seg_start = NULL;
        }
    }
    return ld;
}

/* After the launch: count it, remember its stream, and mark every so often. */
void fx_gate_leave(struct fx_gate *ld, int submitted, fx_queue_t stream, unsigned flags)
{
    if (!ld) return;
    if (submitted) {
        int known = 0;
        for (int i = 0; i < ld->nstreams && i < FX_MAX_STREAMS; i++)
            if (ld->streams[i] == stream && ld->stream_flags[i] == flags) known = 1;
        if (!known && ld->nstreams < FX_MAX_STREAMS) {
            ld->streams[ld->nstreams] = stream;
            ld->stream_flags[ld->nstreams++] = flags;
        } else if (!known) {
            ld->nstreams = FX_MAX_STREAMS + 1;
        }
        ld->since_mark++;
        fx_touch(ld->dev, ld);
        uint64_t every = FX_INFLIGHT_SHORT_NS / FX_MARKS_PER_BOUND / (ld->avg_ns ? ld->avg_ns : 1);
        uint64_t now = fx_now_ns();
        int lone = now - ld->last_leave_ns > FX_IDLE_GAP_NS; /* launches come slowly */
        ld->last_leave_ns = now;
        if (lone || ld->since_mark >= (every ? every : 1)) fx_mark_all(ld);
    }
    pthread_mutex_unlock(&ld->mu);
}

