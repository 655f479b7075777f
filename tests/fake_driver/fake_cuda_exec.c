/*
 * fake_cuda_exec.c - streams that execute.
 *
 * Every stream is an in-order queue served by a worker thread of its own, started on the first
 * submission: launches return at once, as on a GPU, and the worker runs the queue (kernels take
 * device time through fake_sim.c). A queue holds up to QUEUE_MAX operations; a submission
 * to a full queue blocks until there is room, like the real driver's pushbuffer.
 *
 * The default streams are created on first use, as with the real driver: the legacy stream (NULL,
 * CU_STREAM_LEGACY), one per context, and the per-thread default streams (CU_STREAM_PER_THREAD,
 * and NULL in a _ptsz entry point), one per thread and context. The legacy stream synchronizes
 * implicitly with the context's blocking streams (created without CU_STREAM_NON_BLOCKING, and
 * the per-thread default streams): work queued on it waits for everything queued before on
 * them, and work queued on them waits for everything queued before on it. While a blocking
 * stream captures, the legacy stream cannot be used (fake_stream_use_locked).
 *
 * Events are in fake_cuda_event.c.
 *
 * Destroying a stream (or its context) returns at once; its queued work still drains, then the
 * worker frees it.
 */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>

#include "fake_cuda_internal.h"

#define QUEUE_MAX ((size_t)1024) /* about what a real GPU queues before a launch blocks */
#define QUEUE_MIN ((size_t)64)
#define QUEUE_REFILL ((size_t)64) /* a full queue takes submissions again this much below max */
#define WORKER_STACK ((size_t)256 << 10)

static struct CUstream_st *stream_registry; /* created streams and default streams */

/* ---- fork ------------------------------------------------------------------------------- */

/* Locks held across fork() so the child finds them consistent. */
static void fork_prepare(void) {
    pthread_mutex_lock(&fake_cuda_lock);
    for (struct CUstream_st *s = stream_registry; s != NULL; s = s->next)
        pthread_mutex_lock(&s->mu);
    fake_event_fork_prepare();
}

static void fork_parent(void) {
    fake_event_fork_parent();
    for (struct CUstream_st *s = stream_registry; s != NULL; s = s->next)
        pthread_mutex_unlock(&s->mu);
    pthread_mutex_unlock(&fake_cuda_lock);
}

static void op_drop(const struct fake_op *op);
static int64_t stream_wait_until(struct CUstream_st *s, uint64_t target);

/* The workers did not survive the fork, and the work queued before it is the parent's: the
 * child's streams start empty, and records the parent had queued count as reached. */
static void fork_child(void) {
    fake_event_fork_child();
    for (struct CUstream_st *s = stream_registry; s != NULL; s = s->next) {
        for (size_t k = 0; k < s->count; k++)
            op_drop(&s->ring[(s->head + k) % s->cap]);
        s->head = s->count = 0;
        s->completed = s->submitted;
        s->wake_at = 0;
        s->space_waiters = 0;
        s->worker = 0;
        pthread_cond_init(&s->work_cv, NULL);
        pthread_cond_init(&s->done_cv, NULL);
        pthread_mutex_unlock(&s->mu);
    }
    pthread_mutex_unlock(&fake_cuda_lock);
}

static void fork_register(void) {
    pthread_atfork(fork_prepare, fork_parent, fork_child);
}

/* ---- streams: lifetime ------------------------------------------------------------------- */

static struct CUstream_st *stream_new(struct CUctx_st *ctx, unsigned flags, int priority,
                                      int is_default) { /* FAKE_STREAM_* */
    static pthread_once_t fork_once = PTHREAD_ONCE_INIT;
    pthread_once(&fork_once, fork_register);
    struct CUstream_st *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    s->ctx = ctx;
    s->physical = fake_cuda_devices[ctx->device].physical;
    s->flags = flags;
    s->priority = priority;
    s->is_default = is_default;
    if (is_default == FAKE_STREAM_PER_THREAD)
        s->thread = fake_thread_id();
    atomic_init(&s->refs, 1); /* the registry's */
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->work_cv, NULL);
    pthread_cond_init(&s->done_cv, NULL);
    s->next = stream_registry;
    stream_registry = s;
    return s;
}

