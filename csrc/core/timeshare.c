/* timeshare.c - leases, token buckets and fair-share clocks (see timeshare.h). */
#include "timeshare.h"

#include "log.h"

#define FX_TS_FULL 100u         /* percent: a whole device */
#define FX_TS_HEAD_START_DIV 4  /* a new bucket starts 1/4 full: a modest head start */
#define FX_TS_MIN_WEIGHT 5u     /* a slice without a share weighs at least this much */

static uint32_t fx_rate(const struct fx_slice *sl, uint32_t dev)
{
    uint32_t share = sl->compute[dev] ? sl->compute[dev] : FX_TS_FULL;
    uint32_t cap = sl->burst[dev] ? sl->burst[dev] : share;
    return cap < share ? share : cap;
}


/* Scheduled: takes part in scheduling on its own account (see timeshare.h). */
static int fx_scheduled(const struct fx_slice *sl, uint32_t dev)
{
    return (sl->compute[dev] && sl->compute[dev] < FX_TS_FULL) || sl->burst[dev] ||
           sl->priority != FLEXAI_PRIORITY_NORMAL;
}

int fx_ts_scheduled(const struct fx_region *r, uint32_t slice, uint32_t dev)
{
    return fx_scheduled(&r->slices[slice], dev);
}

int fx_ts_engaged(const struct fx_region *r, uint32_t dev, uint64_t now)
{
    return __atomic_load_n(&r->devs[dev].sched_until_ns, __ATOMIC_RELAXED) > now;
}

int fx_ts_needed(const struct fx_region *r, uint32_t slice, uint32_t dev, uint64_t now)
{
    return fx_ts_scheduled(r, slice, dev) || fx_ts_engaged(r, dev, now);
}

int fx_ts_outranked(const struct fx_region *r, uint32_t slice, uint32_t dev, uint64_t now)
{
    return r->slices[slice].priority < FLEXAI_PRIORITY_HIGH &&
           __atomic_load_n(&r->devs[dev].high_until_ns, __ATOMIC_RELAXED) > now;
}

void fx_ts_set(struct fx_region *r, uint32_t slice, uint32_t dev, uint32_t share, uint32_t burst)
{
    struct fx_slice *sl = &r->slices[slice];
    sl->compute[dev] = share;
    sl->burst[dev] = burst;
    fx_slice_seal(r, slice);
    r->generation++;
}

static void fx_refill(struct fx_slice *sl, uint32_t dev, uint64_t now)
{
    uint32_t rate = fx_rate(sl, dev);
    int64_t depth = (int64_t)(FX_TS_WINDOW_NS * rate / FX_TS_FULL);
    if (sl->refill_ns[dev] == 0 || now < sl->refill_ns[dev]) {
        sl->refill_ns[dev] = now;
        if (sl->tokens_ns[dev] == 0) sl->tokens_ns[dev] = depth / FX_TS_HEAD_START_DIV;
        return;
    }
    uint64_t gained = (now - sl->refill_ns[dev]) * rate / FX_TS_FULL;
    sl->refill_ns[dev] = now;
    int64_t t = sl->tokens_ns[dev];
    t = gained > (uint64_t)(depth - (t < depth ? t : depth)) ? depth : t + (int64_t)gained;
    sl->tokens_ns[dev] = t;
}

static int fx_is_active(const struct fx_slice *sl, uint32_t dev, uint64_t now, uint64_t window)
{
    return sl->in_use && sl->active_ns[dev] && now - sl->active_ns[dev] < window;
}

/* The holder still counts while it asks for work, or its work runs, or (dead or hung) until
 * FX_TS_SILENT_NS has passed since it last showed up. */
