/* hook_mem.c - device memory: every allocation path is charged to the slice before the driver
 * is asked (so racing processes cannot overshoot together) and given back exactly on free;
 * the memory queries report the quota. */
#include "log.h"
#include "shim.h"
#include "track.h"
#include "util.h"

#define FX_RESERVE(dev, bytes)                                                                 \
    do {                                                                                       \
        int32_t st_ = fx_reserve((dev), (bytes));                                              \
        if (st_ != FLEXAI_OK) return fx_cuda_error(st_);                                       \
    } while (0)

/* After the driver answered an allocation: remember it, or give the reservation back. */
static CUresult fx_alloc_done(CUresult rc, int kind, uint64_t key, uint64_t size, uint32_t dev)
{
    if (rc == CUDA_SUCCESS) fx_track_add(kind, key, size, dev);
    else fx_release(dev, size);
    return rc;
}

/* Frees: forget the entry *before* the driver frees (after it, another thread could get the
 * same address and its entry would be taken instead); put it back if the free fails. */
struct fx_taken {
    int found;
    uint64_t size;
    uint32_t dev;
};

static struct fx_taken fx_free_begin(int kind, uint64_t key)
{
    struct fx_taken t = {0, 0, FX_NONE};
    t.found = fx_track_take(kind, key, &t.size, &t.dev) == 0;
    return t;
}

static CUresult fx_free_end(CUresult rc, int kind, uint64_t key, struct fx_taken t)
{
    if (!t.found) return rc;
    if (rc == CUDA_SUCCESS) fx_release(t.dev, t.size);
    else fx_track_add(kind, key, t.size, t.dev);
    return rc;
}

/* ---- init and contexts -------------------------------------------------------------------- */

FX_EXPORT CUresult cuInit(unsigned int flags)
{
    FX_ENTER(cuInit);
    CUresult rc = fx_cu.cuInit(flags);
    if (rc == CUDA_SUCCESS) fx_attach(1); /* map devices from the driver, join the slice */
    return rc;
}

/* The context's own device memory (~0.5 GiB on an H100) is charged once per process and
 * device, at the first context, so N processes of a slice cannot overshoot by N contexts. */
static CUresult fx_ctx_begin(CUdevice ordinal, uint32_t *charged)
{
    uint32_t dev = fx_dev_of_ordinal(ordinal);
    *charged = FX_NONE;
    if (dev == FX_NONE || fx_self.cfg.context_memory == 0) return CUDA_SUCCESS;
    if (__atomic_exchange_n(&fx_self.ctx_charged[dev], 1, __ATOMIC_ACQ_REL)) return CUDA_SUCCESS;
    int32_t st = fx_reserve(dev, fx_self.cfg.context_memory);
    if (st != FLEXAI_OK) {
        __atomic_store_n(&fx_self.ctx_charged[dev], 0, __ATOMIC_RELEASE);
        return fx_cuda_error(st);
    }
    *charged = dev;
    return CUDA_SUCCESS;
}

static CUresult fx_ctx_end(CUresult rc, uint32_t charged)
{
    if (rc != CUDA_SUCCESS && charged != FX_NONE) {
        fx_release(charged, fx_self.cfg.context_memory);
        __atomic_store_n(&fx_self.ctx_charged[charged], 0, __ATOMIC_RELEASE);
    }
    return rc;
}

FX_EXPORT CUresult cuCtxCreate_v2(CUcontext *pctx, unsigned int flags, CUdevice dev)
{
    uint32_t charged;
    FX_ENTER(cuCtxCreate_v2);
    CUresult rc = fx_ctx_begin(dev, &charged);
    if (rc != CUDA_SUCCESS) return rc;
    return fx_ctx_end(fx_cu.cuCtxCreate_v2(pctx, flags, dev), charged);
}

FX_EXPORT CUresult cuCtxCreate_v3(CUcontext *pctx, CUexecAffinityParam *params, int numParams,
                                  unsigned int flags, CUdevice dev)
{
    uint32_t charged;
    FX_ENTER(cuCtxCreate_v3);
    CUresult rc = fx_ctx_begin(dev, &charged);
    if (rc != CUDA_SUCCESS) return rc;
    return fx_ctx_end(fx_cu.cuCtxCreate_v3(pctx, params, numParams, flags, dev), charged);
}

