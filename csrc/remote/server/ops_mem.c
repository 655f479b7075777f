/* ops_mem.c - the worker's memory handlers: allocation and info (through libflexai.so, so the
 * slice's quota answers), copies in pieces between the socket and the device, memsets, pointer
 * attributes. A MEM_HTOD's bytes are taken from the socket PIECE bytes at a time and copied
 * while the next ones arrive in the kernel's buffer; a MEM_DTOH's bytes go out as DATA frames of
 * PIECE bytes. Must never leave bytes of a frame unread (a failed copy still drains its bytes)
 * and never send more DATA than the client asked for.
 */
#include <string.h>

#include "session.h"

#define PIECE ((size_t)1 << 20)

static uint8_t piece[PIECE];

CUresult fxs_op_MEM_GET_INFO(const uint8_t *p, uint32_t len, uint32_t more, struct fxs_out *out) {
    (void)p, (void)len, (void)more;
    size_t free_b = 0, total = 0;
    CUresult rc = FXS_CALL(cuMemGetInfo_v2, &free_b, &total);
    uint64_t v[2] = {free_b, total};
    fxs_reply(out, v, sizeof(v));
    return rc;
}

CUresult fxs_op_MEM_ALLOC(const uint8_t *p, uint32_t len, uint32_t more, struct fxs_out *out) {
    (void)more;
    FXS_TAKE(struct fx_rq_mem, rq, p, len);
    CUdeviceptr d = 0;
    CUresult rc = FXS_CALL(cuMemAlloc_v2, &d, (size_t)rq.n);
    uint64_t v = d;
    fxs_reply(out, &v, sizeof(v));
    return rc;
}

CUresult fxs_op_MEM_FREE(const uint8_t *p, uint32_t len, uint32_t more, struct fxs_out *out) {
    (void)more, (void)out;
    FXS_TAKE(struct fx_rq_mem, rq, p, len);
    return FXS_CALL(cuMemFree_v2, (CUdeviceptr)rq.dst);
}

CUresult fxs_op_MEM_HTOD(const uint8_t *p, uint32_t len, uint32_t more, struct fxs_out *out) {
    (void)out;
    FXS_TAKE(struct fx_rq_mem, rq, p, len);
    CUstream s = NULL;
    CUresult rc = CUDA_SUCCESS;
    if (rq.n != more)
        return FXS_CLOSE;
    int async = (rq.flags & FX_RQ_MEM_ASYNC) != 0;
    if (async && fxs_stream(rq.stream, &s) != 0)
        rc = CUDA_ERROR_INVALID_HANDLE;
    for (size_t off = 0; off < more;) {
        size_t k = more - off < PIECE ? more - off : PIECE;
        if (fxs_read_payload(piece, k) != 0)
            return FXS_CLOSE;
        if (rc == CUDA_SUCCESS)
            rc = async ? FXS_CALL(cuMemcpyHtoDAsync_v2, rq.dst + off, piece, k, s)
                       : FXS_CALL(cuMemcpyHtoD_v2, rq.dst + off, piece, k);
        off += k;
    }
    return rc;
}

CUresult fxs_op_MEM_DTOH(const uint8_t *p, uint32_t len, uint32_t more, struct fxs_out *out) {
    (void)more, (void)out;
    FXS_TAKE(struct fx_rq_mem, rq, p, len);
    CUstream s = NULL;
    int async = (rq.flags & FX_RQ_MEM_ASYNC) != 0;
    if (async && fxs_stream(rq.stream, &s) != 0)
        return CUDA_ERROR_INVALID_HANDLE;
    for (uint64_t off = 0; off < rq.n;) {
        size_t k = rq.n - off < PIECE ? (size_t)(rq.n - off) : PIECE;
        CUresult rc = async ? FXS_CALL(cuMemcpyDtoHAsync_v2, piece, rq.src + off, k, s)
                            : FXS_CALL(cuMemcpyDtoH_v2, piece, rq.src + off, k);
        if (rc == CUDA_SUCCESS && async)
            rc = FXS_CALL(cuStreamSynchronize, s); /* the bytes must be there before they go */
        if (rc != CUDA_SUCCESS)
            return rc;
        if (fxs_send_data(piece, (uint32_t)k) != 0)
            return FXS_CLOSE;
        off += k;
    }
    return CUDA_SUCCESS;
}

