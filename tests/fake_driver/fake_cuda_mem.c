/*
 * fake_cuda_mem.c - simulated device memory: linear allocations, stream-ordered allocations and
 * pools, CUDA arrays, and host<->device copies.
 *
 * Linear memory is an anonymous MAP_NORESERVE mapping and the CUdeviceptr is its host address, so
 * a 40 GiB "allocation" costs nothing until touched and copies are plain memcpy. A device's memory
 * is shared by every process on the node (fake_common.c); an allocation that would exceed the
 * device's total, counting what other processes hold, fails with CUDA_ERROR_OUT_OF_MEMORY, as on
 * a full GPU.
 *
 * Stream-ordered allocations come from a pool (struct CUmemPoolHandle_st) that holds backing
 * memory in chunks and keeps it after frees, up to its release threshold (0 by default; PyTorch's
 * cudaMallocAsync backend sets the maximum): the device's memory goes down when the pool grows,
 * and up again only at a synchronization, a trim, a teardown or the pool's destruction. Host-
 * located pools hold host memory: no device is charged.
 *
 * Allocations are kept in one list: the fake holds at most a few thousand at a time, and a list
 * keeps every path obviously correct.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fake_cuda_internal.h"

enum alloc_kind { ALLOC_LINEAR, ALLOC_ARRAY, ALLOC_MIPMAP };

struct fake_alloc {
    struct fake_alloc *next;
    enum alloc_kind kind;
    uintptr_t base; /* host address; 0 for arrays, which are opaque and have no backing */
    size_t size;    /* bytes charged to the device */
    size_t map_len; /* bytes mapped at base */
    int device;     /* visible ordinal */
    const struct CUctx_st *ctx;     /* owner: the allocation dies with it */
    struct CUmemPoolHandle_st *pool; /* stream-ordered allocations only */
};

static struct fake_alloc *allocs;
static struct CUmemPoolHandle_st *pool_registry;
static struct CUmemPoolHandle_st *current_pool[FAKE_MAX_DEVICES]; /* NULL: the default pool */

/* ---- accounting -------------------------------------------------------------------------- */

/* The device's memory is the node's (fake_common.c): every process's allocations count. */
CUresult fake_dev_charge_locked(int dev, size_t bytes) {
    const struct fake_cuda_device *d = &fake_cuda_devices[dev];
    return fake_node_mem_charge(d->physical, bytes, d->total) == 0 ? CUDA_SUCCESS
                                                                   : CUDA_ERROR_OUT_OF_MEMORY;
}

void fake_dev_uncharge_locked(int dev, size_t bytes) {
    fake_node_mem_uncharge(fake_cuda_devices[dev].physical, bytes);
}

/* ---- pools' backing memory (lock held) --------------------------------------------------- */

#define POOL_CHUNK FAKE_VMM_GRANULARITY

static size_t chunk_up(size_t n) {
    return n > SIZE_MAX - (POOL_CHUNK - 1) ? SIZE_MAX / POOL_CHUNK * POOL_CHUNK
                                           : (n + POOL_CHUNK - 1) / POOL_CHUNK * POOL_CHUNK;
}

/* An allocation of size bytes from the pool: unused backing memory first, else the pool grows
 * by whole chunks (charged to its device). */
static CUresult pool_take_locked(struct CUmemPoolHandle_st *pool, size_t size) {
    size_t spare = pool->reserved - pool->used;
    if (size > spare) {
        size_t grow = chunk_up(size - spare);
        if (pool->max_size != 0 && grow > pool->max_size - pool->reserved)
            return CUDA_ERROR_OUT_OF_MEMORY;
        if (pool->device >= 0 && fake_dev_charge_locked(pool->device, grow) != CUDA_SUCCESS)
            return CUDA_ERROR_OUT_OF_MEMORY;
        pool->reserved += grow;
        if (pool->reserved > pool->reserved_high)
            pool->reserved_high = pool->reserved;
    }
    pool->used += size;
    if (pool->used > pool->used_high)
        pool->used_high = pool->used;
    return CUDA_SUCCESS;
}

