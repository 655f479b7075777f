/* ops_exec.c - the worker's handlers for modules, libraries, functions, launches, streams and
 * events. Functions and kernels are kept with their parameter layout, read once from the
 * driver (cuFuncGetParamInfo / cuKernelGetParamInfo) and sent to the client, which packs each
 * launch's arguments by it; a launch is checked against the same layout here before its
 * argument pointers are rebuilt. Must never pass the driver an argument pointer outside the
 * request's payload, nor an id the client did not create.
 */
#include <stdlib.h>
#include <string.h>

#include "session.h"

/* Whether `id` may name a new object of `kind`: in the client's range and not in use. Every
 * creation checks this before calling the driver, and answers CUDA_ERROR_INVALID_VALUE if not. */
static int id_free(enum fxs_kind kind, uint32_t id) {
    return id >= FX_R_FIRST_ID && id < FX_R_MAX_IDS && fxs_get(kind, id) == NULL;
}

/* The live object of `kind` named `id`, forgotten here (NULL: none; the id is not touched). */
static void *take(enum fxs_kind kind, uint32_t id) {
    void *h = fxs_get(kind, id);
    if (h != NULL)
        fxs_del(kind, id);
    return h;
}

/* ---- modules and libraries ---------------------------------------------------------------- */

static CUresult load(enum fxs_kind kind, const uint8_t *p, uint32_t len) {
    FXS_TAKE(struct fx_rq_load, rq, p, len);
    if (!id_free(kind, rq.id))
        return CUDA_ERROR_INVALID_VALUE;
    const void *image = p + sizeof(rq); /* the payload buffer ends with a NUL (session.c) */
    void *h = NULL;
    CUresult rc = kind == FXS_MODULE
                      ? FXS_CALL(cuModuleLoadData, (CUmodule *)&h, image)
                      : FXS_CALL(cuLibraryLoadData, (CUlibrary *)&h, image, NULL, NULL, 0, NULL,
                                 NULL, 0);
    if (rc == CUDA_SUCCESS)
        fxs_put(kind, rq.id, h);
    return rc;
}

CUresult fxs_op_MODULE_LOAD_DATA(const uint8_t *p, uint32_t len, uint32_t more, struct fxs_out *out) {
    (void)more, (void)out;
    return load(FXS_MODULE, p, len);
}

CUresult fxs_op_LIBRARY_LOAD_DATA(const uint8_t *p, uint32_t len, uint32_t more,
                             struct fxs_out *out) {
    (void)more, (void)out;
    return load(FXS_LIBRARY, p, len);
}

static CUresult unload(enum fxs_kind kind, const uint8_t *p, uint32_t len) {
    FXS_TAKE(struct fx_rq_id, rq, p, len);
    void *h = fxs_get(kind, rq.id);
    if (h == NULL)
        return CUDA_ERROR_INVALID_HANDLE;
    CUresult rc = kind == FXS_MODULE ? FXS_CALL(cuModuleUnload, (CUmodule)h)
                                     : FXS_CALL(cuLibraryUnload, (CUlibrary)h);
    if (rc == CUDA_SUCCESS)
        fxs_del(kind, rq.id);
    return rc;
}

CUresult fxs_op_MODULE_UNLOAD(const uint8_t *p, uint32_t len, uint32_t more, struct fxs_out *out) {
    (void)more, (void)out;
    return unload(FXS_MODULE, p, len);
}

CUresult fxs_op_LIBRARY_UNLOAD(const uint8_t *p, uint32_t len, uint32_t more, struct fxs_out *out) {
    (void)more, (void)out;
    return unload(FXS_LIBRARY, p, len);
}

/* ---- functions and kernels ---------------------------------------------------------------- */

static void layout(struct fxs_callable *c, int kernel) {
    c->n = 0;
    c->argbytes = 0;
    for (uint32_t i = 0; i < FX_R_MAX_PARAMS; i++) {
        size_t off = 0, size = 0;
        CUresult rc = kernel ? FXS_CALL(cuKernelGetParamInfo, (CUkernel)c->h, i, &off, &size)
                             : FXS_CALL(cuFuncGetParamInfo, (CUfunction)c->h, i, &off, &size);
        if (rc != CUDA_SUCCESS) {
            if (i == 0 && rc == CUDA_ERROR_NOT_SUPPORTED)
                c->n = FX_R_PARAMS_UNKNOWN;
            return;
        }
        if (off > 65536 || size > 65536) {
            c->n = FX_R_PARAMS_UNKNOWN;
            return;
        }
        c->off[i] = (uint32_t)off;
        c->size[i] = (uint32_t)size;
        c->n = i + 1;
        if (off + size > c->argbytes)
            c->argbytes = (uint32_t)(off + size);
    }
}