void fake_stream_put(struct CUstream_st *s) {
    if (atomic_fetch_sub(&s->refs, 1) != 1)
        return;
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->work_cv);
    pthread_cond_destroy(&s->done_cv);
    free(s->ring);
    free(s);
}

static struct CUstream_st *stream_find_locked(CUstream hStream) {
    for (struct CUstream_st *s = stream_registry; s != NULL; s = s->next)
        if (s == hStream && !s->is_default)
            return s;
    return NULL;
}

static int is_special(CUstream hStream) {
    return hStream == NULL || hStream == CU_STREAM_LEGACY || hStream == CU_STREAM_PER_THREAD;
}

/* Which default stream a special handle names on this thread. */
static int special_kind(CUstream hStream) {
    return hStream == CU_STREAM_PER_THREAD || (hStream == NULL && fake_ptsz_call)
               ? FAKE_STREAM_PER_THREAD
               : FAKE_STREAM_LEGACY;
}

/* The default stream of ctx a special handle names, created on first use. */
static struct CUstream_st *default_stream_locked(struct CUctx_st *ctx, CUstream hStream) {
    if (special_kind(hStream) == FAKE_STREAM_LEGACY) {
        if (ctx->default_stream == NULL)
            ctx->default_stream = stream_new(ctx, CU_STREAM_DEFAULT, 0, FAKE_STREAM_LEGACY);
        return ctx->default_stream;
    }
    uint64_t me = fake_thread_id();
    for (struct CUstream_st *s = stream_registry; s != NULL; s = s->next)
        if (s->ctx == ctx && s->is_default == FAKE_STREAM_PER_THREAD && s->thread == me)
            return s;
    return stream_new(ctx, CU_STREAM_DEFAULT, 0, FAKE_STREAM_PER_THREAD);
}

int fake_stream_blocking(const struct CUstream_st *s) {
    return s->is_default != FAKE_STREAM_LEGACY && !(s->flags & CU_STREAM_NON_BLOCKING);
}

CUresult fake_stream_get_locked(CUstream hStream, struct CUstream_st **out) {
    struct CUstream_st *s;
    if (is_special(hStream)) {
        struct CUctx_st *ctx;
        CUresult rc = fake_ctx_current_locked(&ctx);
        if (rc != CUDA_SUCCESS)
            return rc;
        if ((s = default_stream_locked(ctx, hStream)) == NULL)
            return CUDA_ERROR_OUT_OF_MEMORY;
    } else if ((s = stream_find_locked(hStream)) == NULL) {
        return fake_stale_locked(hStream, CUDA_ERROR_INVALID_HANDLE);
    }
    atomic_fetch_add(&s->refs, 1);
    *out = s;
    return CUDA_SUCCESS;
}

CUresult fake_stream_use_locked(CUstream hStream, struct CUstream_st **out) {
    CUresult rc = fake_stream_get_locked(hStream, out);
    if (rc == CUDA_SUCCESS && (*out)->is_default == FAKE_STREAM_LEGACY &&
        fake_capture_legacy_locked((*out)->ctx, 1)) {
        fake_stream_put(*out);
        *out = NULL;
        rc = CUDA_ERROR_STREAM_CAPTURE_IMPLICIT;
    }
    return rc;
}

CUresult fake_stream_ctx_locked(CUstream hStream, struct CUctx_st **out) {
    if (is_special(hStream))
        return fake_ctx_current_locked(out);
    struct CUstream_st *s = stream_find_locked(hStream);
    if (s == NULL)
        return fake_stale_locked(hStream, CUDA_ERROR_INVALID_HANDLE);
    *out = s->ctx; /* valid: destroying a context detaches its streams */
    return CUDA_SUCCESS;
}

static void stream_put_any(void *s) {
    fake_stream_put(s);
}

