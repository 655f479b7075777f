/*
 * fake_acl_exec.c - streams, events and work of the stand-in libascendcl.so.
 *
 * Each stream is an in-order queue served by a worker thread of its own; a piece of work (a
 * kernel, a single operator, an aclnn operator) occupies the physical device for its simulated
 * duration in the node's shared device time (fake_sim.c), so the NPU is shared by every process
 * as a real one is. An event records the device time at which its stream reached it, so
 * aclrtEventElapsedTime measures device time. Durations: a kernel named "sleep_us" lasts the
 * microseconds in the first 4 bytes of its arguments (they live in "device" memory, which is
 * host memory here); other kernels and every aclopExecuteV2 operator last FLEXAI_SIM_KERNEL_US;
 * libopapi.so gives its operators' durations itself (fake_acl_submit).
 *
 * Queues hold at most QUEUE_MAX pieces of work (a submitter waits for room, as the runtime's
 * task queues make it). A stream belongs to the context current when it was made; the NULL
 * stream is the current context's default stream; a released context takes its streams with it
 * (their work done first). Events are reference counted by the work that names them. A forked
 * child starts without streams (their workers do not survive fork).
 *
 * Capture (aclmdlRICaptureBegin .. aclmdlRICaptureEnd, fake_acl_launch.c): work queued on a
 * capturing stream does not run; it is added to the model run instance (aclmdlRI) the capture
 * ends with, which aclmdlRIExecuteAsync queues as one piece of work of their summed duration.
 */
#include <stdlib.h>
#include <string.h>

#include "fake_acl_internal.h"

#define QUEUE_MAX 1024

enum { OP_WORK = 1, OP_RECORD = 2 };

struct fake_event {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint64_t recorded, reached; /* record generations: asked for, and reached by the device */
    int64_t ts;                 /* device time when the last reached record was reached */
    int refs;
};

struct op {
    int kind;
    int64_t ns, at;
    struct fake_event *ev;
    uint64_t gen;
    void *zero;
    size_t zero_len;
};

struct fake_stream {
    struct fake_stream *next; /* every stream of the process (list_mu) */
    struct fake_ctx *ctx;
    int is_default;           /* its context's default stream */
    struct fake_model_ri *capture; /* capturing into this model (list_mu) */
    int ordinal, physical;
    pthread_mutex_t mu;
    pthread_cond_t work, done;
    struct op ring[QUEUE_MAX];
    size_t head, count;
    uint64_t submitted, completed;
    int64_t last_end;
    int worker, dying;
    pthread_t thread;
};

static pthread_mutex_t list_mu = PTHREAD_MUTEX_INITIALIZER;
static struct fake_stream *streams;
static pthread_once_t fork_once = PTHREAD_ONCE_INIT;

static void forget_all(void)
{
    streams = NULL; /* the parent's workers are gone here; their memory is leaked on purpose */
    pthread_mutex_init(&list_mu, NULL);
}

static void fork_register(void)
{
    pthread_atfork(NULL, NULL, forget_all);
}

static void event_put(struct fake_event *ev)
{
    if (__atomic_sub_fetch(&ev->refs, 1, __ATOMIC_ACQ_REL) == 0) free(ev);
}

static void reach(struct fake_event *ev, uint64_t gen, int64_t ts)
{
    pthread_mutex_lock(&ev->mu);
    if (gen > ev->reached) {
        ev->reached = gen;
        ev->ts = ts;
    }
    pthread_cond_broadcast(&ev->cv);
    pthread_mutex_unlock(&ev->mu);
}

