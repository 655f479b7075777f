/* hook_mem.c - device memory: every allocation path is charged to the slice before the driver
 * is asked (so racing processes cannot overshoot together) and given back exactly on free, or
 * when the driver frees it behind the program's back: a context's teardown (cuCtxDestroy, the
 * primary context's reset or last release) frees everything allocated in it. The memory queries
 * report the quota, and never more free memory than the device really has. */
#include "log.h"
#include "shim.h"
#include "track.h"
#include "util.h"

/* ---- contexts: what dies with them, and their own memory ----------------------------------
 * Each tracked allocation names its owner, the context it dies with (an opaque handle to the
 * core). A context's device memory (~0.5 GiB on an H100) is charged once per process and
 * device while the process has a context there, so N processes of a slice cannot overshoot by N
 * contexts, and a context created again after a teardown is charged again, once. */

static uint64_t fx_owner(CUcontext ctx)
{
    return (uint64_t)(uintptr_t)ctx;
}

/* The context an allocation made now dies with: the calling thread's current one (0: unknown,
 * then nothing frees it but a free, and its charge stays until then: safe for the quota). */
static uint64_t fx_owner_current(void)
{
    CUcontext ctx = NULL;
    if (!fx_cu.cuCtxGetCurrent || fx_cu.cuCtxGetCurrent(&ctx) != CUDA_SUCCESS) return 0;
    return fx_owner(ctx);
}

/* Stream-ordered allocations die with their stream's context. */
static uint64_t fx_owner_of_stream(CUstream stream)
{
    CUcontext ctx = NULL;
    if (!fx_cu.cuStreamGetCtx || fx_cu.cuStreamGetCtx(stream, &ctx) != CUDA_SUCCESS)
        return fx_owner_current();
    return fx_owner(ctx);
}

/* 1 while the primary context of ordinal dev exists, 0 when it does not (never created, reset,
 * released), -1 when the driver cannot say. */
static int fx_primary_state(CUdevice dev)
{
    unsigned flags = 0;
    int active = 0;
    if (!fx_cu.cuDevicePrimaryCtxGetState ||
        fx_cu.cuDevicePrimaryCtxGetState(dev, &flags, &active) != CUDA_SUCCESS)
        return -1;
    return active != 0;
}

/* The primary context of ordinal dev as an owner, while it exists (0: nothing can live in it).
 * The driver hands out one handle per device; a retain and release pair on an existing context
 * changes nothing. */
static uint64_t fx_primary_owner(CUdevice dev)
{
    CUcontext ctx = NULL;
    if (fx_primary_state(dev) != 1 || !fx_cu.cuDevicePrimaryCtxRetain ||
        !fx_cu.cuDevicePrimaryCtxRelease_v2 ||
        fx_cu.cuDevicePrimaryCtxRetain(&ctx, dev) != CUDA_SUCCESS)
        return 0;
    fx_cu.cuDevicePrimaryCtxRelease_v2(dev);
    return fx_owner(ctx);
}

static int fx_ordinal_of_dev(uint32_t dev)
{
    for (int i = 0; dev != FX_NONE && i < fx_self.ndev; i++)
        if (fx_self.dev[i] == dev) return i;
    return -1;
}

/* Charge the context overhead on node device dev unless it is charged. *charged is the device
 * when this call charged it (FX_NONE otherwise), so a failed creation can give it back. */
static int32_t fx_ctx_charge(uint32_t dev, uint32_t *charged)
{
    *charged = FX_NONE;
    if (dev == FX_NONE || fx_self.cfg.context_memory == 0) return FLEXAI_OK;
    if (__atomic_load_n(&fx_self.ctx_charged[dev], __ATOMIC_ACQUIRE)) return FLEXAI_OK;
    if (__atomic_exchange_n(&fx_self.ctx_charged[dev], 1, __ATOMIC_ACQ_REL)) return FLEXAI_OK;
    int32_t st = fx_reserve(dev, fx_self.cfg.context_memory);
    if (st != FLEXAI_OK) {
        __atomic_store_n(&fx_self.ctx_charged[dev], 0, __ATOMIC_RELEASE);
        return st;
    }
    *charged = dev;
    return FLEXAI_OK;
}

