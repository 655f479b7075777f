/* hook_launch.c - every way work reaches a GPU (kernels, cooperative kernels, graphs) passes the
 * compute gate: a lease from timeshare.c, and a bound on the work this process keeps in flight.
 *
 * Frameworks queue thousands of kernels ahead; throttling only at submission would then act
 * seconds late. So while scheduling is on, the process records an event every few launches
 * ("marks") and, before launching, waits until the work it still has in flight is estimated
 * below FX_INFLIGHT_NS. A decision (yield to a higher priority, end of quantum, out of tokens)
 * therefore takes effect within about that bound. When a slice has no cap, normal priority and
 * nothing scheduled shares its device, a launch costs one shared-memory load and goes straight
 * to the driver.
 */
#include <sys/prctl.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "runtime.h"
#include "timeshare.h"

#define FX_RING 64
#define FX_INFLIGHT_NS 1000000ULL      /* normal bound on queued work */
#define FX_INFLIGHT_SHORT_NS 400000ULL /* while a higher priority may need the device */
#define FX_MAX_STREAMS 16
#define FX_READMIT_NS 50000ULL         /* a holder re-asks the scheduler at most this often */
#define FX_SETTLE_NS 2000000ULL        /* measured GPU time is charged in steps of about this */
#define FX_MAX_WAIT_NS 20000000ULL     /* longest sleep before asking the scheduler again */

struct fx_mark {
    CUevent ev;
    uint32_t launches; /* launches this mark closes */
};

/* GPU time is measured on the device: a "segment" starts with an event recorded when none of
 * our work is in flight and grows with each completed mark (event elapsed time from the
 * segment's start). Under a lease only our work runs, so the sum is the slice's GPU time. */
struct fx_launch_dev {
    pthread_mutex_t mu;  /* one thread of this process at a time through the gate */
    uint32_t dev;        /* node device id (this entry's index) */
    int holding;
    uint64_t held_since;
    uint64_t busy_ns;     /* GPU time measured during the current lease */
    uint64_t next_admit;  /* holding: skip the scheduler (and its lock) until then */
    struct fx_mark ring[FX_RING];
    CUevent spare[FX_RING];
    unsigned head, count, nspare;
    unsigned since_mark;  /* launches since the last mark */
    CUstream streams[FX_MAX_STREAMS];
    uint8_t stream_ptsz[FX_MAX_STREAMS];
    int nstreams;         /* streams used since the last mark (past FX_MAX_STREAMS: unmarked) */
    uint64_t avg_ns;      /* estimated GPU time per launch */
    CUevent seg_start;    /* start of the current busy segment, NULL when none is open */
    uint64_t seg_counted; /* GPU time of the segment already added to busy_ns */
};

static struct fx_launch_dev fx_ld[FLEXAI_MAX_DEVICES];
static pthread_once_t fx_ld_once = PTHREAD_ONCE_INIT;

static void fx_ld_init(void)
{
    for (int i = 0; i < FLEXAI_MAX_DEVICES; i++) {
        pthread_mutex_init(&fx_ld[i].mu, NULL);
        fx_ld[i].dev = (uint32_t)i;
        fx_ld[i].avg_ns = 50000;
    }
}

/* A forked child holds no lease and none of its parent's events. */
void fx_launch_reset_after_fork(void)
{
    memset(fx_ld, 0, sizeof fx_ld);
    fx_ld_init();
}

static uint64_t fx_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ULL + (uint64_t)t.tv_nsec;
}

/* Sleep, not spin or sched_yield: beside a CPU-bound thread on the same core, a yield can cost
 * a whole scheduler slice (milliseconds), which would leave the GPU idle. The thread's timer
 * slack (50 us by default) is lowered for the sleep so short waits stay short. */
static void fx_wait(uint64_t ns)
{
    int old = prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0);
    if (old > 5000) prctl(PR_SET_TIMERSLACK, 5000UL, 0, 0, 0);
    struct timespec t = {(time_t)(ns / 1000000000ULL), (long)(ns % 1000000000ULL)};
    nanosleep(&t, NULL);
    if (old > 5000) prctl(PR_SET_TIMERSLACK, (unsigned long)old, 0, 0, 0);
}

static uint64_t fx_inflight_ns(const struct fx_launch_dev *ld)
{
    uint64_t n = ld->since_mark;
    for (unsigned i = 0; i < ld->count; i++) n += ld->ring[(ld->head + i) % FX_RING].launches;
    return n * ld->avg_ns;
}

