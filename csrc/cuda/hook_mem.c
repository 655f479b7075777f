/* hook_mem.c - device memory: every allocation path is charged to the slice before the driver
 * is asked (so racing processes cannot overshoot together) and given back exactly on free, or
 * when the driver frees it behind the program's back: a context's teardown (cuCtxDestroy, the
 * primary context's reset or last release) frees everything allocated in it. What is charged is
 * what the driver holds: a stream-ordered pool's reserve (it keeps freed memory), physical VMM
 * memory until its last mapping goes, each context's own memory. The memory queries report the
 * quota, and never more free memory than the device really has. */
#include <pthread.h>

#include "charge.h"
#include "gate.h"
#include "log.h"
#include "shim.h"
#include "track.h"
#include "util.h"


/* ---- contexts: what dies with them, and their own memory ----------------------------------
 * Each tracked allocation names its owner, the context it dies with (an opaque handle to the
 * core). Every context costs its own device memory (~0.5 GiB on an H100): the primary context's
 * is charged while it exists in this process (again, once, when it is created again after a
 * teardown), and each created context's from its cuCtxCreate to its destruction (its owner
 * entry carries the charge), so neither N processes nor N contexts of a slice can overshoot. */

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

/* The primary context's overhead (charge.h): charged at its retain, given back when a retain
 * fails. */
static CUresult fx_ctx_begin(CUdevice ordinal, uint32_t *charged)
{
    return fx_cuda_error(fx_overhead_charge(fx_dev_of_ordinal(ordinal), charged));
}

static CUresult fx_ctx_end(CUresult rc, uint32_t charged)
{
    if (rc != CUDA_SUCCESS) fx_overhead_undo(charged);
    return rc;
}

/* After a teardown on ordinal `ordinal` (node device dev): without the primary context, its
 * overhead goes back (created contexts carry their own). A primary context the driver cannot
 * vouch for counts as alive. */
static void fx_ctx_idle(int ordinal, uint32_t dev)
{
    if (dev == FX_NONE || ordinal < 0) return;
    if (fx_primary_state(ordinal) != 0) return;
    fx_overhead_release(dev);
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
    fx_cuda_pools_refresh(); /* pools gave back what the context's allocations held */
    return rc;
}

/* ---- bookkeeping shared by the allocation paths ------------------------------------------ */

/* Whether `owner` (the calling thread's current context) is one cuCtxCreate made (it carries
 * its own overhead), not the primary one. */
static int fx_is_created(uint64_t owner)
{
    uint32_t d;
    return owner && fx_track_find(FX_T_OWNER, owner, &d) == 0;
}

/* Reserve for an allocation on node device dev in context `owner` (asked of the driver once
 * per allocation: it is a driver call). A primary context the program goes on using after a
 * reset is created again by the driver: its overhead is charged again first. */
static int32_t fx_reserve_alloc(uint32_t dev, uint64_t bytes, uint64_t owner)
{
    uint32_t charged;
    int32_t st = fx_is_created(owner) ? FLEXAI_OK : fx_overhead_charge(dev, &charged);
    return st != FLEXAI_OK ? st : fx_reserve_retry(dev, bytes);
}

/* Memory of the current context (owner), and memory that needs none (VMM). */
#define FX_RESERVE(dev, bytes, owner)                                                          \
    do {                                                                                       \
        int32_t st_ = fx_reserve_alloc((dev), (bytes), (owner));                               \
        if (st_ != FLEXAI_OK) return fx_cuda_error(st_);                                       \
    } while (0)
#define FX_RESERVE_DEVICE(dev, bytes)                                                          \
    do {                                                                                       \
        int32_t st_ = fx_reserve_retry((dev), (bytes));                                        \
        if (st_ != FLEXAI_OK) return fx_cuda_error(st_);                                       \
    } while (0)

/* After the driver answered an allocation: remember it, or give the reservation back. */
static CUresult fx_cu_alloc_done(CUresult rc, int kind, uint64_t key, uint64_t size,
                                 uint32_t dev, uint64_t owner)
{
    fx_alloc_done(rc == CUDA_SUCCESS, kind, key, size, dev, owner);
    return rc;
}

