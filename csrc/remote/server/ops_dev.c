/* ops_dev.c - the worker's handlers for initialisation, errors, devices and contexts. Context
 * ids come from the client: primary contexts are device + 1, created ones FX_R_FIRST_ID and up;
 * a creation under an id already taken is refused (the client never does that). Must never
 * leave the worker's idea of the current context stale after a call that changes it.
 */
#include <string.h>

#include "session.h"

CUresult fxs_op_PING(const uint8_t *p, uint32_t len, uint32_t more, struct fxs_out *out) {
    (void)p, (void)len, (void)more, (void)out;
    return CUDA_SUCCESS;
}

CUresult fxs_op_INIT(const uint8_t *p, uint32_t len, uint32_t more, struct fxs_out *out) {
    (void)more;
    FXS_TAKE(struct fx_rq_init, rq, p, len);
    struct fx_rp_init rp = {0, 0};
    CUresult rc = rq.version_only ? CUDA_SUCCESS : FXS_CALL(cuInit, rq.flags);
    CUresult vrc = FXS_CALL(cuDriverGetVersion, &rp.driver_version);
    if (rc == CUDA_SUCCESS && !rq.version_only)
        rc = FXS_CALL(cuDeviceGetCount, &rp.device_count);
    if (rc == CUDA_SUCCESS && vrc != CUDA_SUCCESS)
        rc = vrc;
    fxs_reply(out, &rp, sizeof(rp));
    return rc;
}

CUresult fxs_op_GET_ERROR_STRING(const uint8_t *p, uint32_t len, uint32_t more, struct fxs_out *out) {
    (void)more;
    FXS_TAKE(struct fx_rq_id, rq, p, len);
    const char *s = NULL;
    CUresult rc = FXS_CALL(cuGetErrorString, (CUresult)rq.id, &s);
    if (rc == CUDA_SUCCESS && s != NULL)
        fxs_reply(out, s, (uint32_t)strnlen(s, 255));
    return rc;
}

CUresult fxs_op_DEVICE_GET_NAME(const uint8_t *p, uint32_t len, uint32_t more, struct fxs_out *out) {
    (void)more;
    FXS_TAKE(struct fx_rq_dev, rq, p, len);
    char name[256] = {0};
    CUresult rc = FXS_CALL(cuDeviceGetName, name, (int)sizeof(name) - 1, rq.dev);
    if (rc == CUDA_SUCCESS)
        fxs_reply(out, name, (uint32_t)strnlen(name, sizeof(name) - 1));
    return rc;
}

CUresult fxs_op_DEVICE_GET_UUID(const uint8_t *p, uint32_t len, uint32_t more, struct fxs_out *out) {
    (void)more;
    FXS_TAKE(struct fx_rq_dev, rq, p, len);
    CUuuid u;
    CUresult rc = FXS_CALL(cuDeviceGetUuid, &u, rq.dev);
    if (rc == CUDA_SUCCESS)
        fxs_reply(out, &u, sizeof(u));
    return rc;
}

CUresult fxs_op_DEVICE_TOTAL_MEM(const uint8_t *p, uint32_t len, uint32_t more, struct fxs_out *out) {
    (void)more;
    FXS_TAKE(struct fx_rq_dev, rq, p, len);
    size_t bytes = 0;
    CUresult rc = FXS_CALL(cuDeviceTotalMem_v2, &bytes, rq.dev);
    uint64_t v = bytes;
    fxs_reply(out, &v, sizeof(v));
    return rc;
}

CUresult fxs_op_DEVICE_GET_ATTRIBUTE(const uint8_t *p, uint32_t len, uint32_t more,
                                struct fxs_out *out) {
    (void)more;
    FXS_TAKE(struct fx_rq_dev, rq, p, len);
    int v = 0;
    CUresult rc = FXS_CALL(cuDeviceGetAttribute, &v, rq.arg, rq.dev);
    int32_t w = v;
    fxs_reply(out, &w, sizeof(w));
    return rc;
}

CUresult fxs_op_DEVICE_GET_PCI_BUS_ID(const uint8_t *p, uint32_t len, uint32_t more,
                                 struct fxs_out *out) {
    (void)more;
    FXS_TAKE(struct fx_rq_dev, rq, p, len);
    char id[64] = {0};
    CUresult rc = FXS_CALL(cuDeviceGetPCIBusId, id, (int)sizeof(id) - 1, rq.dev);
    if (rc == CUDA_SUCCESS)
        fxs_reply(out, id, (uint32_t)strnlen(id, sizeof(id) - 1));
    return rc;
}

static int dev_index(int32_t dev) {
    return dev >= 0 && dev < (int32_t)FX_R_MAX_DEVICES;
}

