/*
 * fake_acl.c - the stand-in libascendcl.so (see fake_acl_internal.h): device memory (linear
 * allocations and the virtual-memory family) and its query. Devices and contexts are
 * fake_acl_ctx.c's, streams, events and work fake_acl_exec.c's.
 *
 * As strict as the documentation says the runtime is: nothing but aclInit works before aclInit
 * (ACL_ERROR_UNINITIALIZE), memory calls need a current device (ACL_ERROR_RT_CONTEXT_NULL), a
 * size of 0 or a NULL output is ACL_ERROR_INVALID_PARAM, an allocation the device cannot hold is
 * ACL_ERROR_RT_MEMORY_ALLOCATION, physical memory cannot be freed while mapped, and an unknown
 * pointer or handle is refused. Allocations take what acl_sizes.h says the runtime takes.
 * Linear allocations belong to the context current when they were made and are freed with it
 * (the last aclrtResetDevice of its device, aclrtDestroyContext): a context "manages the
 * lifetime of device memory" (CANN guide, "Concepts"). Physical memory (aclrtMallocPhysical) is
 * a handle of the process, freed by aclrtFreePhysical only: the documentation ties it to no
 * context.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "acl_sizes.h"
#include "fake_acl_internal.h"
#include "util.h"

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER; /* guards the tables below */

#define NEED_INIT()                                                                            \
    do {                                                                                       \
        if (!fake_acl_ready()) return ACL_ERROR_UNINITIALIZE;                                  \
    } while (0)

/* ---- memory ------------------------------------------------------------------------------- */

/* One allocation, a physical handle or a reservation; kept in one list (tests hold hundreds). */
enum { K_LINEAR = 1, K_PHYS = 2, K_RESERVED = 3 };
struct block {
    struct block *next;
    int kind;
    int physical;  /* device charged; -1: host memory (physical handles) */
    void *addr;    /* linear, reserved: the mapping; phys: the handle's own address */
    size_t size;   /* what was mapped or charged */
    size_t charge;
    int mapped;    /* phys: mappings of it; reserved: nothing */
    void *map_at;  /* phys: where it is mapped (one mapping at a time) */
    struct fake_ctx *owner; /* linear: the context it dies with */
};
static struct block *blocks;

static struct block *find_locked(int kind, const void *addr)
{
    for (struct block *b = blocks; b; b = b->next)
        if (b->kind == kind && b->addr == addr) return b;
    return NULL;
}

static void unlink_locked(struct block *gone)
{
    for (struct block **p = &blocks; *p; p = &(*p)->next)
        if (*p == gone) {
            *p = gone->next;
            return;
        }
}

/* Host memory standing in for HBM: reserved, not committed until touched. */
static void *map_fresh(size_t size, int prot)
{
    void *p = mmap(NULL, size ? size : 1, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1,
                   0);
    return p == MAP_FAILED ? NULL : p;
}

static aclError charge(int physical, size_t bytes)
{
    const struct fake_config *cfg = fake_config_get();
    return fake_node_mem_charge(physical, bytes, cfg->memory) == 0 ? ACL_SUCCESS
                                                                   : ACL_ERROR_RT_MEMORY_ALLOCATION;
}

static aclError alloc_linear(void **devPtr, size_t size, unsigned policy, int align32)
{
    NEED_INIT();
    if (!devPtr || size == 0) return ACL_ERROR_INVALID_PARAM;
    struct fake_ctx *owner = fake_acl_current_ctx();
    int phys = owner ? fake_acl_physical(owner->ordinal) : -1;
    if (phys < 0) return ACL_ERROR_RT_CONTEXT_NULL;
    size_t bytes = (size_t)fx_acl_alloc_bytes(size, policy, align32);
    aclError rc = charge(phys, bytes);
    if (rc != ACL_SUCCESS) return rc;
    struct block *b = calloc(1, sizeof *b);
    void *p = b ? map_fresh(bytes, PROT_READ | PROT_WRITE) : NULL;
    if (!p) {
        free(b);
        fake_node_mem_uncharge(phys, bytes);
        return ACL_ERROR_RT_MEMORY_ALLOCATION;
    }
    *b = (struct block){NULL, K_LINEAR, phys, p, bytes, bytes, 0, NULL, owner};
    pthread_mutex_lock(&mu);
    b->next = blocks;
    blocks = b;
    pthread_mutex_unlock(&mu);
    *devPtr = p;
    return ACL_SUCCESS;
}