/* The stream is already out of the registry: its queue drains, then the worker frees it. A
 * created stream's handle stays in the graveyard (holding the registry's reference) so that a
 * later use of it is reported. */
static void stream_detach_locked(struct CUstream_st *s) {
    fake_graph_stream_gone_locked(s);
    s->ctx = NULL;
    s->capture = NULL;
    pthread_mutex_lock(&s->mu);
    s->dying = 1;
    pthread_cond_signal(&s->work_cv);
    pthread_mutex_unlock(&s->mu);
    if (s->is_default == FAKE_STREAM_CREATED)
        fake_grave_add_locked(s, "stream", stream_put_any);
    else
        fake_stream_put(s);
}

void fake_exec_release_ctx_locked(struct CUctx_st *ctx) {
    struct CUstream_st **link = &stream_registry;
    while (*link != NULL) {
        struct CUstream_st *s = *link;
        if (s->ctx == ctx) {
            *link = s->next;
            stream_detach_locked(s);
        } else {
            link = &s->next;
        }
    }
    ctx->default_stream = NULL;
}

void fake_exec_uncapture_locked(const struct CUgraph_st *g) {
    for (struct CUstream_st *s = stream_registry; s != NULL; s = s->next)
        if (s->capture == g)
            s->capture = NULL;
}

/* ---- streams: the queue and its worker --------------------------------------------------- */

/* A record or wait that will never run: settle it so nobody waits for it forever. */
static void op_drop(const struct fake_op *op) {
    if (op->stream != NULL)
        fake_stream_put(op->stream);
    if (op->event == NULL)
        return;
    if (op->kind == FAKE_OP_RECORD)
        fake_event_reach(op->event, op->gen, fake_now_ns());
    fake_event_put(op->event);
}

/* *last_end: when the stream's previous work ended on the device (exact, from the schedule),
 * so that an event is stamped as a GPU would stamp it, not when this thread woke up. */
static void op_run(const struct CUstream_st *s, const struct fake_op *op, int64_t *last_end) {
    int64_t at = op->at ? op->at : fake_now_ns(); /* graph nodes: queued as they run */
    int64_t ready = at > *last_end ? at : *last_end;
    switch (op->kind) {
    case FAKE_OP_KERNEL:
        *last_end = fake_sim_kernel(s->physical, op->ns, ready);
        break;
    case FAKE_OP_RECORD:
        fake_event_reach(op->event, op->gen, ready);
        fake_event_put(op->event);
        break;
    case FAKE_OP_WAIT:
        fake_event_wait(op->event, op->gen);
        fake_event_put(op->event);
        break;
    case FAKE_OP_HOST: {
        /* the stream waits for the host: what follows starts when the function returned */
        op->fn(op->data);
        int64_t end = fake_now_ns();
        if (end > *last_end)
            *last_end = end;
        break;
    }
    case FAKE_OP_WAIT_STREAM: {
        int64_t end = stream_wait_until(op->stream, op->gen);
        if (end > *last_end)
            *last_end = end; /* what follows starts after the work waited for */
        fake_stream_put(op->stream);
        break;
    }
    default:
        break;
    }
}

static void *worker_main(void *arg) {
    struct CUstream_st *s = arg;
    int64_t last_end = 0;

    prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL); /* wake on time: kernels end on time */
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (s->count == 0 && !s->dying)
            pthread_cond_wait(&s->work_cv, &s->mu);
        if (s->count == 0)
            break;
        /* The op stays queued (the stream is not idle) until it has run. The ring may grow
         * meanwhile; growing keeps the head op at s->head. */
        struct fake_op op = s->ring[s->head];
        pthread_mutex_unlock(&s->mu);
        op_run(s, &op, &last_end);
        pthread_mutex_lock(&s->mu);
        s->head = (s->head + 1) % s->cap;
        s->count--;
        s->completed++;
        s->last_end = last_end;
        /* Wake only whom it concerns: a per-kernel wake-up would cost the worker a syscall. */
        if ((s->wake_at != 0 && s->completed >= s->wake_at) ||
            (s->space_waiters > 0 && s->count <= QUEUE_MAX - QUEUE_REFILL)) {
            s->wake_at = 0;
            pthread_cond_broadcast(&s->done_cv);
        }
    }
    s->worker = 0;
    pthread_mutex_unlock(&s->mu);
    fake_stream_put(s);
    return NULL;
}

