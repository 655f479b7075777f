/*
 * fake_cuda_vmm.c - simulated virtual memory management: cuMemCreate / cuMemAddressReserve /
 * cuMemMap / cuMemSetAccess and their inverses (PyTorch expandable segments, NCCL buffers).
 *
 * A physical allocation is a memfd of the requested size: sparse, so it costs nothing until
 * touched, and mappable at several addresses that then share data, which anonymous memory cannot
 * do. A reservation is a PROT_NONE anonymous mapping; cuMemMap replaces part of it with the memfd
 * (still PROT_NONE) and cuMemSetAccess opens it, so touching memory without access faults as it
 * would on a GPU.
 *
 * Physical memory is charged to its device from cuMemCreate until the handle is released *and*
 * no mapping uses it any more, which is when the real driver frees it. It belongs to the device,
 * not to a context, and outlives context destruction. None of these calls needs a context.
 */
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fake_cuda_internal.h"

struct fake_phys {
    struct fake_phys *next;
    int fd;
    size_t size;
    int device;         /* visible ordinal */
    unsigned int maps;  /* mappings using it */
    int released;       /* cuMemRelease called; destroyed once maps is 0 */
};

struct fake_reservation {
    struct fake_reservation *next;
    uintptr_t base;
    size_t size;
};

struct fake_mapping {
    struct fake_mapping *next;
    uintptr_t va;
    size_t size;
    struct fake_phys *phys;
    int access; /* CU_MEM_ACCESS_FLAGS_PROT_* */
};

static struct fake_phys *phys_list;
static struct fake_reservation *reservations;
static struct fake_mapping *mappings;

/* ---- helpers (lock held unless stated) --------------------------------------------------- */

static int granular(size_t n) {
    return n % FAKE_VMM_GRANULARITY == 0;
}

/* Common checks of a CUmemAllocationProp: pinned memory on a visible device. */
static CUresult prop_check(const CUmemAllocationProp *prop) {
    if (prop == NULL || prop->type != CU_MEM_ALLOCATION_TYPE_PINNED ||
        prop->location.type != CU_MEM_LOCATION_TYPE_DEVICE)
        return CUDA_ERROR_INVALID_VALUE;
    return fake_cuda_device_valid(prop->location.id) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_DEVICE;
}

/* Looks a handle up by value: it is a pointer, but an unknown one must not be dereferenced. */
static struct fake_phys *phys_find_locked(CUmemGenericAllocationHandle handle) {
    for (struct fake_phys *p = phys_list; p != NULL; p = p->next)
        if ((CUmemGenericAllocationHandle)(uintptr_t)p == handle && !p->released)
            return p;
    return NULL;
}

static void phys_destroy_locked(struct fake_phys *phys) {
    for (struct fake_phys **link = &phys_list; *link != NULL; link = &(*link)->next) {
        if (*link == phys) {
            *link = phys->next;
            break;
        }
    }
    close(phys->fd);
    fake_dev_uncharge_locked(phys->device, phys->size);
    free(phys);
}

/* Whether [va, va+size) is exactly a union of whole mappings (no mapping cut, no hole). */
static int whole_mappings_locked(uintptr_t va, size_t size) {
    size_t covered = 0;
    for (const struct fake_mapping *m = mappings; m != NULL; m = m->next) {
        int overlaps = m->va < va + size && va < m->va + m->size;
        int inside = m->va >= va && m->size <= size && m->va - va <= size - m->size;
        if (overlaps && !inside)
            return 0;
        if (inside)
            covered += m->size; /* mappings never overlap, so this sums distinct bytes */
    }
    return covered == size;
}

static int access_to_prot(int access) {
    if (access == CU_MEM_ACCESS_FLAGS_PROT_READWRITE)
        return PROT_READ | PROT_WRITE;
    return access == CU_MEM_ACCESS_FLAGS_PROT_READ ? PROT_READ : PROT_NONE;
}

