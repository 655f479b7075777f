/* api_mem.c - the remote client's memory calls: allocation and info (asked: the server's slice
 * decides), copies and memsets.
 *
 * Host-to-device bytes go out in FX_R_CHUNK pieces, one after another without waiting (TCP keeps
 * them flowing while the worker copies the previous piece); a synchronous copy waits for one
 * reply after its last piece, an Async one for none (its bytes are on the wire when it returns,
 * so the program may reuse the buffer, as with pageable memory on a local GPU). Device-to-host
 * bytes come back the same way, straight into the program's buffer; an Async DtoH returns when
 * its bytes have arrived (the copy is ordered on its stream on the server). Must never read or
 * write outside the program's buffer: the server's DATA frames are bounded by the size asked.
 */
#include <string.h>

#include "client.h"

FXC_EXPORT CUresult cuMemGetInfo_v2(size_t *free_bytes, size_t *total_bytes) {
    uint64_t v[2] = {0, 0};
    CUresult rc = fxc_ready();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (free_bytes == NULL || total_bytes == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    rc = fxc_call(FX_ROP_MEM_GET_INFO, NULL, 0, NULL, 0, v, sizeof(v), NULL);
    if (rc == CUDA_SUCCESS) {
        *free_bytes = (size_t)v[0];
        *total_bytes = (size_t)v[1];
    }
    return rc;
}

FXC_EXPORT CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize) {
    uint64_t p = 0;
    CUresult rc = fxc_ready_out(dptr);
    if (rc != CUDA_SUCCESS)
        return rc;
    struct fx_rq_mem rq = {.n = bytesize};
    rc = fxc_call(FX_ROP_MEM_ALLOC, &rq, sizeof(rq), NULL, 0, &p, sizeof(p), NULL);
    if (rc == CUDA_SUCCESS)
        *dptr = (CUdeviceptr)p;
    return rc;
}

FXC_EXPORT CUresult cuMemFree_v2(CUdeviceptr dptr) {
    CUresult rc = fxc_ready();
    if (rc != CUDA_SUCCESS)
        return rc;
    struct fx_rq_mem rq = {.dst = dptr};
    return fxc_call(FX_ROP_MEM_FREE, &rq, sizeof(rq), NULL, 0, NULL, 0, NULL);
}

/* ---- copies ------------------------------------------------------------------------------- */

/* The checks every copy and memset starts with, in the driver's order: not initialized; for
 * HtoD and DtoH (host_side), a NULL host buffer of a non-empty copy; for async calls, the stream.
 * *sid: the stream's wire id (0 when not async). CUDA_SUCCESS, else the error to return. */
static CUresult mem_begin(int host_side, const void *host, size_t n, CUstream s, int async,
                          int per_thread, uint32_t *sid) {
    CUresult rc = fxc_ready();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (host_side && host == NULL && n > 0)
        return CUDA_ERROR_INVALID_VALUE;
    if (async && (rc = fxc_stream_id(s, per_thread, sid)) != CUDA_SUCCESS)
        return rc;
    return CUDA_SUCCESS;
}

/* A DtoD copy or memset: queued when async, else sent and answered. */
static CUresult mem_send(uint16_t op, uint16_t async_op, int async, const struct fx_rq_mem *rq) {
    if (async)
        return fxc_batch(async_op, rq, sizeof(*rq), NULL, 0);
    return fxc_call(op, rq, sizeof(*rq), NULL, 0, NULL, 0, NULL);
}

static CUresult htod(CUdeviceptr dst, const void *src, size_t n, CUstream s, int async,
                     int per_thread) {
    uint32_t sid = 0;
    CUresult rc = mem_begin(1, src, n, s, async, per_thread, &sid);
    if (rc != CUDA_SUCCESS)
        return rc;
    size_t off = 0;
    do {
        size_t k = n - off < FX_R_CHUNK ? n - off : FX_R_CHUNK;
        struct fx_rq_mem rq = {.dst = dst + off, .n = k, .stream = sid,
                               .flags = async ? FX_RQ_MEM_ASYNC : 0};
        const char *p = (const char *)src + off;
        off += k;
        if (!async && off == n) /* the last piece of a synchronous copy waits */
            return fxc_call(FX_ROP_MEM_HTOD, &rq, sizeof(rq), p, (uint32_t)k, NULL, 0, NULL);
        rc = fxc_batch(FX_ROP_MEM_HTOD, &rq, sizeof(rq), p, (uint32_t)k);
    } while (rc == CUDA_SUCCESS && off < n);
    return rc;
}