/* Gives back what the pool holds beyond max(keep, what its allocations use), in whole chunks. */
static void pool_shrink_locked(struct CUmemPoolHandle_st *pool, uint64_t keep) {
    size_t target = chunk_up(keep < pool->reserved ? (size_t)keep : pool->reserved);
    if (target < chunk_up(pool->used))
        target = chunk_up(pool->used);
    if (pool->reserved <= target)
        return;
    if (pool->device >= 0)
        fake_dev_uncharge_locked(pool->device, pool->reserved - target);
    pool->reserved = target;
}

static void pool_unlink_locked(struct CUmemPoolHandle_st *pool) {
    for (struct CUmemPoolHandle_st **link = &pool_registry; *link != NULL;
         link = &(*link)->next) {
        if (*link == pool) {
            *link = pool->next;
            return;
        }
    }
}

/* An allocation went back to the pool: the memory stays reserved. A destroyed pool goes with
 * its last allocation. */
static void pool_give_locked(struct CUmemPoolHandle_st *pool, size_t size) {
    pool->used = size > pool->used ? 0 : pool->used - size;
    if (pool->destroyed && pool->used == 0) {
        pool_shrink_locked(pool, 0);
        pool_unlink_locked(pool);
        free(pool);
    }
}

/* Every pool, default ones included, gives back what it holds beyond its threshold (device -1:
 * every device). */
static void pools_release_locked(int device) {
    for (int i = 0; i < fake_cuda_ndevices; i++)
        if (device < 0 || device == i)
            pool_shrink_locked(&fake_cuda_devices[i].default_pool,
                               fake_cuda_devices[i].default_pool.threshold);
    for (struct CUmemPoolHandle_st *p = pool_registry; p != NULL; p = p->next)
        if (device < 0 || device == p->device)
            pool_shrink_locked(p, p->threshold);
}

void fake_mem_sync_release(void) {
    if (fake_cuda_check_init() != CUDA_SUCCESS)
        return;
    pthread_mutex_lock(&fake_cuda_lock);
    pools_release_locked(-1);
    pthread_mutex_unlock(&fake_cuda_lock);
}

/* ---- allocation records ------------------------------------------------------------------ */

/* Charges, maps (when map is set) and records. On failure nothing is left behind. */
static CUresult alloc_new_locked(enum alloc_kind kind, size_t size, int map, int dev,
                                 const struct CUctx_st *ctx, struct CUmemPoolHandle_st *pool,
                                 struct fake_alloc **out) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    struct fake_alloc *a;
    CUresult rc;

    if (size == 0)
        return CUDA_ERROR_INVALID_VALUE;
    rc = pool != NULL ? pool_take_locked(pool, size) : fake_dev_charge_locked(dev, size);
    if (rc != CUDA_SUCCESS)
        return rc;
    a = calloc(1, sizeof(*a));
    if (a == NULL)
        goto fail;
    if (map) {
        /* size <= total, which is far below SIZE_MAX, so rounding up cannot overflow. */
        a->map_len = (size + page - 1) / page * page;
        void *p = mmap(NULL, a->map_len, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED)
            goto fail;
        a->base = (uintptr_t)p;
    }
    a->kind = kind;
    a->size = size;
    a->device = dev;
    a->ctx = ctx;
    a->pool = pool;
    a->next = allocs;
    allocs = a;
    *out = a;
    return CUDA_SUCCESS;
fail:
    free(a);
    if (pool != NULL)
        pool_give_locked(pool, size);
    else
        fake_dev_uncharge_locked(dev, size);
    return CUDA_ERROR_OUT_OF_MEMORY;
}

/* A stream-ordered allocation goes back to its pool, which keeps the memory. */
static void alloc_destroy_locked(struct fake_alloc *a) {
    if (a->base != 0)
        munmap((void *)a->base, a->map_len);
    if (a->pool != NULL)
        pool_give_locked(a->pool, a->size);
    else
        fake_dev_uncharge_locked(a->device, a->size);
    free(a);
}

/* Unlinks and destroys the record of the given kind whose handle/base is key; *pooled: it came
 * from a pool. */
