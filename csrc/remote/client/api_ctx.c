/* api_ctx.c - the remote client's contexts: primary contexts (ids device + 1) and created ones
 * (client-side ids). Which context is current is the client's business (a per-thread stack,
 * sent with every request), so cuCtxSetCurrent, Push, Pop, GetCurrent and GetDevice never cross
 * the wire. Creation, retain and destruction do (the server charges context memory to the
 * slice, which can fail). Must never make a context current that the program did not name.
 */
#include "client.h"

static CUresult ctx_of(CUcontext ctx, struct fxc_obj **out) {
    struct fxc_obj *o = fxc_obj_get(FXC_CTX, ctx);
    if (o == NULL)
        return CUDA_ERROR_INVALID_CONTEXT;
    *out = o;
    return CUDA_SUCCESS;
}

FXC_EXPORT CUresult cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev) {
    CUresult rc = fxc_ready_out(pctx);
    if (rc != CUDA_SUCCESS)
        return rc;
    if (dev < 0 || dev >= fxc_device_count)
        return CUDA_ERROR_INVALID_DEVICE;
    struct fx_rq_dev rq = {dev, 0};
    rc = fxc_call(FX_ROP_PRIMARY_CTX_RETAIN, &rq, sizeof(rq), NULL, 0, NULL, 0, NULL);
    if (rc == CUDA_SUCCESS) {
        fxc_obj_by_id(FXC_CTX, (uint32_t)dev + 1); /* makes the client's record */
        *pctx = fxc_handle(FXC_CTX, (uint32_t)dev + 1);
    }
    return rc;
}

static CUresult primary_call(uint16_t op, CUdevice dev, int arg, void *out, uint32_t cap) {
    CUresult rc = fxc_ready();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (dev < 0 || dev >= fxc_device_count)
        return CUDA_ERROR_INVALID_DEVICE;
    struct fx_rq_dev rq = {dev, arg};
    return fxc_call(op, &rq, sizeof(rq), NULL, 0, out, cap, NULL);
}

FXC_EXPORT CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev) {
    return primary_call(FX_ROP_PRIMARY_CTX_RELEASE, dev, 0, NULL, 0);
}

FXC_EXPORT CUresult cuDevicePrimaryCtxReset_v2(CUdevice dev) {
    return primary_call(FX_ROP_PRIMARY_CTX_RESET, dev, 0, NULL, 0);
}

FXC_EXPORT CUresult cuDevicePrimaryCtxSetFlags_v2(CUdevice dev, unsigned int flags) {
    return primary_call(FX_ROP_PRIMARY_CTX_SET_FLAGS, dev, (int)flags, NULL, 0);
}