FXC_EXPORT CUresult cuMemcpyHtoD_v2(CUdeviceptr dstDevice, const void *srcHost, size_t ByteCount) {
    return htod(dstDevice, srcHost, ByteCount, NULL, 0, 0);
}

FXC_EXPORT CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dstDevice, const void *srcHost,
                                         size_t ByteCount, CUstream hStream) {
    return htod(dstDevice, srcHost, ByteCount, hStream, 1, 0);
}

FXC_EXPORT CUresult cuMemcpyHtoDAsync_v2_ptsz(CUdeviceptr dstDevice, const void *srcHost,
                                              size_t ByteCount, CUstream hStream) {
    return htod(dstDevice, srcHost, ByteCount, hStream, 1, 1);
}

static CUresult dtoh(void *dst, CUdeviceptr src, size_t n, CUstream s, int async,
                     int per_thread) {
    uint32_t sid = 0;
    CUresult rc = mem_begin(1, dst, n, s, async, per_thread, &sid);
    if (rc != CUDA_SUCCESS)
        return rc;
    struct fx_rq_mem rq = {.src = src, .n = n, .stream = sid,
                           .flags = async ? FX_RQ_MEM_ASYNC : 0};
    return fxc_call_dtoh(&rq, sizeof(rq), dst, n);
}

FXC_EXPORT CUresult cuMemcpyDtoH_v2(void *dstHost, CUdeviceptr srcDevice, size_t ByteCount) {
    return dtoh(dstHost, srcDevice, ByteCount, NULL, 0, 0);
}

FXC_EXPORT CUresult cuMemcpyDtoHAsync_v2(void *dstHost, CUdeviceptr srcDevice, size_t ByteCount,
                                         CUstream hStream) {
    return dtoh(dstHost, srcDevice, ByteCount, hStream, 1, 0);
}

FXC_EXPORT CUresult cuMemcpyDtoHAsync_v2_ptsz(void *dstHost, CUdeviceptr srcDevice,
                                              size_t ByteCount, CUstream hStream) {
    return dtoh(dstHost, srcDevice, ByteCount, hStream, 1, 1);
}

static CUresult dtod(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s, int async,
                     int per_thread) {
    uint32_t sid = 0;
    CUresult rc = mem_begin(0, NULL, n, s, async, per_thread, &sid);
    if (rc != CUDA_SUCCESS)
        return rc;
    struct fx_rq_mem rq = {.dst = dst, .src = src, .n = n, .stream = sid};
    return mem_send(FX_ROP_MEM_DTOD, FX_ROP_MEM_DTOD_ASYNC, async, &rq);
}

FXC_EXPORT CUresult cuMemcpyDtoD_v2(CUdeviceptr dstDevice, CUdeviceptr srcDevice,
                                    size_t ByteCount) {
    return dtod(dstDevice, srcDevice, ByteCount, NULL, 0, 0);
}

FXC_EXPORT CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dstDevice, CUdeviceptr srcDevice,
                                         size_t ByteCount, CUstream hStream) {
    return dtod(dstDevice, srcDevice, ByteCount, hStream, 1, 0);
}

FXC_EXPORT CUresult cuMemcpyDtoDAsync_v2_ptsz(CUdeviceptr dstDevice, CUdeviceptr srcDevice,
                                              size_t ByteCount, CUstream hStream) {
    return dtod(dstDevice, srcDevice, ByteCount, hStream, 1, 1);
}

/* ---- memsets ------------------------------------------------------------------------------ */

static CUresult memset_any(CUdeviceptr dst, unsigned value, unsigned elem, size_t n, CUstream s,
                           int async, int per_thread) {
    uint32_t sid = 0;
    CUresult rc = mem_begin(0, NULL, n, s, async, per_thread, &sid);
    if (rc != CUDA_SUCCESS)
        return rc;
    struct fx_rq_mem rq = {.dst = dst, .n = n, .stream = sid, .value = value, .elem = elem};
    return mem_send(FX_ROP_MEMSET, FX_ROP_MEMSET_ASYNC, async, &rq);
}