static CUresult alloc_free_locked(enum alloc_kind kind, uintptr_t key, int *pooled) {
    for (struct fake_alloc **link = &allocs; *link != NULL; link = &(*link)->next) {
        struct fake_alloc *a = *link;
        uintptr_t a_key = kind == ALLOC_LINEAR ? a->base : (uintptr_t)a;
        if (a->kind == kind && a_key == key) {
            *link = a->next;
            if (pooled != NULL)
                *pooled = a->pool != NULL;
            alloc_destroy_locked(a);
            return CUDA_SUCCESS;
        }
    }
    return kind == ALLOC_LINEAR ? CUDA_ERROR_INVALID_VALUE : CUDA_ERROR_INVALID_HANDLE;
}

/* A teardown synchronizes the context: its stream-ordered allocations go back to their pools,
 * and the pools of its device give back what they hold beyond their thresholds. */
void fake_mem_release_ctx_locked(const struct CUctx_st *ctx) {
    struct fake_alloc **link = &allocs;
    while (*link != NULL) {
        struct fake_alloc *a = *link;
        if (a->ctx == ctx) {
            *link = a->next;
            alloc_destroy_locked(a);
        } else {
            link = &a->next;
        }
    }
    pools_release_locked(ctx->device);
}

/* Whether [addr, addr+len) lies inside one linear allocation or in accessible VMM memory. */
static int range_valid_locked(uintptr_t addr, size_t len, int need_write) {
    for (const struct fake_alloc *a = allocs; a != NULL; a = a->next)
        if (a->kind == ALLOC_LINEAR && addr >= a->base && addr - a->base <= a->size &&
            len <= a->size - (addr - a->base))
            return 1;
    return fake_vmm_covers_locked(addr, len, need_write);
}

/* ---- linear allocations on the current context ------------------------------------------- */

/* The prologue of calls on the current context: initialised, arguments valid (args_ok), a valid
 * current context. Returns with the lock held on success only. */
static CUresult lock_current(int args_ok, struct CUctx_st **ctx) {
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (!args_ok)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&fake_cuda_lock);
    rc = fake_ctx_current_locked(ctx);
    if (rc != CUDA_SUCCESS)
        pthread_mutex_unlock(&fake_cuda_lock);
    return rc;
}

/* The linear allocation holding [addr, addr+len) (fake_cuda_copy.c: pointer attributes). */
int fake_mem_find_locked(uintptr_t addr, size_t len, uintptr_t *base, size_t *size,
                         const struct CUctx_st **ctx) {
    for (const struct fake_alloc *a = allocs; a != NULL; a = a->next)
        if (a->kind == ALLOC_LINEAR && addr >= a->base && addr - a->base <= a->size &&
            len <= a->size - (addr - a->base)) {
            *base = a->base;
            *size = a->size;
            *ctx = a->ctx;
            return 1;
        }
    return 0;
}

/* A copy (n bytes from src) or fill (n elements of elem bytes of value) on the current
 * context, under the lock, with the device side(s) range-checked (fake_cuda_copy.c). */
CUresult fake_mem_access(const struct fake_access *x) {
    struct CUctx_st *ctx;
    CUresult rc = lock_current(x->dst != NULL && (x->fill || x->src != NULL), &ctx);
    if (rc != CUDA_SUCCESS)
        return rc;
    size_t bytes = x->fill ? x->n * x->elem : x->n;
    if (x->n > 0 && ((x->dst_dev && !range_valid_locked((uintptr_t)x->dst, bytes, 1)) ||
                     (x->src_dev && !range_valid_locked((uintptr_t)x->src, bytes, 0))))
        rc = CUDA_ERROR_INVALID_VALUE;
    else if (!x->fill)
        memmove(x->dst, x->src, x->n);
    else if (x->elem == 1)
        memset(x->dst, (int)(x->value & 0xffu), x->n);
    else
        for (size_t i = 0; i < x->n; i++) /* little-endian: the value's low bytes */
            memcpy((char *)x->dst + i * x->elem, &x->value, x->elem);
    pthread_mutex_unlock(&fake_cuda_lock);
    return rc;
}

