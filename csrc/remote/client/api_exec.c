/* api_exec.c - the remote client's streams and events.
 *
 * Creating and destroying a stream or event, recording an event and making a stream wait are
 * queued (client-side ids: the answer is known here); queries, synchronizations and elapsed times
 * ask the server, and report there the first error of queued work, as a GPU reports asynchronous
 * errors at the next synchronization. Must never let a destroyed handle reach the server as if
 * it were live: unknown handles fail here with CUDA_ERROR_INVALID_HANDLE.
 */
#include "client.h"

/* ---- creating and destroying, shared by streams and events --------------------------------- */

/* The checks of a stream or event creation, in the driver's order (not initialized, then a NULL
 * out pointer or flags outside `allowed`, then no current context), and the new object of `kind`
 * in the current context with `flags`. CUDA_SUCCESS with *po set, else the error to return. */
static CUresult create_begin(enum fxc_kind kind, const void *out, unsigned flags, unsigned allowed,
                             struct fxc_obj **po) {
    CUresult rc = fxc_ready();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (out == NULL || (flags & ~allowed) != 0)
        return CUDA_ERROR_INVALID_VALUE;
    uint32_t ctx = fxc_ctx_current();
    if (ctx == 0 || fxc_obj_by_id(FXC_CTX, ctx) == NULL)
        return CUDA_ERROR_INVALID_CONTEXT;
    struct fxc_obj *o = fxc_obj_new(kind);
    if (o == NULL)
        return CUDA_ERROR_OUT_OF_MEMORY;
    o->ctx = ctx;
    o->flags = flags;
    *po = o;
    return CUDA_SUCCESS;
}

/* Queues the creation request of o; drops o if that fails. Returns its handle (NULL: failed,
 * *rc says why). */
static void *create_end(enum fxc_kind kind, struct fxc_obj *o, uint16_t op, const void *rq,
                        uint32_t rlen, CUresult *rc) {
    *rc = fxc_batch(op, rq, rlen, NULL, 0);
    if (*rc != CUDA_SUCCESS) {
        fxc_obj_drop(kind, o->id);
        return NULL;
    }
    return fxc_handle(kind, o->id);
}

/* fxc_ready(), then the live object of `kind` a handle names (CUDA_ERROR_INVALID_HANDLE if
 * none). CUDA_SUCCESS with *po set, else the error to return. */
static CUresult ready_obj(enum fxc_kind kind, const void *handle, struct fxc_obj **po) {
    CUresult rc = fxc_ready();
    if (rc != CUDA_SUCCESS)
        return rc;
    *po = fxc_obj_get(kind, handle);
    return *po == NULL ? CUDA_ERROR_INVALID_HANDLE : CUDA_SUCCESS;
}

/* Asks the server to query or synchronize object `id`: NOT_READY as is, else the first error of
 * queued work if this one succeeded. */
static CUresult wait_call(uint16_t op, uint32_t id) {
    struct fx_rq_id rq = {id, 0};
    CUresult rc = fxc_call(op, &rq, sizeof(rq), NULL, 0, NULL, 0, NULL);
    return rc == CUDA_ERROR_NOT_READY ? rc : fxc_sync_result(rc);
}

/* Destroys a live stream or event: queued, and forgotten here whatever the queue says. */
static CUresult destroy(enum fxc_kind kind, uint16_t op, const void *handle) {
    struct fxc_obj *o;
    CUresult rc = ready_obj(kind, handle, &o);
    if (rc != CUDA_SUCCESS)
        return rc;
    struct fx_rq_id rq = {o->id, 0};
    rc = fxc_batch(op, &rq, sizeof(rq), NULL, 0);
    fxc_obj_drop(kind, o->id);
    return rc;
}

/* An event and a stream, queued: cuEventRecord* and cuStreamWaitEvent*. */
static CUresult event_on_stream(uint16_t op, CUevent e, CUstream s, unsigned flags,
                                int per_thread) {
    uint32_t sid;
    struct fxc_obj *ev;
    CUresult rc = ready_obj(FXC_EVENT, e, &ev);
    if (rc != CUDA_SUCCESS)
        return rc;
    if (fxc_stream_id(s, per_thread, &sid) != CUDA_SUCCESS)
        return CUDA_ERROR_INVALID_HANDLE;
    struct fx_rq_event rq = {ev->id, flags, sid, 0};
    return fxc_batch(op, &rq, sizeof(rq), NULL, 0);
}

/* ---- streams ------------------------------------------------------------------------------ */

