/* process.c - this process's configuration, slot, slice and device map (see process.h). */
#include "process.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "timeshare.h"

const struct fx_backend *fx_backend;

struct fx_process fx_self = {
    .proc = FX_NONE,
    .slice = FX_NONE,
    .ndev = -1,
    .shm = {NULL, -1},
    .mu = PTHREAD_MUTEX_INITIALIZER,
};

static void fx_process_prefork(void)
{
    pthread_mutex_lock(&fx_self.mu);
}

static void fx_process_postfork_parent(void)
{
    pthread_mutex_unlock(&fx_self.mu);
}

/* The child is a new process in its parent's slice: its slot and context charges start empty;
 * the slice, the device map (UUIDs) and the mapped region stay valid. */
static void fx_process_postfork_child(void)
{
    fx_self.proc = FX_NONE;
    memset(fx_self.ctx_charged, 0, sizeof fx_self.ctx_charged);
    pthread_mutex_init(&fx_self.mu, NULL);
}

void fx_process_configure(void)
{
    flexai_error err = {0, ""};
    if (fx_config_from_env(&fx_self.cfg, &err) != 0) {
        fx_config_defaults(&fx_self.cfg);
        fx_self.broken = 1;
        fx_self.broken_status = err.code;
        FX_ERROR("%s; calls to the driver fail until it is fixed", err.message);
        return;
    }
    fx_log_level = fx_self.cfg.log_level;
}

void fx_process_start(const struct fx_backend *backend, int spatial_available)
{
    flexai_error err = {0, ""};
    fx_backend = backend;
    fx_self.spatial = fx_self.cfg.sharing == FLEXAI_SHARING_SPATIAL ||
                      (fx_self.cfg.sharing == FLEXAI_SHARING_AUTO && spatial_available);
    if (fx_self.spatial) FX_INFO("spatial sharing (MPS): slices run kernels together");
    if (!fx_self.broken && fx_shm_open(&fx_self.shm, fx_self.cfg.state_dir, &err) != 0) {
        if (fx_self.cfg.memory_set || fx_self.cfg.compute_set) {
            fx_self.broken = 1;
            fx_self.broken_status = err.code;
            FX_ERROR("%s; quotas cannot be enforced, so calls to the driver fail", err.message);
        } else {
            FX_WARN("%s; running without accounting (no quota is set)", err.message);
        }
    }
    pthread_atfork(fx_process_prefork, fx_process_postfork_parent, fx_process_postfork_child);
}

/* Join the slice and publish its limits for the devices this process sees. Lock held. */
static int fx_join_locked(struct fx_region *r)
{
    const flexai_config *cfg = &fx_self.cfg;
    for (int i = 0; i < fx_self.ndev; i++) fx_self.dev[i] = fx_dev_id(r, fx_self.uuid[i]);
    if (fx_self.proc == FX_NONE) {
        /* A forked child keeps its parent's slice (even a private one) while it is alive. */
        uint32_t s = fx_self.slice;
        int32_t pid = (int32_t)getpid();
        if (s == FX_NONE || !r->slices[s].in_use ||
            strncmp(r->slices[s].name, fx_self.slice_name, FLEXAI_NAME_MAX) != 0)
            s = fx_slice_get(r, cfg->slice, pid);
        if (s == FX_NONE) return -1;
        uint32_t p = fx_proc_add(r, s, pid, fx_pid_start_time(pid));
        if (p == FX_NONE) return -1;
        fx_self.slice = s;
        fx_self.proc = p;
        fx_self.pid = pid;
        memcpy(fx_self.slice_name, r->slices[s].name, FLEXAI_NAME_MAX);
        r->slices[s].priority = cfg->priority;
    }
    struct fx_slice *sl = &r->slices[fx_self.slice];
    for (int i = 0; i < fx_self.ndev; i++) {
        uint32_t d = fx_self.dev[i];
        if (d == FX_NONE) continue;
        if (cfg->memory[i] && sl->mem_limit[d] != cfg->memory[i]) {
            sl->mem_limit[d] = cfg->memory[i];
            r->generation++;
        }
        if (cfg->compute[i] && (sl->compute[d] != cfg->compute[i] || sl->burst[d] != cfg->burst[i]))
            fx_ts_set(r, fx_self.slice, d, cfg->compute[i], cfg->burst[i]);
    }
    return 0;
}