/* Arguments every range call shares: granular, non-empty, not wrapping around. */
static int range_ok(CUdeviceptr ptr, size_t size) {
    return size > 0 && granular((size_t)ptr) && granular(size) &&
           size <= UINTPTR_MAX - (uintptr_t)ptr;
}

int fake_vmm_covers_locked(uintptr_t addr, size_t len, int need_write) {
    int need = need_write ? CU_MEM_ACCESS_FLAGS_PROT_READWRITE : CU_MEM_ACCESS_FLAGS_PROT_READ;
    if (len > UINTPTR_MAX - addr)
        return 0;
    /* Walk mapping by mapping: a range may span several adjacent handles. */
    for (uintptr_t cur = addr, end = addr + len; cur < end;) {
        const struct fake_mapping *m = mappings;
        while (m != NULL && !(cur >= m->va && cur - m->va < m->size))
            m = m->next;
        if (m == NULL || (m->access & need) != need)
            return 0;
        cur = m->va + m->size;
    }
    return 1;
}

/* ---- physical allocations ---------------------------------------------------------------- */

CUresult cuMemGetAllocationGranularity(size_t *granularity, const CUmemAllocationProp *prop,
                                       CUmemAllocationGranularity_flags option) {
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (granularity == NULL || (option != CU_MEM_ALLOC_GRANULARITY_MINIMUM &&
                                option != CU_MEM_ALLOC_GRANULARITY_RECOMMENDED))
        return CUDA_ERROR_INVALID_VALUE;
    rc = prop_check(prop);
    if (rc == CUDA_SUCCESS)
        *granularity = FAKE_VMM_GRANULARITY;
    return rc;
}

CUresult cuMemCreate(CUmemGenericAllocationHandle *handle, size_t size,
                     const CUmemAllocationProp *prop, unsigned long long flags) {
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (handle == NULL || flags != 0 || size == 0 || !granular(size))
        return CUDA_ERROR_INVALID_VALUE;
    rc = prop_check(prop);
    if (rc != CUDA_SUCCESS)
        return rc;
    int dev = prop->location.id;
    struct fake_phys *phys = calloc(1, sizeof(*phys));
    if (phys == NULL)
        return CUDA_ERROR_OUT_OF_MEMORY;
    phys->fd = -1;
    pthread_mutex_lock(&fake_cuda_lock);
    rc = fake_dev_charge_locked(dev, size);
    pthread_mutex_unlock(&fake_cuda_lock);
    if (rc != CUDA_SUCCESS)
        goto fail;
    phys->fd = memfd_create("flexai-fake-vmm", MFD_CLOEXEC);
    if (phys->fd < 0 || ftruncate(phys->fd, (off_t)size) != 0)
        goto fail_charged;
    phys->size = size;
    phys->device = dev;
    pthread_mutex_lock(&fake_cuda_lock);
    phys->next = phys_list;
    phys_list = phys;
    pthread_mutex_unlock(&fake_cuda_lock);
    *handle = (CUmemGenericAllocationHandle)(uintptr_t)phys;
    return CUDA_SUCCESS;
fail_charged:
    pthread_mutex_lock(&fake_cuda_lock);
    fake_dev_uncharge_locked(dev, size);
    pthread_mutex_unlock(&fake_cuda_lock);
    rc = CUDA_ERROR_OUT_OF_MEMORY;
fail:
    if (phys->fd >= 0)
        close(phys->fd);
    free(phys);
    return rc;
}

CUresult cuMemRelease(CUmemGenericAllocationHandle handle) {
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    pthread_mutex_lock(&fake_cuda_lock);
    struct fake_phys *phys = phys_find_locked(handle);
    if (phys == NULL) {
        rc = CUDA_ERROR_INVALID_VALUE;
    } else {
        phys->released = 1;
        if (phys->maps == 0)
            phys_destroy_locked(phys);
    }
    pthread_mutex_unlock(&fake_cuda_lock);
    return rc;
}

/* ---- address reservations ---------------------------------------------------------------- */