/* mu held. The worker holds a reference; it blocks every signal so the host's handlers run on
 * the host's threads. */
static int worker_start(struct CUstream_st *s) {
    pthread_attr_t attr;
    pthread_t tid;
    sigset_t all, old;

    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, WORKER_STACK);
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    atomic_fetch_add(&s->refs, 1);
    int r = pthread_create(&tid, &attr, worker_main, s);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    if (r != 0) {
        atomic_fetch_sub(&s->refs, 1); /* the caller still holds one */
        return -1;
    }
    s->worker = 1;
    return 0;
}

/* mu held; the queue is full up to cap. Re-lays the ring out from index 0. */
static int ring_grow(struct CUstream_st *s) {
    size_t cap = s->cap ? s->cap * 2 : QUEUE_MIN;
    struct fake_op *ring = malloc(cap * sizeof(*ring));
    if (ring == NULL)
        return -1;
    for (size_t k = 0; k < s->count; k++)
        ring[k] = s->ring[(s->head + k) % s->cap];
    free(s->ring);
    s->ring = ring;
    s->head = 0;
    s->cap = cap;
    return 0;
}

/* Appends ops to the queue in order, blocking while it is full; takes over their references. */
static CUresult stream_enqueue(struct CUstream_st *s, const struct fake_op *ops, size_t n) {
    CUresult rc = CUDA_SUCCESS;
    size_t i = 0;

    pthread_mutex_lock(&s->mu);
    if (!s->worker && worker_start(s) != 0)
        rc = CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES;
    for (; rc == CUDA_SUCCESS && i < n; i++) {
        if (s->count >= QUEUE_MAX) {
            s->space_waiters++;
            while (s->count > QUEUE_MAX - QUEUE_REFILL)
                pthread_cond_wait(&s->done_cv, &s->mu);
            s->space_waiters--;
        }
        if (s->count == s->cap && ring_grow(s) != 0) {
            rc = CUDA_ERROR_OUT_OF_MEMORY;
            break;
        }
        s->ring[(s->head + s->count) % s->cap] = ops[i];
        s->count++;
        s->submitted++;
        pthread_cond_signal(&s->work_cv);
    }
    pthread_mutex_unlock(&s->mu);
    for (; i < n; i++)
        op_drop(&ops[i]);
    return rc;
}

/* Waits until s has completed `target` operations; returns when the last of them ended on the
 * device. */
static int64_t stream_wait_until(struct CUstream_st *s, uint64_t target) {
    pthread_mutex_lock(&s->mu);
    while (s->completed < target) {
        if (s->wake_at == 0 || target < s->wake_at)
            s->wake_at = target; /* every waiter re-registers after each wake-up */
        pthread_cond_wait(&s->done_cv, &s->mu);
    }
    int64_t end = s->last_end;
    pthread_mutex_unlock(&s->mu);
    return end;
}

/* Waits for everything submitted to s before the call. */
static void stream_wait(struct CUstream_st *s) {
    pthread_mutex_lock(&s->mu);
    uint64_t target = s->submitted;
    pthread_mutex_unlock(&s->mu);
    stream_wait_until(s, target);
}

/* A wait of what is queued next on `on` for what s has queued so far, when s has work that is
 * not done (a reference on s is taken). 0 when there is nothing to wait for. */
static int implicit_wait(struct CUstream_st *s, struct fake_op *op) {
    pthread_mutex_lock(&s->mu);
    uint64_t target = s->submitted, done = s->completed;
    pthread_mutex_unlock(&s->mu);
    if (done >= target)
        return 0;
    atomic_fetch_add(&s->refs, 1);
    *op = (struct fake_op){.kind = FAKE_OP_WAIT_STREAM, .stream = s, .gen = target};
    return 1;
}

