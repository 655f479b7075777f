/* runtime.h - per-process state of the preloaded shim and the glue every hook uses.
 *
 * Two stages. fx_init (once per process, lazily from the first hook): read the configuration,
 * open the real driver libraries, resolve the real functions of hooks.def, attach the node's
 * shared region. fx_attach (when this process first needs its slot, and again in a forked
 * child): map visible devices to node device ids by UUID, join the slice, set its limits.
 */
#ifndef FX_RUNTIME_H
#define FX_RUNTIME_H

#include <pthread.h>
#include <stdint.h>

#include "cuda_api.h"
#include "flexai.h"
#include "shm.h"

#define FX_EXPORT __attribute__((visibility("default")))

/* Typed pointers to the real functions, one per hooks.def line. */
struct fx_real_cuda {
#define FX_CUDA_HOOK(n) __typeof__(&n) n;
#define FX_CUDA_REAL(n) __typeof__(&n) n;
#define FX_NVML_HOOK(n)
#define FX_NVML_REAL(n)
#include "hooks.def"
#undef FX_CUDA_HOOK
#undef FX_CUDA_REAL
#undef FX_NVML_HOOK
#undef FX_NVML_REAL
};

struct fx_real_nvml {
#define FX_CUDA_HOOK(n)
#define FX_CUDA_REAL(n)
#define FX_NVML_HOOK(n) __typeof__(&n) n;
#define FX_NVML_REAL(n) __typeof__(&n) n;
#include "hooks.def"
#undef FX_CUDA_HOOK
#undef FX_CUDA_REAL
#undef FX_NVML_HOOK
#undef FX_NVML_REAL
};

extern struct fx_real_cuda fx_cu;
extern struct fx_real_nvml fx_nv;

struct fx_runtime {
    flexai_config cfg;
    int broken;                    /* limits requested but cannot be enforced: fail closed */
    int spatial;                   /* slices run kernels together (MPS): no exclusive lease */
    CUresult broken_rc;            /* what the hooks return then */
    struct fx_shm shm;             /* shm.r is NULL when no region is attached */
    uint32_t proc;                 /* this process's slot, FX_NONE until attached */
    int32_t pid;                   /* getpid() when attached (glibc no longer caches it) */
    uint32_t slice;
    char slice_name[FLEXAI_NAME_MAX]; /* to tell our slice from a later one in the same slot */
    int ndev;                      /* visible devices mapped, -1 until mapped */
    int devices_from_cuda;         /* mapping came from the CUDA driver (else from NVML) */
    uint8_t uuid[FLEXAI_MAX_DEVICES][16];       /* by visible ordinal */
    uint32_t dev[FLEXAI_MAX_DEVICES];           /* node device id by visible ordinal */
    uint8_t ctx_charged[FLEXAI_MAX_DEVICES];    /* context overhead charged, by node device */
    pthread_mutex_t mu;            /* attach and device mapping; never held on the hot path */
};

extern struct fx_runtime fx_rt;

/* 0 when the real libraries are loaded and the configuration is usable. Cheap after the first
 * call. On -1 the hooks return fx_rt.broken_rc. */
int fx_init(void);

/* Make sure this process has a slot and its device map. 0 on success; -1 when nothing can be
 * mapped yet (the driver is not initialized) or the state is unusable. */
int fx_attach(int remap_from_cuda);

/* Node device id of a visible CUDA ordinal, FX_NONE when unknown or not accounted. */
uint32_t fx_dev_of_ordinal(int ordinal);

/* Node device id of the calling thread's current context, FX_NONE without one. */
uint32_t fx_current_dev(void);

/* Reserve `bytes` on node device `dev` for this process. CUDA_SUCCESS or
 * CUDA_ERROR_OUT_OF_MEMORY (after reclaiming dead processes once). dev FX_NONE: no-op. */
CUresult fx_reserve(uint32_t dev, uint64_t bytes);
void fx_release(uint32_t dev, uint64_t bytes);

/* The slice's limit and usage on node device dev; returns 0 when there is a limit. */
int fx_limit(uint32_t dev, uint64_t *limit, uint64_t *used);

/* What a quota still leaves, never negative: the `free` every memory query reports. */
static inline uint64_t fx_room(uint64_t limit, uint64_t used)
{
    return used >= limit ? 0 : limit - used;
}

/* Common entry of every CUDA hook: lazy init, fail closed, missing functions as error codes. */
#define FX_ENTER(fn)                                                                           \
    do {                                                                                       \
        if (fx_init() != 0) return fx_rt.broken ? fx_rt.broken_rc : CUDA_ERROR_NOT_INITIALIZED; \
        if (!fx_cu.fn) return fx_cu.cuInit ? CUDA_ERROR_NOT_FOUND : CUDA_ERROR_NO_DEVICE;      \
    } while (0)

/* Per-thread re-entrancy guard: nonzero while flexai itself is loading libraries. Initial-exec
 * TLS: reading it must not call __tls_get_addr, which sanitizer runtimes intercept and which is
 * not usable yet when they call dlsym during their own start-up. */
extern __thread int fx_in_init __attribute__((tls_model("initial-exec")));

/* ---- hook lookup (hook_table.c) ---------------------------------------------------------- */
struct fx_hook {
    const char *name;
    void *wrapper;
    void **real;
};

/* The hook named `name`, or NULL. */
const struct fx_hook *fx_hook_find(const char *name);
/* Our wrapper for a real function pointer, or NULL when it is not hooked. */
void *fx_hook_by_real(void *real);
/* Resolve the real functions of hooks.def from the opened driver (or NVML) library. */
void fx_hooks_resolve_cuda(void *lib);
void fx_hooks_resolve_nvml(void *lib);

/* Load NVML and resolve its functions, once, the first time flexai needs them (an NVML hook,
 * or mapping devices through NVML): a CUDA program that never touches NVML never loads it. */
void fx_nvml_load(void);

/* The real dlsym (resolved with dlvsym, never through our own). */
extern void *(*fx_real_dlsym)(void *, const char *);
void fx_dlsym_bootstrap(void);

/* ---- allocation tracking (track.c) ------------------------------------------------------- */
enum fx_track_kind { FX_T_PTR = 1, FX_T_VMM = 2, FX_T_ARRAY = 3, FX_T_MIPMAP = 4 };
void fx_track_add(int kind, uint64_t key, uint64_t size, uint32_t dev);
/* Remove and return an entry; 0 when found. */
int fx_track_take(int kind, uint64_t key, uint64_t *size, uint32_t *dev);
void fx_track_reset_after_fork(void);
void fx_track_prefork(void);
void fx_track_postfork_parent(void);

/* ---- launches (hook_launch.c) ------------------------------------------------------------ */
void fx_launch_reset_after_fork(void);

/* ---- devices (devices.c) ----------------------------------------------------------------- */
/* Fill fx_rt.uuid / ndev from the CUDA driver (1) or NVML and CUDA_VISIBLE_DEVICES (0). */
int fx_devices_map(int from_cuda);

#endif