static CUresult alloc_linear(CUdeviceptr *dptr, size_t size) {
    struct CUctx_st *ctx;
    struct fake_alloc *a;
    CUresult rc = lock_current(dptr != NULL, &ctx);
    if (rc != CUDA_SUCCESS)
        return rc;
    rc = alloc_new_locked(ALLOC_LINEAR, size, 1, ctx->device, ctx, NULL, &a);
    if (rc == CUDA_SUCCESS)
        *dptr = (CUdeviceptr)a->base;
    pthread_mutex_unlock(&fake_cuda_lock);
    return rc;
}

CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize) {
    return alloc_linear(dptr, bytesize);
}

/* Rows are padded to 512 bytes, the texture alignment the fake reports. */
CUresult cuMemAllocPitch_v2(CUdeviceptr *dptr, size_t *pPitch, size_t WidthInBytes, size_t Height,
                            unsigned int ElementSizeBytes) {
    const size_t align = 512;
    size_t size;
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (pPitch == NULL || WidthInBytes == 0 || Height == 0 || WidthInBytes > SIZE_MAX - align ||
        (ElementSizeBytes != 4 && ElementSizeBytes != 8 && ElementSizeBytes != 16))
        return CUDA_ERROR_INVALID_VALUE;
    size_t pitch = (WidthInBytes + align - 1) / align * align;
    if (__builtin_mul_overflow(pitch, Height, &size))
        return CUDA_ERROR_OUT_OF_MEMORY;
    rc = alloc_linear(dptr, size);
    if (rc == CUDA_SUCCESS)
        *pPitch = pitch;
    return rc;
}

/* Managed memory is charged to the current device, as if it had migrated there. */
CUresult cuMemAllocManaged(CUdeviceptr *dptr, size_t bytesize, unsigned int flags) {
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (flags != CU_MEM_ATTACH_GLOBAL && flags != CU_MEM_ATTACH_HOST)
        return CUDA_ERROR_INVALID_VALUE;
    return alloc_linear(dptr, bytesize);
}

/* Any linear allocation may be freed here, stream-ordered ones included: the real driver
 * synchronizes first, so the pools then give back what they hold beyond their thresholds. */
CUresult cuMemFree_v2(CUdeviceptr dptr) {
    struct CUctx_st *ctx;
    int pooled = 0;
    CUresult rc = lock_current(1, &ctx);
    if (rc != CUDA_SUCCESS)
        return rc;
    rc = alloc_free_locked(ALLOC_LINEAR, (uintptr_t)dptr, &pooled);
    if (rc == CUDA_SUCCESS && pooled)
        pools_release_locked(-1);
    pthread_mutex_unlock(&fake_cuda_lock);
    return rc;
}

CUresult cuMemGetInfo_v2(size_t *free_bytes, size_t *total_bytes) {
    struct CUctx_st *ctx;
    CUresult rc = lock_current(free_bytes != NULL && total_bytes != NULL, &ctx);
    if (rc != CUDA_SUCCESS)
        return rc;
    /* What the whole node holds, as on a real GPU: other processes' memory is not free. */
    const struct fake_cuda_device *d = &fake_cuda_devices[ctx->device];
    size_t used = fake_node_mem_used(d->physical);
    *free_bytes = used < d->total ? d->total - used : 0;
    *total_bytes = d->total;
    pthread_mutex_unlock(&fake_cuda_lock);
    return rc;
}

/* ---- stream-ordered allocations and pools ------------------------------------------------ */

/* Compares addresses only: an unknown handle must not be dereferenced. A destroyed pool is
 * invalid although its allocations still hold it. */
static int pool_valid_locked(const struct CUmemPoolHandle_st *pool) {
    for (int i = 0; i < fake_cuda_ndevices; i++)
        if (pool == &fake_cuda_devices[i].default_pool)
            return 1;
    for (const struct CUmemPoolHandle_st *p = pool_registry; p != NULL; p = p->next)
        if (p == pool)
            return !p->destroyed;
    return 0;
}

static struct CUmemPoolHandle_st *pool_current_locked(int dev) {
    return current_pool[dev] != NULL ? current_pool[dev] : &fake_cuda_devices[dev].default_pool;
}