/* After the driver answered a free begun with fx_free_begin (charge.h). */
static CUresult fx_cu_free_end(CUresult rc, int kind, uint64_t key, struct fx_taken t)
{
    fx_free_end(rc == CUDA_SUCCESS, kind, key, t);
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

/* A created context costs its own memory, charged before the driver is asked; it is
 * remembered as an owner of its device carrying that charge, which its destruction gives back
 * with everything else it owned. */
static CUresult fx_ctx_create_begin(CUdevice ordinal, uint32_t *dev)
{
    *dev = fx_dev_of_ordinal(ordinal);
    return fx_cuda_error(fx_reserve_retry(*dev, fx_self.cfg.context_memory));
}

static CUresult fx_ctx_created(CUresult rc, CUcontext *pctx, uint32_t dev)
{
    if (rc == CUDA_SUCCESS && pctx && *pctx)
        fx_remember(FX_T_OWNER, fx_owner(*pctx), fx_self.cfg.context_memory, dev,
                    fx_owner(*pctx));
    else
        fx_release(dev, fx_self.cfg.context_memory);
    return rc;
}

FX_EXPORT CUresult cuCtxCreate_v2(CUcontext *pctx, unsigned int flags, CUdevice dev)
{
    uint32_t d;
    FX_ENTER(cuCtxCreate_v2);
    CUresult rc = fx_ctx_create_begin(dev, &d);
    if (rc != CUDA_SUCCESS) return rc;
    return fx_ctx_created(fx_cu.cuCtxCreate_v2(pctx, flags, dev), pctx, d);
}

FX_EXPORT CUresult cuCtxCreate_v3(CUcontext *pctx, CUexecAffinityParam *params, int numParams,
                                  unsigned int flags, CUdevice dev)
{
    uint32_t d;
    FX_ENTER(cuCtxCreate_v3);
    CUresult rc = fx_ctx_create_begin(dev, &d);
    if (rc != CUDA_SUCCESS) return rc;
    return fx_ctx_created(fx_cu.cuCtxCreate_v3(pctx, params, numParams, flags, dev), pctx, d);
}

FX_EXPORT CUresult cuCtxCreate_v4(CUcontext *pctx, CUctxCreateParams *params, unsigned int flags,
                                  CUdevice dev)
{
    uint32_t d;
    FX_ENTER(cuCtxCreate_v4);
    CUresult rc = fx_ctx_create_begin(dev, &d);
    if (rc != CUDA_SUCCESS) return rc;
    return fx_ctx_created(fx_cu.cuCtxCreate_v4(pctx, params, flags, dev), pctx, d);
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
    if (ctx) fx_gate_forget_context(ctx, 1); /* the compute gate's events die with it */
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
    if (owner) fx_gate_forget_context((fx_ctx_t)(uintptr_t)owner, 1);
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
    if (ended && owner) fx_gate_forget_context((fx_ctx_t)(uintptr_t)owner, 0); /* gone */
    return fx_teardown_end(rc, owner, ended, dev, fx_dev_of_ordinal(dev));
}

/* ---- queries ------------------------------------------------------------------------------ */

FX_EXPORT CUresult cuMemGetInfo_v2(size_t *free_bytes, size_t *total_bytes)
{
    uint64_t limit, used;
    FX_ENTER(cuMemGetInfo_v2);
    fx_cuda_pools_refresh(); /* what pools gave back at synchronizations */
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
    uint64_t owner = fx_owner_current();
    FX_RESERVE(dev, bytesize, owner);
    CUresult rc = fx_cu.cuMemAlloc_v2(dptr, bytesize);
    return fx_cu_alloc_done(rc, FX_T_PTR, rc == CUDA_SUCCESS ? *dptr : 0, bytesize, dev,
                            owner);
}

FX_EXPORT CUresult cuMemAllocManaged(CUdeviceptr *dptr, size_t bytesize, unsigned int flags)
{
    /* Charged in full to the current device: it may all migrate there. */
    FX_ENTER(cuMemAllocManaged);
    uint32_t dev = fx_current_dev();
    uint64_t owner = fx_owner_current();
    FX_RESERVE(dev, bytesize, owner);
    CUresult rc = fx_cu.cuMemAllocManaged(dptr, bytesize, flags);
    return fx_cu_alloc_done(rc, FX_T_PTR, rc == CUDA_SUCCESS ? *dptr : 0, bytesize, dev,
                            owner);
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
    uint64_t owner = fx_owner_current();
    FX_RESERVE(dev, guess, owner);
    CUresult rc = fx_cu.cuMemAllocPitch_v2(dptr, pPitch, WidthInBytes, Height, ElementSizeBytes);
    if (rc != CUDA_SUCCESS) return fx_cu_alloc_done(rc, FX_T_PTR, 0, guess, dev, 0);
    uint64_t actual = fx_mul_sat(*pPitch, Height);
    if (actual > guess && fx_reserve(dev, actual - guess) != FLEXAI_OK) {
        if (fx_cu.cuMemFree_v2) fx_cu.cuMemFree_v2(*dptr);
        fx_release(dev, guess);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    if (actual < guess) fx_release(dev, guess - actual);
    fx_remember(FX_T_PTR, *dptr, actual, dev, owner);
    return rc;
}

FX_EXPORT CUresult cuMemFree_v2(CUdeviceptr dptr)
{
    FX_ENTER(cuMemFree_v2);
    struct fx_taken t = fx_free_begin(FX_T_PTR, dptr);
    CUresult rc = fx_cu_free_end(fx_cu.cuMemFree_v2(dptr), FX_T_PTR, dptr, t);
    /* A stream-ordered allocation: the driver synchronized, pools may have given memory back. */
    if (!t.found && rc == CUDA_SUCCESS) fx_cuda_pools_refresh();
    return rc;
}

/* ---- stream-ordered allocations ----------------------------------------------------------
 * A pool keeps the memory of freed allocations (up to its release threshold; PyTorch's
 * cudaMallocAsync backend sets the maximum) and gives it back at synchronizations, trims and
 * teardowns. So the slice is charged each pool's reserve (CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT),
 * not its live allocations: an allocation the pool serves from what it keeps costs nothing, one
 * that makes it grow is charged the growth first, and what the driver gives back behind our
 * back (a synchronization) is learnt at the next pool call, memory query, teardown or quota
 * refusal (until then the slice is charged more, never less). The memory belongs to the pool's
 * device (cuMemAllocAsync: the current pool of the stream's device), whatever the current
 * device is; host-located pools are not device memory. Pool bookkeeping is serialized per
 * process, so concurrent growths are charged exactly. */

static pthread_mutex_t fx_pool_mu = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;

static uint64_t fx_pool_key(CUmemoryPool pool)
{
    return (uint64_t)(uintptr_t)pool;
}

/* A pool attribute (cuuint64_t); -1 when the driver cannot say (a destroyed pool). */
static int fx_pool_attr(CUmemoryPool pool, int attr, uint64_t *value)
{
    cuuint64_t v = 0;
    if (!fx_cu.cuMemPoolGetAttribute || fx_cu.cuMemPoolGetAttribute(pool, attr, &v) != CUDA_SUCCESS)
        return -1;
    *value = v;
    return 0;
}

/* Settle a tracked pool's charge to the reserve the driver reports: what it gave back is
 * released; growth we did not see (none should happen) is charged while the quota allows.
 * Returns the bytes released. fx_pool_mu held. */
static uint64_t fx_pool_settle(CUmemoryPool pool)
{
    uint64_t charged, reserved, old;
    uint32_t dev;
    if (fx_track_get(FX_T_POOL, fx_pool_key(pool), &charged, &dev) != 0) return 0;
    if (fx_pool_attr(pool, FX_CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT, &reserved) != 0) return 0;
    if (reserved < charged) {
        fx_track_set_size(FX_T_POOL, fx_pool_key(pool), reserved, &old);
        fx_release(dev, charged - reserved);
        return charged - reserved;
    }
    if (reserved > charged && fx_reserve(dev, reserved - charged) == FLEXAI_OK)
        fx_track_set_size(FX_T_POOL, fx_pool_key(pool), reserved, &old);
    return 0;
}

/* Settle every tracked pool; returns the bytes released. */
uint64_t fx_cuda_pools_refresh(void)
{
    uint64_t keys[64], freed = 0;
    pthread_mutex_lock(&fx_pool_mu);
    unsigned n = fx_track_keys(FX_T_POOL, keys, 64);
    for (unsigned i = 0; i < n && i < 64; i++)
        freed += fx_pool_settle((CUmemoryPool)(uintptr_t)keys[i]);
    pthread_mutex_unlock(&fx_pool_mu);
    return freed;
}

/* The visible ordinal of a context's device (-1: unknown). */
static int fx_ordinal_of_ctx(CUcontext ctx)
{
    CUcontext cur = NULL, popped = NULL;
    CUdevice d = -1;
    if (fx_cu.cuCtxGetCurrent && fx_cu.cuCtxGetCurrent(&cur) == CUDA_SUCCESS && cur == ctx) {
        if (fx_cu.cuCtxGetDevice && fx_cu.cuCtxGetDevice(&d) == CUDA_SUCCESS) return d;
        return -1;
    }
    if (!ctx || !fx_cu.cuCtxPushCurrent_v2 || !fx_cu.cuCtxPopCurrent_v2 ||
        fx_cu.cuCtxPushCurrent_v2(ctx) != CUDA_SUCCESS)
        return -1;
    if (!fx_cu.cuCtxGetDevice || fx_cu.cuCtxGetDevice(&d) != CUDA_SUCCESS) d = -1;
    fx_cu.cuCtxPopCurrent_v2(&popped);
    return d;
}

/* The visible ordinal of a stream's device (-1: unknown). */
static int fx_ordinal_of_stream(CUstream stream)
{
    CUcontext ctx = NULL;
    if (!fx_cu.cuStreamGetCtx || fx_cu.cuStreamGetCtx(stream, &ctx) != CUDA_SUCCESS) return -1;
    return fx_ordinal_of_ctx(ctx);
}

/* Where a pool's memory lives: 1 and its node device (FX_NONE: not accounted), 0 for a host
 * pool. A pool not seen created is a device's default pool, else (created out of our sight)
 * taken to be the stream's device's. Remembers the pool. */
static int fx_pool_where(CUmemoryPool pool, int stream_ordinal, uint32_t *dev)
{
    uint32_t d;
    uint64_t key = fx_pool_key(pool);
    if (fx_track_find(FX_T_HOST_POOL, key, &d) == 0) return 0;
    if (fx_track_find(FX_T_POOL, key, dev) == 0) return 1;
    int ordinal = stream_ordinal;
    for (int i = 0; fx_cu.cuDeviceGetDefaultMemPool && i < fx_self.ndev; i++) {
        CUmemoryPool p = NULL;
        if (fx_cu.cuDeviceGetDefaultMemPool(&p, i) == CUDA_SUCCESS && p == pool) {
            ordinal = i;
            break;
        }
    }
    *dev = fx_dev_of_ordinal(ordinal);
    fx_track_add(FX_T_POOL, key, 0, *dev, 0);
    return 1;
}

/* An allocation under way from a pool: the device charged, what was reserved for its growth,
 * the pool's reserve before. */
struct fx_pool_op {
    CUmemoryPool pool;
    uint32_t dev; /* FX_NONE: nothing to account (a host pool, an unaccounted device) */
    uint64_t held, before;
};

/* Before the driver is asked: settle the pool, and reserve what it may grow by unless what it
 * keeps unused serves the allocation. On success with op->dev set, fx_pool_mu is held until
 * fx_pool_end. pool NULL: the current pool of the stream's device. */
static CUresult fx_pool_begin(CUmemoryPool pool, CUstream stream, size_t bytes,
                              struct fx_pool_op *op)
{
    int ordinal = fx_ordinal_of_stream(stream);
    *op = (struct fx_pool_op){pool, FX_NONE, 0, 0};
    if (!op->pool && (ordinal < 0 || !fx_cu.cuDeviceGetMemPool ||
                      fx_cu.cuDeviceGetMemPool(&op->pool, ordinal) != CUDA_SUCCESS))
        op->pool = NULL;
    if (!op->pool) {
        /* No pool to ask about: charge the allocation itself, to the stream's device. */
        op->dev = ordinal >= 0 ? fx_dev_of_ordinal(ordinal) : fx_current_dev();
        int32_t st = fx_reserve_retry(op->dev, bytes);
        if (st != FLEXAI_OK) return fx_cuda_error(st);
        op->held = bytes;
        return CUDA_SUCCESS;
    }
    pthread_mutex_lock(&fx_pool_mu);
    if (fx_pool_where(op->pool, ordinal, &op->dev) == 0 || op->dev == FX_NONE) {
        op->dev = FX_NONE;
        pthread_mutex_unlock(&fx_pool_mu);
        return CUDA_SUCCESS;
    }
    fx_pool_settle(op->pool);
    uint64_t used = 0;
    uint32_t d;
    if (fx_track_get(FX_T_POOL, fx_pool_key(op->pool), &op->before, &d) != 0) op->before = 0;
    if (fx_pool_attr(op->pool, FX_CU_MEMPOOL_ATTR_USED_MEM_CURRENT, &used) != 0) used = op->before;
    uint64_t spare = op->before > used ? op->before - used : 0;
    if (bytes > spare) {
        int32_t st = fx_reserve_retry(op->dev, bytes);
        if (st != FLEXAI_OK) {
            pthread_mutex_unlock(&fx_pool_mu);
            return fx_cuda_error(st);
        }
        op->held = bytes;
    }
    return CUDA_SUCCESS;
}

/* After the driver answered: the pool's charge becomes its reserve. Growth beyond what was
 * reserved (the driver grows pools by its own granularity) is charged too; when the quota
 * cannot take it, the allocation is given back and refused. */
static CUresult fx_pool_end(CUresult rc, struct fx_pool_op *op, CUdeviceptr *dptr,
                            CUstream stream, uint64_t owner)
{
    if (op->dev == FX_NONE) return rc;
    if (!op->pool) {
        /* charged per allocation: remembered, freed like any other */
        return fx_cu_alloc_done(rc, FX_T_PTR, rc == CUDA_SUCCESS ? *dptr : 0, op->held, op->dev,
                                rc == CUDA_SUCCESS ? owner : 0);
    }
    uint64_t after = op->before, old;
    if (fx_pool_attr(op->pool, FX_CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT, &after) != 0)
        after = op->before + (rc == CUDA_SUCCESS ? op->held : 0);
    uint64_t grown = after > op->before ? after - op->before : 0;
    if (grown > op->held) {
        if (fx_reserve_retry(op->dev, grown - op->held) == FLEXAI_OK) {
            op->held = grown;
        } else if (rc == CUDA_SUCCESS) {
            fx_cu.cuMemFreeAsync(*dptr, stream); /* stays in the pool until a trim or sync */
            *dptr = 0;
            rc = CUDA_ERROR_OUT_OF_MEMORY;
            grown = op->held; /* the rest is not charged: noted in docs/limitations.md */
        }
    }
    if (grown < op->held) fx_release(op->dev, op->held - grown);
    fx_track_set_size(FX_T_POOL, fx_pool_key(op->pool), op->before + grown, &old);
    fx_pool_settle(op->pool);
    pthread_mutex_unlock(&fx_pool_mu);
    return rc;
}

#define FX_ASYNC_ALLOC(fn, from, call_args)                                                    \
    FX_ENTER(fn);                                                                              \
    struct fx_pool_op op;                                                                      \
    CUresult rc = fx_pool_begin((from), hStream, bytesize, &op);                               \
    if (rc != CUDA_SUCCESS) return rc;                                                         \
    rc = fx_cu.fn call_args;                                                                   \
    return fx_pool_end(rc, &op, dptr, hStream,                                                 \
                       rc == CUDA_SUCCESS && !op.pool ? fx_owner_of_stream(hStream) : 0)

FX_EXPORT CUresult cuMemAllocAsync(CUdeviceptr *dptr, size_t bytesize, CUstream hStream)
{
    FX_ASYNC_ALLOC(cuMemAllocAsync, NULL, (dptr, bytesize, hStream));
}

FX_EXPORT CUresult cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUstream hStream)
{
    FX_ASYNC_ALLOC(cuMemAllocAsync_ptsz, NULL, (dptr, bytesize, hStream));
}

FX_EXPORT CUresult cuMemAllocFromPoolAsync(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool,
                                           CUstream hStream)
{
    FX_ASYNC_ALLOC(cuMemAllocFromPoolAsync, pool, (dptr, bytesize, pool, hStream));
}

FX_EXPORT CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *dptr, size_t bytesize,
                                                CUmemoryPool pool, CUstream hStream)
{
    FX_ASYNC_ALLOC(cuMemAllocFromPoolAsync_ptsz, pool, (dptr, bytesize, pool, hStream));
}

