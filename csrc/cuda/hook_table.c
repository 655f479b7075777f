/* hook_table.c - everything generated from hooks.def: name lookup, versioned lookup for
 * cuGetProcAddress, real-pointer lookup and the resolution of the real functions. */
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "shim.h"

static const struct fx_hook fx_hooks[] = {
#define FX_CUDA_HOOK(n, base, since) {#n, (void *)&n, (void **)&fx_cu.n, #base, since, 0},
#define FX_CUDA_REAL(n)
#define FX_NVML_HOOK(n) {#n, (void *)&n, (void **)&fx_nv.n, #n, 0, 0},
#define FX_NVML_REAL(n)
#include "hooks.def"
#undef FX_CUDA_HOOK
#undef FX_CUDA_REAL
#undef FX_NVML_HOOK
#undef FX_NVML_REAL
};

#define FX_NHOOKS (sizeof fx_hooks / sizeof fx_hooks[0])

static const struct fx_hook *fx_cuda_hook_find(const char *name)
{
    for (size_t i = 0; i < FX_NHOOKS; i++)
        if (strcmp(fx_hooks[i].name, name) == 0) return &fx_hooks[i];
    return NULL;
}

/* The CUDA layer's names, for the dlsym hook (interpose/hooks.c). */
static const struct fx_hookset fx_cuda_hookset = {fx_cuda_hook_find};
FX_HOOKSET(fx_cuda_hookset);

#define FX_PER_THREAD_DEFAULT_STREAM 0x2 /* CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM */

const struct fx_hook *fx_hook_for_request(const char *symbol, int version, cuuint64_t flags)
{
    const struct fx_hook *best = NULL;
    int versioned = 0;
    char buf[128];
    for (size_t i = 0; i < FX_NHOOKS; i++) {
        const struct fx_hook *h = &fx_hooks[i];
        if (strcmp(h->base, symbol) != 0) continue;
        versioned |= h->since > 0;
        if (h->since <= version && (!best || h->since > best->since)) best = h;
    }
    if (versioned && !best) return NULL; /* a legacy ABI flexai does not wrap */
    const char *name = best ? best->name : symbol;
    if (flags & FX_PER_THREAD_DEFAULT_STREAM) {
        snprintf(buf, sizeof buf, "%s_ptsz", name);
        const struct fx_hook *h = fx_cuda_hook_find(buf);
        if (h) return h;
    }
    return best ? best : fx_cuda_hook_find(name);
}

void *fx_hook_by_real(void *real)
{
    if (!real) return NULL;
    for (size_t i = 0; i < FX_NHOOKS; i++)
        if (*fx_hooks[i].real == real) return fx_hooks[i].wrapper;
    return NULL;
}

/* Look `name` up in `lib` only (RTLD_LOCAL handle), never through our own dlsym. */
static void *fx_sym(void *lib, const char *name)
{
    return lib ? fx_real_dlsym(lib, name) : NULL;
}

/* A real function resolving to one of our wrappers would loop forever: that happens when
 * FLEXAI_LIBCUDA or FLEXAI_LIBNVML names libflexai itself. Refuse such pointers. */
static void fx_refuse_self(void)
{
    for (size_t i = 0; i < FX_NHOOKS; i++) {
        if (*fx_hooks[i].real == fx_hooks[i].wrapper) {
            FX_ERROR("%s resolves to flexai itself; check FLEXAI_LIBCUDA/FLEXAI_LIBNVML",
                     fx_hooks[i].name);
            *fx_hooks[i].real = NULL;
        }
    }
}

void fx_hooks_resolve_cuda(void *lib)
{
#define FX_CUDA_HOOK(n, base, since) fx_cu.n = (__typeof__(fx_cu.n))fx_sym(lib, #n);
#define FX_CUDA_REAL(n) fx_cu.n = (__typeof__(fx_cu.n))fx_sym(lib, #n);
#define FX_NVML_HOOK(n)
#define FX_NVML_REAL(n)
#include "hooks.def"
#undef FX_CUDA_HOOK
#undef FX_CUDA_REAL
#undef FX_NVML_HOOK
#undef FX_NVML_REAL
    fx_refuse_self();
}

void fx_hooks_resolve_nvml(void *lib)
{
#define FX_CUDA_HOOK(n, base, since)
#define FX_CUDA_REAL(n)
#define FX_NVML_HOOK(n) fx_nv.n = (__typeof__(fx_nv.n))fx_sym(lib, #n);
#define FX_NVML_REAL(n) fx_nv.n = (__typeof__(fx_nv.n))fx_sym(lib, #n);
#include "hooks.def"
#undef FX_CUDA_HOOK
#undef FX_CUDA_REAL
#undef FX_NVML_HOOK
#undef FX_NVML_REAL
    fx_refuse_self();
}