static void reply_layout(const struct fxs_callable *c, struct fxs_out *out) {
    fxs_reply(out, &c->n, sizeof(c->n));
    for (uint32_t i = 0; c->n != FX_R_PARAMS_UNKNOWN && i < c->n; i++) {
        fxs_reply(out, &c->off[i], sizeof(uint32_t));
        fxs_reply(out, &c->size[i], sizeof(uint32_t));
    }
}

static CUresult get_named(enum fxs_kind kind, const uint8_t *p, uint32_t len, struct fxs_out *out) {
    FXS_TAKE(struct fx_rq_name, rq, p, len);
    const char *name = (const char *)p + sizeof(rq);
    if (len == sizeof(rq) || memchr(name, 0, len - sizeof(rq)) == NULL)
        return FXS_CLOSE;
    enum fxs_kind parent = kind == FXS_FUNC ? FXS_MODULE : FXS_LIBRARY;
    void *ph = fxs_get(parent, rq.parent);
    if (ph == NULL)
        return CUDA_ERROR_INVALID_HANDLE;
    if (!id_free(kind, rq.id))
        return CUDA_ERROR_INVALID_VALUE;
    struct fxs_callable *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult rc = kind == FXS_FUNC
                      ? FXS_CALL(cuModuleGetFunction, (CUfunction *)&c->h, (CUmodule)ph, name)
                      : FXS_CALL(cuLibraryGetKernel, (CUkernel *)&c->h, (CUlibrary)ph, name);
    if (rc == CUDA_SUCCESS && fxs_put(kind, rq.id, c) != 0)
        rc = CUDA_ERROR_INVALID_VALUE;
    if (rc != CUDA_SUCCESS) {
        free(c);
        return rc;
    }
    layout(c, kind == FXS_KERNEL);
    reply_layout(c, out);
    return CUDA_SUCCESS;
}

CUresult fxs_op_MODULE_GET_FUNCTION(const uint8_t *p, uint32_t len, uint32_t more,
                               struct fxs_out *out) {
    (void)more;
    return get_named(FXS_FUNC, p, len, out);
}

CUresult fxs_op_LIBRARY_GET_KERNEL(const uint8_t *p, uint32_t len, uint32_t more,
                              struct fxs_out *out) {
    (void)more;
    return get_named(FXS_KERNEL, p, len, out);
}

CUresult fxs_op_MODULE_GET_GLOBAL(const uint8_t *p, uint32_t len, uint32_t more,
                             struct fxs_out *out) {
    (void)more;
    FXS_TAKE(struct fx_rq_name, rq, p, len);
    const char *name = (const char *)p + sizeof(rq);
    if (len == sizeof(rq) || memchr(name, 0, len - sizeof(rq)) == NULL)
        return FXS_CLOSE;
    void *m = fxs_get(FXS_MODULE, rq.parent);
    if (m == NULL)
        return CUDA_ERROR_INVALID_HANDLE;
    CUdeviceptr d = 0;
    size_t bytes = 0;
    CUresult rc = FXS_CALL(cuModuleGetGlobal_v2, &d, &bytes, (CUmodule)m, name);
    uint64_t v[2] = {d, bytes};
    fxs_reply(out, v, sizeof(v));
    return rc;
}

static struct fxs_callable *callable(uint32_t id, uint32_t kind) {
    return fxs_get((kind & FX_RK_KERNEL) ? FXS_KERNEL : FXS_FUNC, id);
}