/* A free returns the memory to its pool, which keeps it: nothing changes until the driver
 * gives it back. (Allocations charged one by one, without a pool to ask, are given back.) */
FX_EXPORT CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream hStream)
{
    FX_ENTER(cuMemFreeAsync);
    struct fx_taken t = fx_free_begin(FX_T_PTR, dptr);
    return fx_cu_free_end(fx_cu.cuMemFreeAsync(dptr, hStream), FX_T_PTR, dptr, t);
}

FX_EXPORT CUresult cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream hStream)
{
    FX_ENTER(cuMemFreeAsync_ptsz);
    struct fx_taken t = fx_free_begin(FX_T_PTR, dptr);
    return fx_cu_free_end(fx_cu.cuMemFreeAsync_ptsz(dptr, hStream), FX_T_PTR, dptr, t);
}

/* Pools made here are remembered with their location: a host pool is never charged. */
FX_EXPORT CUresult cuMemPoolCreate(CUmemoryPool *pool, const CUmemPoolProps *props)
{
    FX_ENTER(cuMemPoolCreate);
    CUresult rc = fx_cu.cuMemPoolCreate(pool, props);
    if (rc != CUDA_SUCCESS || !pool || !props) return rc;
    pthread_mutex_lock(&fx_pool_mu);
    uint64_t key = fx_pool_key(*pool);
    struct fx_taken stale = fx_free_begin(FX_T_POOL, key); /* a handle handed out again */
    if (stale.found) fx_release(stale.dev, stale.size);
    fx_free_begin(FX_T_HOST_POOL, key);
    if (props->location.type == FX_CU_MEM_LOCATION_TYPE_DEVICE)
        fx_track_add(FX_T_POOL, key, 0, fx_dev_of_ordinal(props->location.id), 0);
    else
        fx_track_add(FX_T_HOST_POOL, key, 0, 0, 0);
    pthread_mutex_unlock(&fx_pool_mu);
    return rc;
}

