/* acl_hook_pool.c - stream-ordered allocation on Ascend NPUs (aclrtMemPoolCreate,
 * aclrtMemPoolMallocAsync, aclrtMemPoolFreeAsync, aclrtMemPoolTrimTo, aclrtMemPoolDestroy; the
 * ACL twin of the pool hooks of cuda/hook_mem.c). CANN 9.x documents the family but marks it
 * reserved or experimental ("Stream-Ordered Memory Allocation"), so a real runtime may refuse
 * it; where it works, its memory must not escape the quota.
 *
 * A pool keeps what aclrtMemPoolFreeAsync returns to it ("returned to the memory pool instead
 * of being physically freed") until aclrtMemPoolTrimTo or its destruction. So the slice is
 * charged each pool's reserve (ACL_RT_MEM_POOL_ATTR_RESERVED_MEM_CURRENT), not its live
 * allocations: an allocation the pool serves from what it keeps unused costs nothing, one that
 * makes it grow is reserved before the runtime is asked, a trim gives back what the pool
 * released. Pool bookkeeping is serialized by one mutex. Pools made out of our sight are taken
 * to be on the current device. A runtime that cannot report a pool's reserve is charged each
 * allocation, kept until the pool is destroyed (more, never less, than the device holds).
 */
#include <pthread.h>

#include "acl_shim.h"
#include "charge.h"
#include "track.h"

static pthread_mutex_t fx_pool_mu = PTHREAD_MUTEX_INITIALIZER;

static uint64_t fx_pool_key(aclrtMemPool pool)
{
    return (uint64_t)(uintptr_t)pool;
}

/* A pool attribute (a uint64_t); -1 when the runtime cannot say. */
static int fx_pool_attr(aclrtMemPool pool, aclrtMemPoolAttr attr, uint64_t *v)
{
    uint64_t x = 0;
    if (!fx_acl.aclrtMemPoolGetAttr || fx_acl.aclrtMemPoolGetAttr(pool, attr, &x) != ACL_SUCCESS)
        return -1;
    *v = x;
    return 0;
}

/* The pool's device (FX_NONE: not accounted) and its charge; remembered when first seen. */
static uint32_t fx_pool_find(aclrtMemPool pool, uint64_t *charged)
{
    uint32_t dev = FX_NONE;
    *charged = 0;
    if (fx_track_find(FX_T_HOST_POOL, fx_pool_key(pool), &dev) == 0) return FX_NONE;
    if (fx_track_get(FX_T_POOL, fx_pool_key(pool), charged, &dev) == 0) return dev;
    dev = fx_current_dev();
    if (dev != FX_NONE) fx_track_add(FX_T_POOL, fx_pool_key(pool), 0, dev, 0);
    return dev;
}

/* The pool's charge becomes `reserve`: more is charged (it was reserved), less given back. */
static void fx_pool_set(aclrtMemPool pool, uint32_t dev, uint64_t reserve)
{
    uint64_t old = 0;
    if (fx_track_set_size(FX_T_POOL, fx_pool_key(pool), reserve, &old) != 0) return;
    if (old > reserve) fx_release(dev, old - reserve);
}

FX_EXPORT aclError aclrtMemPoolCreate(aclrtMemPool *memPool, const aclrtMemPoolProps *poolProps)
{
    FX_ACL_ENTER(aclrtMemPoolCreate);
    aclError rc = fx_acl.aclrtMemPoolCreate(memPool, poolProps);
    if (rc != ACL_SUCCESS || !memPool || !poolProps) return rc;
    pthread_mutex_lock(&fx_pool_mu);
    uint64_t key = fx_pool_key(*memPool);
    struct fx_taken stale = fx_free_begin(FX_T_POOL, key); /* a handle handed out again */
    if (stale.found) fx_release(stale.dev, stale.size);
    fx_free_begin(FX_T_HOST_POOL, key);
    if (poolProps->location.type == ACL_MEM_LOCATION_TYPE_DEVICE)
        fx_track_add(FX_T_POOL, key, 0, fx_dev_of_ordinal((int)poolProps->location.id), 0);
    else
        fx_track_add(FX_T_HOST_POOL, key, 0, 0, 0);
    pthread_mutex_unlock(&fx_pool_mu);
    return rc;
}