CUresult fxs_op_KERNEL_GET_FUNCTION(const uint8_t *p, uint32_t len, uint32_t more,
                               struct fxs_out *out) {
    (void)more, (void)out;
    FXS_TAKE(struct fx_rq_func, rq, p, len);
    struct fxs_callable *k = fxs_get(FXS_KERNEL, rq.id);
    uint32_t fid = (uint32_t)rq.arg0;
    if (k == NULL)
        return CUDA_ERROR_INVALID_HANDLE;
    if (!id_free(FXS_FUNC, fid))
        return CUDA_ERROR_INVALID_VALUE;
    struct fxs_callable *c = malloc(sizeof(*c));
    if (c == NULL)
        return CUDA_ERROR_OUT_OF_MEMORY;
    *c = *k;
    CUresult rc = FXS_CALL(cuKernelGetFunction, (CUfunction *)&c->h, (CUkernel)k->h);
    if (rc == CUDA_SUCCESS && fxs_put(FXS_FUNC, fid, c) != 0)
        rc = CUDA_ERROR_INVALID_VALUE;
    if (rc != CUDA_SUCCESS)
        free(c);
    return rc;
}

CUresult fxs_op_FUNC_GET_ATTRIBUTE(const uint8_t *p, uint32_t len, uint32_t more,
                              struct fxs_out *out) {
    (void)more;
    FXS_TAKE(struct fx_rq_func, rq, p, len);
    struct fxs_callable *c = callable(rq.id, rq.kind);
    if (c == NULL)
        return CUDA_ERROR_INVALID_HANDLE;
    int v = 0;
    CUresult rc = FXS_CALL(cuFuncGetAttribute, &v, rq.arg0, (CUfunction)c->h);
    int32_t w = v;
    fxs_reply(out, &w, sizeof(w));
    return rc;
}

CUresult fxs_op_FUNC_SET_ATTRIBUTE(const uint8_t *p, uint32_t len, uint32_t more,
                              struct fxs_out *out) {
    (void)more, (void)out;
    FXS_TAKE(struct fx_rq_func, rq, p, len);
    struct fxs_callable *c = callable(rq.id, rq.kind);
    if (c == NULL)
        return CUDA_ERROR_INVALID_HANDLE;
    return FXS_CALL(cuFuncSetAttribute, (CUfunction)c->h, rq.arg0, rq.arg1);
}

CUresult fxs_op_FUNC_SET_CACHE_CONFIG(const uint8_t *p, uint32_t len, uint32_t more,
                                 struct fxs_out *out) {
    (void)more, (void)out;
    FXS_TAKE(struct fx_rq_func, rq, p, len);
    struct fxs_callable *c = callable(rq.id, rq.kind);
    if (c == NULL)
        return CUDA_ERROR_INVALID_HANDLE;
    return FXS_CALL(cuFuncSetCacheConfig, (CUfunction)c->h, rq.arg0);
}

CUresult fxs_op_OCCUPANCY_BLOCKS(const uint8_t *p, uint32_t len, uint32_t more, struct fxs_out *out) {
    (void)more;
    FXS_TAKE(struct fx_rq_func, rq, p, len);
    struct fxs_callable *c = callable(rq.id, rq.kind);
    if (c == NULL)
        return CUDA_ERROR_INVALID_HANDLE;
    int v = 0;
    CUresult rc = FXS_CALL(cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags, &v,
                           (CUfunction)c->h, rq.arg0, (size_t)rq.bytes, rq.flags);
    int32_t w = v;
    fxs_reply(out, &w, sizeof(w));
    return rc;
}

CUresult fxs_op_OCCUPANCY_BLOCK_SIZE(const uint8_t *p, uint32_t len, uint32_t more,
                                struct fxs_out *out) {
    (void)more;
    FXS_TAKE(struct fx_rq_func, rq, p, len);
    struct fxs_callable *c = callable(rq.id, rq.kind);
    if (c == NULL)
        return CUDA_ERROR_INVALID_HANDLE;
    int grid = 0, block = 0;
    CUresult rc = FXS_CALL(cuOccupancyMaxPotentialBlockSizeWithFlags, &grid, &block,
                           (CUfunction)c->h, NULL, (size_t)rq.bytes, rq.arg1, rq.flags);
    int32_t v[2] = {grid, block};
    fxs_reply(out, v, sizeof(v));
    return rc;
}

/* ---- launches ----------------------------------------------------------------------------- */