static int fx_holder_valid(const struct fx_region *r, const struct fx_dev *d, uint64_t now)
{
    if (d->lease_pid == 0 || d->lease_slice >= FX_MAX_SLICES || !r->slices[d->lease_slice].in_use)
        return 0;
    uint64_t touch = __atomic_load_n(&d->lease_touch_ns, __ATOMIC_RELAXED);
    uint64_t busy = __atomic_load_n(&d->lease_busy_ns, __ATOMIC_RELAXED);
    if (touch > now) return 1; /* touched (unlocked) after our clock reading: alive */
    if (now - touch >= FX_TS_SILENT_NS) return 0;
    return now < touch + FX_TS_IDLE_NS || now < busy;
}

int fx_ts_touch(struct fx_region *r, uint32_t dev, int32_t pid, uint64_t now, uint64_t busy)
{
    struct fx_dev *d = &r->devs[dev];
    if (__atomic_load_n(&d->lease_pid, __ATOMIC_RELAXED) != pid) return 0;
    __atomic_store_n(&d->lease_touch_ns, now, __ATOMIC_RELAXED);
    __atomic_store_n(&d->lease_busy_ns, busy, __ATOMIC_RELAXED);
    return 1;
}


/* Highest priority among active slices, and whether another eligible slice of priority >= p
 * is waiting now. */
static int32_t fx_top_priority(const struct fx_region *r, uint32_t dev, uint64_t now)
{
    int32_t top = FLEXAI_PRIORITY_LOW;
    for (uint32_t s = 0; s < FX_MAX_SLICES; s++) {
        const struct fx_slice *sl = &r->slices[s];
        if (!fx_is_active(sl, dev, now, FX_TS_WAITING_NS) || sl->priority <= top) continue;
        /* told to wait for tokens at its last asking: it may not run, so it outranks nobody */
        if (fx_rate(sl, dev) < FX_TS_FULL && sl->tokens_ns[dev] <= 0) continue;
        top = sl->priority;
    }
    return top;
}

/* The eligible waiting slice of priority `prio` with the smallest virtual time. */
static uint32_t fx_best(struct fx_region *r, uint32_t dev, uint64_t now, int32_t prio,
                        uint32_t except)
{
    uint32_t best = FX_NONE;
    for (uint32_t s = 0; s < FX_MAX_SLICES; s++) {
        struct fx_slice *sl = &r->slices[s];
        if (s == except || sl->priority != prio || !fx_is_active(sl, dev, now, FX_TS_WAITING_NS))
            continue;
        fx_refill(sl, dev, now);
        if (fx_rate(sl, dev) < FX_TS_FULL && sl->tokens_ns[dev] <= 0) continue;
        if (best == FX_NONE || sl->vtime_ns[dev] < r->slices[best].vtime_ns[dev]) best = s;
    }
    return best;
}

/* A slice coming back from idle starts at the smallest virtual time of the active ones, so it
 * gets no credit for the time it did not use (and no penalty either). */
static void fx_wake(struct fx_region *r, uint32_t slice, uint32_t dev, uint64_t now)
{
    uint64_t min_v = UINT64_MAX;
    for (uint32_t s = 0; s < FX_MAX_SLICES; s++)
        if (s != slice && fx_is_active(&r->slices[s], dev, now, FX_TS_ACTIVE_NS) &&
            r->slices[s].vtime_ns[dev] < min_v)
            min_v = r->slices[s].vtime_ns[dev];
    struct fx_slice *sl = &r->slices[slice];
    if (min_v != UINT64_MAX && sl->vtime_ns[dev] < min_v) sl->vtime_ns[dev] = min_v;
}

/* Fair-share weight: a slice's share; a slice without one gets what the active shares leave,
 * split among such slices (so that shares are guarantees, whoever else runs). */
static uint32_t fx_weight(const struct fx_region *r, uint32_t slice, uint32_t dev, uint64_t now)
{
    const struct fx_slice *sl = &r->slices[slice];
    if (sl->compute[dev]) return sl->compute[dev];
    uint32_t reserved = 0, unshared = 1;
    for (uint32_t s = 0; s < FX_MAX_SLICES; s++) {
        const struct fx_slice *o = &r->slices[s];
        if (s == slice || !fx_is_active(o, dev, now, FX_TS_ACTIVE_NS)) continue;
        if (o->compute[dev]) reserved += o->compute[dev];
        else unshared++;
    }
    uint32_t left = reserved < FX_TS_FULL ? FX_TS_FULL - reserved : 0;
    uint32_t w = left / unshared;
    return w < FX_TS_MIN_WEIGHT ? FX_TS_MIN_WEIGHT : w;
}

