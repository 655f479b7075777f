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
    .shm = {NULL, -1, -1, 0},
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
    fx_self.own_seal = 0;
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

int fx_process_start(const struct fx_backend *backend, int spatial_available)
{
    flexai_error err = {0, ""};
    /* One vendor per process: its devices are the ones the slice's quotas are indexed by. */
    const struct fx_backend *none = NULL;
    if (!__atomic_compare_exchange_n(&fx_backend, &none, backend, 0, __ATOMIC_ACQ_REL,
                                     __ATOMIC_ACQUIRE)) {
        if (none == backend) return 0;
        FX_ERROR("this process already uses flexai's %s backend; its %s calls are refused "
                 "(one accelerator vendor per process)", none->name, backend->name);
        return -1;
    }
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
    return 0;
}

/* The slice's settings belong to the slice: the process that brings it to life (creates it,
 * or is its first process) writes them from its configuration; a later joiner only fills in
 * devices the slice has no setting for (a limit can be added, never loosened), gets the rest as
 * they are (a resize sticks) and is told once when its own configuration differs. */
static void fx_settle_limits(struct fx_region *r, int first)
{
    const flexai_config *cfg = &fx_self.cfg;
    struct fx_slice *sl = &r->slices[fx_self.slice];
    int differs = 0;
    for (int i = 0; i < fx_self.ndev; i++) {
        uint32_t d = fx_self.dev[i];
        if (cfg->memory[i] && sl->mem_limit[d] != cfg->memory[i]) {
            if (first || !sl->mem_limit[d]) {
                sl->mem_limit[d] = cfg->memory[i];
                r->generation++;
            } else {
                differs = 1;
            }
        }
        int same = sl->compute[d] == cfg->compute[i] && sl->burst[d] == cfg->burst[i];
        if (cfg->compute[i] && !same) {
            if (first || !sl->compute[d])
                fx_ts_set(r, fx_self.slice, d, cfg->compute[i], cfg->burst[i]);
            else
                differs = 1;
        }
    }
    if (first) sl->priority = cfg->priority;
    else differs |= sl->priority != cfg->priority;
    fx_slice_seal(r, fx_self.slice);
    if (differs)
        FX_WARN("slice '%s' already has settings that differ from this process's FLEXAI_* "
                "values; the slice's settings apply (see flexai ps; change them with flexai "
                "resize)", fx_self.slice_name);
}

/* Join the slice and publish its limits for the devices this process sees. Lock held.
 * FLEXAI_OK, or why not (FLEXAI_E_FULL, FLEXAI_E_PERMISSION). */
static int32_t fx_join_locked(struct fx_region *r)
{
    const flexai_config *cfg = &fx_self.cfg;
    for (int i = 0; i < fx_self.ndev; i++) {
        fx_self.dev[i] = fx_dev_id(r, fx_self.uuid[i]);
        if (fx_self.dev[i] == FX_NONE) return FLEXAI_E_FULL;
    }
    int first = 0;
    if (fx_self.proc == FX_NONE) {
        /* A forked child keeps its parent's slice (even a private one) while it is alive. */
        uint32_t s = fx_self.slice, uid = (uint32_t)geteuid();
        int32_t pid = (int32_t)getpid();
        if (s == FX_NONE || !r->slices[s].in_use ||
            strncmp(r->slices[s].name, fx_self.slice_name, FLEXAI_NAME_MAX) != 0)
            s = fx_slice_get(r, cfg->slice, pid, uid);
        if (s == FX_NONE) return FLEXAI_E_FULL;
        if (!fx_slice_intact(r, s)) return FLEXAI_E_STATE;
        if (!fx_slice_allows(r, s, uid)) return FLEXAI_E_PERMISSION;
        first = !fx_slice_has_process(r, s);
        uint32_t p = fx_proc_add(r, s, pid, fx_pid_start_time(pid));
        if (p == FX_NONE) return FLEXAI_E_FULL;
        fx_self.slice = s;
        fx_self.proc = p;
        fx_self.pid = pid;
        memcpy(fx_self.slice_name, r->slices[s].name, FLEXAI_NAME_MAX);
        fx_self.slice_name[FLEXAI_NAME_MAX - 1] = '\0';
    }
    if (!fx_slice_intact(r, fx_self.slice) || !fx_proc_intact(r, fx_self.proc))
        return FLEXAI_E_STATE;
    fx_settle_limits(r, first);
    return FLEXAI_OK;
}