/* Tell the others we hold the lease for a reason: we are here, and our work runs until ~busy. */
static void fx_touch(uint32_t dev, struct fx_launch_dev *ld)
{
    uint64_t now = fx_now();
    if (ld->holding) fx_ts_touch(fx_rt.shm.r, dev, fx_rt.pid, now, now + fx_inflight_ns(ld));
}

static CUevent fx_event(struct fx_launch_dev *ld)
{
    CUevent ev = NULL;
    if (ld->nspare) return ld->spare[--ld->nspare];
    return fx_cu.cuEventCreate(&ev, 0) == CUDA_SUCCESS ? ev : NULL;
}

static void fx_event_done(struct fx_launch_dev *ld, CUevent ev)
{
    if (ld->nspare < FX_RING) ld->spare[ld->nspare++] = ev;
    else fx_cu.cuEventDestroy_v2(ev);
}

static CUresult fx_record(CUevent ev, CUstream s, int ptsz)
{
    return ptsz ? fx_cu.cuEventRecord_ptsz(ev, s) : fx_cu.cuEventRecord(ev, s);
}

/* Add the GPU time from the segment's start to completed mark `ev`. */
static void fx_measure(struct fx_launch_dev *ld, CUevent ev, uint32_t launches)
{
    __typeof__(fx_cu.cuEventElapsedTime) elapsed =
        fx_cu.cuEventElapsedTime_v2 ? fx_cu.cuEventElapsedTime_v2 : fx_cu.cuEventElapsedTime;
    float ms = 0;
    if (!ld->seg_start || !elapsed || elapsed(&ms, ld->seg_start, ev) != CUDA_SUCCESS || ms < 0)
        return;
    uint64_t upto = (uint64_t)((double)ms * 1e6);
    if (upto <= ld->seg_counted) return;
    uint64_t inc = upto - ld->seg_counted;
    ld->seg_counted = upto;
    ld->busy_ns += inc;
    if (launches) {
        ld->avg_ns = (3 * ld->avg_ns + inc / launches) / 4;
        if (ld->avg_ns < 1000) ld->avg_ns = 1000;
    }
}