static CUresult fx_ctx_begin(CUdevice ordinal, uint32_t *charged)
{
    return fx_cuda_error(fx_ctx_charge(fx_dev_of_ordinal(ordinal), charged));
}

static CUresult fx_ctx_end(CUresult rc, uint32_t charged)
{
    if (rc != CUDA_SUCCESS && charged != FX_NONE) {
        fx_release(charged, fx_self.cfg.context_memory);
        __atomic_store_n(&fx_self.ctx_charged[charged], 0, __ATOMIC_RELEASE);
    }
    return rc;
}

/* After a teardown on ordinal `ordinal` (node device dev): without a context left there, the
 * context overhead goes back. A context the driver cannot vouch for counts as alive. */
static void fx_ctx_idle(int ordinal, uint32_t dev)
{
    if (dev == FX_NONE || ordinal < 0) return;
    if (fx_primary_state(ordinal) != 0 || fx_track_count(FX_T_OWNER, dev) > 0) return;
    if (__atomic_exchange_n(&fx_self.ctx_charged[dev], 0, __ATOMIC_ACQ_REL))
        fx_release(dev, fx_self.cfg.context_memory);
}

/* The driver answered a teardown whose owner's entries were marked before the call: `ended`
 * says whether the context is gone (its memory with it). */
static CUresult fx_teardown_end(CUresult rc, uint64_t owner, int ended, int ordinal,
                                uint32_t dev)
{
    if (owner && !ended) fx_track_owner_keep(owner);
    if (!ended) return rc;
    if (owner) {
        uint64_t freed[FLEXAI_MAX_DEVICES] = {0};
        fx_track_owner_forget(owner, freed);
        for (uint32_t d = 0; d < FLEXAI_MAX_DEVICES; d++)
            if (freed[d]) fx_release(d, freed[d]);
    }
    fx_ctx_idle(ordinal, dev);
    return rc;
}

/* ---- bookkeeping shared by the allocation paths ------------------------------------------ */

/* Reserve for an allocation on node device dev. A context the program goes on using after a
 * reset is created again by the driver: its overhead is charged again first. */
static int32_t fx_reserve_alloc(uint32_t dev, uint64_t bytes)
{
    uint32_t charged;
    int32_t st = fx_ctx_charge(dev, &charged);
    return st != FLEXAI_OK ? st : fx_reserve(dev, bytes);
}

#define FX_RESERVE_WITH(reserve, dev, bytes)                                                   \
    do {                                                                                       \
        int32_t st_ = reserve((dev), (bytes));                                                 \
        if (st_ != FLEXAI_OK) return fx_cuda_error(st_);                                       \
    } while (0)
/* Memory of the current context (or a stream's), and memory that needs none (VMM). */
#define FX_RESERVE(dev, bytes) FX_RESERVE_WITH(fx_reserve_alloc, dev, bytes)
#define FX_RESERVE_DEVICE(dev, bytes) FX_RESERVE_WITH(fx_reserve, dev, bytes)

/* Remember an allocation; a key the driver handed out again was freed behind our back (a
 * teardown racing with this allocation): its old charge goes back. */
static void fx_remember(int kind, uint64_t key, uint64_t size, uint32_t dev, uint64_t owner)
{
    struct fx_charge old = fx_track_add(kind, key, size, dev, owner);
    if (old.size) fx_release(old.dev, old.size);
}

/* After the driver answered an allocation: remember it, or give the reservation back. */
static CUresult fx_alloc_done(CUresult rc, int kind, uint64_t key, uint64_t size, uint32_t dev,
                              uint64_t owner)
{
    if (rc == CUDA_SUCCESS) fx_remember(kind, key, size, dev, owner);
    else fx_release(dev, size);
    return rc;
}

/* Frees: forget the entry *before* the driver frees (after it, another thread could get the
 * same address and its entry would be taken instead); put it back if the free fails. */
struct fx_taken {
    int found;
    uint64_t size;
    uint32_t dev;
    uint64_t owner;
};