/* What the pool keeps unused goes back with it. Allocations still out keep their memory (and
 * the pool its charge, which can no longer be asked about: kept until the process exits). */
FX_EXPORT CUresult cuMemPoolDestroy(CUmemoryPool pool)
{
    FX_ENTER(cuMemPoolDestroy);
    uint64_t used = 1;
    pthread_mutex_lock(&fx_pool_mu);
    if (fx_pool_attr(pool, FX_CU_MEMPOOL_ATTR_USED_MEM_CURRENT, &used) != 0) used = 1;
    CUresult rc = fx_cu.cuMemPoolDestroy(pool);
    if (rc == CUDA_SUCCESS && used == 0) {
        struct fx_taken t = fx_free_begin(FX_T_POOL, fx_pool_key(pool));
        if (t.found) fx_release(t.dev, t.size);
        fx_free_begin(FX_T_HOST_POOL, fx_pool_key(pool));
    }
    pthread_mutex_unlock(&fx_pool_mu);
    return rc;
}

FX_EXPORT CUresult cuMemPoolTrimTo(CUmemoryPool pool, size_t minBytesToKeep)
{
    FX_ENTER(cuMemPoolTrimTo);
    CUresult rc = fx_cu.cuMemPoolTrimTo(pool, minBytesToKeep);
    if (rc == CUDA_SUCCESS) {
        pthread_mutex_lock(&fx_pool_mu);
        fx_pool_settle(pool);
        pthread_mutex_unlock(&fx_pool_mu);
    }
    return rc;
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
    return fx_cu_alloc_done(rc, FX_T_VMM, rc == CUDA_SUCCESS ? *handle : 0, size, dev, 0);
}