static void *worker(void *arg)
{
    struct fake_stream *s = arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (!s->count && !s->dying) pthread_cond_wait(&s->work, &s->mu);
        if (!s->count) break;
        struct op o = s->ring[s->head];
        pthread_mutex_unlock(&s->mu);
        int64_t end = s->last_end;
        if (o.kind == OP_WORK) {
            /* in stream order: not before it was queued, nor before the work ahead of it */
            end = fake_sim_kernel(s->physical, o.ns, o.at > s->last_end ? o.at : s->last_end);
            if (o.zero) memset(o.zero, 0, o.zero_len);
        } else {
            int64_t ts = s->last_end > o.at ? s->last_end : o.at;
            reach(o.ev, o.gen, ts);
            event_put(o.ev);
        }
        pthread_mutex_lock(&s->mu);
        s->last_end = end;
        s->head = (s->head + 1) % QUEUE_MAX;
        s->count--;
        s->completed++;
        pthread_cond_broadcast(&s->done);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

static struct fake_stream *stream_new(struct fake_ctx *ctx, int is_default)
{
    struct fake_stream *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    pthread_once(&fork_once, fork_register);
    s->ctx = ctx;
    s->is_default = is_default;
    s->ordinal = ctx->ordinal;
    s->physical = fake_acl_physical(ctx->ordinal);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->work, NULL);
    pthread_cond_init(&s->done, NULL);
    if (pthread_create(&s->thread, NULL, worker, s) != 0) {
        free(s);
        return NULL;
    }
    s->worker = 1;
    return s;
}

static struct fake_stream *default_of_locked(struct fake_ctx *ctx)
{
    for (struct fake_stream *s = streams; s; s = s->next)
        if (s->ctx == ctx && s->is_default) return s;
    return NULL;
}

/* The stream a handle names: NULL is the current context's default stream (made on first
 * use). */
static struct fake_stream *resolve(aclrtStream stream)
{
    if (stream) return stream;
    struct fake_ctx *ctx = fake_acl_current_ctx();
    if (!ctx) return NULL;
    pthread_mutex_lock(&list_mu);
    struct fake_stream *s = default_of_locked(ctx);
    pthread_mutex_unlock(&list_mu);
    if (s) return s;
    struct fake_stream *made = stream_new(ctx, 1);
    if (!made) return NULL;
    pthread_mutex_lock(&list_mu);
    s = default_of_locked(ctx); /* another thread may have been first (ours stays unused) */
    if (!s) {
        s = made;
        s->next = streams;
        streams = s;
    }
    pthread_mutex_unlock(&list_mu);
    return s;
}

static void stream_end(struct fake_stream *s);

static aclError push(struct fake_stream *s, struct op o)
{
    o.at = fake_now_ns();
    pthread_mutex_lock(&s->mu);
    while (s->count == QUEUE_MAX) pthread_cond_wait(&s->done, &s->mu);
    s->ring[(s->head + s->count) % QUEUE_MAX] = o;
    s->count++;
    s->submitted++;
    pthread_cond_signal(&s->work);
    pthread_mutex_unlock(&s->mu);
    return ACL_SUCCESS;
}

static void drain(struct fake_stream *s)
{
    pthread_mutex_lock(&s->mu);
    uint64_t target = s->submitted;
    while (s->completed < target) pthread_cond_wait(&s->done, &s->mu);
    pthread_mutex_unlock(&s->mu);
}

aclError fake_acl_queue_work(aclrtStream stream, int64_t ns, void *zero, size_t zero_len)
{
    if (!fake_acl_ready()) return ACL_ERROR_UNINITIALIZE;
    struct fake_stream *s = resolve(stream);
    if (!s) return ACL_ERROR_RT_CONTEXT_NULL;
    pthread_mutex_lock(&list_mu);
    struct fake_model_ri *m = s->capture;
    if (m) m->ns += ns; /* captured: it runs when the model does */
    pthread_mutex_unlock(&list_mu);
    if (m) return ACL_SUCCESS;
    return push(s, (struct op){OP_WORK, ns, 0, NULL, 0, zero, zero_len});
}

aclError fake_acl_queue_sync(int64_t ns)
{
    if (!fake_acl_ready()) return ACL_ERROR_UNINITIALIZE;
    struct fake_stream *s = resolve(NULL);
    if (!s) return ACL_ERROR_RT_CONTEXT_NULL;
    aclError rc = push(s, (struct op){OP_WORK, ns, 0, NULL, 0, NULL, 0});
    if (rc == ACL_SUCCESS) drain(s);
    return rc;
}

aclError fake_acl_submit(aclrtStream stream, int64_t ns, void *zero, size_t zero_len)
{
    return fake_acl_queue_work(stream, ns, zero, zero_len);
}