FX_EXPORT CUresult cuCtxCreate_v4(CUcontext *pctx, CUctxCreateParams *params, unsigned int flags,
                                  CUdevice dev)
{
    uint32_t charged;
    FX_ENTER(cuCtxCreate_v4);
    CUresult rc = fx_ctx_begin(dev, &charged);
    if (rc != CUDA_SUCCESS) return rc;
    return fx_ctx_end(fx_cu.cuCtxCreate_v4(pctx, params, flags, dev), charged);
}

FX_EXPORT CUresult cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev)
{
    uint32_t charged;
    FX_ENTER(cuDevicePrimaryCtxRetain);
    CUresult rc = fx_ctx_begin(dev, &charged);
    if (rc != CUDA_SUCCESS) return rc;
    return fx_ctx_end(fx_cu.cuDevicePrimaryCtxRetain(pctx, dev), charged);
}

/* ---- queries ------------------------------------------------------------------------------ */

FX_EXPORT CUresult cuMemGetInfo_v2(size_t *free_bytes, size_t *total_bytes)
{
    uint64_t limit, used;
    FX_ENTER(cuMemGetInfo_v2);
    CUresult rc = fx_cu.cuMemGetInfo_v2(free_bytes, total_bytes);
    if (rc == CUDA_SUCCESS && fx_quota(fx_current_dev(), &limit, &used)) {
        *total_bytes = limit;
        *free_bytes = fx_room(limit, used);
    }
    return rc;
}

FX_EXPORT CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice dev)
{
    uint64_t limit, used;
    FX_ENTER(cuDeviceTotalMem_v2);
    CUresult rc = fx_cu.cuDeviceTotalMem_v2(bytes, dev);
    if (rc == CUDA_SUCCESS && fx_quota(fx_dev_of_ordinal(dev), &limit, &used))
        *bytes = limit;
    return rc;
}

/* ---- linear allocations ------------------------------------------------------------------- */

FX_EXPORT CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize)
{
    FX_ENTER(cuMemAlloc_v2);
    uint32_t dev = fx_current_dev();
    FX_RESERVE(dev, bytesize);
    CUresult rc = fx_cu.cuMemAlloc_v2(dptr, bytesize);
    return fx_alloc_done(rc, FX_T_PTR, rc == CUDA_SUCCESS ? *dptr : 0, bytesize, dev);
}

FX_EXPORT CUresult cuMemAllocManaged(CUdeviceptr *dptr, size_t bytesize, unsigned int flags)
{
    /* Charged in full to the current device: it may all migrate there. */
    FX_ENTER(cuMemAllocManaged);
    uint32_t dev = fx_current_dev();
    FX_RESERVE(dev, bytesize);
    CUresult rc = fx_cu.cuMemAllocManaged(dptr, bytesize, flags);
    return fx_alloc_done(rc, FX_T_PTR, rc == CUDA_SUCCESS ? *dptr : 0, bytesize, dev);
}

FX_EXPORT CUresult cuMemAllocPitch_v2(CUdeviceptr *dptr, size_t *pPitch, size_t WidthInBytes,
                                      size_t Height, unsigned int ElementSizeBytes)
{
    FX_ENTER(cuMemAllocPitch_v2);
    uint32_t dev = fx_current_dev();
    /* The pitch is only known afterwards: reserve with the widest alignment the driver uses,
     * then settle on pitch * height. */
    uint64_t rounded =
        WidthInBytes > UINT64_MAX - 511 ? UINT64_MAX : (WidthInBytes + 511) & ~511ULL;
    uint64_t guess = fx_mul_sat(rounded, Height);
    FX_RESERVE(dev, guess);
    CUresult rc = fx_cu.cuMemAllocPitch_v2(dptr, pPitch, WidthInBytes, Height, ElementSizeBytes);
    if (rc != CUDA_SUCCESS) return fx_alloc_done(rc, FX_T_PTR, 0, guess, dev);
    uint64_t actual = fx_mul_sat(*pPitch, Height);
    if (actual > guess && fx_reserve(dev, actual - guess) != FLEXAI_OK) {
        if (fx_cu.cuMemFree_v2) fx_cu.cuMemFree_v2(*dptr);
        fx_release(dev, guess);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    if (actual < guess) fx_release(dev, guess - actual);
    fx_track_add(FX_T_PTR, *dptr, actual, dev);
    return rc;
}

FX_EXPORT CUresult cuMemFree_v2(CUdeviceptr dptr)
{
    FX_ENTER(cuMemFree_v2);
    struct fx_taken t = fx_free_begin(FX_T_PTR, dptr);
    return fx_free_end(fx_cu.cuMemFree_v2(dptr), FX_T_PTR, dptr, t);
}

/* ---- stream-ordered allocations ----------------------------------------------------------
 * Charged at their size when enqueued and given back when the free is enqueued. Memory a pool
 * keeps cached after frees (release threshold) is not charged: documented limitation. */

#define FX_ASYNC_ALLOC(fn, call_args)                                                          \
    FX_ENTER(fn);                                                                              \
    uint32_t dev = fx_current_dev();                                                           \
    FX_RESERVE(dev, bytesize);                                                                 \
    CUresult rc = fx_cu.fn call_args;                                                          \
    return fx_alloc_done(rc, FX_T_PTR, rc == CUDA_SUCCESS ? *dptr : 0, bytesize, dev)

FX_EXPORT CUresult cuMemAllocAsync(CUdeviceptr *dptr, size_t bytesize, CUstream hStream)
{
    FX_ASYNC_ALLOC(cuMemAllocAsync, (dptr, bytesize, hStream));
}

FX_EXPORT CUresult cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUstream hStream)
{
    FX_ASYNC_ALLOC(cuMemAllocAsync_ptsz, (dptr, bytesize, hStream));
}

