/* runtime.c - lazy, once-only, fork-aware initialization and the quota glue of the hooks. */
#include "runtime.h"

#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "timeshare.h"

struct fx_real_cuda fx_cu;
struct fx_real_nvml fx_nv;
struct fx_runtime fx_rt = {
    .proc = FX_NONE,
    .slice = FX_NONE,
    .ndev = -1,
    .shm = {NULL, -1},
    .mu = PTHREAD_MUTEX_INITIALIZER,
};
__thread int fx_in_init __attribute__((tls_model("initial-exec")));

static pthread_once_t fx_once = PTHREAD_ONCE_INIT;
static int fx_init_done; /* written once inside pthread_once, read with acquire */

static void fx_atfork_prepare(void)
{
    pthread_mutex_lock(&fx_rt.mu);
    fx_track_prefork();
}

static void fx_atfork_parent(void)
{
    fx_track_postfork_parent();
    pthread_mutex_unlock(&fx_rt.mu);
}

/* The child is a new process in its parent's slice: its allocations, slot and context charges
 * start empty; the slice, the device map (UUIDs) and the mapped region stay valid. */
static void fx_atfork_child(void)
{
    fx_track_reset_after_fork();
    fx_launch_reset_after_fork();
    fx_rt.proc = FX_NONE;
    memset(fx_rt.ctx_charged, 0, sizeof fx_rt.ctx_charged);
    pthread_mutex_init(&fx_rt.mu, NULL);
}

/* FLEXAI_SHARING=auto: spatial sharing where an MPS control daemon answers for this process
 * (its pipe directory has the control socket), time-slicing otherwise. */
static int fx_mps_present(void)
{
    char path[FLEXAI_PATH_MAX + 16];
    const char *dir = getenv("CUDA_MPS_PIPE_DIRECTORY");
    snprintf(path, sizeof path, "%s/control", dir && *dir ? dir : "/tmp/nvidia-mps");
    return access(path, F_OK) == 0;
}

static void fx_init_once(void)
{
    char err[FLEXAI_ERR_MAX] = "";
    fx_in_init = 1;
    fx_dlsym_bootstrap();
    if (fx_config_from_env(&fx_rt.cfg, err) != 0) {
        fx_config_defaults(&fx_rt.cfg);
        fx_rt.broken = 1;
        fx_rt.broken_rc = CUDA_ERROR_INVALID_VALUE;
        FX_ERROR("%s; CUDA calls fail until it is fixed", err);
    }
    if (!fx_rt.broken) fx_log_level = fx_rt.cfg.log_level;
    fx_rt.spatial = fx_rt.cfg.sharing == FLEXAI_SHARING_SPATIAL ||
                    (fx_rt.cfg.sharing == FLEXAI_SHARING_AUTO && fx_mps_present());
    if (fx_rt.spatial) FX_INFO("spatial sharing (MPS): slices run kernels together");

    /* RTLD_LOCAL: the real driver's symbols must not enter the global scope ahead of ours. */
    void *cuda = dlopen(fx_rt.cfg.libcuda, RTLD_NOW | RTLD_LOCAL);
    if (!cuda) FX_WARN("cannot load the CUDA driver %s: %s", fx_rt.cfg.libcuda, dlerror());
    fx_hooks_resolve_cuda(cuda);

    if (!fx_rt.broken && fx_shm_open(&fx_rt.shm, fx_rt.cfg.state_dir, err) != 0) {
        if (fx_rt.cfg.memory_set || fx_rt.cfg.compute_set) {
            fx_rt.broken = 1;
            fx_rt.broken_rc = CUDA_ERROR_OPERATING_SYSTEM;
            FX_ERROR("%s; quotas cannot be enforced, so CUDA calls fail", err);
        } else {
            FX_WARN("%s; running without accounting (no quota is set)", err);
        }
    }
    pthread_atfork(fx_atfork_prepare, fx_atfork_parent, fx_atfork_child);
    fx_in_init = 0;
    __atomic_store_n(&fx_init_done, 1, __ATOMIC_RELEASE);
}

static pthread_once_t fx_nvml_once = PTHREAD_ONCE_INIT;

static void fx_nvml_load_once(void)
{
    void *nvml = dlopen(fx_rt.cfg.libnvml, RTLD_NOW | RTLD_LOCAL);
    if (!nvml) FX_DEBUG("cannot load NVML %s: %s", fx_rt.cfg.libnvml, dlerror());
    if (nvml) fx_hooks_resolve_nvml(nvml);
}

void fx_nvml_load(void)
{
    pthread_once(&fx_nvml_once, fx_nvml_load_once);
}

int fx_init(void)
{
    if (__builtin_expect(!__atomic_load_n(&fx_init_done, __ATOMIC_ACQUIRE), 0)) {
        if (fx_in_init) return -1; /* the driver called back into us while we load it */
        pthread_once(&fx_once, fx_init_once);
    }
    return fx_rt.broken ? -1 : 0;
}

