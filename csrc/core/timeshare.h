/* timeshare.h - vendor-free compute shares: who may submit GPU work now, and for how long.
 *
 * Model (time-slicing, no MPS): on each device one process at a time holds a *lease*; only the
 * holder's slice submits work, so the GPU time between the lease's start and the completion of
 * its last submitted work is exactly that slice's GPU time. Processes bound how much work they
 * keep in flight (hook_launch.c), so a lease changes hands within about a millisecond.
 *  - Caps: a debt-carrying token bucket per slice and device fills at the cap's rate; a slice
 *    with no tokens may not hold the lease. Overshoot becomes debt, so the long-run share is
 *    exact.
 *  - Fairness under contention: among eligible slices of the top priority the one with the
 *    smallest virtual time (GPU time / share) gets the lease next (weighted fair queueing).
 *  - Priorities: while a slice of higher priority is active, lower ones yield; a higher one
 *    takes the lease at once without waiting for the holder.
 *  - A holder whose submitted work is done and that asked for nothing for FX_TS_IDLE_NS
 *    loses the lease to anyone waiting; one that dies or hangs, after FX_TS_SILENT_NS at most.
 * Spatial mode (MPS): slices run kernels at the same time, so there is no lease; a process
 * measures its own work's device time, caps and priorities apply as above, and the SMs are
 * shared by MPS.
 * All functions expect the region lock held (unless said otherwise) and take `now` in
 * CLOCK_MONOTONIC nanoseconds: they never read a clock themselves, so a schedule replays
 * exactly with a fake clock (tests/core/).
 *
 * Words used below and in gate.c, each with one meaning:
 *  - scheduled: a slice that takes part in scheduling on its own account (a share below 100%,
 *    a burst, or a priority other than normal).
 *  - active: a slice that asked for a device within FX_TS_ACTIVE_NS; only active slices count
 *    in fair shares, and a slice that becomes active again gets no credit for its idle time.
 *  - waiting: a slice that asked within FX_TS_WAITING_NS; it competes for the next lease.
 *  - engaged: a device on which a scheduled slice asked within FX_TS_ENGAGED_NS; every process
 *    on an engaged device goes through admission, scheduled or not.
 *  - outranked: a slice below the top priority among the waiting ones; it may not submit.
 */
#ifndef FX_TIMESHARE_H
#define FX_TIMESHARE_H

#include <stdint.h>

#include "shm.h"

#define FX_TS_QUANTUM_NS (4000000ULL)  /* a lease lasts this long when others wait */
#define FX_TS_WINDOW_NS (20000000ULL)  /* token bucket depth, in ns at 100% */
#define FX_TS_ACTIVE_NS (3000000ULL)   /* asked within this: active (gets no idle credit) */
#define FX_TS_WAITING_NS (1000000ULL)  /* asked within this: waiting for the lease now */
#define FX_TS_IDLE_NS (200000ULL)      /* a holder whose work is done keeps the lease this long */
#define FX_TS_SILENT_NS (2000000ULL)   /* a holder silent this long loses the lease */
#define FX_TS_MIN_RUN_NS (200000ULL)   /* a capped slice waits for this much time to run */
#define FX_TS_MAX_LAG_NS (20000000ULL) /* fair-share clocks stay this close to the slowest */
#define FX_TS_ENGAGED_NS (100000000ULL) /* after a scheduled slice asked, every slice on the
                                          * device schedules this long: longer than any of its
                                          * pauses (token sleeps <= 20 ms, drains ~1 ms), so an
                                          * unscheduled neighbour never slips back to queueing
                                          * deep in between */
#define FX_TS_HIGH_HOLD_NS (100000000ULL) /* after a high-priority request, lower ones keep
                                           * little in flight this long (it may come back) */

#define FX_TS_OUTRANKED_RETRY_NS (50000ULL) /* an outranked slice asks again this often */
#define FX_TS_RETRY_MIN_NS (20000ULL)       /* bounds of a wait for another's lease to end */
#define FX_TS_RETRY_MAX_NS (100000ULL)

enum fx_ts_verdict {
    FX_TS_GO = 0,      /* submit now (the caller holds the lease, or needs none: spatial) */
    FX_TS_WAIT = 1,    /* ask again after retry_after_ns */
    FX_TS_RELEASE = 2, /* the caller holds the lease but must drain its work and release it */
};

/* An admission's answer. */
struct fx_ts_decision {
    enum fx_ts_verdict verdict;
    uint64_t lease_start_ns; /* GO: when the caller's lease began (a new value: a new lease) */
    uint64_t retry_after_ns; /* WAIT: how long to wait before asking again */
};

/* Ask to submit work of `slice` from process `pid` on node device `dev`. `used` is the GPU time
 * the caller's current lease has used so far (0 without one). */
struct fx_ts_decision fx_ts_admit(struct fx_region *r, uint32_t slice, int32_t pid, uint32_t dev,
                                  uint64_t now, uint64_t used);

/* The same in spatial mode (no lease); `running` says whether the caller is between GO and
 * release. */
struct fx_ts_decision fx_ts_admit_spatial(struct fx_region *r, uint32_t slice, uint32_t dev,
                                          uint64_t now, uint64_t used, int running);

/* Charge GPU time `used` (measured on the device) to a slice: tokens, fair-share clock, total. */
void fx_ts_charge(struct fx_region *r, uint32_t slice, uint32_t dev, uint64_t used, uint64_t now);

/* The holder's work has drained: charge the GPU time `used` (measured on the device) to its
 * slice, and free the lease if it still holds it (a preempted or silent holder may have lost it
 * meanwhile; it used the GPU all the same). */
void fx_ts_release(struct fx_region *r, uint32_t slice, int32_t pid, uint32_t dev, uint64_t used,
                   uint64_t now);

/* Without the lock, from the holder: it is alive and its submitted work should end by `busy`.
 * Returns nonzero when `pid` still holds the lease. */
int fx_ts_touch(struct fx_region *r, uint32_t dev, int32_t pid, uint64_t now, uint64_t busy);

/* Without the lock: nonzero when `slice` must go through fx_ts_admit on `dev`: it is scheduled
 * (fx_ts_scheduled: a cap or burst, a non-normal priority) or the device is engaged
 * (fx_ts_engaged: such a slice was active on it lately). */
int fx_ts_needed(const struct fx_region *r, uint32_t slice, uint32_t dev, uint64_t now);
int fx_ts_scheduled(const struct fx_region *r, uint32_t slice, uint32_t dev);
int fx_ts_engaged(const struct fx_region *r, uint32_t dev, uint64_t now);

/* Without the lock: nonzero when a slice of higher priority than `slice` wanted `dev` lately,
 * so that `slice` should keep little work in flight. */
int fx_ts_outranked(const struct fx_region *r, uint32_t slice, uint32_t dev, uint64_t now);

/* Set a slice's share and burst on a device (resize) and re-seal its settings; takes effect at
 * the next admission. */
void fx_ts_set(struct fx_region *r, uint32_t slice, uint32_t dev, uint32_t share, uint32_t burst);

#endif