/* Physical memory lives until its handle is released *and* its last mapping is gone (PyTorch's
 * expandable segments and NCCL release right after mapping): each mapping is remembered with
 * its handle, a released handle still mapped keeps its charge until the last unmap. VMM
 * bookkeeping is serialized per process (rare calls). */
static pthread_mutex_t fx_vmm_mu = PTHREAD_MUTEX_INITIALIZER;

FX_EXPORT CUresult cuMemRelease(CUmemGenericAllocationHandle handle)
{
    FX_ENTER(cuMemRelease);
    pthread_mutex_lock(&fx_vmm_mu);
    struct fx_taken t = fx_free_begin(FX_T_VMM, handle);
    CUresult rc = fx_cu.cuMemRelease(handle);
    if (rc == CUDA_SUCCESS && t.found && fx_track_count_ref(FX_T_MAP, handle) > 0)
        fx_remember(FX_T_VMM_MAPPED, handle, t.size, t.dev, 0);
    else
        fx_cu_free_end(rc, FX_T_VMM, handle, t);
    pthread_mutex_unlock(&fx_vmm_mu);
    return rc;
}

FX_EXPORT CUresult cuMemMap(CUdeviceptr ptr, size_t size, size_t offset,
                            CUmemGenericAllocationHandle handle, unsigned long long flags)
{
    FX_ENTER(cuMemMap);
    uint32_t dev;
    pthread_mutex_lock(&fx_vmm_mu);
    CUresult rc = fx_cu.cuMemMap(ptr, size, offset, handle, flags);
    if (rc == CUDA_SUCCESS && fx_track_find(FX_T_VMM, handle, &dev) == 0)
        fx_track_add_ref(FX_T_MAP, ptr, 0, dev, handle);
    pthread_mutex_unlock(&fx_vmm_mu);
    return rc;
}

