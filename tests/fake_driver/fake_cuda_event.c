/*
 * fake_cuda_event.c - events, and streams waiting on them.
 *
 * A record is an operation in the stream's queue; the event's timestamp is the CLOCK_MONOTONIC
 * time at which the device reached it, as a GPU stamps it: when the work queued before it ended
 * (its exact simulated end), or when it was recorded if the stream was idle by then. The
 * worker thread's own wake-up delay never counts.
 * Only the latest record counts, as with the real driver: an event is complete when the device
 * has reached its latest record. A never-recorded event is complete.
 *
 * Events are reference counted (the registry, plus every queued record or wait), so one may be
 * destroyed while a record of it is still queued.
 *
 * An event belongs to the context current when it was created: it can be recorded only on a
 * stream of that context (CUDA_ERROR_INVALID_HANDLE otherwise, reported on stderr), and it is
 * destroyed with that context. A destroyed event's handle is kept in the graveyard, so a later
 * use is reported. Queries and synchronizes are "potentially unsafe" during a stream capture
 * (fake_capture_unsafe_locked); cuEventElapsedTime is treated as one too (it answers whether
 * events completed; the documentation does not say), and none of them may touch an event last
 * recorded in an ongoing capture (CUDA_ERROR_CAPTURED_EVENT).
 */
#include <stdio.h>
#include <stdlib.h>

#include "fake_cuda_internal.h"

struct CUevent_st {
    struct CUevent_st *next; /* registry link (fake_cuda_lock) */
    atomic_int refs;         /* the registry's, and one per queued operation naming it */
    unsigned flags;
    const struct CUctx_st *ctx; /* created in it; immutable */
    uint64_t capture_id; /* fake_cuda_lock: recorded into this stream capture */
    /* guarded by ev_lock */
    uint64_t recorded; /* number of the latest record; 0: never recorded */
    uint64_t reached;  /* highest record number a stream has reached */
    int64_t ts;        /* CLOCK_MONOTONIC ns at which `reached` was reached */
};

static struct CUevent_st *event_registry; /* fake_cuda_lock */
static pthread_mutex_t ev_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ev_cv = PTHREAD_COND_INITIALIZER; /* some event reached a record */

void fake_event_put(struct CUevent_st *ev) {
    if (atomic_fetch_sub(&ev->refs, 1) == 1)
        free(ev);
}

void fake_event_reach(struct CUevent_st *ev, uint64_t gen, int64_t ts) {
    pthread_mutex_lock(&ev_lock);
    if (gen > ev->reached) {
        ev->reached = gen;
        ev->ts = ts;
        pthread_cond_broadcast(&ev_cv);
    }
    pthread_mutex_unlock(&ev_lock);
}

void fake_event_wait(struct CUevent_st *ev, uint64_t gen) {
    pthread_mutex_lock(&ev_lock);
    while (ev->reached < gen)
        pthread_cond_wait(&ev_cv, &ev_lock);
    pthread_mutex_unlock(&ev_lock);
}

void fake_event_fork_prepare(void) {
    pthread_mutex_lock(&ev_lock);
}

void fake_event_fork_parent(void) {
    pthread_mutex_unlock(&ev_lock);
}

void fake_event_fork_child(void) {
    pthread_mutex_unlock(&ev_lock);
    pthread_cond_init(&ev_cv, NULL); /* waiters of the parent's threads are gone */
}

static struct CUevent_st *event_find_locked(CUevent hEvent) {
    for (struct CUevent_st *ev = event_registry; ev != NULL; ev = ev->next)
        if (ev == hEvent)
            return ev;
    return NULL;
}

/* The live event hEvent, or CUDA_ERROR_INVALID_HANDLE (reported when it was destroyed). */
static CUresult event_get_locked(CUevent hEvent, struct CUevent_st **out) {
    *out = event_find_locked(hEvent);
    return *out != NULL ? CUDA_SUCCESS : fake_stale_locked(hEvent, CUDA_ERROR_INVALID_HANDLE);
}

static void event_put_any(void *ev) {
    fake_event_put(ev);
}

void fake_event_release_ctx_locked(const struct CUctx_st *ctx) {
    struct CUevent_st **link = &event_registry;
    while (*link != NULL) {
        struct CUevent_st *ev = *link;
        if (ev->ctx == ctx) {
            *link = ev->next;
            fake_grave_add_locked(ev, "event", event_put_any);
        } else {
            link = &ev->next;
        }
    }
}

/* Querying or waiting for an event last recorded in an ongoing capture is illegal and
 * invalidates that capture; lock held. */
static CUresult captured_locked(const struct CUevent_st *ev) {
    struct CUgraph_st *g = ev->capture_id ? fake_graph_capturing_locked(ev->capture_id) : NULL;
    if (g == NULL)
        return CUDA_SUCCESS;
    g->invalidated = 1;
    return CUDA_ERROR_CAPTURED_EVENT;
}