static struct fx_taken fx_free_begin(int kind, uint64_t key)
{
    struct fx_taken t = {0, 0, FX_NONE, 0};
    t.found = fx_track_take(kind, key, &t.size, &t.dev, &t.owner) == 0;
    return t;
}

static CUresult fx_free_end(CUresult rc, int kind, uint64_t key, struct fx_taken t)
{
    if (!t.found) return rc;
    if (rc == CUDA_SUCCESS) fx_release(t.dev, t.size);
    else fx_remember(kind, key, t.size, t.dev, t.owner);
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

/* A created context is remembered as an owner of its device, so teardowns can tell whether the
 * process still has a context there. */
static CUresult fx_ctx_created(CUresult rc, CUcontext *pctx, CUdevice ordinal, uint32_t charged)
{
    rc = fx_ctx_end(rc, charged);
    if (rc == CUDA_SUCCESS && pctx && *pctx)
        fx_remember(FX_T_OWNER, fx_owner(*pctx), 0, fx_dev_of_ordinal(ordinal),
                    fx_owner(*pctx));
    return rc;
}

FX_EXPORT CUresult cuCtxCreate_v2(CUcontext *pctx, unsigned int flags, CUdevice dev)
{
    uint32_t charged;
    FX_ENTER(cuCtxCreate_v2);
    CUresult rc = fx_ctx_begin(dev, &charged);
    if (rc != CUDA_SUCCESS) return rc;
    return fx_ctx_created(fx_cu.cuCtxCreate_v2(pctx, flags, dev), pctx, dev, charged);
}

FX_EXPORT CUresult cuCtxCreate_v3(CUcontext *pctx, CUexecAffinityParam *params, int numParams,
                                  unsigned int flags, CUdevice dev)
{
    uint32_t charged;
    FX_ENTER(cuCtxCreate_v3);
    CUresult rc = fx_ctx_begin(dev, &charged);
    if (rc != CUDA_SUCCESS) return rc;
    return fx_ctx_created(fx_cu.cuCtxCreate_v3(pctx, params, numParams, flags, dev), pctx, dev,
                          charged);
}

FX_EXPORT CUresult cuCtxCreate_v4(CUcontext *pctx, CUctxCreateParams *params, unsigned int flags,
                                  CUdevice dev)
{
    uint32_t charged;
    FX_ENTER(cuCtxCreate_v4);
    CUresult rc = fx_ctx_begin(dev, &charged);
    if (rc != CUDA_SUCCESS) return rc;
    return fx_ctx_created(fx_cu.cuCtxCreate_v4(pctx, params, flags, dev), pctx, dev, charged);
}

FX_EXPORT CUresult cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev)
{
    uint32_t charged;
    FX_ENTER(cuDevicePrimaryCtxRetain);
    CUresult rc = fx_ctx_begin(dev, &charged);
    if (rc != CUDA_SUCCESS) return rc;
    return fx_ctx_end(fx_cu.cuDevicePrimaryCtxRetain(pctx, dev), charged);
}

/* Teardowns: mark what the context holds, let the driver free it, then forget it and give its
 * charges back (or keep it, when the context lives on or the call failed). */

FX_EXPORT CUresult cuCtxDestroy_v2(CUcontext ctx)
{
    FX_ENTER(cuCtxDestroy_v2);
    uint64_t owner = fx_owner(ctx);
    uint32_t dev = FX_NONE;
    if (owner) {
        fx_track_find(FX_T_OWNER, owner, &dev);
        fx_track_owner_mark(owner);
    }
    CUresult rc = fx_cu.cuCtxDestroy_v2(ctx);
    return fx_teardown_end(rc, owner, rc == CUDA_SUCCESS, fx_ordinal_of_dev(dev), dev);
}

/* "Resetting the primary context does not release it": the program may go on using it, and
 * the driver creates it again (charged again at its next retain or allocation). */
FX_EXPORT CUresult cuDevicePrimaryCtxReset_v2(CUdevice dev)
{
    FX_ENTER(cuDevicePrimaryCtxReset_v2);
    uint64_t owner = fx_primary_owner(dev);
    if (owner) fx_track_owner_mark(owner);
    CUresult rc = fx_cu.cuDevicePrimaryCtxReset_v2(dev);
    return fx_teardown_end(rc, owner, rc == CUDA_SUCCESS, dev, fx_dev_of_ordinal(dev));
}