FX_EXPORT CUresult cuMemUnmap(CUdeviceptr ptr, size_t size)
{
    FX_ENTER(cuMemUnmap);
    uint64_t handles[64];
    unsigned n;
    pthread_mutex_lock(&fx_vmm_mu);
    CUresult rc = fx_cu.cuMemUnmap(ptr, size);
    uint64_t end = size > UINT64_MAX - ptr ? UINT64_MAX : ptr + size;
    while (rc == CUDA_SUCCESS && (n = fx_track_take_range(FX_T_MAP, ptr, end, handles, 64)) > 0) {
        for (unsigned i = 0; i < n; i++) {
            if (fx_track_count_ref(FX_T_MAP, handles[i]) > 0) continue;
            struct fx_taken t = fx_free_begin(FX_T_VMM_MAPPED, handles[i]);
            if (t.found) fx_release(t.dev, t.size); /* its last mapping: the driver freed it */
        }
        if (n < 64) break;
    }
    pthread_mutex_unlock(&fx_vmm_mu);
    return rc;
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
    uint64_t owner = fx_owner_current();
    FX_RESERVE(dev, size, owner);
    CUresult rc = fx_cu.cuArrayCreate_v2(pHandle, desc);
    uint64_t key = rc == CUDA_SUCCESS ? (uint64_t)(uintptr_t)*pHandle : 0;
    return fx_cu_alloc_done(rc, FX_T_ARRAY, key, size, dev, owner);
}