/* A quota on a device index this process does not see protects nothing: say so, once. */
static void fx_warn_unseen_devices(void)
{
    const flexai_config *cfg = &fx_self.cfg;
    uint32_t given = cfg->memory_given | cfg->compute_given | cfg->burst_given;
    for (int i = fx_self.ndev; i < FLEXAI_MAX_DEVICES; i++)
        if (given & (1u << i))
            FX_WARN("FLEXAI_GPU_MEMORY/FLEXAI_GPU_COMPUTE name device %d, but this process "
                    "sees %d device(s) (0..%d): that entry limits nothing (indices count the "
                    "devices after %s)", i, fx_self.ndev, fx_self.ndev - 1,
                    fx_backend->visible_env);
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

/* Limits were asked for and cannot be enforced: every call into the driver fails from now on,
 * with the reason in the log (fail closed). Without limits, the process runs unaccounted. */
static void fx_fail_closed(int32_t status, const char *why)
{
    if (fx_self.cfg.memory_set || fx_self.cfg.compute_set) {
        fx_self.broken = 1;
        fx_self.broken_status = status;
        FX_ERROR("%s; quotas cannot be enforced, so calls to the driver fail", why);
    } else {
        FX_WARN("%s; running without accounting (no quota is set)", why);
    }
}

int32_t fx_own_check(const struct fx_region *r)
{
    const struct fx_proc *pr = &r->procs[fx_self.proc];
    const struct fx_slice *sl = &r->slices[fx_self.slice];
    /* (the entry's seal is checked where its usage is used: fx_charge, fx_uncharge) */
    if (!pr->in_use || pr->pid != fx_self.pid || pr->slice != fx_self.slice || !sl->in_use)
        return FLEXAI_E_STATE;
    uint64_t seal = sl->sealed;
    if (seal == __atomic_load_n(&fx_self.own_seal, __ATOMIC_ACQUIRE))
        return memcmp(sl->mem_limit, fx_self.own_limit, sizeof fx_self.own_limit) == 0
                   ? FLEXAI_OK
                   : FLEXAI_E_STATE; /* changed without a new seal: damaged */
    if (!fx_slice_intact(r, fx_self.slice)) return FLEXAI_E_STATE;
    memcpy(fx_self.own_limit, sl->mem_limit, sizeof fx_self.own_limit);
    for (uint32_t d = 0; d < FLEXAI_MAX_DEVICES; d++)
        fx_self.own_sched[d] = (uint8_t)fx_ts_scheduled(r, fx_self.slice, d);
    __atomic_store_n(&fx_self.own_seal, seal, __ATOMIC_RELEASE);
    return FLEXAI_OK;
}

/* Our own process entry and slice are as we and the seals say. Lock held. */
static int fx_own_slot_intact(const struct fx_region *r)
{
    return fx_own_check(r) == FLEXAI_OK;
}

int fx_attach(int from_driver)
{
    struct fx_region *r = fx_self.shm.r;
    flexai_error err = {0, ""};
    if (fx_self.broken || !r || !fx_backend) return -1;
    int rc = 0;
    pthread_mutex_lock(&fx_self.mu);
    /* the driver's own answer replaces a quiet (NVML) one as soon as the driver is up */
    int need_map = fx_self.ndev < 0 || (from_driver && !fx_self.devices_from_driver);
    if (need_map && fx_map_devices(from_driver) != 0 && fx_self.ndev < 0) rc = -1;
    if (rc == 0 && need_map) fx_warn_unseen_devices();
    if (rc == 0 && (need_map || fx_self.proc == FX_NONE)) {
        if (fx_self.proc == FX_NONE) fx_sweep(&fx_self.shm);
        if (fx_shm_lock(&fx_self.shm, &err) != 0) {
            fx_fail_closed(err.code, err.message);
            rc = -1;
        } else {
            int32_t st = fx_join_locked(r);
            fx_shm_unlock(&fx_self.shm);
            if (st == FLEXAI_E_FULL)
                fx_fail_closed(st, "the node's state is full (devices, slices or processes, "
                               "all in use); not attached");
            if (st == FLEXAI_E_STATE)
                fx_fail_closed(st, "this process's slice or entry in the node's state is "
                               "damaged");
            if (st == FLEXAI_E_PERMISSION) {
                char why[FLEXAI_ERR_MAX];
                snprintf(why, sizeof why, "slice '%s' belongs to another user; choose another "
                         "FLEXAI_SLICE", fx_self.cfg.slice);
                fx_fail_closed(st, why);
            }
            rc = st == FLEXAI_OK ? 0 : -1;
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
        flexai_error err = {0, ""};
        if (fx_shm_lock(&fx_self.shm, &err) != 0) {
            FX_ERROR("%s", err.message);
            return err.code;
        }
        int32_t st = fx_own_slot_intact(r) ? FLEXAI_OK : FLEXAI_E_STATE;
        if (st == FLEXAI_OK) {
            int rc = fx_charge(r, fx_self.proc, dev, bytes);
            st = rc == 0 ? FLEXAI_OK : rc == -1 ? FLEXAI_E_QUOTA : FLEXAI_E_STATE;
        }
        fx_shm_unlock(&fx_self.shm);
        if (st == FLEXAI_E_STATE) {
            FX_ERROR("this process's entry in the node's state was changed by someone else; "
                     "failing closed");
            return st;
        }
        if (st == FLEXAI_OK) return FLEXAI_OK;
        /* Over the quota: memory of exited processes may still be counted. Reclaim once. */
        if (attempt == 0 && fx_sweep(&fx_self.shm) <= 0) break;
    }
    FX_INFO("allocation of %llu bytes refused: over the slice's memory quota",
            (unsigned long long)bytes);
    return FLEXAI_E_QUOTA;
}

void fx_release(uint32_t dev, uint64_t bytes)
{
    struct fx_region *r = fx_self.shm.r;
    if (dev == FX_NONE || !r || fx_self.proc == FX_NONE || bytes == 0) return;
    if (fx_shm_lock(&fx_self.shm, NULL) != 0) return;
    if (fx_own_slot_intact(r)) fx_uncharge(r, fx_self.proc, dev, bytes);
    fx_shm_unlock(&fx_self.shm);
}

int fx_quota(uint32_t dev, uint64_t *limit, uint64_t *used)
{
    struct fx_region *r = fx_self.shm.r;
    if (dev == FX_NONE || !r || fx_self.slice == FX_NONE) return 0;
    if (fx_shm_lock(&fx_self.shm, NULL) != 0) return 0;
    int intact = fx_self.proc != FX_NONE && fx_own_check(r) == FLEXAI_OK;
    *limit = r->slices[fx_self.slice].mem_limit[dev];
    *used = r->slices[fx_self.slice].mem_used[dev];
    fx_shm_unlock(&fx_self.shm);
    return intact && *limit != 0;
}
