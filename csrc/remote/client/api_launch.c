/* api_launch.c - the remote client's kernel launches: queued (batched) requests carrying the
 * launch shape, the stream's id, and the arguments packed by the parameter layout learned when
 * the function was got (api_module.c). Shape mistakes a driver rejects at once (a zero grid or
 * block dimension) are rejected here at once; the rest is the server's driver's to judge, and
 * its verdict comes back at the next synchronizing call. Must never read more of an argument
 * than the layout says, nor forward launch attributes holding handles of this side.
 */
#include <stdlib.h>
#include <string.h>

#include "client.h"

#define STACK_ARGS 4096

struct shape {
    unsigned grid[3], block[3], shmem;
    CUstream stream;
    const void *attrs;
    unsigned nattrs;
    uint32_t kind; /* FX_RK_COOPERATIVE */
};

static void log_once(int *done, const char *what) {
    if (!__atomic_exchange_n(done, 1, __ATOMIC_RELAXED))
        fxc_log(FXC_LOG_WARN, "%s is not supported by the remote client "
                "(CUDA_ERROR_NOT_SUPPORTED)", what);
}

/* CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_EVENT (7), LAUNCH_COMPLETION_EVENT (12) and
 * DEVICE_UPDATABLE_KERNEL_NODE (13) hold handles; the others are plain values. */
static int attrs_forwardable(const void *attrs, unsigned n) {
    for (unsigned i = 0; i < n; i++) {
        int id;
        memcpy(&id, (const char *)attrs + (size_t)i * FX_R_ATTR_SIZE, sizeof(id));
        if (id == 7 || id == 12 || id == 13)
            return 0;
    }
    return 1;
}

static CUresult launch(const void *f, const struct shape *sh, void **params, void **extra,
                       int per_thread) {
    static int warned_layout, warned_attrs;
    uint32_t kind, sid;
    CUresult rc = fxc_ready();
    if (rc != CUDA_SUCCESS)
        return rc;
    struct fxc_obj *o = fxc_obj_get(FXC_FUNC, f);
    kind = 0;
    if (o == NULL && (o = fxc_obj_get(FXC_KERNEL, f)) != NULL)
        kind = FX_RK_KERNEL;
    if (o == NULL)
        return CUDA_ERROR_INVALID_HANDLE;
    if ((rc = fxc_stream_id(sh->stream, per_thread, &sid)) != CUDA_SUCCESS)
        return rc;
    for (int i = 0; i < 3; i++)
        if (sh->grid[i] == 0 || sh->block[i] == 0)
            return CUDA_ERROR_INVALID_VALUE;
    if (params != NULL && extra != NULL)
        return CUDA_ERROR_INVALID_VALUE;
    if (sh->nattrs > FX_R_MAX_ATTRS || !attrs_forwardable(sh->attrs, sh->nattrs)) {
        log_once(&warned_attrs, "a launch attribute holding an event or node");
        return CUDA_ERROR_NOT_SUPPORTED;
    }
    const void *argsrc = NULL;
    size_t argbytes = 0;
    kind |= sh->kind;
    if (extra != NULL) {
        size_t *sizep = NULL;
        for (size_t i = 0; extra[i] != CU_LAUNCH_PARAM_END; i += 2) {
            if (extra[i] == CU_LAUNCH_PARAM_BUFFER_POINTER)
                argsrc = extra[i + 1];
            else if (extra[i] == CU_LAUNCH_PARAM_BUFFER_SIZE)
                sizep = extra[i + 1];
            else
                return CUDA_ERROR_INVALID_VALUE;
        }
        if (argsrc == NULL || sizep == NULL || *sizep > 65536)
            return CUDA_ERROR_INVALID_VALUE;
        argbytes = *sizep;
        kind |= FX_RK_EXTRA;
    } else if (o->nparams == FXC_PARAMS_UNKNOWN && params != NULL) {
        log_once(&warned_layout, "kernelParams without the server's cuFuncGetParamInfo");
        return CUDA_ERROR_NOT_SUPPORTED;
    } else if (o->nparams > 0 && o->nparams != FXC_PARAMS_UNKNOWN) {
        if (params == NULL)
            return CUDA_ERROR_INVALID_VALUE;
        argbytes = o->argbytes;
    }
    size_t attrbytes = (size_t)sh->nattrs * FX_R_ATTR_SIZE;
    size_t total = sizeof(struct fx_rq_launch) + attrbytes + argbytes;
    char stackbuf[STACK_ARGS];
    char *buf = total <= sizeof(stackbuf) ? stackbuf : calloc(1, total);
    if (buf == NULL)
        return CUDA_ERROR_OUT_OF_MEMORY;
    struct fx_rq_launch *rq = (struct fx_rq_launch *)buf;
    *rq = (struct fx_rq_launch){o->id, kind, {sh->grid[0], sh->grid[1], sh->grid[2]},
                                {sh->block[0], sh->block[1], sh->block[2]}, sh->shmem, sid,
                                sh->nattrs, (uint32_t)argbytes};
    char *p = buf + sizeof(*rq);
    if (attrbytes)
        memcpy(p, sh->attrs, attrbytes);
    p += attrbytes;
    if (kind & FX_RK_EXTRA) {
        memcpy(p, argsrc, argbytes);
    } else if (argbytes) {
        memset(p, 0, argbytes); /* padding between parameters */
        for (uint32_t i = 0; i < o->nparams; i++)
            memcpy(p + o->poff[i], params[i], o->psize[i]);
    }
    rc = fxc_batch(FX_ROP_LAUNCH, buf, (uint32_t)total, NULL, 0);
    if (buf != stackbuf)
        free(buf);
    return rc;
}