FAKE_ACL_EXPORT aclError aclrtMalloc(void **devPtr, size_t size, aclrtMemMallocPolicy policy)
{
    return alloc_linear(devPtr, size, (unsigned)policy, 0);
}

FAKE_ACL_EXPORT aclError aclrtMallocAlign32(void **devPtr, size_t size,
                                            aclrtMemMallocPolicy policy)
{
    return alloc_linear(devPtr, size, (unsigned)policy, 1);
}

FAKE_ACL_EXPORT aclError aclrtMallocCached(void **devPtr, size_t size,
                                           aclrtMemMallocPolicy policy)
{
    return alloc_linear(devPtr, size, (unsigned)policy, 0);
}

FAKE_ACL_EXPORT aclError aclrtMallocWithCfg(void **devPtr, size_t size,
                                            aclrtMemMallocPolicy policy, aclrtMallocConfig *cfg)
{
    (void)cfg;
    return alloc_linear(devPtr, size, (unsigned)policy, 0);
}

FAKE_ACL_EXPORT aclError aclrtFree(void *devPtr)
{
    NEED_INIT();
    pthread_mutex_lock(&mu);
    struct block *b = devPtr ? find_locked(K_LINEAR, devPtr) : NULL;
    if (b) unlink_locked(b);
    pthread_mutex_unlock(&mu);
    if (!b) return ACL_ERROR_INVALID_PARAM;
    munmap(b->addr, b->size);
    fake_node_mem_uncharge(b->physical, b->charge);
    free(b);
    return ACL_SUCCESS;
}

/* A context released: the linear memory allocated in it goes back to the device. */
void fake_acl_mem_release(struct fake_ctx *c)
{
    for (;;) {
        pthread_mutex_lock(&mu);
        struct block *b = blocks;
        while (b && !(b->kind == K_LINEAR && b->owner == c)) b = b->next;
        if (b) unlink_locked(b);
        pthread_mutex_unlock(&mu);
        if (!b) return;
        munmap(b->addr, b->size);
        fake_node_mem_uncharge(b->physical, b->charge);
        free(b);
    }
}

FAKE_ACL_EXPORT aclError aclrtMemset(void *devPtr, size_t maxCount, int32_t value, size_t count)
{
    NEED_INIT();
    if (!devPtr || count > maxCount) return ACL_ERROR_INVALID_PARAM;
    memset(devPtr, value, count); /* touches the pages: the host commits them */
    return ACL_SUCCESS;
}

FAKE_ACL_EXPORT aclError aclrtGetMemInfo(aclrtMemAttr attr, size_t *free_bytes,
                                         size_t *total_bytes)
{
    (void)attr; /* one kind of memory here: every attribute reports the HBM */
    NEED_INIT();
    if (!free_bytes || !total_bytes) return ACL_ERROR_INVALID_PARAM;
    int phys = fake_acl_physical(fake_acl_current());
    if (phys < 0) return ACL_ERROR_RT_CONTEXT_NULL;
    size_t total = fake_config_get()->memory, used = fake_node_mem_used(phys);
    *total_bytes = total;
    *free_bytes = used < total ? total - used : 0;
    return ACL_SUCCESS;
}

/* ---- the virtual-memory family ------------------------------------------------------------ */

FAKE_ACL_EXPORT aclError aclrtReserveMemAddress(void **virPtr, size_t size, size_t alignment,
                                                void *expectPtr, uint64_t flags)
{
    (void)alignment;
    (void)flags;
    NEED_INIT();
    if (!virPtr || size == 0 || expectPtr) return ACL_ERROR_INVALID_PARAM;
    struct block *b = calloc(1, sizeof *b);
    void *p = b ? map_fresh(size, PROT_NONE) : NULL;
    if (!p) {
        free(b);
        return ACL_ERROR_RT_MEMORY_ALLOCATION;
    }
    *b = (struct block){NULL, K_RESERVED, -1, p, size, 0, 0, NULL, NULL};
    pthread_mutex_lock(&mu);
    b->next = blocks;
    blocks = b;
    pthread_mutex_unlock(&mu);
    *virPtr = p;
    return ACL_SUCCESS;
}