static void fx_take(struct fx_dev *d, uint32_t slice, int32_t pid, uint64_t now)
{
    d->lease_pid = pid;
    d->lease_slice = slice;
    d->lease_start_ns = now;
    d->lease_touch_ns = now;
    d->lease_until_ns = now + FX_TS_QUANTUM_NS;
    d->lease_busy_ns = now;
}

/* What every admission does first: refill, mark the slice active, publish hints. */
static void fx_arrive(struct fx_region *r, uint32_t slice, uint32_t dev, uint64_t now)
{
    struct fx_slice *sl = &r->slices[slice];
    struct fx_dev *d = &r->devs[dev];
    fx_refill(sl, dev, now);
    if (!fx_is_active(sl, dev, now, FX_TS_ACTIVE_NS)) fx_wake(r, slice, dev, now);
    sl->active_ns[dev] = now;
    /* every launch of every process reads these: rewrite them only when a quarter of their
     * span has passed, so their cache line stays shared (read-mostly) */
    if (fx_scheduled(sl, dev) && d->sched_until_ns < now + FX_TS_ENGAGED_NS * 3 / 4)
        __atomic_store_n(&d->sched_until_ns, now + FX_TS_ENGAGED_NS, __ATOMIC_RELAXED);
    if (sl->priority == FLEXAI_PRIORITY_HIGH && d->high_until_ns < now + FX_TS_HIGH_HOLD_NS * 3 / 4)
        __atomic_store_n(&d->high_until_ns, now + FX_TS_HIGH_HOLD_NS, __ATOMIC_RELAXED);
}

/* Time to sleep until a capped slice's bucket allows a worthwhile run (fewer, longer runs). */
static uint64_t fx_refill_wait(const struct fx_slice *sl, uint32_t dev, uint32_t rate)
{
    return ((uint64_t)(-sl->tokens_ns[dev]) + FX_TS_MIN_RUN_NS) * FX_TS_FULL / rate;
}

static struct fx_ts_decision fx_go(uint64_t lease_start)
{
    return (struct fx_ts_decision){FX_TS_GO, lease_start, 0};
}

static struct fx_ts_decision fx_wait_for(uint64_t ns)
{
    return (struct fx_ts_decision){FX_TS_WAIT, 0, ns};
}

static const struct fx_ts_decision fx_release = {FX_TS_RELEASE, 0, 0};

struct fx_ts_decision fx_ts_admit_spatial(struct fx_region *r, uint32_t slice, uint32_t dev,
                                          uint64_t now, uint64_t used, int running)
{
    struct fx_slice *sl = &r->slices[slice];
    fx_arrive(r, slice, dev, now);
    uint32_t rate = fx_rate(sl, dev);
    int capped = rate < FX_TS_FULL, outranked = sl->priority < fx_top_priority(r, dev, now);
    if (running) {
        if (outranked || (capped && sl->tokens_ns[dev] - (int64_t)used <= 0)) return fx_release;
        return fx_go(0);
    }
    if (outranked) return fx_wait_for(FX_TS_OUTRANKED_RETRY_NS);
    if (capped && sl->tokens_ns[dev] <= 0) return fx_wait_for(fx_refill_wait(sl, dev, rate));
    return fx_go(now);
}