/* The streams s must wait for before new work (lock held): the legacy stream waits for the
 * context's blocking streams, a blocking stream for the legacy stream. Each op holds a
 * reference. Every wait is on work queued before this call, so waits never form a circle. */
static CUresult implicit_waits_locked(const struct CUstream_st *s, struct fake_op **out,
                                      size_t *n) {
    size_t cap = 0;
    *out = NULL;
    *n = 0;
    if (s->ctx == NULL)
        return CUDA_SUCCESS;
    if (s->is_default == FAKE_STREAM_LEGACY) {
        for (struct CUstream_st *t = stream_registry; t != NULL; t = t->next)
            cap += t->ctx == s->ctx && t != s && fake_stream_blocking(t);
    } else if (fake_stream_blocking(s) && s->ctx->default_stream != NULL) {
        cap = 1;
    }
    if (cap == 0)
        return CUDA_SUCCESS;
    if ((*out = malloc(cap * sizeof(**out))) == NULL)
        return CUDA_ERROR_OUT_OF_MEMORY;
    if (s->is_default == FAKE_STREAM_LEGACY) {
        for (struct CUstream_st *t = stream_registry; t != NULL && *n < cap; t = t->next)
            if (t->ctx == s->ctx && t != s && fake_stream_blocking(t))
                *n += (size_t)implicit_wait(t, *out + *n);
    } else {
        *n += (size_t)implicit_wait(s->ctx->default_stream, *out);
    }
    return CUDA_SUCCESS;
}

CUresult fake_stream_submit(struct CUstream_st *s, const struct fake_op *ops, size_t n) {
    struct fake_op *waits;
    size_t nw;
    pthread_mutex_lock(&fake_cuda_lock);
    CUresult rc = implicit_waits_locked(s, &waits, &nw);
    pthread_mutex_unlock(&fake_cuda_lock);
    if (rc != CUDA_SUCCESS) {
        for (size_t i = 0; i < n; i++)
            op_drop(&ops[i]);
        return rc;
    }
    if (nw == 0)
        return stream_enqueue(s, ops, n);
    struct fake_op *all = realloc(waits, (nw + n) * sizeof(*all));
    if (all == NULL) {
        for (size_t i = 0; i < nw; i++)
            op_drop(&waits[i]);
        for (size_t i = 0; i < n; i++)
            op_drop(&ops[i]);
        free(waits);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    memcpy(all + nw, ops, n * sizeof(*ops));
    rc = stream_enqueue(s, all, nw + n);
    free(all);
    return rc;
}

CUresult fake_exec_sync_default(void) {
    struct CUctx_st *ctx;
    struct CUstream_st **list = NULL;
    size_t n = 0;

    pthread_mutex_lock(&fake_cuda_lock);
    CUresult rc = fake_ctx_current_locked(&ctx);
    if (rc == CUDA_SUCCESS && fake_capture_legacy_locked(ctx, 1))
        rc = CUDA_ERROR_STREAM_CAPTURE_IMPLICIT;
    if (rc == CUDA_SUCCESS)
        rc = fake_capture_unsafe_locked();
    if (rc == CUDA_SUCCESS) {
        size_t cap = 0;
        for (struct CUstream_st *s = stream_registry; s != NULL; s = s->next)
            cap += s->ctx == ctx && (s == ctx->default_stream || fake_stream_blocking(s));
        list = cap ? malloc(cap * sizeof(*list)) : NULL;
        for (struct CUstream_st *s = stream_registry; list != NULL && s != NULL; s = s->next) {
            if (s->ctx == ctx && (s == ctx->default_stream || fake_stream_blocking(s))) {
                atomic_fetch_add(&s->refs, 1);
                list[n++] = s;
            }
        }
    }
    pthread_mutex_unlock(&fake_cuda_lock);
    for (size_t i = 0; i < n; i++) {
        stream_wait(list[i]);
        fake_stream_put(list[i]);
    }
    free(list);
    return rc;
}

/* ---- stream entry points ----------------------------------------------------------------- */

static CUresult stream_create(CUstream *phStream, unsigned int flags, int priority) {
    struct CUctx_st *ctx;
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (phStream == NULL || (flags != CU_STREAM_DEFAULT && flags != CU_STREAM_NON_BLOCKING))
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&fake_cuda_lock);
    rc = fake_ctx_current_locked(&ctx);
    if (rc == CUDA_SUCCESS) {
        struct CUstream_st *s = stream_new(ctx, flags, priority, 0);
        if (s != NULL)
            *phStream = s;
        else
            rc = CUDA_ERROR_OUT_OF_MEMORY;
    }
    pthread_mutex_unlock(&fake_cuda_lock);
    return rc;
}