/* Allocations happen when enqueued and frees return the memory to the pool at once (the fake
 * does not order memory); the pool keeps it until a synchronization point, a trim, a teardown.
 * cuMemAllocAsync uses the current pool of the stream's device; cuMemAllocFromPoolAsync's pool
 * may be of another device (or the host): the memory is that pool's. */
static CUresult alloc_async(CUdeviceptr *dptr, size_t size, CUmemoryPool pool, int use_pool,
                            CUstream hStream) {
    struct CUctx_st *ctx;
    struct fake_alloc *a;
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (dptr == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&fake_cuda_lock);
    rc = fake_stream_ctx_locked(hStream, &ctx);
    if (rc == CUDA_SUCCESS && use_pool) {
        if (!pool_valid_locked(pool))
            rc = CUDA_ERROR_INVALID_VALUE;
    } else if (rc == CUDA_SUCCESS) {
        pool = pool_current_locked(ctx->device);
    }
    if (rc == CUDA_SUCCESS)
        rc = alloc_new_locked(ALLOC_LINEAR, size, 1, pool->device, ctx, pool, &a);
    if (rc == CUDA_SUCCESS)
        *dptr = (CUdeviceptr)a->base;
    pthread_mutex_unlock(&fake_cuda_lock);
    return rc;
}

static CUresult free_async(CUdeviceptr dptr, CUstream hStream) {
    struct CUctx_st *ctx;
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    pthread_mutex_lock(&fake_cuda_lock);
    rc = fake_stream_ctx_locked(hStream, &ctx);
    if (rc == CUDA_SUCCESS)
        rc = alloc_free_locked(ALLOC_LINEAR, (uintptr_t)dptr, NULL);
    pthread_mutex_unlock(&fake_cuda_lock);
    return rc;
}

CUresult cuMemAllocAsync(CUdeviceptr *dptr, size_t bytesize, CUstream hStream) {
    return alloc_async(dptr, bytesize, NULL, 0, hStream);
}

CUresult cuMemAllocFromPoolAsync(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool,
                                 CUstream hStream) {
    return alloc_async(dptr, bytesize, pool, 1, hStream);
}

CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream hStream) {
    return free_async(dptr, hStream);
}

/* Device pools (CU_MEM_LOCATION_TYPE_DEVICE) and host pools (HOST, HOST_NUMA: host memory, no
 * device is charged). */
CUresult cuMemPoolCreate(CUmemoryPool *pool, const CUmemPoolProps *poolProps) {
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (pool == NULL || poolProps == NULL || poolProps->allocType != CU_MEM_ALLOCATION_TYPE_PINNED)
        return CUDA_ERROR_INVALID_VALUE;
    int type = poolProps->location.type, device = -1;
    if (type == CU_MEM_LOCATION_TYPE_DEVICE) {
        if (!fake_cuda_device_valid(poolProps->location.id))
            return CUDA_ERROR_INVALID_DEVICE;
        device = poolProps->location.id;
    } else if (type != CU_MEM_LOCATION_TYPE_HOST && type != CU_MEM_LOCATION_TYPE_HOST_NUMA) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    struct CUmemPoolHandle_st *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return CUDA_ERROR_OUT_OF_MEMORY;
    p->device = device;
    p->max_size = poolProps->maxSize;
    pthread_mutex_lock(&fake_cuda_lock);
    p->next = pool_registry;
    pool_registry = p;
    pthread_mutex_unlock(&fake_cuda_lock);
    *pool = p;
    return CUDA_SUCCESS;
}

/* What the pool holds unused goes back at once; allocations still out keep theirs, and the pool
 * itself goes with the last of them (the real driver defers the destruction). Its handle is
 * invalid from now on. Default pools cannot be destroyed. */
