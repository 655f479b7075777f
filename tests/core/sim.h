/* sim.h - a discrete-event replay of processes sharing one device through timeshare.c.
 *
 * The time-share core takes `now` as an argument and reads no clock, so a schedule can be
 * replayed exactly: simulated processes ask fx_ts_admit (or fx_ts_admit_spatial) at simulated
 * times and follow its answer the way hook_launch.c does. Each process submits "kernels" of a
 * fixed length and waits for each to finish before asking again (its in-flight work is one
 * kernel). On GO it runs a kernel, touching the lease while it runs; on RELEASE it releases with
 * the GPU time used and asks again at once; on WAIT it releases first if it believed it held the
 * lease (it lost it), then sleeps retry_after_ns (at most FX_SIM_MAX_WAIT_NS). A process of a
 * slice that fx_ts_needed() says is unscheduled submits without asking, as the shim does.
 * A holder charges what it used every FX_SIM_SETTLE_NS (fx_ts_charge), as the shim does.
 *
 * In time mode the device runs kernels one after another in submission order (a kernel submitted
 * while another's runs waits for it); in spatial mode kernels of different processes overlap.
 * Events are taken in time order, ties by process index, so a replay is deterministic.
 *
 * What the model leaves out (on purpose): the shim's estimate of in-flight work and its marks
 * (here a kernel's GPU time is known exactly), CPU time between calls (every call of one event
 * sees the same `now`), and the region lock (one event runs at a time).
 */
#ifndef FX_SIM_H
#define FX_SIM_H

#include <stdint.h>

#include "shm.h"
#include "timeshare.h"

#define FX_SIM_MS (1000000ULL)
#define FX_SIM_US (1000ULL)
#define FX_SIM_NEVER (UINT64_MAX)

/* The shim's constants that the model copies (hook_launch.c keeps its own). */
#define FX_SIM_MAX_WAIT_NS (20000000ULL) /* longest sleep before asking again */
#define FX_SIM_SETTLE_NS (2000000ULL)    /* a holder charges what it used in steps of this */
#define FX_SIM_TOUCH_NS (100000ULL)      /* a process waiting on its kernel touches this often
                                          * (the shim: every 10 us; far below FX_TS_IDLE_NS
                                          * either way) */

enum fx_sim_mode { FX_SIM_TIME, FX_SIM_SPATIAL };

/* What a process does when it stops wanting the device (at stop_ns, or in a duty pause). */
enum fx_sim_stop {
    FX_SIM_IDLE, /* stops asking; keeps what it holds (a program that stops launching) */
    FX_SIM_EXIT, /* releases what it holds and leaves (a program that ends cleanly) */
    FX_SIM_DIE,  /* no call at all any more, not even a touch (killed, or hung) */
};

/* One kernel as the device ran it. */
struct fx_sim_run {
    uint32_t proc;
    uint64_t start_ns, end_ns;
};

/* One lease (time mode) or run (spatial mode) a process was granted. */
struct fx_sim_grant {
    uint64_t at_ns;       /* the asking that got GO */
    uint64_t prev_ask_ns; /* the process's asking before that (FX_SIM_NEVER: none) */
};

enum fx_sim_state { FX_SIM_ASK, FX_SIM_RUN, FX_SIM_PAUSE, FX_SIM_GONE };

struct fx_sim_proc {
    /* set by the case (fx_sim_add fills defaults) */
    int32_t pid;
    uint32_t slice;
    uint64_t kernel_ns;           /* GPU time of each kernel */
    uint64_t start_ns, stop_ns;   /* wants the device from start_ns until stop_ns */
    enum fx_sim_stop stop_how;    /* what it does at stop_ns */
    uint64_t on_ns, off_ns;       /* duty pattern from start_ns (off_ns 0: always on); a
                                   * pause behaves as FX_SIM_IDLE */

    /* results */
    uint64_t gpu_ns;        /* GPU time its kernels ran */
    uint64_t charged_ns;    /* GPU time it charged (fx_ts_charge / fx_ts_release) */
    uint64_t stale_ns;      /* uncharged time of an old lease when it got a new one without
                             * having released the old (it paused holding it); charged here,
                             * while hook_launch.c resets its count at that point */
    uint64_t queued_ns;     /* time its kernels waited for another process's kernel */
    uint32_t go, wait, release, lost; /* verdicts; lost: WAIT while it believed it held */
    uint32_t unscheduled;   /* kernels submitted without asking (fx_ts_needed was 0) */
    uint64_t last_ask_ns;   /* FX_SIM_NEVER until it asked */
    enum fx_ts_verdict last_verdict;
    struct fx_sim_grant *grants;
    uint32_t ngrants, grants_cap;