FXC_EXPORT CUresult cuDevicePrimaryCtxGetState(CUdevice dev, unsigned int *flags, int *active) {
    int32_t st[2] = {0, 0};
    if (flags == NULL || active == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = primary_call(FX_ROP_PRIMARY_CTX_GET_STATE, dev, 0, st, sizeof(st));
    if (rc == CUDA_SUCCESS) {
        *flags = (unsigned)st[0];
        *active = st[1];
    }
    return rc;
}

static CUresult ctx_create(CUcontext *pctx, unsigned flags, CUdevice dev) {
    CUresult rc = fxc_ready_out(pctx);
    if (rc != CUDA_SUCCESS)
        return rc;
    if (dev < 0 || dev >= fxc_device_count)
        return CUDA_ERROR_INVALID_DEVICE;
    struct fxc_obj *o = fxc_obj_new(FXC_CTX);
    if (o == NULL)
        return CUDA_ERROR_OUT_OF_MEMORY;
    o->dev = dev;
    o->flags = flags;
    struct fx_rq_ctx rq = {o->id, flags, dev, 0};
    rc = fxc_call(FX_ROP_CTX_CREATE, &rq, sizeof(rq), NULL, 0, NULL, 0, NULL);
    if (rc != CUDA_SUCCESS || fxc_ctx_push(o->id) != 0) {
        fxc_obj_drop(FXC_CTX, o->id);
        return rc != CUDA_SUCCESS ? rc : CUDA_ERROR_OUT_OF_MEMORY;
    }
    *pctx = fxc_handle(FXC_CTX, o->id);
    return CUDA_SUCCESS;
}

FXC_EXPORT CUresult cuCtxCreate_v2(CUcontext *pctx, unsigned int flags, CUdevice dev) {
    return ctx_create(pctx, flags, dev);
}

/* Execution affinity and creation parameters (green contexts, CIG) are not forwarded. */
FXC_EXPORT CUresult cuCtxCreate_v3(CUcontext *pctx, CUexecAffinityParam *params, int numParams,
                                   unsigned int flags, CUdevice dev) {
    if (numParams > 0 || params != NULL)
        return CUDA_ERROR_NOT_SUPPORTED;
    return ctx_create(pctx, flags, dev);
}

FXC_EXPORT CUresult cuCtxCreate_v4(CUcontext *pctx, CUctxCreateParams *params,
                                   unsigned int flags, CUdevice dev) {
    if (params != NULL)
        return CUDA_ERROR_NOT_SUPPORTED;
    return ctx_create(pctx, flags, dev);
}

FXC_EXPORT CUresult cuCtxDestroy_v2(CUcontext ctx) {
    struct fxc_obj *o;
    CUresult rc = fxc_ready();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (ctx_of(ctx, &o) != CUDA_SUCCESS || o->id < FX_R_FIRST_ID)
        return CUDA_ERROR_INVALID_VALUE; /* not a created context */
    struct fx_rq_id rq = {o->id, 0};
    rc = fxc_call(FX_ROP_CTX_DESTROY, &rq, sizeof(rq), NULL, 0, NULL, 0, NULL);
    if (rc == CUDA_SUCCESS) {
        fxc_ctx_forget(o->id);
        fxc_obj_drop(FXC_CTX, o->id);
    }
    return rc;
}

FXC_EXPORT CUresult cuCtxSetCurrent(CUcontext ctx) {
    struct fxc_obj *o;
    CUresult rc = fxc_ready();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (ctx == NULL) {
        fxc_ctx_set(0);
        return CUDA_SUCCESS;
    }
    if (ctx_of(ctx, &o) != CUDA_SUCCESS)
        return CUDA_ERROR_INVALID_CONTEXT;
    fxc_ctx_set(o->id);
    return CUDA_SUCCESS;
}

FXC_EXPORT CUresult cuCtxGetCurrent(CUcontext *pctx) {
    CUresult rc = fxc_ready_out(pctx);
    if (rc != CUDA_SUCCESS)
        return rc;
    uint32_t id = fxc_ctx_current();
    *pctx = id ? (CUcontext)fxc_handle(FXC_CTX, id) : NULL;
    return CUDA_SUCCESS;
}

FXC_EXPORT CUresult cuCtxPushCurrent_v2(CUcontext ctx) {
    struct fxc_obj *o;
    CUresult rc = fxc_ready();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (ctx_of(ctx, &o) != CUDA_SUCCESS)
        return CUDA_ERROR_INVALID_CONTEXT;
    return fxc_ctx_push(o->id) == 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

FXC_EXPORT CUresult cuCtxPopCurrent_v2(CUcontext *pctx) {
    CUresult rc = fxc_ready();
    if (rc != CUDA_SUCCESS)
        return rc;
    uint32_t id = fxc_ctx_pop();
    if (id == 0)
        return CUDA_ERROR_INVALID_CONTEXT;
    if (pctx != NULL)
        *pctx = fxc_handle(FXC_CTX, id);
    return CUDA_SUCCESS;
}

FXC_EXPORT CUresult cuCtxGetDevice(CUdevice *device) {
    CUresult rc = fxc_ready_out(device);
    if (rc != CUDA_SUCCESS)
        return rc;
    struct fxc_obj *o = fxc_obj_by_id(FXC_CTX, fxc_ctx_current());
    if (o == NULL)
        return CUDA_ERROR_INVALID_CONTEXT;
    *device = o->dev;
    return CUDA_SUCCESS;
}

FXC_EXPORT CUresult cuCtxGetApiVersion(CUcontext ctx, unsigned int *version) {
    CUresult rc = fxc_ready_out(version);
    if (rc != CUDA_SUCCESS)
        return rc;
    uint32_t id = ctx == NULL ? fxc_ctx_current() : 0;
    struct fxc_obj *o = ctx == NULL ? fxc_obj_by_id(FXC_CTX, id) : fxc_obj_get(FXC_CTX, ctx);
    if (o == NULL)
        return CUDA_ERROR_INVALID_CONTEXT;
    *version = 3020; /* what every context made through the _v2 entry points reports */
    return CUDA_SUCCESS;
}

static CUresult synchronize(uint32_t ctx_id) {
    CUresult rc = fxc_ready();
    if (rc != CUDA_SUCCESS)
        return rc;
    struct fx_rq_id rq = {ctx_id, 0};
    return fxc_sync_result(fxc_call(FX_ROP_CTX_SYNCHRONIZE, &rq, sizeof(rq), NULL, 0, NULL, 0,
                                    NULL));
}

FXC_EXPORT CUresult cuCtxSynchronize(void) {
    return synchronize(0);
}

FXC_EXPORT CUresult cuCtxSynchronize_v2(CUcontext ctx) {
    struct fxc_obj *o;
    if (ctx == NULL)
        return synchronize(0);
    if (ctx_of(ctx, &o) != CUDA_SUCCESS)
        return fxc_ready() != CUDA_SUCCESS ? fxc_ready() : CUDA_ERROR_INVALID_CONTEXT;
    return synchronize(o->id);
}