struct fx_ts_decision fx_ts_admit(struct fx_region *r, uint32_t slice, int32_t pid, uint32_t dev,
                                  uint64_t now, uint64_t used)
{
    struct fx_slice *sl = &r->slices[slice];
    struct fx_dev *d = &r->devs[dev];
    fx_arrive(r, slice, dev, now);

    int32_t prio = sl->priority, top = fx_top_priority(r, dev, now);
    uint32_t rate = fx_rate(sl, dev);
    int capped = rate < FX_TS_FULL; /* a 100% cap is no cap: its tokens never hold it back */
    int holding = d->lease_pid == pid && d->lease_slice == slice;

    if (holding) {
        int64_t left = sl->tokens_ns[dev] - (int64_t)used;
        if (prio < top || (capped && left <= 0)) return fx_release;
        if (now >= d->lease_until_ns) {
            uint32_t other = fx_best(r, dev, now, prio, slice);
            if (other != FX_NONE) return fx_release;
            d->lease_until_ns = now + FX_TS_QUANTUM_NS; /* nobody waits: keep going */
        }
        d->lease_touch_ns = now;
        return fx_go(d->lease_start_ns);
    }
    if (prio < top) return fx_wait_for(FX_TS_OUTRANKED_RETRY_NS);
    if (capped && sl->tokens_ns[dev] <= 0) return fx_wait_for(fx_refill_wait(sl, dev, rate));
    if (fx_holder_valid(r, d, now)) {
        if (r->slices[d->lease_slice].priority >= prio || d->lease_slice == slice) {
            uint64_t left = d->lease_until_ns > now ? d->lease_until_ns - now : 0;
            if (left < FX_TS_RETRY_MIN_NS) left = FX_TS_RETRY_MIN_NS;
            return fx_wait_for(left > FX_TS_RETRY_MAX_NS ? FX_TS_RETRY_MAX_NS : left);
        }
        /* preempt a lower priority: it notices at its next admission and drains */
        FX_DEBUG("slice %u preempts slice %u on device %u", slice, d->lease_slice, dev);
    } else {
        /* a silent holder's slice does not wait for the lease unless it asked since */
        uint32_t gone = FX_NONE;
        if (d->lease_pid && d->lease_slice < FX_MAX_SLICES && d->lease_slice != slice &&
            r->slices[d->lease_slice].active_ns[dev] <= d->lease_touch_ns)
            gone = d->lease_slice;
        uint32_t best = fx_best(r, dev, now, prio, gone);
        if (best != FX_NONE && best != slice) return fx_wait_for(FX_TS_RETRY_MIN_NS);
    }
    fx_take(d, slice, pid, now);
    return fx_go(now);
}

void fx_ts_charge(struct fx_region *r, uint32_t slice, uint32_t dev, uint64_t used, uint64_t now)
{
    struct fx_slice *sl = &r->slices[slice];
    if (!used) return;
    sl->tokens_ns[dev] -= (int64_t)used;
    sl->vtime_ns[dev] += used * FX_TS_FULL / fx_weight(r, slice, dev, now);
    sl->gpu_ns[dev] += used;
    /* A lease can be charged for someone else's work (an unscheduled process's queue draining
     * as scheduling starts); bounding the lead keeps such an error transient. */
    uint64_t min_v = UINT64_MAX;
    for (uint32_t s = 0; s < FX_MAX_SLICES; s++)
        if (s != slice && fx_is_active(&r->slices[s], dev, now, FX_TS_ACTIVE_NS) &&
            r->slices[s].vtime_ns[dev] < min_v)
            min_v = r->slices[s].vtime_ns[dev];
    if (min_v != UINT64_MAX && sl->vtime_ns[dev] > min_v + FX_TS_MAX_LAG_NS)
        sl->vtime_ns[dev] = min_v + FX_TS_MAX_LAG_NS;
}

void fx_ts_release(struct fx_region *r, uint32_t slice, int32_t pid, uint32_t dev, uint64_t used,
                   uint64_t now)
{
    struct fx_dev *d = &r->devs[dev];
    fx_ts_charge(r, slice, dev, used, now);
    if (d->lease_pid == pid && d->lease_slice == slice) {
        d->lease_pid = 0;
        d->lease_slice = FX_NONE;
    }
}
