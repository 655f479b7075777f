/* hook_procaddr.c - cuGetProcAddress, the way cudart (and so PyTorch, JAX, CuPy's runtime
 * calls) finds every driver function.
 *
 * cudart first asks for "cuGetProcAddress" itself and resolves everything else through the
 * pointer it gets back, so that pointer must be ours. Rather than re-implementing the driver's
 * choice among _v2/_v3/_ptsz/_ptds variants for each cudaVersion and flag, we let the real
 * driver choose and swap its answer for our wrapper when the returned pointer is the real
 * function of a hooked name: the ABI of the variant the caller gets is the one it asked for.
 */
#include "log.h"
#include "shim.h"

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