CUresult cuStreamCreate(CUstream *phStream, unsigned int Flags) {
    return stream_create(phStream, Flags, 0);
}

/* Priorities are kept (clamped to an H100's range, -5..0) but do not change scheduling. */
CUresult cuStreamCreateWithPriority(CUstream *phStream, unsigned int flags, int priority) {
    return stream_create(phStream, flags, priority < -5 ? -5 : priority > 0 ? 0 : priority);
}

CUresult cuStreamDestroy_v2(CUstream hStream) {
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    pthread_mutex_lock(&fake_cuda_lock);
    struct CUstream_st **link = &stream_registry;
    while (*link != NULL && (*link != hStream || (*link)->is_default))
        link = &(*link)->next;
    struct CUstream_st *s = *link;
    if (s != NULL) {
        *link = s->next;
        stream_detach_locked(s);
    } else {
        rc = fake_stale_locked(hStream, CUDA_ERROR_INVALID_HANDLE); /* NULL, special handles too */
    }
    pthread_mutex_unlock(&fake_cuda_lock);
    return rc;
}

/* Synchronising or querying a capturing stream is illegal and invalidates the capture; so is
 * any synchronization the thread's capture interaction mode prohibits. */
static CUresult stream_for_sync(CUstream hStream, struct CUstream_st **out) {
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    struct CUstream_st *s = NULL;
    pthread_mutex_lock(&fake_cuda_lock);
    rc = fake_stream_use_locked(hStream, &s);
    if (rc == CUDA_SUCCESS && s->capture != NULL) {
        s->capture->invalidated = 1;
        rc = CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    } else if (rc == CUDA_SUCCESS) {
        rc = fake_capture_unsafe_locked();
    }
    if (rc != CUDA_SUCCESS && s != NULL) {
        fake_stream_put(s);
        s = NULL;
    }
    pthread_mutex_unlock(&fake_cuda_lock);
    *out = s;
    return rc;
}

static CUresult stream_synchronize(CUstream hStream) {
    struct CUstream_st *s;
    CUresult rc = stream_for_sync(hStream, &s);
    if (rc != CUDA_SUCCESS)
        return rc;
    stream_wait(s);
    fake_stream_put(s);
    fake_mem_sync_release(); /* pools give back what they hold beyond their thresholds */
    return CUDA_SUCCESS;
}

CUresult cuStreamSynchronize(CUstream hStream) {
    return stream_synchronize(hStream);
}

static CUresult stream_query(CUstream hStream) {
    struct CUstream_st *s;
    CUresult rc = stream_for_sync(hStream, &s);
    if (rc != CUDA_SUCCESS)
        return rc;
    pthread_mutex_lock(&s->mu);
    rc = s->completed == s->submitted ? CUDA_SUCCESS : CUDA_ERROR_NOT_READY;
    pthread_mutex_unlock(&s->mu);
    fake_stream_put(s);
    return rc;
}

CUresult cuStreamQuery(CUstream hStream) {
    return stream_query(hStream);
}

/* A host function runs on the stream's worker when the work before it is done; the stream
 * waits for it (work after it starts when it has returned), as on a GPU. Not inside a capture:
 * the simulated graphs hold kernels only. */