CUresult cuMemPoolDestroy(CUmemoryPool pool) {
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    pthread_mutex_lock(&fake_cuda_lock);
    int valid = 0;
    for (struct CUmemPoolHandle_st *p = pool_registry; p != NULL; p = p->next)
        valid |= p == pool && !p->destroyed;
    if (!valid) {
        rc = CUDA_ERROR_INVALID_VALUE;
    } else {
        for (int i = 0; i < FAKE_MAX_DEVICES; i++)
            if (current_pool[i] == pool)
                current_pool[i] = NULL;
        pool->destroyed = 1;
        pool_shrink_locked(pool, 0);
        if (pool->used == 0) {
            pool_unlink_locked(pool);
            free(pool);
        }
    }
    pthread_mutex_unlock(&fake_cuda_lock);
    return rc;
}

CUresult cuDeviceGetDefaultMemPool(CUmemoryPool *pool_out, CUdevice dev) {
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (pool_out == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    if (!fake_cuda_device_valid(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    *pool_out = &fake_cuda_devices[dev].default_pool;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetMemPool(CUmemoryPool *pool, CUdevice dev) {
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (pool == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    if (!fake_cuda_device_valid(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    pthread_mutex_lock(&fake_cuda_lock);
    *pool = pool_current_locked(dev);
    pthread_mutex_unlock(&fake_cuda_lock);
    return CUDA_SUCCESS;
}

/* The pool must be one of this device's. */
CUresult cuDeviceSetMemPool(CUdevice dev, CUmemoryPool pool) {
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (!fake_cuda_device_valid(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    pthread_mutex_lock(&fake_cuda_lock);
    if (!pool_valid_locked(pool) || pool->device != dev)
        rc = CUDA_ERROR_INVALID_VALUE;
    else
        current_pool[dev] = pool == &fake_cuda_devices[dev].default_pool ? NULL : pool;
    pthread_mutex_unlock(&fake_cuda_lock);
    return rc;
}

static int reuse_attr(CUmemPool_attribute attr) {
    return attr == CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES ||
           attr == CU_MEMPOOL_ATTR_REUSE_ALLOW_OPPORTUNISTIC ||
           attr == CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES;
}

/* Settable: the reuse flags (int), the release threshold (cuuint64_t), and the two high-water
 * marks, to 0 only (which resets them to the current values). */
CUresult cuMemPoolSetAttribute(CUmemoryPool pool, CUmemPool_attribute attr, void *value) {
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (value == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&fake_cuda_lock);
    if (!pool_valid_locked(pool)) {
        rc = CUDA_ERROR_INVALID_VALUE;
    } else if (reuse_attr(attr)) {
        unsigned bit = 1u << (attr - 1);
        pool->reuse_off = *(const int *)value ? pool->reuse_off & ~bit : pool->reuse_off | bit;
    } else if (attr == CU_MEMPOOL_ATTR_RELEASE_THRESHOLD) {
        pool->threshold = *(const cuuint64_t *)value;
    } else if ((attr == CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH ||
                attr == CU_MEMPOOL_ATTR_USED_MEM_HIGH) && *(const cuuint64_t *)value == 0) {
        if (attr == CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH)
            pool->reserved_high = pool->reserved;
        else
            pool->used_high = pool->used;
    } else {
        rc = CUDA_ERROR_INVALID_VALUE;
    }
    pthread_mutex_unlock(&fake_cuda_lock);
    return rc;
}

CUresult cuMemPoolGetAttribute(CUmemoryPool pool, CUmemPool_attribute attr, void *value) {
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (value == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&fake_cuda_lock);
    cuuint64_t v = 0;
    if (!pool_valid_locked(pool))
        rc = CUDA_ERROR_INVALID_VALUE;
    else if (reuse_attr(attr))
        *(int *)value = (pool->reuse_off & (1u << (attr - 1))) == 0;
    else if (attr == CU_MEMPOOL_ATTR_RELEASE_THRESHOLD)
        v = pool->threshold;
    else if (attr == CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT)
        v = pool->reserved;
    else if (attr == CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH)
        v = pool->reserved_high;
    else if (attr == CU_MEMPOOL_ATTR_USED_MEM_CURRENT)
        v = pool->used;
    else if (attr == CU_MEMPOOL_ATTR_USED_MEM_HIGH)
        v = pool->used_high;
    else
        rc = CUDA_ERROR_INVALID_VALUE;
    if (rc == CUDA_SUCCESS && !reuse_attr(attr))
        *(cuuint64_t *)value = v;
    pthread_mutex_unlock(&fake_cuda_lock);
    return rc;
}

/* Gives back what the pool holds beyond max(minBytesToKeep, what its allocations use). */
CUresult cuMemPoolTrimTo(CUmemoryPool pool, size_t minBytesToKeep) {
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    pthread_mutex_lock(&fake_cuda_lock);
    if (!pool_valid_locked(pool))
        rc = CUDA_ERROR_INVALID_VALUE;
    else
        pool_shrink_locked(pool, minBytesToKeep);
    pthread_mutex_unlock(&fake_cuda_lock);
    return rc;
}

/* ---- arrays ------------------------------------------------------------------------------ */

static size_t format_bytes(int format) {
    switch (format) {
    case CU_AD_FORMAT_UNSIGNED_INT8:
    case CU_AD_FORMAT_SIGNED_INT8: return 1;
    case CU_AD_FORMAT_UNSIGNED_INT16:
    case CU_AD_FORMAT_SIGNED_INT16:
    case CU_AD_FORMAT_HALF: return 2;
    case CU_AD_FORMAT_UNSIGNED_INT32:
    case CU_AD_FORMAT_SIGNED_INT32:
    case CU_AD_FORMAT_FLOAT: return 4;
    default: return 0;
    }
}

/* Bytes of a W x H x D array (0 meaning 1 for H and D); 0 when invalid or overflowing. */
static size_t array_bytes(size_t w, size_t h, size_t d, int format, unsigned channels) {
    size_t elem = format_bytes(format), size;
    if (elem == 0 || w == 0 || (h == 0 && d != 0) ||
        (channels != 1 && channels != 2 && channels != 4))
        return 0;
    if (__builtin_mul_overflow(w, h ? h : 1, &size) ||
        __builtin_mul_overflow(size, d ? d : 1, &size) ||
        __builtin_mul_overflow(size, elem * channels, &size))
        return 0;
    return size;
}

/* Arrays are opaque to the host, so only their size is charged; nothing is mapped. */
static CUresult array_create(void **handle, enum alloc_kind kind, size_t size) {
    struct CUctx_st *ctx;
    struct fake_alloc *a;
    CUresult rc = lock_current(handle != NULL, &ctx);
    if (rc != CUDA_SUCCESS)
        return rc;
    rc = alloc_new_locked(kind, size, 0, ctx->device, ctx, NULL, &a);
    if (rc == CUDA_SUCCESS)
        *handle = a;
    pthread_mutex_unlock(&fake_cuda_lock);
    return rc;
}

static CUresult array_destroy(void *handle, enum alloc_kind kind) {
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    pthread_mutex_lock(&fake_cuda_lock);
    rc = alloc_free_locked(kind, (uintptr_t)handle, NULL);
    pthread_mutex_unlock(&fake_cuda_lock);
    return rc;
}

CUresult cuArrayCreate_v2(CUarray *pHandle, const CUDA_ARRAY_DESCRIPTOR *pAllocateArray) {
    size_t size = 0;
    if (pAllocateArray != NULL)
        size = array_bytes(pAllocateArray->Width, pAllocateArray->Height, 0,
                           pAllocateArray->Format, pAllocateArray->NumChannels);
    return array_create((void **)pHandle, ALLOC_ARRAY, size);
}

CUresult cuArray3DCreate_v2(CUarray *pHandle, const CUDA_ARRAY3D_DESCRIPTOR *pAllocateArray) {
    size_t size = 0;
    if (pAllocateArray != NULL)
        size = array_bytes(pAllocateArray->Width, pAllocateArray->Height, pAllocateArray->Depth,
                           pAllocateArray->Format, pAllocateArray->NumChannels);
    return array_create((void **)pHandle, ALLOC_ARRAY, size);
}

CUresult cuArrayDestroy(CUarray hArray) {
    return array_destroy(hArray, ALLOC_ARRAY);
}

/* Sum over levels, each halving every dimension (down to 1; a 0 dimension stays absent). The
 * depth of a layered array counts layers and does not shrink. */
static size_t mipmap_bytes(const CUDA_ARRAY3D_DESCRIPTOR *desc, unsigned levels) {
    size_t w = desc->Width, h = desc->Height, d = desc->Depth, total = 0;
    int layered = (desc->Flags & CUDA_ARRAY3D_LAYERED) != 0;
    size_t largest = w > h ? w : h;
    unsigned max_levels = 0;

    if (!layered && d > largest)
        largest = d;
    for (; largest > 0; largest >>= 1)
        max_levels++;
    if (levels == 0 || levels > max_levels)
        return 0;
    for (unsigned i = 0; i < levels; i++) {
        size_t level = array_bytes(w, h, d, desc->Format, desc->NumChannels);
        if (level == 0 || __builtin_add_overflow(total, level, &total))
            return 0;
        w = w > 1 ? w / 2 : w;
        h = h > 1 ? h / 2 : h;
        if (!layered)
            d = d > 1 ? d / 2 : d;
    }
    return total;
}

CUresult cuMipmappedArrayCreate(CUmipmappedArray *pHandle,
                                const CUDA_ARRAY3D_DESCRIPTOR *pMipmappedArrayDesc,
                                unsigned int numMipmapLevels) {
    size_t size = 0;
    if (pMipmappedArrayDesc != NULL)
        size = mipmap_bytes(pMipmappedArrayDesc, numMipmapLevels);
    return array_create((void **)pHandle, ALLOC_MIPMAP, size);
}

CUresult cuMipmappedArrayDestroy(CUmipmappedArray hMipmappedArray) {
    return array_destroy(hMipmappedArray, ALLOC_MIPMAP);
}

/* ---- copies ------------------------------------------------------------------------------ */

/* Copies run under the lock so a concurrent free cannot unmap the memory mid-copy; a real GPU
 * would report an illegal address there, a host process would crash. */
static CUresult copy(void *dst, const void *src, uintptr_t device_addr, size_t n, int to_device) {
    struct CUctx_st *ctx;
    CUresult rc = lock_current(n == 0 || (to_device ? src : dst) != NULL, &ctx);
    if (rc != CUDA_SUCCESS)
        return rc;
    if (n > 0 && !range_valid_locked(device_addr, n, to_device))
        rc = CUDA_ERROR_INVALID_VALUE;
    else if (n > 0)
        memcpy(dst, src, n);
    pthread_mutex_unlock(&fake_cuda_lock);
    return rc;
}

/* Synchronous copies and memset run on the legacy stream: after the work queued there and on the
 * context's blocking streams, and not while one of those captures. */
CUresult cuMemcpyHtoD_v2(CUdeviceptr dstDevice, const void *srcHost, size_t ByteCount) {
    CUresult rc = fake_exec_sync_default();
    if (rc != CUDA_SUCCESS)
        return rc;
    return copy((void *)(uintptr_t)dstDevice, srcHost, (uintptr_t)dstDevice, ByteCount, 1);
}

CUresult cuMemcpyDtoH_v2(void *dstHost, CUdeviceptr srcDevice, size_t ByteCount) {
    CUresult rc = fake_exec_sync_default();
    if (rc != CUDA_SUCCESS)
        return rc;
    return copy(dstHost, (const void *)(uintptr_t)srcDevice, (uintptr_t)srcDevice, ByteCount, 0);
}

CUresult cuMemsetD8_v2(CUdeviceptr dstDevice, unsigned char uc, size_t N) {
    struct CUctx_st *ctx;
    CUresult rc = fake_exec_sync_default();
    if (rc != CUDA_SUCCESS)
        return rc;
    rc = lock_current(1, &ctx);
    if (rc != CUDA_SUCCESS)
        return rc;
    if (N > 0 && !range_valid_locked((uintptr_t)dstDevice, N, 1))
        rc = CUDA_ERROR_INVALID_VALUE;
    else if (N > 0)
        memset((void *)(uintptr_t)dstDevice, uc, N);
    pthread_mutex_unlock(&fake_cuda_lock);
    return rc;
}

/* The hidden aliases of this file's entry points (fake_cuda.def). */
#define FAKE_IN_mem(x) x
#include "fake_cuda_locals.h"