void fake_acl_exec_release(struct fake_ctx *c)
{
    for (;;) {
        pthread_mutex_lock(&list_mu);
        struct fake_stream **p = &streams;
        while (*p && (*p)->ctx != c) p = &(*p)->next;
        struct fake_stream *s = *p;
        if (s) *p = s->next;
        pthread_mutex_unlock(&list_mu);
        if (!s) return;
        stream_end(s); /* its work is done first */
    }
}

/* ---- streams ------------------------------------------------------------------------------ */

FAKE_ACL_EXPORT aclError aclrtCreateStream(aclrtStream *stream)
{
    if (!fake_acl_ready()) return ACL_ERROR_UNINITIALIZE;
    if (!stream) return ACL_ERROR_INVALID_PARAM;
    struct fake_ctx *ctx = fake_acl_current_ctx();
    if (!ctx) return ACL_ERROR_RT_CONTEXT_NULL;
    struct fake_stream *s = stream_new(ctx, 0);
    if (!s) return ACL_ERROR_RT_MEMORY_ALLOCATION;
    pthread_mutex_lock(&list_mu);
    s->next = streams;
    streams = s;
    pthread_mutex_unlock(&list_mu);
    *stream = s;
    return ACL_SUCCESS;
}

static void stream_end(struct fake_stream *s)
{
    pthread_mutex_lock(&s->mu);
    s->dying = 1;
    pthread_cond_signal(&s->work);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->thread, NULL); /* its work drains first */
    free(s);
}

FAKE_ACL_EXPORT aclError aclrtDestroyStream(aclrtStream stream)
{
    struct fake_stream *s = stream;
    if (!fake_acl_ready()) return ACL_ERROR_UNINITIALIZE;
    if (!s) return ACL_ERROR_INVALID_PARAM;
    pthread_mutex_lock(&list_mu);
    struct fake_stream **p = &streams;
    while (*p && *p != s) p = &(*p)->next;
    int known = *p != NULL;
    if (known) *p = s->next;
    pthread_mutex_unlock(&list_mu);
    if (!known) return ACL_ERROR_RT_INVALID_HANDLE;
    stream_end(s);
    return ACL_SUCCESS;
}

FAKE_ACL_EXPORT aclError aclrtSynchronizeStream(aclrtStream stream)
{
    if (!fake_acl_ready()) return ACL_ERROR_UNINITIALIZE;
    struct fake_stream *s = resolve(stream);
    if (!s) return ACL_ERROR_RT_CONTEXT_NULL;
    drain(s);
    return ACL_SUCCESS;
}

FAKE_ACL_EXPORT aclError aclrtSynchronizeDevice(void)
{
    if (!fake_acl_ready()) return ACL_ERROR_UNINITIALIZE;
    int cur = fake_acl_current();
    if (cur < 0) return ACL_ERROR_RT_CONTEXT_NULL;
    struct fake_stream *list[256];
    int n = 0;
    pthread_mutex_lock(&list_mu);
    for (struct fake_stream *s = streams; s && n < 256; s = s->next)
        if (s->ordinal == cur) list[n++] = s;
    pthread_mutex_unlock(&list_mu);
    for (int i = 0; i < n; i++) drain(list[i]);
    return ACL_SUCCESS;
}

/* ---- events ------------------------------------------------------------------------------- */

FAKE_ACL_EXPORT aclError aclrtCreateEvent(aclrtEvent *event)
{
    if (!fake_acl_ready()) return ACL_ERROR_UNINITIALIZE;
    if (!event) return ACL_ERROR_INVALID_PARAM;
    struct fake_event *ev = calloc(1, sizeof *ev);
    if (!ev) return ACL_ERROR_RT_MEMORY_ALLOCATION;
    pthread_mutex_init(&ev->mu, NULL);
    pthread_cond_init(&ev->cv, NULL);
    ev->refs = 1;
    *event = ev;
    return ACL_SUCCESS;
}

FAKE_ACL_EXPORT aclError aclrtDestroyEvent(aclrtEvent event)
{
    if (!fake_acl_ready()) return ACL_ERROR_UNINITIALIZE;
    if (!event) return ACL_ERROR_INVALID_PARAM;
    event_put(event); /* work that still names it keeps it until reached */
    return ACL_SUCCESS;
}

