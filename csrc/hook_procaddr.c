/* hook_procaddr.c - cuGetProcAddress, the way cudart (and so PyTorch, JAX, CuPy's runtime
 * calls) finds every driver function.
 *
 * cudart first asks for "cuGetProcAddress" itself and resolves everything else through the
 * pointer it gets back, so that pointer must be ours. Rather than re-implementing the driver's
 * choice among _v2/_v3/_ptsz/_ptds variants for each cudaVersion and flag, we let the real
 * driver choose and swap its answer for our wrapper when the returned pointer is the real
 * function of a hooked name: the ABI of the variant the caller gets is the one it asked for.
 */
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "runtime.h"

#define FX_PER_THREAD_DEFAULT_STREAM 0x2 /* CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM */

/* Versioned names among the hooked functions: the highest `since` <= cudaVersion applies. Names
 * not listed have one variant (plus _ptsz where hooks.def has it). */
static const struct {
    const char *base;
    int since;
    const char *name;
} fx_versions[] = {
    {"cuMemAlloc", 3020, "cuMemAlloc_v2"},
    {"cuMemAllocPitch", 3020, "cuMemAllocPitch_v2"},
    {"cuMemFree", 3020, "cuMemFree_v2"},
    {"cuMemGetInfo", 3020, "cuMemGetInfo_v2"},
    {"cuDeviceTotalMem", 3020, "cuDeviceTotalMem_v2"},
    {"cuArrayCreate", 3020, "cuArrayCreate_v2"},
    {"cuArray3DCreate", 3020, "cuArray3DCreate_v2"},
    {"cuCtxCreate", 3020, "cuCtxCreate_v2"},
    {"cuCtxCreate", 11040, "cuCtxCreate_v3"},
    {"cuCtxCreate", 12050, "cuCtxCreate_v4"},
    {"cuGetProcAddress", 11030, "cuGetProcAddress"},
    {"cuGetProcAddress", 12000, "cuGetProcAddress_v2"},
};

static const struct fx_hook *fx_hook_for_request(const char *symbol, int version,
                                                 cuuint64_t flags)
{
    const char *name = symbol;
    int best = -1, versioned = 0;
    char buf[128];
    for (size_t i = 0; i < sizeof fx_versions / sizeof fx_versions[0]; i++) {
        if (strcmp(fx_versions[i].base, symbol) != 0) continue;
        versioned = 1;
        if (fx_versions[i].since <= version && fx_versions[i].since > best) {
            best = fx_versions[i].since;
            name = fx_versions[i].name;
        }
    }
    if (versioned && best < 0) return NULL; /* a legacy ABI flexai does not wrap */
    if (flags & FX_PER_THREAD_DEFAULT_STREAM) {
        snprintf(buf, sizeof buf, "%s_ptsz", name);
        const struct fx_hook *h = fx_hook_find(buf);
        if (h) return h;
    }
    return fx_hook_find(name);
}

static void fx_swap(const char *symbol, void **pfn, int version, cuuint64_t flags)
{
    void *w = fx_hook_by_real(*pfn);
    if (!w && symbol) {
        const struct fx_hook *h = fx_hook_for_request(symbol, version, flags);
        if (h && *h->real) {
            FX_DEBUG("cuGetProcAddress(%s, %d): matched by name", symbol, version);
            w = h->wrapper;
        }
    }
    if (w) {
        FX_DEBUG("cuGetProcAddress(%s) -> flexai", symbol ? symbol : "?");
        *pfn = w;
    }
}

FX_EXPORT CUresult cuGetProcAddress(const char *symbol, void **pfn, int cudaVersion,
                                    cuuint64_t flags)
{
    FX_ENTER(cuGetProcAddress);
    CUresult rc = fx_cu.cuGetProcAddress(symbol, pfn, cudaVersion, flags);
    if (rc == CUDA_SUCCESS && pfn && *pfn) fx_swap(symbol, pfn, cudaVersion, flags);
    return rc;
}

FX_EXPORT CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int cudaVersion,
                                       cuuint64_t flags,
                                       CUdriverProcAddressQueryResult *symbolStatus)
{
    FX_ENTER(cuGetProcAddress_v2);
    CUresult rc = fx_cu.cuGetProcAddress_v2(symbol, pfn, cudaVersion, flags, symbolStatus);
    if (rc == CUDA_SUCCESS && pfn && *pfn) fx_swap(symbol, pfn, cudaVersion, flags);
    return rc;
}