static CUresult stream_create(CUstream *phStream, unsigned flags, int prio) {
    struct fxc_obj *o;
    CUresult rc = create_begin(FXC_STREAM, phStream, flags, 1u, &o);
    if (rc != CUDA_SUCCESS)
        return rc;
    o->prio = prio > 0 ? 0 : prio < -5 ? -5 : prio; /* clamped into the usual range, as NVIDIA's */
    struct fx_rq_stream rq = {o->id, flags, prio, 0};
    CUstream h = create_end(FXC_STREAM, o, FX_ROP_STREAM_CREATE, &rq, sizeof(rq), &rc);
    if (h != NULL)
        *phStream = h;
    return rc;
}

FXC_EXPORT CUresult cuStreamCreate(CUstream *phStream, unsigned int Flags) {
    return stream_create(phStream, Flags, 0);
}

FXC_EXPORT CUresult cuStreamCreateWithPriority(CUstream *phStream, unsigned int flags,
                                               int priority) {
    return stream_create(phStream, flags, priority);
}

FXC_EXPORT CUresult cuStreamDestroy_v2(CUstream hStream) {
    return destroy(FXC_STREAM, FX_ROP_STREAM_DESTROY, hStream);
}

static CUresult stream_wait_call(uint16_t op, CUstream s, int per_thread) {
    uint32_t sid;
    CUresult rc = fxc_ready();
    if (rc != CUDA_SUCCESS)
        return rc;
    if ((rc = fxc_stream_id(s, per_thread, &sid)) != CUDA_SUCCESS)
        return rc;
    return wait_call(op, sid);
}

FXC_EXPORT CUresult cuStreamSynchronize(CUstream hStream) {
    return stream_wait_call(FX_ROP_STREAM_SYNCHRONIZE, hStream, 0);
}
FXC_EXPORT CUresult cuStreamSynchronize_ptsz(CUstream hStream) {
    return stream_wait_call(FX_ROP_STREAM_SYNCHRONIZE, hStream, 1);
}
FXC_EXPORT CUresult cuStreamQuery(CUstream hStream) {
    return stream_wait_call(FX_ROP_STREAM_QUERY, hStream, 0);
}
FXC_EXPORT CUresult cuStreamQuery_ptsz(CUstream hStream) {
    return stream_wait_call(FX_ROP_STREAM_QUERY, hStream, 1);
}

FXC_EXPORT CUresult cuStreamWaitEvent(CUstream hStream, CUevent hEvent, unsigned int Flags) {
    return event_on_stream(FX_ROP_STREAM_WAIT_EVENT, hEvent, hStream, Flags, 0);
}
FXC_EXPORT CUresult cuStreamWaitEvent_ptsz(CUstream hStream, CUevent hEvent, unsigned int Flags) {
    return event_on_stream(FX_ROP_STREAM_WAIT_EVENT, hEvent, hStream, Flags, 1);
}

/* Priority, flags and context of a created stream are known here; the default streams have
 * priority 0, no flags and the current context. */
static CUresult stream_info(CUstream s, int per_thread, struct fxc_obj **o) {
    uint32_t sid;
    CUresult rc = fxc_ready();
    if (rc != CUDA_SUCCESS)
        return rc;
    if ((rc = fxc_stream_id(s, per_thread, &sid)) != CUDA_SUCCESS)
        return rc;
    *o = sid >= FX_R_FIRST_ID ? fxc_obj_by_id(FXC_STREAM, sid) : NULL;
    return CUDA_SUCCESS;
}

static CUresult get_priority(CUstream s, int *priority, int per_thread) {
    struct fxc_obj *o = NULL;
    CUresult rc = priority == NULL ? CUDA_ERROR_INVALID_VALUE : stream_info(s, per_thread, &o);
    if (rc == CUDA_SUCCESS)
        *priority = o ? o->prio : 0;
    return rc;
}
FXC_EXPORT CUresult cuStreamGetPriority(CUstream hStream, int *priority) {
    return get_priority(hStream, priority, 0);
}
FXC_EXPORT CUresult cuStreamGetPriority_ptsz(CUstream hStream, int *priority) {
    return get_priority(hStream, priority, 1);
}

static CUresult get_flags(CUstream s, unsigned *flags, int per_thread) {
    struct fxc_obj *o = NULL;
    CUresult rc = flags == NULL ? CUDA_ERROR_INVALID_VALUE : stream_info(s, per_thread, &o);
    if (rc == CUDA_SUCCESS)
        *flags = o ? o->flags : 0;
    return rc;
}
FXC_EXPORT CUresult cuStreamGetFlags(CUstream hStream, unsigned int *flags) {
    return get_flags(hStream, flags, 0);
}
FXC_EXPORT CUresult cuStreamGetFlags_ptsz(CUstream hStream, unsigned int *flags) {
    return get_flags(hStream, flags, 1);
}