    /* state */
    enum fx_sim_state state;
    uint64_t wake_ns;
    uint64_t kernel_end_ns;
    int holding;            /* believes it holds the lease (time) or is running (spatial) */
    uint64_t lease_start_ns;
    uint64_t used_ns;       /* GPU time of the current lease not charged yet */
};

struct fx_sim {
    struct fx_region *r;
    uint32_t dev;
    enum fx_sim_mode mode;
    uint64_t now;
    uint64_t dev_free_ns;   /* time mode: the device is busy until then */
    uint32_t dev_last_proc; /* the process whose kernel ends at dev_free_ns */
    struct fx_sim_proc procs[8];
    uint32_t nprocs;
    struct fx_sim_run *runs;
    uint32_t nruns, runs_cap;
    uint64_t events;
    char error[160];
};

/* A fresh region (one device in use) and an empty replay starting at `start_ns` (nonzero: the
 * core treats 0 as "never"). */
void fx_sim_init(struct fx_sim *s, enum fx_sim_mode mode, uint64_t start_ns);
void fx_sim_free(struct fx_sim *s);

/* Make slice `slice` in use with a name, priority, share and burst on the device. */
void fx_sim_slice(struct fx_sim *s, uint32_t slice, const char *name, int32_t priority,
                  uint32_t share, uint32_t burst);

/* Add a process of `slice` submitting kernels of `kernel_ns`, wanting the device from
 * `start_ns` on (until FX_SIM_NEVER, always on); returns its index. */
uint32_t fx_sim_add(struct fx_sim *s, uint32_t slice, uint64_t kernel_ns, uint64_t start_ns);

/* Make process `proc` stop wanting the device at `at_ns` (>= s->now), doing `how`. */
void fx_sim_stop(struct fx_sim *s, uint32_t proc, uint64_t at_ns, enum fx_sim_stop how);

/* Run every event before `until_ns`; s->now becomes until_ns. */
void fx_sim_run(struct fx_sim *s, uint64_t until_ns);

/* GPU time process `proc` ran in [from_ns, to_ns) (proc FX_NONE: all processes together). */
uint64_t fx_sim_gpu(const struct fx_sim *s, uint32_t proc, uint64_t from_ns, uint64_t to_ns);

/* The first grant of `proc` at or after `from_ns`, or NULL. */
const struct fx_sim_grant *fx_sim_grant_after(const struct fx_sim *s, uint32_t proc,
                                              uint64_t from_ns);

/* Index of the process holding the lease now, FX_NONE when none does. */
uint32_t fx_sim_holder(const struct fx_sim *s);

/* What process `proc` would be told if it asked at `at_ns` holding nothing, decided on a copy
 * of the region (the replay goes on undisturbed). */
enum fx_ts_verdict fx_sim_probe(const struct fx_sim *s, uint32_t proc, uint64_t at_ns);

/* Time mode: the longest stretch in [from_ns, to_ns) during which the device ran `proc`'s
 * kernels back to back, and how many such stretches (turns) there were. */
uint64_t fx_sim_longest_turn(const struct fx_sim *s, uint32_t proc, uint64_t from_ns,
                             uint64_t to_ns, uint32_t *turns);

/* Time mode: the device's idle time in [from_ns, to_ns), and its longest gap. */
uint64_t fx_sim_idle(const struct fx_sim *s, uint64_t from_ns, uint64_t to_ns, uint64_t *longest);

/* When the device's lease holder stops counting if it does not touch the lease again:
 * fx_holder_valid's rule restated (FX_TS_IDLE_NS after its last touch once its work is done,
 * FX_TS_SILENT_NS after it at the latest). */
uint64_t fx_sim_lease_free_at(const struct fx_sim *s);

/* Empty when the replay went as the model expects; else what went wrong (a process asked
 * again and again at one instant, a table overflowed). */
const char *fx_sim_error(const struct fx_sim *s);

#endif