/* Pop the oldest mark if its work is done; 1 when popped. */
static int fx_pop_if_done(struct fx_launch_dev *ld)
{
    if (ld->count == 0) return 0;
    struct fx_mark *m = &ld->ring[ld->head];
    if (fx_cu.cuEventQuery(m->ev) == (CUresult)FX_CUDA_ERROR_NOT_READY) return 0;
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

static void fx_mark_stream(struct fx_launch_dev *ld, CUstream s, int ptsz, uint32_t launches)
{
    if (ld->count == FX_RING) return;
    CUevent ev = fx_event(ld);
    if (!ev) return;
    if (fx_record(ev, s, ptsz) != CUDA_SUCCESS) {
        fx_cu.cuEventDestroy_v2(ev);
        return;
    }
    ld->ring[(ld->head + ld->count) % FX_RING] = (struct fx_mark){ev, launches};
    ld->count++;
}

static int fx_capturing(CUstream s, int ptsz);

/* Close the launches since the last mark with one event per stream they used (the first
 * FX_MAX_STREAMS of them). A stream that began capturing a graph meanwhile is left alone: an
 * event recorded there would become part of the user's graph. No device-wide synchronize
 * either: it is illegal while any stream captures. */
static void fx_mark_all(struct fx_launch_dev *ld)
{
    if (ld->since_mark == 0) return;
    int n = ld->nstreams < FX_MAX_STREAMS ? ld->nstreams : FX_MAX_STREAMS;
    uint32_t launches = ld->since_mark;
    for (int i = 0; i < n; i++) {
        if (fx_capturing(ld->streams[i], ld->stream_ptsz[i])) continue;
        fx_mark_stream(ld, ld->streams[i], ld->stream_ptsz[i], launches);
        launches = 0;
    }
    ld->since_mark = 0;
    ld->nstreams = 0;
}

/* Wait until everything this process submitted on the device has finished. */
static void fx_drain(uint32_t dev, struct fx_launch_dev *ld)
{
    fx_mark_all(ld);
    while (ld->count) {
        if (!fx_pop_if_done(ld)) {
            fx_touch(dev, ld);
            fx_wait(10000);
        }
    }
}

/* Drain our work and charge the GPU time it used to the lease (also a lease we lost). */
static void fx_release_lease(uint32_t dev, struct fx_launch_dev *ld)
{
    struct fx_region *r = fx_rt.shm.r;
    fx_drain(dev, ld);
    if (fx_shm_lock(r) == 0) {
        fx_ts_release(r, fx_rt.slice, fx_rt.pid, dev, ld->busy_ns, fx_now());
        fx_shm_unlock(r);
    }
    ld->holding = 0;
    ld->busy_ns = 0;
}

static int fx_capturing(CUstream s, int ptsz)
{
    CUstreamCaptureStatus st = 0;
    __typeof__(fx_cu.cuStreamIsCapturing) q =
        ptsz ? fx_cu.cuStreamIsCapturing_ptsz : fx_cu.cuStreamIsCapturing;
    return q && q(s, &st) == CUDA_SUCCESS && st != 0;
}

/* Before a launch. Returns the device state to hand to fx_gate_leave (its mutex held), or NULL
 * when this launch goes straight to the driver. */
static struct fx_launch_dev *fx_gate_enter(CUstream stream, int ptsz)
{
    struct fx_region *r = fx_rt.shm.r;
    if (!r || fx_rt.slice == FX_NONE) return NULL;
    uint64_t now = fx_now();
    /* The common case, nothing scheduled on any device this process sees, is decided without
     * asking the driver which device is current. */
    int quiet = 1;
    for (int i = 0; i < fx_rt.ndev && quiet; i++)
        quiet = fx_rt.dev[i] == FX_NONE || !fx_ts_needed(r, fx_rt.slice, fx_rt.dev[i], now);
    if (quiet) return NULL;
    uint32_t dev = fx_current_dev();
    if (dev == FX_NONE || !fx_ts_needed(r, fx_rt.slice, dev, now)) return NULL;
    if (!fx_cu.cuEventQuery || !fx_cu.cuEventRecord || !fx_cu.cuEventCreate) return NULL;
    if (fx_capturing(stream, ptsz)) return NULL; /* recorded into a graph, not run now */
    pthread_once(&fx_ld_once, fx_ld_init);
    struct fx_launch_dev *ld = &fx_ld[dev];
    pthread_mutex_lock(&ld->mu);
    /* Tiny kernels come by the hundred per millisecond: a holder asks again only every
     * FX_READMIT_NS, which keeps decisions prompt and the launch path short. */
    for (; !(ld->holding && now < ld->next_admit);) {
        uint64_t arg = 0;
        if (fx_shm_lock(r) != 0) break; /* cannot schedule: let the work through */
        if (ld->busy_ns >= FX_SETTLE_NS) {
            /* long runs are charged as they go, so tokens and `flexai ps` stay current */
            fx_ts_charge(r, fx_rt.slice, dev, ld->busy_ns, fx_now());
            ld->busy_ns = 0;
        }
        uint64_t used = ld->holding ? ld->busy_ns + fx_inflight_ns(ld) : 0;
        enum fx_ts_verdict v =
            fx_rt.spatial
                ? fx_ts_admit_spatial(r, fx_rt.slice, dev, fx_now(), used, ld->holding, &arg)
                : fx_ts_admit(r, fx_rt.slice, fx_rt.pid, dev, fx_now(), used, &arg);
        fx_shm_unlock(r);
        if (v == FX_TS_GO) {
            if (!ld->holding || (!fx_rt.spatial && ld->held_since != arg)) {
                ld->holding = 1;
                ld->held_since = arg;
                ld->busy_ns = 0;
            }
            ld->next_admit = fx_now() + FX_READMIT_NS;
            break;
        }
        if (v == FX_TS_RELEASE || ld->holding) {
            /* quantum over, out of tokens, a higher priority came, or we lost the lease */
            fx_release_lease(dev, ld);
            if (v == FX_TS_RELEASE) continue;
        }
        /* wake at least every 20 ms: a resize or a freed lease is noticed within that */
        fx_wait(arg < FX_MAX_WAIT_NS ? arg : FX_MAX_WAIT_NS);
    }
    /* bound the work in flight so the next decision takes effect quickly */
    uint64_t bound =
        fx_ts_outranked(r, fx_rt.slice, dev, now) ? FX_INFLIGHT_SHORT_NS : FX_INFLIGHT_NS;
    while (ld->count && fx_inflight_ns(ld) >= bound) {
        if (!fx_pop_if_done(ld)) {
            fx_touch(dev, ld);
            fx_wait(10000);
        }
    }
    /* nothing of ours in flight: the GPU is idle for us, a new busy segment starts here */
    if (!ld->seg_start && ld->count == 0 && ld->since_mark == 0) {
        ld->seg_start = fx_event(ld);
        ld->seg_counted = 0;
        if (ld->seg_start && fx_record(ld->seg_start, stream, ptsz) != CUDA_SUCCESS) {
            fx_cu.cuEventDestroy_v2(ld->seg_start);
            ld->seg_start = NULL;
        }
    }
    return ld;
}

/* After the launch: count it, remember its stream, and mark every so often. */
static void fx_gate_leave(struct fx_launch_dev *ld, CUresult rc, CUstream stream, int ptsz)
{
    if (!ld) return;
    if (rc == CUDA_SUCCESS) {
        int known = 0;
        for (int i = 0; i < ld->nstreams && i < FX_MAX_STREAMS; i++)
            if (ld->streams[i] == stream && ld->stream_ptsz[i] == ptsz) known = 1;
        if (!known && ld->nstreams < FX_MAX_STREAMS) {
            ld->streams[ld->nstreams] = stream;
            ld->stream_ptsz[ld->nstreams++] = (uint8_t)ptsz;
        } else if (!known) {
            ld->nstreams = FX_MAX_STREAMS + 1;
        }
        ld->since_mark++;
        fx_touch(ld->dev, ld);
        /* marks about a quarter of the short in-flight bound apart: cheap yet responsive */
        uint64_t every = FX_INFLIGHT_SHORT_NS / 4 / (ld->avg_ns ? ld->avg_ns : 1);
        if (ld->since_mark >= (every ? every : 1)) fx_mark_all(ld);
    }
    pthread_mutex_unlock(&ld->mu);
}

/* One wrapper per entry point; `stream` and `ptsz` say where the work goes. */
#define FX_LAUNCH(fn, stream, ptsz, call_args)                                                 \
    FX_ENTER(fn);                                                                              \
    struct fx_launch_dev *ld = fx_gate_enter((stream), (ptsz));                                \
    CUresult rc = fx_cu.fn call_args;                                                          \
    fx_gate_leave(ld, rc, (stream), (ptsz));                                                   \
    return rc

FX_EXPORT CUresult cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                                  unsigned int bx, unsigned int by, unsigned int bz,
                                  unsigned int shmem, CUstream s, void **params, void **extra)
{
    FX_LAUNCH(cuLaunchKernel, s, 0, (f, gx, gy, gz, bx, by, bz, shmem, s, params, extra));
}