static CUresult get_ctx(CUstream s, CUcontext *pctx, int per_thread) {
    struct fxc_obj *o = NULL;
    CUresult rc = pctx == NULL ? CUDA_ERROR_INVALID_VALUE : stream_info(s, per_thread, &o);
    if (rc != CUDA_SUCCESS)
        return rc;
    uint32_t ctx = o ? o->ctx : fxc_ctx_current();
    if (ctx == 0)
        return CUDA_ERROR_INVALID_CONTEXT;
    *pctx = fxc_handle(FXC_CTX, ctx);
    return CUDA_SUCCESS;
}
FXC_EXPORT CUresult cuStreamGetCtx(CUstream hStream, CUcontext *pctx) {
    return get_ctx(hStream, pctx, 0);
}
FXC_EXPORT CUresult cuStreamGetCtx_ptsz(CUstream hStream, CUcontext *pctx) {
    return get_ctx(hStream, pctx, 1);
}

/* ---- events ------------------------------------------------------------------------------- */

FXC_EXPORT CUresult cuEventCreate(CUevent *phEvent, unsigned int Flags) {
    struct fxc_obj *o;
    CUresult rc = create_begin(FXC_EVENT, phEvent, Flags, 0xfu, &o);
    if (rc != CUDA_SUCCESS)
        return rc;
    struct fx_rq_event rq = {o->id, Flags, 0, 0};
    CUevent h = create_end(FXC_EVENT, o, FX_ROP_EVENT_CREATE, &rq, sizeof(rq), &rc);
    if (h != NULL)
        *phEvent = h;
    return rc;
}

FXC_EXPORT CUresult cuEventDestroy_v2(CUevent hEvent) {
    return destroy(FXC_EVENT, FX_ROP_EVENT_DESTROY, hEvent);
}

static CUresult record(CUevent e, CUstream s, unsigned flags, int per_thread) {
    return event_on_stream(FX_ROP_EVENT_RECORD, e, s, flags, per_thread);
}

FXC_EXPORT CUresult cuEventRecord(CUevent hEvent, CUstream hStream) {
    return record(hEvent, hStream, 0, 0);
}
FXC_EXPORT CUresult cuEventRecord_ptsz(CUevent hEvent, CUstream hStream) {
    return record(hEvent, hStream, 0, 1);
}
FXC_EXPORT CUresult cuEventRecordWithFlags(CUevent hEvent, CUstream hStream, unsigned int flags) {
    return record(hEvent, hStream, flags, 0);
}
FXC_EXPORT CUresult cuEventRecordWithFlags_ptsz(CUevent hEvent, CUstream hStream,
                                                unsigned int flags) {
    return record(hEvent, hStream, flags, 1);
}

static CUresult event_call(uint16_t op, CUevent e) {
    struct fxc_obj *ev;
    CUresult rc = ready_obj(FXC_EVENT, e, &ev);
    return rc != CUDA_SUCCESS ? rc : wait_call(op, ev->id);
}

FXC_EXPORT CUresult cuEventQuery(CUevent hEvent) {
    return event_call(FX_ROP_EVENT_QUERY, hEvent);
}

FXC_EXPORT CUresult cuEventSynchronize(CUevent hEvent) {
    return event_call(FX_ROP_EVENT_SYNCHRONIZE, hEvent);
}

static CUresult elapsed(float *ms, CUevent start, CUevent end) {
    CUresult rc = fxc_ready_out(ms);
    if (rc != CUDA_SUCCESS)
        return rc;
    struct fxc_obj *a = fxc_obj_get(FXC_EVENT, start), *b = fxc_obj_get(FXC_EVENT, end);
    if (a == NULL || b == NULL)
        return CUDA_ERROR_INVALID_HANDLE;
    struct fx_rq_event rq = {a->id, 0, b->id, 0};
    float v = 0;
    rc = fxc_call(FX_ROP_EVENT_ELAPSED, &rq, sizeof(rq), NULL, 0, &v, sizeof(v), NULL);
    if (rc == CUDA_SUCCESS)
        *ms = v;
    return rc;
}

FXC_EXPORT CUresult cuEventElapsedTime(float *pMilliseconds, CUevent hStart, CUevent hEnd) {
    return elapsed(pMilliseconds, hStart, hEnd);
}
FXC_EXPORT CUresult cuEventElapsedTime_v2(float *pMilliseconds, CUevent hStart, CUevent hEnd) {
    return elapsed(pMilliseconds, hStart, hEnd);
}