/* mmap()s size bytes of PROT_NONE at an address aligned to align (a power of two), at the hint
 * when it is free. Returns 0 on failure. */
static uintptr_t reserve_aligned(size_t size, size_t align, uintptr_t hint) {
    const int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;
    size_t span;

    if (hint != 0 && hint % align == 0) {
        void *p = mmap((void *)hint, size, PROT_NONE, flags, -1, 0);
        if (p == (void *)hint)
            return hint;
        if (p != MAP_FAILED)
            munmap(p, size);
    }
    /* Over-allocate by the alignment, then trim both ends. */
    if (__builtin_add_overflow(size, align, &span))
        return 0;
    void *p = mmap(NULL, span, PROT_NONE, flags, -1, 0);
    if (p == MAP_FAILED)
        return 0;
    uintptr_t start = ((uintptr_t)p + align - 1) & ~(uintptr_t)(align - 1);
    uintptr_t map_end = (uintptr_t)p + span;
    if (start > (uintptr_t)p)
        munmap(p, start - (uintptr_t)p);
    if (map_end > start + size)
        munmap((void *)(start + size), map_end - (start + size));
    return start;
}

CUresult cuMemAddressReserve(CUdeviceptr *ptr, size_t size, size_t alignment, CUdeviceptr addr,
                             unsigned long long flags) {
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (ptr == NULL || flags != 0 || size == 0 || !granular(size) ||
        (alignment & (alignment - 1)) != 0)
        return CUDA_ERROR_INVALID_VALUE;
    if (alignment < FAKE_VMM_GRANULARITY)
        alignment = FAKE_VMM_GRANULARITY;
    struct fake_reservation *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return CUDA_ERROR_OUT_OF_MEMORY;
    r->base = reserve_aligned(size, alignment, (uintptr_t)addr);
    if (r->base == 0) {
        free(r);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    r->size = size;
    pthread_mutex_lock(&fake_cuda_lock);
    r->next = reservations;
    reservations = r;
    pthread_mutex_unlock(&fake_cuda_lock);
    *ptr = (CUdeviceptr)r->base;
    return CUDA_SUCCESS;
}

/* The range must be exactly one reservation, with nothing mapped in it any more. */
CUresult cuMemAddressFree(CUdeviceptr ptr, size_t size) {
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    pthread_mutex_lock(&fake_cuda_lock);
    struct fake_reservation **link = &reservations;
    while (*link != NULL && !((*link)->base == (uintptr_t)ptr && (*link)->size == size))
        link = &(*link)->next;
    struct fake_reservation *r = *link;
    rc = CUDA_ERROR_INVALID_VALUE;
    if (r != NULL) {
        int mapped = 0;
        for (const struct fake_mapping *m = mappings; m != NULL && !mapped; m = m->next)
            mapped = m->va >= r->base && m->va - r->base < r->size;
        if (!mapped) {
            *link = r->next;
            munmap((void *)r->base, r->size);
            free(r);
            rc = CUDA_SUCCESS;
        }
    }
    pthread_mutex_unlock(&fake_cuda_lock);
    return rc;
}

/* ---- mapping ----------------------------------------------------------------------------- */

CUresult cuMemMap(CUdeviceptr ptr, size_t size, size_t offset, CUmemGenericAllocationHandle handle,
                  unsigned long long flags) {
    uintptr_t va = (uintptr_t)ptr;
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (flags != 0 || !range_ok(ptr, size) || !granular(offset))
        return CUDA_ERROR_INVALID_VALUE;
    struct fake_mapping *m = calloc(1, sizeof(*m));
    if (m == NULL)
        return CUDA_ERROR_OUT_OF_MEMORY;
    pthread_mutex_lock(&fake_cuda_lock);
    struct fake_phys *phys = phys_find_locked(handle);
    const struct fake_reservation *r = reservations;
    while (r != NULL &&
           !(va >= r->base && va - r->base <= r->size && size <= r->size - (va - r->base)))
        r = r->next;
    int overlaps = 0;
    for (const struct fake_mapping *o = mappings; o != NULL && !overlaps; o = o->next)
        overlaps = o->va < va + size && va < o->va + o->size;
    rc = CUDA_ERROR_INVALID_VALUE;
    if (phys != NULL && r != NULL && !overlaps && offset <= phys->size &&
        size <= phys->size - offset) {
        /* MAP_FIXED replaces exactly this part of the reservation, nothing else. */
        void *p =
            mmap((void *)va, size, PROT_NONE, MAP_SHARED | MAP_FIXED, phys->fd, (off_t)offset);
        if (p == MAP_FAILED) {
            rc = CUDA_ERROR_OUT_OF_MEMORY;
        } else {
            m->va = va;
            m->size = size;
            m->phys = phys;
            m->access = CU_MEM_ACCESS_FLAGS_PROT_NONE;
            m->next = mappings;
            mappings = m;
            phys->maps++;
            m = NULL;
            rc = CUDA_SUCCESS;
        }
    }
    pthread_mutex_unlock(&fake_cuda_lock);
    free(m); /* NULL when it was linked */
    return rc;
}

/* The range must consist of whole mappings; each goes back to being reserved-only. */
CUresult cuMemUnmap(CUdeviceptr ptr, size_t size) {
    uintptr_t va = (uintptr_t)ptr;
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (!range_ok(ptr, size))
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&fake_cuda_lock);
    if (!whole_mappings_locked(va, size)) {
        pthread_mutex_unlock(&fake_cuda_lock);
        return CUDA_ERROR_INVALID_VALUE;
    }
    mmap((void *)va, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1,
         0);
    struct fake_mapping **link = &mappings;
    while (*link != NULL) {
        struct fake_mapping *m = *link;
        if (m->va >= va && m->va - va < size) {
            *link = m->next;
            if (--m->phys->maps == 0 && m->phys->released)
                phys_destroy_locked(m->phys);
            free(m);
        } else {
            link = &m->next;
        }
    }
    pthread_mutex_unlock(&fake_cuda_lock);
    return CUDA_SUCCESS;
}