FAKE_ACL_EXPORT aclError aclrtRecordEvent(aclrtEvent event, aclrtStream stream)
{
    struct fake_event *ev = event;
    if (!fake_acl_ready()) return ACL_ERROR_UNINITIALIZE;
    if (!ev) return ACL_ERROR_INVALID_PARAM;
    struct fake_stream *s = resolve(stream);
    if (!s) return ACL_ERROR_RT_CONTEXT_NULL;
    pthread_mutex_lock(&ev->mu);
    uint64_t gen = ++ev->recorded;
    pthread_mutex_unlock(&ev->mu);
    __atomic_add_fetch(&ev->refs, 1, __ATOMIC_ACQ_REL);
    return push(s, (struct op){OP_RECORD, 0, 0, ev, gen, NULL, 0});
}

FAKE_ACL_EXPORT aclError aclrtQueryEventStatus(aclrtEvent event, aclrtEventRecordedStatus *status)
{
    struct fake_event *ev = event;
    if (!fake_acl_ready()) return ACL_ERROR_UNINITIALIZE;
    if (!ev || !status) return ACL_ERROR_INVALID_PARAM;
    pthread_mutex_lock(&ev->mu);
    int done = ev->recorded && ev->reached >= ev->recorded;
    pthread_mutex_unlock(&ev->mu);
    *status = done ? ACL_EVENT_RECORDED_STATUS_COMPLETE : ACL_EVENT_RECORDED_STATUS_NOT_READY;
    return ACL_SUCCESS;
}

FAKE_ACL_EXPORT aclError aclrtSynchronizeEvent(aclrtEvent event)
{
    struct fake_event *ev = event;
    if (!fake_acl_ready()) return ACL_ERROR_UNINITIALIZE;
    if (!ev) return ACL_ERROR_INVALID_PARAM;
    pthread_mutex_lock(&ev->mu);
    while (ev->reached < ev->recorded) pthread_cond_wait(&ev->cv, &ev->mu);
    pthread_mutex_unlock(&ev->mu);
    return ACL_SUCCESS;
}

/* Device time between two reached records, in ms; an event not reached has no time yet. */
FAKE_ACL_EXPORT aclError aclrtEventElapsedTime(float *ms, aclrtEvent startEvent,
                                               aclrtEvent endEvent)
{
    struct fake_event *a = startEvent, *b = endEvent;
    if (!fake_acl_ready()) return ACL_ERROR_UNINITIALIZE;
    if (!ms || !a || !b) return ACL_ERROR_INVALID_PARAM;
    pthread_mutex_lock(&a->mu);
    int64_t ta = a->ts;
    int ok = a->recorded && a->reached >= a->recorded;
    pthread_mutex_unlock(&a->mu);
    pthread_mutex_lock(&b->mu);
    int64_t tb = b->ts;
    ok = ok && b->recorded && b->reached >= b->recorded;
    pthread_mutex_unlock(&b->mu);
    if (!ok) return ACL_ERROR_RT_EVENT_TIMESTAMP_INVALID;
    *ms = (float)((double)(tb - ta) / 1e6);
    return ACL_SUCCESS;
}

/* ---- capture (its API: fake_acl_launch.c) ------------------------------------------------- */

struct fake_model_ri *fake_acl_capturing(aclrtStream stream)
{
    struct fake_stream *s = stream;
    if (!s) return NULL; /* the default stream is never captured */
    pthread_mutex_lock(&list_mu);
    struct fake_model_ri *m = s->capture;
    pthread_mutex_unlock(&list_mu);
    return m;
}

int fake_acl_capture_swap(aclrtStream stream, struct fake_model_ri *in,
                          struct fake_model_ri **out)
{
    struct fake_stream *s = stream;
    if (!s) return -1;
    pthread_mutex_lock(&list_mu);
    int ok = in ? !s->capture : s->capture != NULL;
    if (ok) {
        *out = s->capture;
        s->capture = in;
    }
    pthread_mutex_unlock(&list_mu);
    return ok ? 0 : -1;
}