CUresult cuLaunchHostFunc(CUstream hStream, CUhostFn fn, void *userData) {
    struct CUstream_st *s;
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (fn == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&fake_cuda_lock);
    rc = fake_stream_use_locked(hStream, &s);
    if (rc == CUDA_SUCCESS && s->capture != NULL) {
        fake_stream_put(s);
        rc = CUDA_ERROR_NOT_SUPPORTED;
    }
    pthread_mutex_unlock(&fake_cuda_lock);
    if (rc != CUDA_SUCCESS)
        return rc;
    struct fake_op op = {.kind = FAKE_OP_HOST, .at = fake_now_ns(), .fn = fn, .data = userData};
    rc = fake_stream_submit(s, &op, 1);
    fake_stream_put(s);
    return rc;
}

static CUresult stream_get_ctx(CUstream hStream, CUcontext *pctx, CUgreenCtx *pGreenCtx) {
    struct CUstream_st *s;
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (pctx == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&fake_cuda_lock);
    rc = fake_stream_get_locked(hStream, &s);
    if (rc == CUDA_SUCCESS) {
        *pctx = s->ctx;
        if (pGreenCtx != NULL)
            *pGreenCtx = NULL; /* no green contexts in the fake */
        fake_stream_put(s);
    }
    pthread_mutex_unlock(&fake_cuda_lock);
    return rc;
}

CUresult cuStreamGetCtx(CUstream hStream, CUcontext *pctx) {
    return stream_get_ctx(hStream, pctx, NULL);
}

CUresult cuStreamGetCtx_v2(CUstream hStream, CUcontext *pCtx, CUgreenCtx *pGreenCtx) {
    return stream_get_ctx(hStream, pCtx, pGreenCtx);
}

/* Waits for every stream of ctx (NULL: the current context). */
static CUresult ctx_synchronize(CUcontext ctx) {
    struct CUstream_st **list = NULL;
    size_t n = 0;
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    pthread_mutex_lock(&fake_cuda_lock);
    if (ctx == NULL)
        rc = fake_ctx_current_locked(&ctx);
    else if (!fake_ctx_valid_locked(ctx))
        rc = fake_stale_locked(ctx, CUDA_ERROR_INVALID_CONTEXT);
    if (rc == CUDA_SUCCESS)
        rc = fake_capture_ctx_sync_locked(ctx);
    if (rc == CUDA_SUCCESS)
        rc = fake_capture_unsafe_locked();
    if (rc == CUDA_SUCCESS) {
        for (struct CUstream_st *s = stream_registry; s != NULL; s = s->next)
            n += s->ctx == ctx;
        list = n ? malloc(n * sizeof(*list)) : NULL;
        if (n != 0 && list == NULL)
            rc = CUDA_ERROR_OUT_OF_MEMORY;
    }
    if (list != NULL) {
        n = 0;
        for (struct CUstream_st *s = stream_registry; s != NULL; s = s->next) {
            if (s->ctx == ctx) {
                atomic_fetch_add(&s->refs, 1);
                list[n++] = s;
            }
        }
    }
    pthread_mutex_unlock(&fake_cuda_lock);
    for (size_t i = 0; list != NULL && i < n; i++) {
        stream_wait(list[i]);
        fake_stream_put(list[i]);
    }
    free(list);
    if (rc == CUDA_SUCCESS)
        fake_mem_sync_release(); /* pools give back what they hold beyond their thresholds */
    return rc;
}

CUresult cuCtxSynchronize(void) {
    return ctx_synchronize(NULL);
}

/* CUDA 13: cuGetProcAddress("cuCtxSynchronize", >= 13000) resolves to this one. */
CUresult cuCtxSynchronize_v2(CUcontext ctx) {
    return ctx_synchronize(ctx);
}

/* The hidden aliases of this file's entry points (fake_cuda.def). */
#define FAKE_IN_exec(x) x
#include "fake_cuda_locals.h"