/* The checks before a query, synchronize or elapsed time of ev; lock held. */
static CUresult event_observe_locked(CUevent hEvent, struct CUevent_st **out) {
    CUresult rc = event_get_locked(hEvent, out);
    if (rc == CUDA_SUCCESS)
        rc = captured_locked(*out);
    if (rc == CUDA_SUCCESS)
        rc = fake_capture_unsafe_locked();
    return rc;
}

CUresult cuEventCreate(CUevent *phEvent, unsigned int Flags) {
    struct CUctx_st *ctx;
    const unsigned known = CU_EVENT_BLOCKING_SYNC | CU_EVENT_DISABLE_TIMING | CU_EVENT_INTERPROCESS;
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (phEvent == NULL || (Flags & ~known) != 0 ||
        ((Flags & CU_EVENT_INTERPROCESS) && !(Flags & CU_EVENT_DISABLE_TIMING)))
        return CUDA_ERROR_INVALID_VALUE;
    struct CUevent_st *ev = calloc(1, sizeof(*ev));
    if (ev == NULL)
        return CUDA_ERROR_OUT_OF_MEMORY;
    ev->flags = Flags;
    atomic_init(&ev->refs, 1);
    pthread_mutex_lock(&fake_cuda_lock);
    rc = fake_ctx_current_locked(&ctx);
    if (rc == CUDA_SUCCESS) {
        ev->ctx = ctx;
        ev->next = event_registry;
        event_registry = ev;
        *phEvent = ev;
    }
    pthread_mutex_unlock(&fake_cuda_lock);
    if (rc != CUDA_SUCCESS)
        free(ev);
    return rc;
}

/* Like the real driver, an event may be destroyed while a record of it is still queued. */
CUresult cuEventDestroy_v2(CUevent hEvent) {
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    pthread_mutex_lock(&fake_cuda_lock);
    struct CUevent_st **link = &event_registry;
    while (*link != NULL && *link != hEvent)
        link = &(*link)->next;
    struct CUevent_st *ev = *link;
    if (ev != NULL) {
        *link = ev->next;
        fake_grave_add_locked(ev, "event", event_put_any); /* holds the registry's reference */
    } else {
        rc = fake_stale_locked(hEvent, CUDA_ERROR_INVALID_HANDLE);
    }
    pthread_mutex_unlock(&fake_cuda_lock);
    return rc;
}

static CUresult event_record(CUevent hEvent, CUstream hStream, unsigned int flags) {
    struct CUstream_st *s;
    struct fake_op op = {.kind = FAKE_OP_RECORD, .at = fake_now_ns()};
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (flags & ~1u) /* CU_EVENT_RECORD_DEFAULT, CU_EVENT_RECORD_EXTERNAL */
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&fake_cuda_lock);
    struct CUevent_st *ev;
    rc = event_get_locked(hEvent, &ev);
    if (rc == CUDA_SUCCESS)
        rc = fake_stream_use_locked(hStream, &s);
    if (rc == CUDA_SUCCESS && s->ctx != ev->ctx) {
        fprintf(stderr, "flexai fake driver: event %p of one context recorded on stream %p of "
                "another: CUDA_ERROR_INVALID_HANDLE\n", (void *)ev, (void *)hStream);
        fake_stream_put(s);
        rc = CUDA_ERROR_INVALID_HANDLE;
    }
    if (rc != CUDA_SUCCESS) {
        pthread_mutex_unlock(&fake_cuda_lock);
        return rc;
    }
    if (s->capture != NULL) {
        /* Inside a capture a record only marks a point other streams may join at. */
        ev->capture_id = s->capture->capture_id;
        pthread_mutex_unlock(&fake_cuda_lock);
        fake_stream_put(s);
        return CUDA_SUCCESS;
    }
    ev->capture_id = 0;
    atomic_fetch_add(&ev->refs, 1);
    op.event = ev;
    pthread_mutex_lock(&ev_lock);
    op.gen = ++ev->recorded;
    pthread_mutex_unlock(&ev_lock);
    pthread_mutex_unlock(&fake_cuda_lock);
    rc = fake_stream_submit(s, &op, 1);
    fake_stream_put(s);
    return rc;
}

CUresult cuEventRecord(CUevent hEvent, CUstream hStream) {
    return event_record(hEvent, hStream, 0);
}

CUresult cuEventRecordWithFlags(CUevent hEvent, CUstream hStream, unsigned int flags) {
    return event_record(hEvent, hStream, flags);
}