FX_EXPORT CUresult cuLaunchKernel_ptsz(CUfunction f, unsigned int gx, unsigned int gy,
                                       unsigned int gz, unsigned int bx, unsigned int by,
                                       unsigned int bz, unsigned int shmem, CUstream s,
                                       void **params, void **extra)
{
    FX_LAUNCH(cuLaunchKernel_ptsz, s, 1, (f, gx, gy, gz, bx, by, bz, shmem, s, params, extra));
}

FX_EXPORT CUresult cuLaunchKernelEx(const CUlaunchConfig *config, CUfunction f, void **params,
                                    void **extra)
{
    FX_LAUNCH(cuLaunchKernelEx, config ? config->hStream : NULL, 0, (config, f, params, extra));
}

FX_EXPORT CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig *config, CUfunction f,
                                         void **params, void **extra)
{
    FX_LAUNCH(cuLaunchKernelEx_ptsz, config ? config->hStream : NULL, 1,
              (config, f, params, extra));
}

FX_EXPORT CUresult cuLaunchCooperativeKernel(CUfunction f, unsigned int gx, unsigned int gy,
                                             unsigned int gz, unsigned int bx, unsigned int by,
                                             unsigned int bz, unsigned int shmem, CUstream s,
                                             void **params)
{
    FX_LAUNCH(cuLaunchCooperativeKernel, s, 0, (f, gx, gy, gz, bx, by, bz, shmem, s, params));
}

FX_EXPORT CUresult cuLaunchCooperativeKernel_ptsz(CUfunction f, unsigned int gx, unsigned int gy,
                                                  unsigned int gz, unsigned int bx,
                                                  unsigned int by, unsigned int bz,
                                                  unsigned int shmem, CUstream s, void **params)
{
    FX_LAUNCH(cuLaunchCooperativeKernel_ptsz, s, 1,
              (f, gx, gy, gz, bx, by, bz, shmem, s, params));
}

FX_EXPORT CUresult cuGraphLaunch(CUgraphExec g, CUstream s)
{
    FX_LAUNCH(cuGraphLaunch, s, 0, (g, s));
}

FX_EXPORT CUresult cuGraphLaunch_ptsz(CUgraphExec g, CUstream s)
{
    FX_LAUNCH(cuGraphLaunch_ptsz, s, 1, (g, s));
}