CUresult fxs_op_PRIMARY_CTX_RETAIN(const uint8_t *p, uint32_t len, uint32_t more,
                              struct fxs_out *out) {
    (void)more, (void)out;
    FXS_TAKE(struct fx_rq_dev, rq, p, len);
    if (!dev_index(rq.dev))
        return CUDA_ERROR_INVALID_DEVICE;
    CUcontext ctx = NULL;
    CUresult rc = FXS_CALL(cuDevicePrimaryCtxRetain, &ctx, rq.dev);
    if (rc == CUDA_SUCCESS) {
        fxs_put(FXS_CTX, (uint32_t)rq.dev + 1, ctx);
        fxs_primary_retains[rq.dev]++;
    }
    return rc;
}

CUresult fxs_op_PRIMARY_CTX_RELEASE(const uint8_t *p, uint32_t len, uint32_t more,
                               struct fxs_out *out) {
    (void)more, (void)out;
    FXS_TAKE(struct fx_rq_dev, rq, p, len);
    if (!dev_index(rq.dev))
        return CUDA_ERROR_INVALID_DEVICE;
    CUresult rc = FXS_CALL(cuDevicePrimaryCtxRelease_v2, rq.dev);
    if (rc == CUDA_SUCCESS && fxs_primary_retains[rq.dev] > 0)
        fxs_primary_retains[rq.dev]--;
    fxs_ctx_unknown();
    return rc;
}

CUresult fxs_op_PRIMARY_CTX_RESET(const uint8_t *p, uint32_t len, uint32_t more, struct fxs_out *out) {
    (void)more, (void)out;
    FXS_TAKE(struct fx_rq_dev, rq, p, len);
    if (!dev_index(rq.dev))
        return CUDA_ERROR_INVALID_DEVICE;
    fxs_ctx_unknown();
    return FXS_CALL(cuDevicePrimaryCtxReset_v2, rq.dev);
}

CUresult fxs_op_PRIMARY_CTX_GET_STATE(const uint8_t *p, uint32_t len, uint32_t more,
                                 struct fxs_out *out) {
    (void)more;
    FXS_TAKE(struct fx_rq_dev, rq, p, len);
    unsigned flags = 0;
    int active = 0;
    CUresult rc = FXS_CALL(cuDevicePrimaryCtxGetState, rq.dev, &flags, &active);
    int32_t st[2] = {(int32_t)flags, active};
    fxs_reply(out, st, sizeof(st));
    return rc;
}

CUresult fxs_op_PRIMARY_CTX_SET_FLAGS(const uint8_t *p, uint32_t len, uint32_t more,
                                 struct fxs_out *out) {
    (void)more, (void)out;
    FXS_TAKE(struct fx_rq_dev, rq, p, len);
    return FXS_CALL(cuDevicePrimaryCtxSetFlags_v2, rq.dev, (unsigned)rq.arg);
}

CUresult fxs_op_CTX_CREATE(const uint8_t *p, uint32_t len, uint32_t more, struct fxs_out *out) {
    (void)more, (void)out;
    FXS_TAKE(struct fx_rq_ctx, rq, p, len);
    if (rq.id < FX_R_FIRST_ID || fxs_get(FXS_CTX, rq.id) != NULL)
        return CUDA_ERROR_INVALID_VALUE;
    CUcontext ctx = NULL;
    fxs_ctx_unknown();
    CUresult rc = FXS_CALL(cuCtxCreate_v2, &ctx, rq.flags, rq.dev);
    if (rc == CUDA_SUCCESS && fxs_put(FXS_CTX, rq.id, ctx) != 0) {
        FXS_CALL(cuCtxDestroy_v2, ctx);
        return CUDA_ERROR_INVALID_VALUE;
    }
    return rc;
}

CUresult fxs_op_CTX_DESTROY(const uint8_t *p, uint32_t len, uint32_t more, struct fxs_out *out) {
    (void)more, (void)out;
    FXS_TAKE(struct fx_rq_id, rq, p, len);
    CUcontext ctx = rq.id >= FX_R_FIRST_ID ? fxs_get(FXS_CTX, rq.id) : NULL;
    if (ctx == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    fxs_ctx_unknown();
    CUresult rc = FXS_CALL(cuCtxDestroy_v2, ctx);
    if (rc == CUDA_SUCCESS)
        fxs_del(FXS_CTX, rq.id);
    return rc;
}

CUresult fxs_op_CTX_SYNCHRONIZE(const uint8_t *p, uint32_t len, uint32_t more, struct fxs_out *out) {
    (void)more, (void)out;
    FXS_TAKE(struct fx_rq_id, rq, p, len);
    if (rq.id != 0) {
        CUcontext ctx = fxs_get(FXS_CTX, rq.id);
        if (ctx == NULL)
            return CUDA_ERROR_INVALID_CONTEXT;
        fxs_ctx_unknown();
        FXS_CALL(cuCtxSetCurrent, ctx);
    }
    return FXS_CALL(cuCtxSynchronize);
}