FX_EXPORT aclError aclrtMemPoolMallocAsync(void **ptr, size_t size, aclrtMemPool memPool,
                                           aclrtStream stream)
{
    uint64_t charged, used = 0, after = 0;
    FX_ACL_ENTER(aclrtMemPoolMallocAsync);
    pthread_mutex_lock(&fx_pool_mu);
    uint32_t dev = fx_pool_find(memPool, &charged);
    if (dev == FX_NONE) {
        pthread_mutex_unlock(&fx_pool_mu);
        return fx_acl.aclrtMemPoolMallocAsync(ptr, size, memPool, stream);
    }
    /* what it keeps unused may serve the allocation; else it grows by about `size` */
    int known = fx_pool_attr(memPool, ACL_RT_MEM_POOL_ATTR_USED_MEM_CURRENT, &used) == 0;
    uint64_t held = 0;
    if (!known || size > (charged > used ? charged - used : 0)) {
        int32_t st = fx_reserve_retry(dev, size);
        if (st != FLEXAI_OK) {
            pthread_mutex_unlock(&fx_pool_mu);
            return fx_acl_error(st);
        }
        held = size;
    }
    aclError rc = fx_acl.aclrtMemPoolMallocAsync(ptr, size, memPool, stream);
    if (fx_pool_attr(memPool, ACL_RT_MEM_POOL_ATTR_RESERVED_MEM_CURRENT, &after) != 0)
        after = charged + (rc == ACL_SUCCESS ? held : 0); /* cannot ask: charged as allocated */
    uint64_t grown = after > charged ? after - charged : 0;
    if (grown > held) {
        /* it grew by more than reserved (its own granularity): charge it, or undo */
        if (fx_reserve_retry(dev, grown - held) == FLEXAI_OK) {
            held = grown;
        } else if (rc == ACL_SUCCESS) {
            fx_acl.aclrtMemPoolFreeAsync(*ptr, stream);
            if (fx_acl.aclrtMemPoolTrimTo) fx_acl.aclrtMemPoolTrimTo(memPool, charged);
            *ptr = NULL;
            rc = ACL_ERROR_RT_MEMORY_ALLOCATION;
            grown = held;
        }
    }
    if (held > grown) fx_release(dev, held - grown);
    uint64_t old;
    fx_track_set_size(FX_T_POOL, fx_pool_key(memPool), charged + grown, &old);
    pthread_mutex_unlock(&fx_pool_mu);
    return rc;
}

/* A trim gives back what the pool released. */
FX_EXPORT aclError aclrtMemPoolTrimTo(aclrtMemPool memPool, size_t minBytesToKeep)
{
    uint64_t charged, reserve;
    FX_ACL_ENTER(aclrtMemPoolTrimTo);
    pthread_mutex_lock(&fx_pool_mu);
    aclError rc = fx_acl.aclrtMemPoolTrimTo(memPool, minBytesToKeep);
    uint32_t dev = fx_pool_find(memPool, &charged);
    if (rc == ACL_SUCCESS && dev != FX_NONE &&
        fx_pool_attr(memPool, ACL_RT_MEM_POOL_ATTR_RESERVED_MEM_CURRENT, &reserve) == 0)
        fx_pool_set(memPool, dev, reserve);
    pthread_mutex_unlock(&fx_pool_mu);
    return rc;
}

/* A destroyed pool with nothing allocated from it gives its charge back. Allocations still out
 * may keep their memory (the reference does not say): their charge stays until the process
 * exits. */
FX_EXPORT aclError aclrtMemPoolDestroy(const aclrtMemPool memPool)
{
    uint64_t used = 1;
    FX_ACL_ENTER(aclrtMemPoolDestroy);
    pthread_mutex_lock(&fx_pool_mu);
    if (fx_pool_attr(memPool, ACL_RT_MEM_POOL_ATTR_USED_MEM_CURRENT, &used) != 0) used = 1;
    aclError rc = fx_acl.aclrtMemPoolDestroy(memPool);
    if (rc == ACL_SUCCESS && used == 0) {
        struct fx_taken t = fx_free_begin(FX_T_POOL, fx_pool_key(memPool));
        if (t.found) fx_release(t.dev, t.size);
        fx_free_begin(FX_T_HOST_POOL, fx_pool_key(memPool));
    }
    pthread_mutex_unlock(&fx_pool_mu);
    return rc;
}