/* The host has one address space, so the most permissive access any listed device gets is what
 * the host mapping gets. */
CUresult cuMemSetAccess(CUdeviceptr ptr, size_t size, const CUmemAccessDesc *desc, size_t count) {
    uintptr_t va = (uintptr_t)ptr;
    int access = CU_MEM_ACCESS_FLAGS_PROT_NONE;
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (desc == NULL || count == 0 || !range_ok(ptr, size))
        return CUDA_ERROR_INVALID_VALUE;
    for (size_t i = 0; i < count; i++) {
        if (desc[i].location.type != CU_MEM_LOCATION_TYPE_DEVICE ||
            (desc[i].flags != CU_MEM_ACCESS_FLAGS_PROT_NONE &&
             desc[i].flags != CU_MEM_ACCESS_FLAGS_PROT_READ &&
             desc[i].flags != CU_MEM_ACCESS_FLAGS_PROT_READWRITE))
            return CUDA_ERROR_INVALID_VALUE;
        if (!fake_cuda_device_valid(desc[i].location.id))
            return CUDA_ERROR_INVALID_DEVICE;
        access |= (int)desc[i].flags; /* an enum in cuda.h, int here */
    }
    pthread_mutex_lock(&fake_cuda_lock);
    if (!whole_mappings_locked(va, size) ||
        mprotect((void *)va, size, access_to_prot(access)) != 0) {
        rc = CUDA_ERROR_INVALID_VALUE;
    } else {
        for (struct fake_mapping *m = mappings; m != NULL; m = m->next)
            if (m->va >= va && m->va - va < size)
                m->access = access;
    }
    pthread_mutex_unlock(&fake_cuda_lock);
    return rc;
}

/* The hidden aliases of this file's entry points (fake_cuda.def). */
#define FAKE_IN_vmm(x) x
#include "fake_cuda_locals.h"
