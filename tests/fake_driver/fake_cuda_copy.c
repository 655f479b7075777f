/*
 * fake_cuda_copy.c - device-to-device copies, the stream-ordered (Async) copies and memsets, and
 * pointer attributes: what the remote client (csrc/remote) forwards beyond fake_cuda_mem.c.
 *
 * An Async copy or memset waits for the work queued before it on its stream, then runs: as the
 * real driver does for copies to and from pageable host memory, which is the only host memory
 * the simulated device has. So the host buffer may be reused as soon as the call returns. It
 * must never touch device memory outside a live allocation (checked under fake_cuda_lock, as in
 * fake_cuda_mem.c, so that a concurrent free cannot unmap it mid-copy).
 */
#include <string.h>

#include "fake_cuda_internal.h"

/* The synchronous calls run on the legacy stream, the Async ones on theirs. */
static CUresult ordered(CUstream hStream, int sync, const struct fake_access *x) {
    CUresult rc = sync ? fake_exec_sync_default() : fake_local_cuStreamSynchronize(hStream);
    return rc != CUDA_SUCCESS ? rc : fake_mem_access(x);
}

static CUresult copy(CUstream s, int sync, void *dst, int dst_dev, const void *src, int src_dev,
                     size_t n) {
    struct fake_access x = {.dst = dst, .src = src, .n = n, .dst_dev = dst_dev,
                            .src_dev = src_dev};
    return ordered(s, sync, &x);
}

static CUresult fill(CUstream s, int sync, CUdeviceptr dst, unsigned value, unsigned elem,
                     size_t n) {
    struct fake_access x = {.dst = (void *)(uintptr_t)dst, .n = n, .dst_dev = 1, .fill = 1,
                            .value = value, .elem = elem};
    return ordered(s, sync, &x);
}

CUresult cuMemcpyDtoD_v2(CUdeviceptr dstDevice, CUdeviceptr srcDevice, size_t ByteCount) {
    return copy(NULL, 1, (void *)(uintptr_t)dstDevice, 1, (const void *)(uintptr_t)srcDevice, 1,
                ByteCount);
}

CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dstDevice, const void *srcHost, size_t ByteCount,
                              CUstream hStream) {
    return copy(hStream, 0, (void *)(uintptr_t)dstDevice, 1, srcHost, 0, ByteCount);
}

CUresult cuMemcpyDtoHAsync_v2(void *dstHost, CUdeviceptr srcDevice, size_t ByteCount,
                              CUstream hStream) {
    return copy(hStream, 0, dstHost, 0, (const void *)(uintptr_t)srcDevice, 1, ByteCount);
}

CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dstDevice, CUdeviceptr srcDevice, size_t ByteCount,
                              CUstream hStream) {
    return copy(hStream, 0, (void *)(uintptr_t)dstDevice, 1, (const void *)(uintptr_t)srcDevice,
                1, ByteCount);
}

CUresult cuMemsetD16_v2(CUdeviceptr dstDevice, unsigned short us, size_t N) {
    return fill(NULL, 1, dstDevice, us, 2, N);
}

CUresult cuMemsetD32_v2(CUdeviceptr dstDevice, unsigned int ui, size_t N) {
    return fill(NULL, 1, dstDevice, ui, 4, N);
}

CUresult cuMemsetD8Async(CUdeviceptr dstDevice, unsigned char uc, size_t N, CUstream hStream) {
    return fill(hStream, 0, dstDevice, uc, 1, N);
}

CUresult cuMemsetD16Async(CUdeviceptr dstDevice, unsigned short us, size_t N, CUstream hStream) {
    return fill(hStream, 0, dstDevice, us, 2, N);
}

CUresult cuMemsetD32Async(CUdeviceptr dstDevice, unsigned int ui, size_t N, CUstream hStream) {
    return fill(hStream, 0, dstDevice, ui, 4, N);
}

/* CU_POINTER_ATTRIBUTE_* the simulated device answers; the others are not supported. */
enum {
    PTR_CONTEXT = 1,
    PTR_MEMORY_TYPE = 2, /* unsigned int: CU_MEMORYTYPE_DEVICE (2) */
    PTR_DEVICE_POINTER = 3,
    PTR_IS_MANAGED = 8, /* unsigned int (bool) */
    PTR_DEVICE_ORDINAL = 9,
    PTR_RANGE_START_ADDR = 11,
    PTR_RANGE_SIZE = 12,
};

CUresult cuPointerGetAttribute(void *data, CUpointer_attribute attribute, CUdeviceptr ptr) {
    uintptr_t base = 0;
    size_t size = 0;
    const struct CUctx_st *ctx = NULL;
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (data == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&fake_cuda_lock);
    int found = fake_mem_find_locked((uintptr_t)ptr, 0, &base, &size, &ctx);
    pthread_mutex_unlock(&fake_cuda_lock);
    if (!found)
        return CUDA_ERROR_INVALID_VALUE;
    unsigned u;
    int a = (int)attribute;
    switch (a) {
    case PTR_CONTEXT:
        *(CUcontext *)data = (CUcontext)(uintptr_t)ctx;
        return CUDA_SUCCESS;
    case PTR_MEMORY_TYPE:
    case PTR_IS_MANAGED:
    case PTR_DEVICE_ORDINAL:
        u = a == PTR_MEMORY_TYPE ? 2u : a == PTR_IS_MANAGED ? 0u : (unsigned)ctx->device;
        memcpy(data, &u, sizeof(u));
        return CUDA_SUCCESS;
    case PTR_DEVICE_POINTER:
        *(CUdeviceptr *)data = ptr;
        return CUDA_SUCCESS;
    case PTR_RANGE_START_ADDR:
        *(CUdeviceptr *)data = (CUdeviceptr)base;
        return CUDA_SUCCESS;
    case PTR_RANGE_SIZE:
        *(size_t *)data = size;
        return CUDA_SUCCESS;
    default:
        return CUDA_ERROR_NOT_SUPPORTED;
    }
}

/* The hidden aliases of this file's entry points (fake_cuda.def). */
#define FAKE_IN_copy(x) x
#include "fake_cuda_locals.h"
