/*
 * fake_cuda_internal.h - state shared by the files of the fake libcuda.so.1.
 *
 * Locking: one mutex (fake_cuda_lock) guards every mutable structure below. Functions whose name
 * ends in _locked expect the caller to hold it. The device table is written once by cuInit before
 * fake_cuda_initialized is set (release store), and is read-only afterwards, so device lookups
 * need no lock.
 *
 * Interposition: libflexai.so is LD_PRELOADed and exports the same cu* names. An exported
 * function called or address-taken by name from inside this library would therefore resolve to
 * the shim's wrapper, and the shim would recurse into itself. So the fake never calls its own
 * exported names: shared logic lives in static or hidden helpers, and cuGetProcAddress hands out
 * the hidden aliases declared here (fake_local_<name>), which always bind inside this library.
 */
#ifndef FLEXAI_FAKE_CUDA_INTERNAL_H
#define FLEXAI_FAKE_CUDA_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>

#include "fake.h"

/* Hidden alias of an exported entry point; FAKE_DEFINE_LOCAL goes in the defining file. */
#define FAKE_DECLARE_LOCAL(name) extern __typeof__(name) fake_local_##name FAKE_HIDDEN;
#define FAKE_DEFINE_LOCAL(name)                                                                    \
    extern __typeof__(name) fake_local_##name __attribute__((alias(#name))) FAKE_HIDDEN;
FAKE_CUDA_CORE_ENTRIES(FAKE_DECLARE_LOCAL)
FAKE_CUDA_CTX_ENTRIES(FAKE_DECLARE_LOCAL)
FAKE_CUDA_MEM_ENTRIES(FAKE_DECLARE_LOCAL)
FAKE_CUDA_VMM_ENTRIES(FAKE_DECLARE_LOCAL)

/* A CUDA context. Primary contexts live in the device table; others are malloc'd and linked in
 * a registry so a stale or foreign handle is recognised before it is dereferenced. */
struct CUctx_st {
    struct CUctx_st *next; /* registry link (created contexts only) */
    int device;            /* visible ordinal */
    int is_primary;
    unsigned int retains; /* primary only: active while > 0 */
};

struct CUmemPoolHandle_st {
    struct CUmemPoolHandle_st *next; /* registry link (created pools only) */
    int device;                      /* visible ordinal */
    int is_default;
    size_t max_size; /* 0: only the device limits it */
    size_t used;
};

struct fake_cuda_device {
    int physical;     /* index in FLEXAI_SIM_* numbering, which NVML uses too */
    size_t total;     /* bytes */
    size_t used;      /* bytes this process holds, guarded by fake_cuda_lock */
    const struct fake_device_config *cfg;
    struct CUctx_st primary;
    struct CUmemPoolHandle_st default_pool;
};

FAKE_HIDDEN extern pthread_mutex_t fake_cuda_lock;
FAKE_HIDDEN extern atomic_int fake_cuda_initialized;
FAKE_HIDDEN extern int fake_cuda_ndevices; /* visible devices */
FAKE_HIDDEN extern struct fake_cuda_device fake_cuda_devices[FAKE_MAX_DEVICES];

#define FAKE_VMM_GRANULARITY ((size_t)2 << 20)

/* CUDA_SUCCESS after a successful cuInit, else CUDA_ERROR_NOT_INITIALIZED. */
static inline CUresult fake_cuda_check_init(void) {
    return atomic_load_explicit(&fake_cuda_initialized, memory_order_acquire)
               ? CUDA_SUCCESS
               : CUDA_ERROR_NOT_INITIALIZED;
}

static inline int fake_cuda_device_valid(CUdevice dev) {
    return dev >= 0 && dev < fake_cuda_ndevices;
}

/* Device accounting: charge fails with CUDA_ERROR_OUT_OF_MEMORY rather than exceed the total;
 * uncharge never lets the counter wrap below zero. */
FAKE_HIDDEN CUresult fake_dev_charge_locked(int dev, size_t bytes);
FAKE_HIDDEN void fake_dev_uncharge_locked(int dev, size_t bytes);

/* The calling thread's current context, validated (CUDA_ERROR_INVALID_CONTEXT otherwise). */
FAKE_HIDDEN CUresult fake_ctx_current_locked(struct CUctx_st **out);
/* The context work on hStream goes to; NULL and the two special handles mean the current one. */
FAKE_HIDDEN CUresult fake_stream_ctx_locked(CUstream hStream, struct CUctx_st **out);
/* Frees what a dying context owns (fake_cuda_mem.c): allocations and arrays. */
FAKE_HIDDEN void fake_mem_release_ctx_locked(const struct CUctx_st *ctx);
/* Whether [addr, addr+len) lies in mapped VMM memory with at least the given access. */
FAKE_HIDDEN int fake_vmm_covers_locked(uintptr_t addr, size_t len, int need_write);

#endif /* FLEXAI_FAKE_CUDA_INTERNAL_H */