static CUresult launch_basic(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                             unsigned by, unsigned bz, unsigned shmem, CUstream s, void **params,
                             void **extra, uint32_t kind, int per_thread) {
    struct shape sh = {{gx, gy, gz}, {bx, by, bz}, shmem, s, NULL, 0, kind};
    return launch(f, &sh, params, extra, per_thread);
}

FXC_EXPORT CUresult cuLaunchKernel(CUfunction f, unsigned int gridDimX, unsigned int gridDimY,
                                   unsigned int gridDimZ, unsigned int blockDimX,
                                   unsigned int blockDimY, unsigned int blockDimZ,
                                   unsigned int sharedMemBytes, CUstream hStream,
                                   void **kernelParams, void **extra) {
    return launch_basic(f, gridDimX, gridDimY, gridDimZ, blockDimX, blockDimY, blockDimZ,
                        sharedMemBytes, hStream, kernelParams, extra, 0, 0);
}

FXC_EXPORT CUresult cuLaunchKernel_ptsz(CUfunction f, unsigned int gridDimX,
                                        unsigned int gridDimY, unsigned int gridDimZ,
                                        unsigned int blockDimX, unsigned int blockDimY,
                                        unsigned int blockDimZ, unsigned int sharedMemBytes,
                                        CUstream hStream, void **kernelParams, void **extra) {
    return launch_basic(f, gridDimX, gridDimY, gridDimZ, blockDimX, blockDimY, blockDimZ,
                        sharedMemBytes, hStream, kernelParams, extra, 0, 1);
}

FXC_EXPORT CUresult cuLaunchCooperativeKernel(CUfunction f, unsigned int gridDimX,
                                              unsigned int gridDimY, unsigned int gridDimZ,
                                              unsigned int blockDimX, unsigned int blockDimY,
                                              unsigned int blockDimZ,
                                              unsigned int sharedMemBytes, CUstream hStream,
                                              void **kernelParams) {
    return launch_basic(f, gridDimX, gridDimY, gridDimZ, blockDimX, blockDimY, blockDimZ,
                        sharedMemBytes, hStream, kernelParams, NULL, FX_RK_COOPERATIVE, 0);
}

FXC_EXPORT CUresult cuLaunchCooperativeKernel_ptsz(CUfunction f, unsigned int gridDimX,
                                                   unsigned int gridDimY, unsigned int gridDimZ,
                                                   unsigned int blockDimX, unsigned int blockDimY,
                                                   unsigned int blockDimZ,
                                                   unsigned int sharedMemBytes, CUstream hStream,
                                                   void **kernelParams) {
    return launch_basic(f, gridDimX, gridDimY, gridDimZ, blockDimX, blockDimY, blockDimZ,
                        sharedMemBytes, hStream, kernelParams, NULL, FX_RK_COOPERATIVE, 1);
}

static CUresult launch_ex(const CUlaunchConfig *c, CUfunction f, void **params, void **extra,
                          int per_thread) {
    if (c == NULL || (c->numAttrs > 0 && c->attrs == NULL))
        return fxc_ready() != CUDA_SUCCESS ? fxc_ready() : CUDA_ERROR_INVALID_VALUE;
    struct shape sh = {{c->gridDimX, c->gridDimY, c->gridDimZ},
                       {c->blockDimX, c->blockDimY, c->blockDimZ},
                       c->sharedMemBytes, c->hStream, c->attrs, c->numAttrs, 0};
    return launch(f, &sh, params, extra, per_thread);
}

FXC_EXPORT CUresult cuLaunchKernelEx(const CUlaunchConfig *config, CUfunction f,
                                     void **kernelParams, void **extra) {
    return launch_ex(config, f, kernelParams, extra, 0);
}

FXC_EXPORT CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig *config, CUfunction f,
                                          void **kernelParams, void **extra) {
    return launch_ex(config, f, kernelParams, extra, 1);
}