CUresult fxs_op_MEM_DTOD(const uint8_t *p, uint32_t len, uint32_t more, struct fxs_out *out) {
    (void)more, (void)out;
    FXS_TAKE(struct fx_rq_mem, rq, p, len);
    return FXS_CALL(cuMemcpyDtoD_v2, rq.dst, rq.src, (size_t)rq.n);
}

CUresult fxs_op_MEM_DTOD_ASYNC(const uint8_t *p, uint32_t len, uint32_t more, struct fxs_out *out) {
    (void)more, (void)out;
    FXS_TAKE(struct fx_rq_mem, rq, p, len);
    CUstream s;
    if (fxs_stream(rq.stream, &s) != 0)
        return CUDA_ERROR_INVALID_HANDLE;
    return FXS_CALL(cuMemcpyDtoDAsync_v2, rq.dst, rq.src, (size_t)rq.n, s);
}

static CUresult memset_any(const uint8_t *p, uint32_t len, int async) {
    FXS_TAKE(struct fx_rq_mem, rq, p, len);
    CUstream s = NULL;
    if (async && fxs_stream(rq.stream, &s) != 0)
        return CUDA_ERROR_INVALID_HANDLE;
    size_t n = (size_t)rq.n;
    switch (rq.elem) {
    case 1:
        return async ? FXS_CALL(cuMemsetD8Async, rq.dst, (unsigned char)rq.value, n, s)
                     : FXS_CALL(cuMemsetD8_v2, rq.dst, (unsigned char)rq.value, n);
    case 2:
        return async ? FXS_CALL(cuMemsetD16Async, rq.dst, (unsigned short)rq.value, n, s)
                     : FXS_CALL(cuMemsetD16_v2, rq.dst, (unsigned short)rq.value, n);
    case 4:
        return async ? FXS_CALL(cuMemsetD32Async, rq.dst, rq.value, n, s)
                     : FXS_CALL(cuMemsetD32_v2, rq.dst, rq.value, n);
    default:
        return CUDA_ERROR_INVALID_VALUE;
    }
}

CUresult fxs_op_MEMSET(const uint8_t *p, uint32_t len, uint32_t more, struct fxs_out *out) {
    (void)more, (void)out;
    return memset_any(p, len, 0);
}

CUresult fxs_op_MEMSET_ASYNC(const uint8_t *p, uint32_t len, uint32_t more, struct fxs_out *out) {
    (void)more, (void)out;
    return memset_any(p, len, 1);
}

CUresult fxs_op_POINTER_GET_ATTRIBUTE(const uint8_t *p, uint32_t len, uint32_t more,
                                 struct fxs_out *out) {
    (void)more;
    FXS_TAKE(struct fx_rq_mem, rq, p, len);
    uint64_t v[2] = {0, 0}; /* room for any attribute's value (the largest are 8 bytes) */
    if (rq.value == 4 || rq.value == 5 || rq.value == 17)
        return CUDA_ERROR_NOT_SUPPORTED; /* host pointers, P2P tokens, pool handles */
    CUresult rc = FXS_CALL(cuPointerGetAttribute, v, (CUpointer_attribute)rq.value,
                           (CUdeviceptr)rq.src);
    if (rc == CUDA_SUCCESS && rq.value == 1) /* CU_POINTER_ATTRIBUTE_CONTEXT: our id */
        v[0] = fxs_find(FXS_CTX, (void *)(uintptr_t)v[0]);
    fxs_reply(out, v, sizeof(v[0]));
    return rc;
}