FAKE_ACL_EXPORT aclError aclrtReleaseMemAddress(void *virPtr)
{
    NEED_INIT();
    pthread_mutex_lock(&mu);
    struct block *b = find_locked(K_RESERVED, virPtr);
    if (b) unlink_locked(b);
    pthread_mutex_unlock(&mu);
    if (!b) return ACL_ERROR_INVALID_PARAM;
    munmap(b->addr, b->size);
    free(b);
    return ACL_SUCCESS;
}

FAKE_ACL_EXPORT aclError aclrtMallocPhysical(aclrtDrvMemHandle *handle, size_t size,
                                             const aclrtPhysicalMemProp *prop, uint64_t flags)
{
    NEED_INIT();
    if (!handle || !prop || size == 0 || flags != 0) return ACL_ERROR_INVALID_PARAM;
    int phys = -1;
    if (prop->location.type == ACL_MEM_LOCATION_TYPE_DEVICE) {
        phys = fake_acl_physical((int)prop->location.id);
        if (phys < 0) return ACL_ERROR_RT_INVALID_DEVICEID;
        aclError rc = charge(phys, size);
        if (rc != ACL_SUCCESS) return rc;
    }
    struct block *b = calloc(1, sizeof *b);
    if (!b) {
        if (phys >= 0) fake_node_mem_uncharge(phys, size);
        return ACL_ERROR_RT_MEMORY_ALLOCATION;
    }
    *b = (struct block){NULL, K_PHYS, phys, b, size, phys >= 0 ? size : 0, 0, NULL, NULL};
    pthread_mutex_lock(&mu);
    b->next = blocks;
    blocks = b;
    pthread_mutex_unlock(&mu);
    *handle = b;
    return ACL_SUCCESS;
}

FAKE_ACL_EXPORT aclError aclrtFreePhysical(aclrtDrvMemHandle handle)
{
    NEED_INIT();
    pthread_mutex_lock(&mu);
    struct block *b = find_locked(K_PHYS, handle);
    aclError rc = !b ? ACL_ERROR_INVALID_PARAM : b->mapped ? ACL_ERROR_RT_PARAM_INVALID : 0;
    if (rc == ACL_SUCCESS) unlink_locked(b);
    pthread_mutex_unlock(&mu);
    if (rc != ACL_SUCCESS) return rc; /* still mapped: unmap it first, says the documentation */
    if (b->physical >= 0) fake_node_mem_uncharge(b->physical, b->charge);
    free(b);
    return ACL_SUCCESS;
}

/* Maps a handle at virPtr inside a reservation: the pages become usable. */
FAKE_ACL_EXPORT aclError aclrtMapMem(void *virPtr, size_t size, size_t offset,
                                     aclrtDrvMemHandle handle, uint64_t flags)
{
    NEED_INIT();
    pthread_mutex_lock(&mu);
    struct block *h = find_locked(K_PHYS, handle), *r = NULL;
    for (struct block *b = blocks; b && !r; b = b->next)
        if (b->kind == K_RESERVED && (char *)virPtr >= (char *)b->addr &&
            (char *)virPtr + size <= (char *)b->addr + b->size)
            r = b;
    aclError rc = (!h || !r || offset || flags || size != h->size || h->mapped)
                      ? ACL_ERROR_INVALID_PARAM
                      : ACL_SUCCESS;
    if (rc == ACL_SUCCESS && mprotect(virPtr, size, PROT_READ | PROT_WRITE) != 0)
        rc = ACL_ERROR_INVALID_PARAM;
    if (rc == ACL_SUCCESS) {
        h->mapped = 1;
        h->map_at = virPtr;
    }
    pthread_mutex_unlock(&mu);
    return rc;
}

FAKE_ACL_EXPORT aclError aclrtUnmapMem(void *virPtr)
{
    NEED_INIT();
    pthread_mutex_lock(&mu);
    struct block *h = NULL;
    for (struct block *b = blocks; b && !h; b = b->next)
        if (b->kind == K_PHYS && b->mapped && b->map_at == virPtr) h = b;
    if (h) {
        madvise(virPtr, h->size, MADV_DONTNEED);
        mprotect(virPtr, h->size, PROT_NONE);
        h->mapped = 0;
        h->map_at = NULL;
    }
    pthread_mutex_unlock(&mu);
    return h ? ACL_SUCCESS : ACL_ERROR_INVALID_PARAM;
}