/* Join the slice and publish its limits for the devices this process sees. Lock held. */
static int fx_join_locked(struct fx_region *r)
{
    for (int i = 0; i < fx_rt.ndev; i++) fx_rt.dev[i] = fx_dev_id(r, fx_rt.uuid[i]);
    if (fx_rt.proc == FX_NONE) {
        /* A forked child keeps its parent's slice (even a private one) while it is alive. */
        uint32_t s = fx_rt.slice;
        if (s == FX_NONE || !r->slices[s].in_use ||
            strncmp(r->slices[s].name, fx_rt.slice_name, FLEXAI_NAME_MAX) != 0)
            s = fx_slice_get(r, fx_rt.cfg.slice, (int32_t)getpid());
        if (s == FX_NONE) return -1;
        uint32_t p = fx_proc_add(r, s, (int32_t)getpid(), fx_pid_start_time((int32_t)getpid()));
        if (p == FX_NONE) return -1;
        fx_rt.slice = s;
        fx_rt.proc = p;
        fx_rt.pid = (int32_t)getpid();
        memcpy(fx_rt.slice_name, r->slices[s].name, FLEXAI_NAME_MAX);
        r->slices[s].priority = fx_rt.cfg.priority;
    }
    struct fx_slice *sl = &r->slices[fx_rt.slice];
    for (int i = 0; i < fx_rt.ndev; i++) {
        uint32_t d = fx_rt.dev[i];
        if (d == FX_NONE) continue;
        if (fx_rt.cfg.memory[i] && sl->mem_limit[d] != fx_rt.cfg.memory[i]) {
            sl->mem_limit[d] = fx_rt.cfg.memory[i];
            r->generation++;
        }
        if (fx_rt.cfg.compute[i] &&
            (sl->compute[d] != fx_rt.cfg.compute[i] || sl->burst[d] != fx_rt.cfg.burst[i]))
            fx_ts_set(r, fx_rt.slice, d, fx_rt.cfg.compute[i], fx_rt.cfg.burst[i]);
    }
    return 0;
}

int fx_attach(int remap_from_cuda)
{
    if (fx_init() != 0) return -1;
    struct fx_region *r = fx_rt.shm.r;
    if (!r) return -1;
    int rc = 0;
    pthread_mutex_lock(&fx_rt.mu);
    int need_map = fx_rt.ndev < 0 || (remap_from_cuda && !fx_rt.devices_from_cuda);
    if (need_map && fx_devices_map(remap_from_cuda) != 0 && fx_rt.ndev < 0) rc = -1;
    if (rc == 0 && (need_map || fx_rt.proc == FX_NONE)) {
        if (fx_rt.proc == FX_NONE) fx_sweep(r);
        if (fx_shm_lock(r) != 0) {
            rc = -1;
        } else {
            rc = fx_join_locked(r);
            fx_shm_unlock(r);
            if (rc != 0) FX_ERROR("the node's state is full (slices or processes); not attached");
        }
    }
    pthread_mutex_unlock(&fx_rt.mu);
    return rc;
}

uint32_t fx_dev_of_ordinal(int ordinal)
{
    if (fx_rt.proc == FX_NONE && fx_attach(0) != 0) return FX_NONE;
    if (ordinal < 0 || ordinal >= fx_rt.ndev) return FX_NONE;
    return fx_rt.dev[ordinal];
}

uint32_t fx_current_dev(void)
{
    CUdevice d;
    if (!fx_cu.cuCtxGetDevice || fx_cu.cuCtxGetDevice(&d) != CUDA_SUCCESS) return FX_NONE;
    return fx_dev_of_ordinal(d);
}

CUresult fx_reserve(uint32_t dev, uint64_t bytes)
{
    struct fx_region *r = fx_rt.shm.r;
    if (dev == FX_NONE || !r || fx_rt.proc == FX_NONE) return CUDA_SUCCESS;
    for (int attempt = 0; attempt < 2; attempt++) {
        if (fx_shm_lock(r) != 0) return CUDA_ERROR_OUT_OF_MEMORY;
        int rc = fx_charge(r, fx_rt.proc, dev, bytes);
        fx_shm_unlock(r);
        if (rc == 0) return CUDA_SUCCESS;
        /* Over the quota: memory of exited processes may still be counted. Reclaim once. */
        if (attempt == 0 && fx_sweep(r) <= 0) break;
    }
    FX_INFO("allocation of %llu bytes refused: over the slice's memory quota",
            (unsigned long long)bytes);
    return CUDA_ERROR_OUT_OF_MEMORY;
}

void fx_release(uint32_t dev, uint64_t bytes)
{
    struct fx_region *r = fx_rt.shm.r;
    if (dev == FX_NONE || !r || fx_rt.proc == FX_NONE || bytes == 0) return;
    if (fx_shm_lock(r) != 0) return;
    fx_uncharge(r, fx_rt.proc, dev, bytes);
    fx_shm_unlock(r);
}

int fx_limit(uint32_t dev, uint64_t *limit, uint64_t *used)
{
    struct fx_region *r = fx_rt.shm.r;
    if (dev == FX_NONE || !r || fx_rt.slice == FX_NONE) return -1;
    if (fx_shm_lock(r) != 0) return -1;
    *limit = r->slices[fx_rt.slice].mem_limit[dev];
    *used = r->slices[fx_rt.slice].mem_used[dev];
    fx_shm_unlock(r);
    return *limit ? 0 : -1;
}