/* Fill the device map from the backend. Mutex held. */
static int fx_map_devices(int from_driver)
{
    uint8_t uuid[FLEXAI_MAX_DEVICES][16];
    int quiet = 0, n = fx_backend->devices(uuid, FLEXAI_MAX_DEVICES);
    if (n < 0 && !from_driver && fx_backend->devices_quiet) {
        n = fx_backend->devices_quiet(uuid, FLEXAI_MAX_DEVICES);
        quiet = 1;
    }
    if (n < 0) return -1;
    memcpy(fx_self.uuid, uuid, sizeof uuid);
    fx_self.ndev = n;
    fx_self.devices_from_driver = !quiet;
    return 0;
}

int fx_attach(int from_driver)
{
    struct fx_region *r = fx_self.shm.r;
    if (fx_self.broken || !r || !fx_backend) return -1;
    int rc = 0;
    pthread_mutex_lock(&fx_self.mu);
    /* the driver's own answer replaces a quiet (NVML) one as soon as the driver is up */
    int need_map = fx_self.ndev < 0 || (from_driver && !fx_self.devices_from_driver);
    if (need_map && fx_map_devices(from_driver) != 0 && fx_self.ndev < 0) rc = -1;
    if (rc == 0 && (need_map || fx_self.proc == FX_NONE)) {
        if (fx_self.proc == FX_NONE) fx_sweep(r);
        if (fx_shm_lock(r) != 0) {
            rc = -1;
        } else {
            rc = fx_join_locked(r);
            fx_shm_unlock(r);
            if (rc != 0) FX_ERROR("the node's state is full (slices or processes); not attached");
        }
    }
    pthread_mutex_unlock(&fx_self.mu);
    return rc;
}

uint32_t fx_dev_of_ordinal(int ordinal)
{
    if (fx_self.proc == FX_NONE && fx_attach(0) != 0) return FX_NONE;
    if (ordinal < 0 || ordinal >= fx_self.ndev) return FX_NONE;
    return fx_self.dev[ordinal];
}

uint32_t fx_current_dev(void)
{
    int ordinal = fx_backend ? fx_backend->current_device() : -1;
    return ordinal < 0 ? FX_NONE : fx_dev_of_ordinal(ordinal);
}

int32_t fx_reserve(uint32_t dev, uint64_t bytes)
{
    struct fx_region *r = fx_self.shm.r;
    if (dev == FX_NONE || !r || fx_self.proc == FX_NONE) return FLEXAI_OK;
    for (int attempt = 0; attempt < 2; attempt++) {
        if (fx_shm_lock(r) != 0) return FLEXAI_E_STATE;
        int rc = fx_charge(r, fx_self.proc, dev, bytes);
        fx_shm_unlock(r);
        if (rc == 0) return FLEXAI_OK;
        /* Over the quota: memory of exited processes may still be counted. Reclaim once. */
        if (attempt == 0 && fx_sweep(r) <= 0) break;
    }
    FX_INFO("allocation of %llu bytes refused: over the slice's memory quota",
            (unsigned long long)bytes);
    return FLEXAI_E_QUOTA;
}

void fx_release(uint32_t dev, uint64_t bytes)
{
    struct fx_region *r = fx_self.shm.r;
    if (dev == FX_NONE || !r || fx_self.proc == FX_NONE || bytes == 0) return;
    if (fx_shm_lock(r) != 0) return;
    fx_uncharge(r, fx_self.proc, dev, bytes);
    fx_shm_unlock(r);
}

int fx_quota(uint32_t dev, uint64_t *limit, uint64_t *used)
{
    struct fx_region *r = fx_self.shm.r;
    if (dev == FX_NONE || !r || fx_self.slice == FX_NONE) return 0;
    if (fx_shm_lock(r) != 0) return 0;
    *limit = r->slices[fx_self.slice].mem_limit[dev];
    *used = r->slices[fx_self.slice].mem_used[dev];
    fx_shm_unlock(r);
    return *limit != 0;
}