FX_EXPORT CUresult cuArray3DCreate_v2(CUarray *pHandle, const CUDA_ARRAY3D_DESCRIPTOR *desc)
{
    FX_ENTER(cuArray3DCreate_v2);
    if (!desc) return fx_cu.cuArray3DCreate_v2(pHandle, desc);
    uint32_t dev = fx_current_dev();
    uint64_t size =
        fx_array_bytes(desc->Width, desc->Height, desc->Depth, desc->Format, desc->NumChannels);
    uint64_t owner = fx_owner_current();
    FX_RESERVE(dev, size, owner);
    CUresult rc = fx_cu.cuArray3DCreate_v2(pHandle, desc);
    uint64_t key = rc == CUDA_SUCCESS ? (uint64_t)(uintptr_t)*pHandle : 0;
    return fx_cu_alloc_done(rc, FX_T_ARRAY, key, size, dev, owner);
}

FX_EXPORT CUresult cuArrayDestroy(CUarray hArray)
{
    FX_ENTER(cuArrayDestroy);
    uint64_t key = (uint64_t)(uintptr_t)hArray;
    struct fx_taken t = fx_free_begin(FX_T_ARRAY, key);
    return fx_cu_free_end(fx_cu.cuArrayDestroy(hArray), FX_T_ARRAY, key, t);
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
    uint64_t owner = fx_owner_current();
    FX_RESERVE(dev, size, owner);
    CUresult rc = fx_cu.cuMipmappedArrayCreate(pHandle, desc, numMipmapLevels);
    uint64_t key = rc == CUDA_SUCCESS ? (uint64_t)(uintptr_t)*pHandle : 0;
    return fx_cu_alloc_done(rc, FX_T_MIPMAP, key, size, dev, owner);
}

FX_EXPORT CUresult cuMipmappedArrayDestroy(CUmipmappedArray h)
{
    FX_ENTER(cuMipmappedArrayDestroy);
    uint64_t key = (uint64_t)(uintptr_t)h;
    struct fx_taken t = fx_free_begin(FX_T_MIPMAP, key);
    return fx_cu_free_end(fx_cu.cuMipmappedArrayDestroy(h), FX_T_MIPMAP, key, t);
}
