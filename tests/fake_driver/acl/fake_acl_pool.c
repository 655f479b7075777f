/*
 * fake_acl_pool.c - stream-ordered allocation of the stand-in libascendcl.so (see
 * fake_acl_internal.h): aclrtMemPoolCreate / Destroy, aclrtMemPoolMallocAsync / FreeAsync,
 * aclrtMemPoolTrimTo and the reserve attribute of aclrtMemPoolGetAttr, as the runtime API
 * reference describes them (CANN 9.x "Stream-Ordered Memory Allocation"; marked there as
 * reserved or experimental, so a real runtime may refuse them):
 *
 *   - a pool lives on one device (location type DEVICE; allocType pinned; reserved all zero);
 *   - aclrtMemPoolFreeAsync only returns memory to the pool, it is not freed; the pool keeps it
 *     for later allocations until aclrtMemPoolTrimTo releases what is unused (down to the bytes
 *     asked to keep) or aclrtMemPoolDestroy releases everything;
 *   - ACL_RT_MEM_POOL_ATTR_RESERVED_MEM_CURRENT is the device memory the pool holds,
 *     ..._USED_MEM_CURRENT what of it is allocated (the only attributes the stand-in knows).
 *
 * The stand-in's pool takes blocks of the size asked rounded up to 32 bytes from the node's
 * memory, serves an allocation from the first kept block that is large enough, and runs frees
 * and allocations at once (not in stream order). A pool never grows past maxSize (0: no bound).
 * Must never be mistaken for the real runtime.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "fake_acl_internal.h"

struct pool_block {
    struct pool_block *next;
    void *addr;
    size_t size;
    int used;
};

struct fake_pool {
    int physical;
    size_t max, reserve;
    struct pool_block *blocks;
    struct fake_pool *next;
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER; /* guards every pool */
static struct fake_pool *pools;

#define NEED_INIT()                                                                            \
    do {                                                                                       \
        if (!fake_acl_ready()) return ACL_ERROR_UNINITIALIZE;                                  \
    } while (0)

static int pool_known_locked(const struct fake_pool *p)
{
    for (const struct fake_pool *q = pools; q; q = q->next)
        if (q == p) return 1;
    return 0;
}

FAKE_ACL_EXPORT aclError aclrtMemPoolCreate(aclrtMemPool *memPool,
                                            const aclrtMemPoolProps *poolProps)
{
    static const unsigned char zero[32];
    NEED_INIT();
    if (!memPool || !poolProps || poolProps->allocType != 0 ||
        poolProps->location.type != ACL_MEM_LOCATION_TYPE_DEVICE ||
        memcmp(poolProps->reserved, zero, sizeof zero) != 0)
        return ACL_ERROR_INVALID_PARAM;
    int phys = fake_acl_physical((int)poolProps->location.id);
    if (phys < 0) return ACL_ERROR_RT_INVALID_DEVICEID;
    struct fake_pool *p = calloc(1, sizeof *p);
    if (!p) return ACL_ERROR_BAD_ALLOC;
    p->physical = phys;
    p->max = poolProps->maxSize;
    pthread_mutex_lock(&mu);
    p->next = pools;
    pools = p;
    pthread_mutex_unlock(&mu);
    *memPool = p;
    return ACL_SUCCESS;
}

/* Give unused blocks back to the device until the reserve is at most `keep`. mu held. */
static void trim_locked(struct fake_pool *p, size_t keep, int all)
{
    for (struct pool_block **b = &p->blocks; *b && p->reserve > keep;) {
        struct pool_block *gone = *b;
        if (gone->used && !all) {
            b = &gone->next;
            continue;
        }
        *b = gone->next;
        munmap(gone->addr, gone->size);
        fake_node_mem_uncharge(p->physical, gone->size);
        p->reserve -= gone->size;
        free(gone);
    }
}

FAKE_ACL_EXPORT aclError aclrtMemPoolDestroy(const aclrtMemPool memPool)
{
    struct fake_pool *p = memPool;
    NEED_INIT();
    pthread_mutex_lock(&mu);
    int known = p && pool_known_locked(p);
    if (known) {
        struct fake_pool **q = &pools;
        while (*q != p) q = &(*q)->next;
        *q = p->next;
        trim_locked(p, 0, 1);
    }
    pthread_mutex_unlock(&mu);
    if (!known) return ACL_ERROR_INVALID_PARAM;
    free(p);
    return ACL_SUCCESS;
}