CUresult fxs_op_LAUNCH(const uint8_t *p, uint32_t len, uint32_t more, struct fxs_out *out) {
    (void)more, (void)out;
    FXS_TAKE(struct fx_rq_launch, rq, p, len);
    if (rq.nattrs > FX_R_MAX_ATTRS ||
        (uint64_t)len != sizeof(rq) + (uint64_t)rq.nattrs * FX_R_ATTR_SIZE + rq.argbytes)
        return FXS_CLOSE;
    struct fxs_callable *c = callable(rq.func, rq.kind);
    CUstream s;
    if (c == NULL || fxs_stream(rq.stream, &s) != 0)
        return CUDA_ERROR_INVALID_HANDLE;
    uint8_t *args = (uint8_t *)p + sizeof(rq) + rq.nattrs * FX_R_ATTR_SIZE;
    void *params[FX_R_MAX_PARAMS];
    size_t extra_size = rq.argbytes;
    void *extra[] = {CU_LAUNCH_PARAM_BUFFER_POINTER, args, CU_LAUNCH_PARAM_BUFFER_SIZE,
                     &extra_size, CU_LAUNCH_PARAM_END};
    void **kp = NULL, **ex = NULL;
    if (rq.kind & FX_RK_EXTRA) {
        ex = extra;
    } else if (c->n != FX_R_PARAMS_UNKNOWN && c->n > 0) {
        if (rq.argbytes != c->argbytes)
            return CUDA_ERROR_INVALID_VALUE;
        for (uint32_t i = 0; i < c->n; i++)
            params[i] = args + c->off[i];
        kp = params;
    } else if (rq.argbytes != 0) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    CUfunction f = (CUfunction)c->h;
    if (rq.nattrs > 0) {
        static uint64_t attrs[FX_R_MAX_ATTRS * FX_R_ATTR_SIZE / 8]; /* aligned copy */
        memcpy(attrs, p + sizeof(rq), rq.nattrs * FX_R_ATTR_SIZE);
        CUlaunchConfig cfg = {rq.grid[0], rq.grid[1], rq.grid[2], rq.block[0], rq.block[1],
                              rq.block[2], rq.shmem, s, (CUlaunchAttribute *)attrs, rq.nattrs};
        return FXS_CALL(cuLaunchKernelEx, &cfg, f, kp, ex);
    }
    if (rq.kind & FX_RK_COOPERATIVE)
        return FXS_CALL(cuLaunchCooperativeKernel, f, rq.grid[0], rq.grid[1], rq.grid[2],
                        rq.block[0], rq.block[1], rq.block[2], rq.shmem, s, kp);
    return FXS_CALL(cuLaunchKernel, f, rq.grid[0], rq.grid[1], rq.grid[2], rq.block[0],
                    rq.block[1], rq.block[2], rq.shmem, s, kp, ex);
}

/* ---- streams and events ------------------------------------------------------------------- */

CUresult fxs_op_STREAM_CREATE(const uint8_t *p, uint32_t len, uint32_t more, struct fxs_out *out) {
    (void)more, (void)out;
    FXS_TAKE(struct fx_rq_stream, rq, p, len);
    if (!id_free(FXS_STREAM, rq.id))
        return CUDA_ERROR_INVALID_VALUE;
    CUstream s = NULL;
    CUresult rc = FXS_CALL(cuStreamCreateWithPriority, &s, rq.flags, rq.prio);
    if (rc == CUDA_SUCCESS)
        fxs_put(FXS_STREAM, rq.id, s);
    return rc;
}

CUresult fxs_op_STREAM_DESTROY(const uint8_t *p, uint32_t len, uint32_t more, struct fxs_out *out) {
    (void)more, (void)out;
    FXS_TAKE(struct fx_rq_id, rq, p, len);
    CUstream s = take(FXS_STREAM, rq.id);
    if (s == NULL)
        return CUDA_ERROR_INVALID_HANDLE;
    return FXS_CALL(cuStreamDestroy_v2, s);
}

CUresult fxs_op_STREAM_SYNCHRONIZE(const uint8_t *p, uint32_t len, uint32_t more,
                              struct fxs_out *out) {
    (void)more, (void)out;
    FXS_TAKE(struct fx_rq_id, rq, p, len);
    CUstream s;
    return fxs_stream(rq.id, &s) != 0 ? CUDA_ERROR_INVALID_HANDLE
                                      : FXS_CALL(cuStreamSynchronize, s);
}