FXC_EXPORT CUresult cuMemsetD8_v2(CUdeviceptr dstDevice, unsigned char uc, size_t N) {
    return memset_any(dstDevice, uc, 1, N, NULL, 0, 0);
}
FXC_EXPORT CUresult cuMemsetD16_v2(CUdeviceptr dstDevice, unsigned short us, size_t N) {
    return memset_any(dstDevice, us, 2, N, NULL, 0, 0);
}
FXC_EXPORT CUresult cuMemsetD32_v2(CUdeviceptr dstDevice, unsigned int ui, size_t N) {
    return memset_any(dstDevice, ui, 4, N, NULL, 0, 0);
}
FXC_EXPORT CUresult cuMemsetD8Async(CUdeviceptr d, unsigned char uc, size_t N, CUstream s) {
    return memset_any(d, uc, 1, N, s, 1, 0);
}
FXC_EXPORT CUresult cuMemsetD8Async_ptsz(CUdeviceptr d, unsigned char uc, size_t N, CUstream s) {
    return memset_any(d, uc, 1, N, s, 1, 1);
}
FXC_EXPORT CUresult cuMemsetD16Async(CUdeviceptr d, unsigned short us, size_t N, CUstream s) {
    return memset_any(d, us, 2, N, s, 1, 0);
}
FXC_EXPORT CUresult cuMemsetD16Async_ptsz(CUdeviceptr d, unsigned short us, size_t N,
                                          CUstream s) {
    return memset_any(d, us, 2, N, s, 1, 1);
}
FXC_EXPORT CUresult cuMemsetD32Async(CUdeviceptr d, unsigned int ui, size_t N, CUstream s) {
    return memset_any(d, ui, 4, N, s, 1, 0);
}
FXC_EXPORT CUresult cuMemsetD32Async_ptsz(CUdeviceptr d, unsigned int ui, size_t N, CUstream s) {
    return memset_any(d, ui, 4, N, s, 1, 1);
}

/* ---- pointer attributes ------------------------------------------------------------------- */

/* Bytes each forwarded CU_POINTER_ATTRIBUTE_* value takes; 0: not forwarded (host pointers,
 * P2P tokens and memory pools mean nothing on this side). CONTEXT (1) is mapped to our handle. */
static unsigned attr_size(int attr) {
    switch (attr) {
    case 2: case 6: case 8: case 9: case 10: case 13: case 15: case 16:
        return 4;
    case 3: case 7: case 11: case 12: case 14: case 18: case 19: case 20:
        return 8;
    default:
        return 0;
    }
}

FXC_EXPORT CUresult cuPointerGetAttribute(void *data, CUpointer_attribute attribute,
                                          CUdeviceptr ptr) {
    uint64_t v = 0;
    CUresult rc = fxc_ready_out(data);
    if (rc != CUDA_SUCCESS)
        return rc;
    if (attribute != 1 && attr_size(attribute) == 0)
        return CUDA_ERROR_NOT_SUPPORTED;
    struct fx_rq_mem rq = {.src = ptr, .value = (uint32_t)attribute};
    rc = fxc_call(FX_ROP_POINTER_GET_ATTRIBUTE, &rq, sizeof(rq), NULL, 0, &v, sizeof(v), NULL);
    if (rc != CUDA_SUCCESS)
        return rc;
    if (attribute == 1) {
        *(CUcontext *)data = v ? (CUcontext)fxc_handle(FXC_CTX, (uint32_t)v) : NULL;
    } else if (attr_size(attribute) == 4) {
        uint32_t u = (uint32_t)v;
        memcpy(data, &u, sizeof(u));
    } else {
        memcpy(data, &v, sizeof(v));
    }
    return CUDA_SUCCESS;
}

FXC_EXPORT CUresult cuPointerGetAttributes(unsigned int numAttributes,
                                           CUpointer_attribute *attributes, void **data,
                                           CUdeviceptr ptr) {
    if (numAttributes > 0 && (attributes == NULL || data == NULL))
        return CUDA_ERROR_INVALID_VALUE;
    for (unsigned i = 0; i < numAttributes; i++) {
        CUresult rc = cuPointerGetAttribute(data[i], attributes[i], ptr);
        if (rc != CUDA_SUCCESS)
            return rc;
    }
    return CUDA_SUCCESS;
}
