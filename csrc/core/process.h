/* process.h - this process as a member of the node: its configuration, its slot in the shared
 * region, its slice and its device map; reserve and release memory against the slice's quota.
 *
 * Two stages. fx_process_configure + fx_process_start (once per process, from the vendor's lazy
 * init): read the configuration, then attach the node's shared region. fx_attach (when this
 * process first needs its slot, and again in a forked child): map the visible devices to node
 * device ids by UUID, join the slice, publish its limits.
 * Vendor-free: devices come from fx_backend->devices, nothing here includes a vendor header.
 */
#ifndef FX_PROCESS_H
#define FX_PROCESS_H

#include <pthread.h>
#include <stdint.h>

#include "backend.h"
#include "flexai.h"
#include "shm.h"

struct fx_process {
    flexai_config cfg;
    int broken;                    /* limits requested but cannot be enforced: fail closed */
    int32_t broken_status;         /* FLEXAI_E_* the hooks report then */
    int spatial;                   /* slices run kernels together (MPS): no exclusive lease */
    struct fx_shm shm;             /* shm.r is NULL when no region is attached */
    uint32_t proc;                 /* this process's slot, FX_NONE until attached */
    int32_t pid;                   /* getpid() when attached (glibc no longer caches it) */
    uint32_t slice;
    char slice_name[FLEXAI_NAME_MAX]; /* to tell our slice from a later one in the same slot */
    int ndev;                      /* visible devices mapped, -1 until mapped */
    int devices_from_driver;       /* the map came from the compute driver (not quietly) */
    uint8_t uuid[FLEXAI_MAX_DEVICES][16];       /* by visible ordinal */
    uint32_t dev[FLEXAI_MAX_DEVICES];           /* node device id by visible ordinal */
    uint8_t ctx_charged[FLEXAI_MAX_DEVICES];    /* context overhead charged, by node device */
    pthread_mutex_t mu;            /* attach and device mapping; never held on the hot path */
    /* Our slice's settings as last verified against their seal (fx_own_check): hot paths use
     * this copy, so damaged shared bytes never lift our limits, and only a new seal (a resize)
     * costs a verification. */
    uint64_t own_seal;                          /* 0: not verified yet */
    uint64_t own_limit[FLEXAI_MAX_DEVICES];     /* memory limit by node device */
    uint8_t own_sched[FLEXAI_MAX_DEVICES];      /* scheduled (fx_ts_scheduled) by node device */
};

extern struct fx_process fx_self;

/* Read FLEXAI_* into fx_self.cfg and set the log level. A bad value makes the process broken
 * (every hook then fails with the backend's code for FLEXAI_E_BAD_VALUE). */
void fx_process_configure(void);

/* With the vendor's backend loaded: decide time or spatial sharing, attach the node's shared
 * region, register the fork handler. A state that cannot be used makes the process broken when
 * it has limits to enforce (fail closed), and is only a warning otherwise. The first backend
 * started is the process's: another one is refused (-1; its hooks then fail), the same one again
 * is a no-op (0). */
int fx_process_start(const struct fx_backend *backend, int spatial_available);

/* Make sure this process has a slot and its device map. 0 on success; -1 when nothing can be
 * mapped yet (the driver is not initialized) or the state is unusable. `from_driver`: the
 * compute driver is initialized, map from it (else quietly, without initializing it). */
int fx_attach(int from_driver);

/* Node device id of a visible ordinal, FX_NONE when unknown or not accounted. */
uint32_t fx_dev_of_ordinal(int ordinal);

/* Node device id of the calling thread's current device, FX_NONE without one. */
uint32_t fx_current_dev(void);

/* Reserve `bytes` on node device `dev` for this process (dev FX_NONE: nothing to do).
 * FLEXAI_OK, or FLEXAI_E_QUOTA (after reclaiming dead processes once), or FLEXAI_E_STATE. */
int32_t fx_reserve(uint32_t dev, uint64_t bytes);
void fx_release(uint32_t dev, uint64_t bytes);

/* 1 and the slice's limit and usage on node device `dev` when it has a memory quota there;
 * 0 when it has none (or the device is not accounted). */
int fx_quota(uint32_t dev, uint64_t *limit, uint64_t *used);

/* With the lock held: our slice's settings and process entry are intact; refreshes the
 * verified copy in fx_self after a change. FLEXAI_OK or FLEXAI_E_STATE (damaged: fail closed). */
int32_t fx_own_check(const struct fx_region *r);

/* What a quota still leaves, never negative: the `free` every memory query reports. */
static inline uint64_t fx_room(uint64_t limit, uint64_t used)
{
    return used >= limit ? 0 : limit - used;
}

#endif