FX_EXPORT CUresult cuMemAllocFromPoolAsync(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool,
                                           CUstream hStream)
{
    FX_ASYNC_ALLOC(cuMemAllocFromPoolAsync, (dptr, bytesize, pool, hStream));
}

FX_EXPORT CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *dptr, size_t bytesize,
                                                CUmemoryPool pool, CUstream hStream)
{
    FX_ASYNC_ALLOC(cuMemAllocFromPoolAsync_ptsz, (dptr, bytesize, pool, hStream));
}

FX_EXPORT CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream hStream)
{
    FX_ENTER(cuMemFreeAsync);
    struct fx_taken t = fx_free_begin(FX_T_PTR, dptr);
    return fx_free_end(fx_cu.cuMemFreeAsync(dptr, hStream), FX_T_PTR, dptr, t);
}

FX_EXPORT CUresult cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream hStream)
{
    FX_ENTER(cuMemFreeAsync_ptsz);
    struct fx_taken t = fx_free_begin(FX_T_PTR, dptr);
    return fx_free_end(fx_cu.cuMemFreeAsync_ptsz(dptr, hStream), FX_T_PTR, dptr, t);
}

/* ---- virtual memory management (PyTorch expandable segments, NCCL) ----------------------- */

FX_EXPORT CUresult cuMemCreate(CUmemGenericAllocationHandle *handle, size_t size,
                               const CUmemAllocationProp *prop, unsigned long long flags)
{
    FX_ENTER(cuMemCreate);
    uint32_t dev = FX_NONE;
    if (prop && prop->location.type == FX_CU_MEM_LOCATION_TYPE_DEVICE)
        dev = fx_dev_of_ordinal(prop->location.id);
    FX_RESERVE(dev, size);
    CUresult rc = fx_cu.cuMemCreate(handle, size, prop, flags);
    return fx_alloc_done(rc, FX_T_VMM, rc == CUDA_SUCCESS ? *handle : 0, size, dev);
}

FX_EXPORT CUresult cuMemRelease(CUmemGenericAllocationHandle handle)
{
    /* The driver frees the physical memory once it is also unmapped; a program that releases
     * but keeps a mapping gets its charge back early (documented). */
    FX_ENTER(cuMemRelease);
    struct fx_taken t = fx_free_begin(FX_T_VMM, handle);
    return fx_free_end(fx_cu.cuMemRelease(handle), FX_T_VMM, handle, t);
}

/* ---- arrays ------------------------------------------------------------------------------- */

static uint64_t fx_format_bytes(CUarray_format f)
{
    switch (f) {
    case CU_AD_FORMAT_UNSIGNED_INT8:
    case CU_AD_FORMAT_SIGNED_INT8: return 1;
    case CU_AD_FORMAT_UNSIGNED_INT16:
    case CU_AD_FORMAT_SIGNED_INT16:
    case CU_AD_FORMAT_HALF: return 2;
    case CU_AD_FORMAT_UNSIGNED_INT32:
    case CU_AD_FORMAT_SIGNED_INT32:
    case CU_AD_FORMAT_FLOAT: return 4;
    default: return 16; /* other formats: charge the widest element rather than too little */
    }
}