FAKE_ACL_EXPORT aclError aclrtMemPoolMallocAsync(void **ptr, size_t size, aclrtMemPool memPool,
                                                 aclrtStream stream)
{
    struct fake_pool *p = memPool;
    (void)stream;
    NEED_INIT();
    if (!ptr || size == 0 || size > SIZE_MAX - 31) return ACL_ERROR_INVALID_PARAM;
    size_t bytes = (size + 31) / 32 * 32;
    aclError rc = ACL_SUCCESS;
    pthread_mutex_lock(&mu);
    struct pool_block *b = NULL;
    if (!p || !pool_known_locked(p)) rc = ACL_ERROR_INVALID_PARAM;
    for (b = rc ? NULL : p->blocks; b && (b->used || b->size < bytes);) b = b->next;
    if (!rc && !b) { /* the pool grows */
        if (p->max && bytes > p->max - (p->reserve < p->max ? p->reserve : p->max))
            rc = ACL_ERROR_RT_MEMORY_ALLOCATION;
        else if (fake_node_mem_charge(p->physical, bytes, fake_config_get()->memory) != 0)
            rc = ACL_ERROR_RT_MEMORY_ALLOCATION;
        b = rc ? NULL : calloc(1, sizeof *b);
        void *m = b ? mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
                    : MAP_FAILED;
        if (!rc && m == MAP_FAILED) {
            free(b);
            b = NULL;
            fake_node_mem_uncharge(p->physical, bytes);
            rc = ACL_ERROR_RT_MEMORY_ALLOCATION;
        } else if (!rc) {
            *b = (struct pool_block){p->blocks, m, bytes, 0};
            p->blocks = b;
            p->reserve += bytes;
        }
    }
    if (b) {
        b->used = 1;
        *ptr = b->addr;
    }
    pthread_mutex_unlock(&mu);
    return rc;
}

FAKE_ACL_EXPORT aclError aclrtMemPoolFreeAsync(void *ptr, aclrtStream stream)
{
    (void)stream;
    NEED_INIT();
    pthread_mutex_lock(&mu);
    struct pool_block *found = NULL;
    for (struct fake_pool *p = pools; p && !found; p = p->next)
        for (struct pool_block *b = p->blocks; b && !found; b = b->next)
            if (b->used && b->addr == ptr) found = b;
    if (found) found->used = 0; /* back to the pool, still held on the device */
    pthread_mutex_unlock(&mu);
    return found ? ACL_SUCCESS : ACL_ERROR_INVALID_PARAM;
}

FAKE_ACL_EXPORT aclError aclrtMemPoolTrimTo(aclrtMemPool memPool, size_t minBytesToKeep)
{
    NEED_INIT();
    pthread_mutex_lock(&mu);
    int known = memPool && pool_known_locked(memPool);
    if (known) trim_locked(memPool, minBytesToKeep, 0);
    pthread_mutex_unlock(&mu);
    return known ? ACL_SUCCESS : ACL_ERROR_INVALID_PARAM;
}

FAKE_ACL_EXPORT aclError aclrtMemPoolGetAttr(aclrtMemPool memPool, aclrtMemPoolAttr attr,
                                             void *value)
{
    NEED_INIT();
    int used = attr == ACL_RT_MEM_POOL_ATTR_USED_MEM_CURRENT;
    if (!value || (!used && attr != ACL_RT_MEM_POOL_ATTR_RESERVED_MEM_CURRENT))
        return ACL_ERROR_INVALID_PARAM;
    pthread_mutex_lock(&mu);
    const struct fake_pool *p = memPool;
    int known = p && pool_known_locked(p);
    uint64_t v = known && !used ? p->reserve : 0;
    for (const struct pool_block *b = known && used ? p->blocks : NULL; b; b = b->next)
        if (b->used) v += b->size;
    pthread_mutex_unlock(&mu);
    if (!known) return ACL_ERROR_INVALID_PARAM;
    memcpy(value, &v, sizeof v);
    return ACL_SUCCESS;
}