CUresult fxs_op_STREAM_QUERY(const uint8_t *p, uint32_t len, uint32_t more, struct fxs_out *out) {
    (void)more, (void)out;
    FXS_TAKE(struct fx_rq_id, rq, p, len);
    CUstream s;
    return fxs_stream(rq.id, &s) != 0 ? CUDA_ERROR_INVALID_HANDLE : FXS_CALL(cuStreamQuery, s);
}

CUresult fxs_op_STREAM_WAIT_EVENT(const uint8_t *p, uint32_t len, uint32_t more,
                             struct fxs_out *out) {
    (void)more, (void)out;
    FXS_TAKE(struct fx_rq_event, rq, p, len);
    CUstream s;
    CUevent e = fxs_get(FXS_EVENT, rq.id);
    if (e == NULL || fxs_stream(rq.stream, &s) != 0)
        return CUDA_ERROR_INVALID_HANDLE;
    return FXS_CALL(cuStreamWaitEvent, s, e, rq.flags);
}

CUresult fxs_op_EVENT_CREATE(const uint8_t *p, uint32_t len, uint32_t more, struct fxs_out *out) {
    (void)more, (void)out;
    FXS_TAKE(struct fx_rq_event, rq, p, len);
    if (!id_free(FXS_EVENT, rq.id))
        return CUDA_ERROR_INVALID_VALUE;
    CUevent e = NULL;
    CUresult rc = FXS_CALL(cuEventCreate, &e, rq.flags);
    if (rc == CUDA_SUCCESS)
        fxs_put(FXS_EVENT, rq.id, e);
    return rc;
}

CUresult fxs_op_EVENT_DESTROY(const uint8_t *p, uint32_t len, uint32_t more, struct fxs_out *out) {
    (void)more, (void)out;
    FXS_TAKE(struct fx_rq_id, rq, p, len);
    CUevent e = take(FXS_EVENT, rq.id);
    if (e == NULL)
        return CUDA_ERROR_INVALID_HANDLE;
    return FXS_CALL(cuEventDestroy_v2, e);
}

CUresult fxs_op_EVENT_RECORD(const uint8_t *p, uint32_t len, uint32_t more, struct fxs_out *out) {
    (void)more, (void)out;
    FXS_TAKE(struct fx_rq_event, rq, p, len);
    CUstream s;
    CUevent e = fxs_get(FXS_EVENT, rq.id);
    if (e == NULL || fxs_stream(rq.stream, &s) != 0)
        return CUDA_ERROR_INVALID_HANDLE;
    return rq.flags ? FXS_CALL(cuEventRecordWithFlags, e, s, rq.flags)
                    : FXS_CALL(cuEventRecord, e, s);
}

static CUresult event_one(const uint8_t *p, uint32_t len, int sync) {
    FXS_TAKE(struct fx_rq_id, rq, p, len);
    CUevent e = fxs_get(FXS_EVENT, rq.id);
    if (e == NULL)
        return CUDA_ERROR_INVALID_HANDLE;
    return sync ? FXS_CALL(cuEventSynchronize, e) : FXS_CALL(cuEventQuery, e);
}

CUresult fxs_op_EVENT_QUERY(const uint8_t *p, uint32_t len, uint32_t more, struct fxs_out *out) {
    (void)more, (void)out;
    return event_one(p, len, 0);
}

CUresult fxs_op_EVENT_SYNCHRONIZE(const uint8_t *p, uint32_t len, uint32_t more,
                             struct fxs_out *out) {
    (void)more, (void)out;
    return event_one(p, len, 1);
}

CUresult fxs_op_EVENT_ELAPSED(const uint8_t *p, uint32_t len, uint32_t more, struct fxs_out *out) {
    (void)more;
    FXS_TAKE(struct fx_rq_event, rq, p, len);
    CUevent a = fxs_get(FXS_EVENT, rq.id), b = fxs_get(FXS_EVENT, rq.stream);
    if (a == NULL || b == NULL)
        return CUDA_ERROR_INVALID_HANDLE;
    float ms = 0;
    CUresult rc = FXS_CALL(cuEventElapsedTime, &ms, a, b);
    fxs_reply(out, &ms, sizeof(ms));
    return rc;
}