/* A never-recorded event counts as complete, as with the real driver. */
CUresult cuEventQuery(CUevent hEvent) {
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    pthread_mutex_lock(&fake_cuda_lock);
    struct CUevent_st *ev;
    rc = event_observe_locked(hEvent, &ev);
    if (rc == CUDA_SUCCESS) {
        pthread_mutex_lock(&ev_lock);
        rc = ev->reached >= ev->recorded ? CUDA_SUCCESS : CUDA_ERROR_NOT_READY;
        pthread_mutex_unlock(&ev_lock);
    }
    pthread_mutex_unlock(&fake_cuda_lock);
    return rc;
}

CUresult cuEventSynchronize(CUevent hEvent) {
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    pthread_mutex_lock(&fake_cuda_lock);
    struct CUevent_st *ev;
    rc = event_observe_locked(hEvent, &ev);
    if (rc == CUDA_SUCCESS)
        atomic_fetch_add(&ev->refs, 1);
    pthread_mutex_unlock(&fake_cuda_lock);
    if (rc != CUDA_SUCCESS)
        return rc;
    pthread_mutex_lock(&ev_lock);
    uint64_t target = ev->recorded;
    while (ev->reached < target)
        pthread_cond_wait(&ev_cv, &ev_lock);
    pthread_mutex_unlock(&ev_lock);
    fake_event_put(ev);
    fake_mem_sync_release(); /* pools give back what they hold beyond their thresholds */
    return CUDA_SUCCESS;
}

/* Both events recorded, completed and timing-enabled; else INVALID_HANDLE or NOT_READY. */
static CUresult event_elapsed(float *pMilliseconds, CUevent hStart, CUevent hEnd) {
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (pMilliseconds == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&fake_cuda_lock);
    struct CUevent_st *a, *b;
    rc = event_observe_locked(hStart, &a);
    if (rc == CUDA_SUCCESS)
        rc = event_observe_locked(hEnd, &b);
    if (rc == CUDA_SUCCESS && ((a->flags | b->flags) & CU_EVENT_DISABLE_TIMING)) {
        rc = CUDA_ERROR_INVALID_HANDLE;
    } else if (rc == CUDA_SUCCESS) {
        pthread_mutex_lock(&ev_lock);
        if (a->recorded == 0 || b->recorded == 0)
            rc = CUDA_ERROR_INVALID_HANDLE;
        else if (a->reached < a->recorded || b->reached < b->recorded)
            rc = CUDA_ERROR_NOT_READY;
        else
            *pMilliseconds = (float)((double)(b->ts - a->ts) / 1e6);
        pthread_mutex_unlock(&ev_lock);
    }
    pthread_mutex_unlock(&fake_cuda_lock);
    return rc;
}

CUresult cuEventElapsedTime(float *pMilliseconds, CUevent hStart, CUevent hEnd) {
    return event_elapsed(pMilliseconds, hStart, hEnd);
}

/* CUDA 12.8+ headers map cuEventElapsedTime here; same contract. */
CUresult cuEventElapsedTime_v2(float *pMilliseconds, CUevent hStart, CUevent hEnd) {
    return event_elapsed(pMilliseconds, hStart, hEnd);
}

/* ---- streams waiting on events ----------------------------------------------------------- */

static CUresult stream_wait_event(CUstream hStream, CUevent hEvent, unsigned int flags) {
    struct CUstream_st *s;
    struct fake_op op = {.kind = FAKE_OP_WAIT};
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (flags & ~1u) /* CU_EVENT_WAIT_DEFAULT, CU_EVENT_WAIT_EXTERNAL */
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&fake_cuda_lock);
    struct CUevent_st *ev;
    rc = event_get_locked(hEvent, &ev); /* an event of another context is fine here */
    if (rc == CUDA_SUCCESS)
        rc = fake_stream_use_locked(hStream, &s);
    if (rc != CUDA_SUCCESS) {
        pthread_mutex_unlock(&fake_cuda_lock);
        return rc;
    }
    if (s->capture == NULL && ev->capture_id != 0) {
        /* Waiting on an event recorded in a capture joins that capture (fork/join capture). */
        s->capture = fake_graph_capturing_locked(ev->capture_id);
    } else if (s->capture == NULL) {
        pthread_mutex_lock(&ev_lock);
        op.gen = ev->recorded; /* 0: never recorded, nothing to wait for */
        pthread_mutex_unlock(&ev_lock);
        if (op.gen != 0) {
            atomic_fetch_add(&ev->refs, 1);
            op.event = ev;
        }
    } /* else: a dependency inside the capture, which a linear graph keeps anyway */
    pthread_mutex_unlock(&fake_cuda_lock);
    if (op.event != NULL)
        rc = fake_stream_submit(s, &op, 1);
    fake_stream_put(s);
    return rc;
}

CUresult cuStreamWaitEvent(CUstream hStream, CUevent hEvent, unsigned int Flags) {
    return stream_wait_event(hStream, hEvent, Flags);
}

/* The hidden aliases of this file's entry points (fake_cuda.def). */
#define FAKE_IN_event(x) x
#include "fake_cuda_locals.h"