/* Only the last release destroys the primary context; the driver says whether this one did. */
FX_EXPORT CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev)
{
    FX_ENTER(cuDevicePrimaryCtxRelease_v2);
    uint64_t owner = fx_primary_owner(dev);
    if (owner) fx_track_owner_mark(owner);
    CUresult rc = fx_cu.cuDevicePrimaryCtxRelease_v2(dev);
    int ended = rc == CUDA_SUCCESS && fx_primary_state(dev) == 0;
    return fx_teardown_end(rc, owner, ended, dev, fx_dev_of_ordinal(dev));
}

/* ---- queries ------------------------------------------------------------------------------ */

FX_EXPORT CUresult cuMemGetInfo_v2(size_t *free_bytes, size_t *total_bytes)
{
    uint64_t limit, used;
    FX_ENTER(cuMemGetInfo_v2);
    CUresult rc = fx_cu.cuMemGetInfo_v2(free_bytes, total_bytes);
    if (rc == CUDA_SUCCESS && fx_quota(fx_current_dev(), &limit, &used)) {
        /* The quota's room, but never more than the device really has free: slices packed up
         * to the card's size must not both size their caches to memory the other holds. */
        uint64_t room = fx_room(limit, used);
        *total_bytes = limit;
        *free_bytes = room < *free_bytes ? room : *free_bytes;
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
    return fx_alloc_done(rc, FX_T_PTR, rc == CUDA_SUCCESS ? *dptr : 0, bytesize, dev,
                         fx_owner_current());
}

FX_EXPORT CUresult cuMemAllocManaged(CUdeviceptr *dptr, size_t bytesize, unsigned int flags)
{
    /* Charged in full to the current device: it may all migrate there. */
    FX_ENTER(cuMemAllocManaged);
    uint32_t dev = fx_current_dev();
    FX_RESERVE(dev, bytesize);
    CUresult rc = fx_cu.cuMemAllocManaged(dptr, bytesize, flags);
    return fx_alloc_done(rc, FX_T_PTR, rc == CUDA_SUCCESS ? *dptr : 0, bytesize, dev,
                         fx_owner_current());
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
    if (rc != CUDA_SUCCESS) return fx_alloc_done(rc, FX_T_PTR, 0, guess, dev, 0);
    uint64_t actual = fx_mul_sat(*pPitch, Height);
    if (actual > guess && fx_reserve(dev, actual - guess) != FLEXAI_OK) {
        if (fx_cu.cuMemFree_v2) fx_cu.cuMemFree_v2(*dptr);
        fx_release(dev, guess);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    if (actual < guess) fx_release(dev, guess - actual);
    fx_remember(FX_T_PTR, *dptr, actual, dev, fx_owner_current());
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
    return fx_alloc_done(rc, FX_T_PTR, rc == CUDA_SUCCESS ? *dptr : 0, bytesize, dev,          \
                         rc == CUDA_SUCCESS ? fx_owner_of_stream(hStream) : 0)

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
    FX_RESERVE_DEVICE(dev, size);
    CUresult rc = fx_cu.cuMemCreate(handle, size, prop, flags);
    /* Physical memory belongs to the device, not to a context: no teardown frees it. */
    return fx_alloc_done(rc, FX_T_VMM, rc == CUDA_SUCCESS ? *handle : 0, size, dev, 0);
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
                         size, dev, fx_owner_current());
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
                         size, dev, fx_owner_current());
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
                         size, dev, fx_owner_current());
}

FX_EXPORT CUresult cuMipmappedArrayDestroy(CUmipmappedArray h)
{
    FX_ENTER(cuMipmappedArrayDestroy);
    uint64_t key = (uint64_t)(uintptr_t)h;
    struct fx_taken t = fx_free_begin(FX_T_MIPMAP, key);
    return fx_free_end(fx_cu.cuMipmappedArrayDestroy(h), FX_T_MIPMAP, key, t);
}