static uint64_t fx_array_bytes(size_t w, size_t h, size_t d, CUarray_format f, unsigned ch)
{
    uint64_t n = fx_mul_sat(w, h ? h : 1);
    n = fx_mul_sat(n, d ? d : 1);
    return fx_mul_sat(n, fx_mul_sat(fx_format_bytes(f), ch ? ch : 1));
}

FX_EXPORT CUresult cuArrayCreate_v2(CUarray *pHandle, const CUDA_ARRAY_DESCRIPTOR *desc)
{
    FX_ENTER(cuArrayCreate_v2);
    if (!desc) return fx_cu.cuArrayCreate_v2(pHandle, desc);
    uint32_t dev = fx_current_dev();
    uint64_t size = fx_array_bytes(desc->Width, desc->Height, 1, desc->Format, desc->NumChannels);
    FX_RESERVE(dev, size);
    CUresult rc = fx_cu.cuArrayCreate_v2(pHandle, desc);
    return fx_alloc_done(rc, FX_T_ARRAY, rc == CUDA_SUCCESS ? (uint64_t)(uintptr_t)*pHandle : 0,
                         size, dev);
}

FX_EXPORT CUresult cuArray3DCreate_v2(CUarray *pHandle, const CUDA_ARRAY3D_DESCRIPTOR *desc)
{
    FX_ENTER(cuArray3DCreate_v2);
    if (!desc) return fx_cu.cuArray3DCreate_v2(pHandle, desc);
    uint32_t dev = fx_current_dev();
    uint64_t size =
        fx_array_bytes(desc->Width, desc->Height, desc->Depth, desc->Format, desc->NumChannels);
    FX_RESERVE(dev, size);
    CUresult rc = fx_cu.cuArray3DCreate_v2(pHandle, desc);
    return fx_alloc_done(rc, FX_T_ARRAY, rc == CUDA_SUCCESS ? (uint64_t)(uintptr_t)*pHandle : 0,
                         size, dev);
}

FX_EXPORT CUresult cuArrayDestroy(CUarray hArray)
{
    FX_ENTER(cuArrayDestroy);
    uint64_t key = (uint64_t)(uintptr_t)hArray;
    struct fx_taken t = fx_free_begin(FX_T_ARRAY, key);
    return fx_free_end(fx_cu.cuArrayDestroy(hArray), FX_T_ARRAY, key, t);
}

FX_EXPORT CUresult cuMipmappedArrayCreate(CUmipmappedArray *pHandle,
                                          const CUDA_ARRAY3D_DESCRIPTOR *desc,
                                          unsigned int numMipmapLevels)
{
    FX_ENTER(cuMipmappedArrayCreate);
    if (!desc) return fx_cu.cuMipmappedArrayCreate(pHandle, desc, numMipmapLevels);
    uint32_t dev = fx_current_dev();
    uint64_t size = 0;
    size_t w = desc->Width, h = desc->Height, d = desc->Depth;
    for (unsigned l = 0; l < numMipmapLevels && l < 64; l++) {
        uint64_t level = fx_array_bytes(w, h, d, desc->Format, desc->NumChannels);
        size = size > UINT64_MAX - level ? UINT64_MAX : size + level;
        w = w > 1 ? w / 2 : 1;
        h = h > 1 ? h / 2 : h;
        d = d > 1 ? d / 2 : d;
    }
    FX_RESERVE(dev, size);
    CUresult rc = fx_cu.cuMipmappedArrayCreate(pHandle, desc, numMipmapLevels);
    return fx_alloc_done(rc, FX_T_MIPMAP, rc == CUDA_SUCCESS ? (uint64_t)(uintptr_t)*pHandle : 0,
                         size, dev);
}

FX_EXPORT CUresult cuMipmappedArrayDestroy(CUmipmappedArray h)
{
    FX_ENTER(cuMipmappedArrayDestroy);
    uint64_t key = (uint64_t)(uintptr_t)h;
    struct fx_taken t = fx_free_begin(FX_T_MIPMAP, key);
    return fx_free_end(fx_cu.cuMipmappedArrayDestroy(h), FX_T_MIPMAP, key, t);
}
