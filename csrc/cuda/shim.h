/* shim.h - what the CUDA hooks share: the typed tables of the real driver and NVML functions
 * (one member per hooks.def line), lazy initialization, and the error mapping of core statuses
 * to CUresult. The hooks know CUDA and nothing about quotas: they ask core/ (process.h, gate.h,
 * track.h) and translate its answers.
 */
#ifndef FX_CUDA_SHIM_H
#define FX_CUDA_SHIM_H

#include "cuda_api.h"
#include "interpose.h"
#include "process.h"

/* Typed pointers to the real functions, one per hooks.def line. */
struct fx_real_cuda {
#define FX_CUDA_HOOK(n, base, since) __typeof__(&n) n;
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
#define FX_CUDA_HOOK(n, base, since)
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

/* Initialize once (configuration, the real driver, the node's state). 0 when usable; -1 while
 * initializing (a callback from the driver we are loading) or when the process is broken. */
int fx_cuda_init(void);

/* The CUresult for a core status (FLEXAI_E_*; FLEXAI_OK is CUDA_SUCCESS). */
CUresult fx_cuda_error(int32_t status);

/* Settle every stream-ordered pool's charge to what the driver holds (hook_mem.c): the backend's
 * mem_reclaim. Returns the bytes given back. */
uint64_t fx_cuda_pools_refresh(void);

/* Load NVML and resolve its functions, once, the first time flexai needs them (an NVML hook,
 * or mapping devices through NVML): a CUDA program that never touches NVML never loads it. */
void fx_nvml_load(void);

/* Resolve the real functions of hooks.def from the opened driver (or NVML) library. */
void fx_hooks_resolve_cuda(void *lib);
void fx_hooks_resolve_nvml(void *lib);

/* Our wrapper for a real function pointer, or NULL when it is not hooked. */
void *fx_hook_by_real(void *real);

/* A hook for cuGetProcAddress(symbol, cudaVersion, flags): the driver's versioned choice among
 * hooks.def's names, or NULL. */
const struct fx_hook *fx_hook_for_request(const char *symbol, int version, cuuint64_t flags);

/* Common entry of every CUDA hook: lazy init, fail closed, missing functions as error codes. */
#define FX_ENTER(fn)                                                                           \
    do {                                                                                       \
        if (fx_cuda_init() != 0)                                                               \
            return fx_self.broken ? fx_cuda_error(fx_self.broken_status)                       \
                                  : CUDA_ERROR_NOT_INITIALIZED;                                \
        if (!fx_cu.fn) return fx_cu.cuInit ? CUDA_ERROR_NOT_FOUND : CUDA_ERROR_NO_DEVICE;      \
    } while (0)

#endif
