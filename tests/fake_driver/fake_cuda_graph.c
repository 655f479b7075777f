/*
 * fake_cuda_graph.c - stream capture and CUDA graphs, enough for capture-and-replay.
 *
 * While a stream captures, kernels launched on it are appended to the capture's graph instead of
 * running. A graph is the list of its kernels in capture order (the fake keeps no DAG: replaying
 * them in order on one stream occupies the device exactly as long). Fork/join capture works:
 * a stream that waits on an event recorded in a capturing stream joins that capture, and event
 * records and waits inside a capture add no work. Launching an instantiated graph enqueues its
 * kernels, in order, on the stream; launching one into a capturing stream appends them.
 *
 * Capture modes are enforced as the real driver does: each thread has a capture interaction
 * mode (cuThreadExchangeStreamCaptureMode, global by default), and a "potentially unsafe" call
 * (fake_capture_unsafe_locked: queries and synchronizes) that an ongoing capture prohibits fails
 * and invalidates that capture, also when the call comes from another thread (a global-mode
 * capture and a thread in global mode). A capture not begun in relaxed mode must be ended by
 * the thread that began it. While a blocking stream captures, the legacy stream cannot be used.
 *
 * Simplification: an unjoined fork is not reported at the end of the capture.
 */
#include <stdlib.h>
#include <string.h>

#include "fake_cuda_internal.h"

struct CUgraphExec_st {
    struct CUgraphExec_st *next;
    struct fake_op *ops;
    size_t n;
};

/* All guarded by fake_cuda_lock. */
static struct CUgraph_st *graph_registry;   /* graphs returned by cuStreamEndCapture */
static struct CUgraph_st *capture_list;     /* graphs being captured into */
static struct CUgraphExec_st *exec_registry;
static uint64_t next_capture_id = 1;

/* The calling thread's capture interaction mode. */
static _Thread_local CUstreamCaptureMode thread_mode = CU_STREAM_CAPTURE_MODE_GLOBAL;

static int mode_valid(CUstreamCaptureMode mode) {
    return mode == CU_STREAM_CAPTURE_MODE_GLOBAL || mode == CU_STREAM_CAPTURE_MODE_THREAD_LOCAL ||
           mode == CU_STREAM_CAPTURE_MODE_RELAXED;
}

/* A capture still going on (its origin stream not destroyed). */
static int ongoing(const struct CUgraph_st *g) {
    return g->origin != NULL;
}

CUresult fake_capture_unsafe_locked(void) {
    uint64_t me = fake_thread_id();
    int prohibited = 0;
    if (thread_mode == CU_STREAM_CAPTURE_MODE_RELAXED)
        return CUDA_SUCCESS;
    for (struct CUgraph_st *g = capture_list; g != NULL; g = g->next) {
        if (!ongoing(g))
            continue;
        int own = g->thread == me && g->mode != CU_STREAM_CAPTURE_MODE_RELAXED;
        int other = thread_mode == CU_STREAM_CAPTURE_MODE_GLOBAL && g->thread != me &&
                    g->mode == CU_STREAM_CAPTURE_MODE_GLOBAL;
        if (own || other) {
            g->invalidated = 1;
            prohibited = 1;
        }
    }
    return prohibited ? CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED : CUDA_SUCCESS;
}

int fake_capture_legacy_locked(const struct CUctx_st *ctx, int invalidate) {
    int found = 0;
    for (struct CUgraph_st *g = capture_list; g != NULL; g = g->next) {
        if (ongoing(g) && g->origin->ctx == ctx && fake_stream_blocking(g->origin)) {
            found = 1;
            if (invalidate)
                g->invalidated = 1;
        }
    }
    return found;
}

CUresult fake_capture_ctx_sync_locked(const struct CUctx_st *ctx) {
    int found = 0;
    for (struct CUgraph_st *g = capture_list; g != NULL; g = g->next) {
        if (ongoing(g) && g->origin->ctx == ctx) {
            g->invalidated = 1;
            found = 1;
        }
    }
    return found ? CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED : CUDA_SUCCESS;
}

CUresult cuThreadExchangeStreamCaptureMode(CUstreamCaptureMode *mode) {
    if (mode == NULL || !mode_valid(*mode))
        return CUDA_ERROR_INVALID_VALUE;
    CUstreamCaptureMode old = thread_mode;
    thread_mode = *mode;
    *mode = old;
    return CUDA_SUCCESS;
}

CUresult fake_graph_append_locked(struct CUgraph_st *g, const struct fake_op *ops, size_t n) {
    if (g->n + n > g->cap) {
        size_t cap = g->cap ? g->cap : 16;
        while (cap < g->n + n)
            cap *= 2;
        struct fake_op *grown = realloc(g->ops, cap * sizeof(*grown));
        if (grown == NULL)
            return CUDA_ERROR_OUT_OF_MEMORY;
        g->ops = grown;
        g->cap = cap;
    }
    memcpy(g->ops + g->n, ops, n * sizeof(*ops));
    g->n += n;
    return CUDA_SUCCESS;
}

struct CUgraph_st *fake_graph_capturing_locked(uint64_t capture_id) {
    for (struct CUgraph_st *g = capture_list; g != NULL; g = g->next)
        if (g->capture_id == capture_id)
            return g;
    return NULL;
}

/* The capture cannot be ended any more: it stays allocated (streams that joined it may still
 * point at it) but invalidated. */
void fake_graph_stream_gone_locked(struct CUstream_st *s) {
    if (s->capture != NULL && s->capture->origin == s) {
        s->capture->invalidated = 1;
        s->capture->origin = NULL;
    }
}

static struct CUgraph_st *graph_find_locked(CUgraph hGraph) {
    for (struct CUgraph_st *g = graph_registry; g != NULL; g = g->next)
        if (g == hGraph)
            return g;
    return NULL;
}

static struct CUgraphExec_st *exec_find_locked(CUgraphExec hExec) {
    for (struct CUgraphExec_st *e = exec_registry; e != NULL; e = e->next)
        if (e == hExec)
            return e;
    return NULL;
}

/* ---- capture ----------------------------------------------------------------------------- */

static CUresult begin_capture(CUstream hStream, CUstreamCaptureMode mode) {
    struct CUstream_st *s;
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (!mode_valid(mode))
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&fake_cuda_lock);
    rc = fake_stream_get_locked(hStream, &s);
    if (rc != CUDA_SUCCESS) {
        pthread_mutex_unlock(&fake_cuda_lock);
        return rc;
    }
    if (s->is_default == FAKE_STREAM_LEGACY) {
        rc = CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED; /* the legacy stream cannot capture */
    } else if (s->capture != NULL) {
        rc = CUDA_ERROR_ILLEGAL_STATE;
    } else {
        struct CUgraph_st *g = calloc(1, sizeof(*g));
        if (g == NULL) {
            rc = CUDA_ERROR_OUT_OF_MEMORY;
        } else {
            g->capture_id = next_capture_id++;
            g->origin = s;
            g->mode = mode;
            g->thread = fake_thread_id();
            g->next = capture_list;
            capture_list = g;
            s->capture = g;
        }
    }
    pthread_mutex_unlock(&fake_cuda_lock);
    fake_stream_put(s);
    return rc;
}

CUresult cuStreamBeginCapture(CUstream hStream) {
    return begin_capture(hStream, CU_STREAM_CAPTURE_MODE_GLOBAL);
}

CUresult cuStreamBeginCapture_v2(CUstream hStream, CUstreamCaptureMode mode) {
    return begin_capture(hStream, mode);
}

static CUresult end_capture(CUstream hStream, CUgraph *phGraph) {
    struct CUstream_st *s;
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (phGraph == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&fake_cuda_lock);
    rc = fake_stream_get_locked(hStream, &s);
    if (rc != CUDA_SUCCESS) {
        pthread_mutex_unlock(&fake_cuda_lock);
        return rc;
    }
    struct CUgraph_st *g = s->capture;
    if (g == NULL) {
        rc = CUDA_ERROR_ILLEGAL_STATE;
    } else if (g->origin != s) {
        rc = CUDA_ERROR_STREAM_CAPTURE_UNMATCHED;
    } else if (g->mode != CU_STREAM_CAPTURE_MODE_RELAXED && g->thread != fake_thread_id()) {
        rc = CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD;
    } else {
        struct CUgraph_st **link = &capture_list;
        while (*link != g)
            link = &(*link)->next;
        *link = g->next;
        fake_exec_uncapture_locked(g);
        g->capture_id = 0;
        g->origin = NULL;
        if (g->invalidated) {
            free(g->ops);
            free(g);
            *phGraph = NULL;
            rc = CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
        } else {
            g->next = graph_registry;
            graph_registry = g;
            *phGraph = g;
        }
    }
    pthread_mutex_unlock(&fake_cuda_lock);
    fake_stream_put(s);
    return rc;
}

CUresult cuStreamEndCapture(CUstream hStream, CUgraph *phGraph) {
    return end_capture(hStream, phGraph);
}

static CUresult is_capturing(CUstream hStream, CUstreamCaptureStatus *captureStatus) {
    struct CUstream_st *s;
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (captureStatus == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&fake_cuda_lock);
    rc = fake_stream_get_locked(hStream, &s);
    if (rc == CUDA_SUCCESS && s->is_default == FAKE_STREAM_LEGACY &&
        fake_capture_legacy_locked(s->ctx, 0)) {
        /* "the blocking stream capture is not invalidated"; *captureStatus is unspecified */
        fake_stream_put(s);
        rc = CUDA_ERROR_STREAM_CAPTURE_IMPLICIT;
    } else if (rc == CUDA_SUCCESS) {
        *captureStatus = s->capture == NULL       ? CU_STREAM_CAPTURE_STATUS_NONE
                         : s->capture->invalidated ? CU_STREAM_CAPTURE_STATUS_INVALIDATED
                                                   : CU_STREAM_CAPTURE_STATUS_ACTIVE;
        fake_stream_put(s);
    }
    pthread_mutex_unlock(&fake_cuda_lock);
    return rc;
}

CUresult cuStreamIsCapturing(CUstream hStream, CUstreamCaptureStatus *captureStatus) {
    return is_capturing(hStream, captureStatus);
}

/* ---- graphs and executable graphs -------------------------------------------------------- */

static CUresult instantiate(CUgraphExec *phGraphExec, CUgraph hGraph) {
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (phGraphExec == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    struct CUgraphExec_st *e = calloc(1, sizeof(*e));
    if (e == NULL)
        return CUDA_ERROR_OUT_OF_MEMORY;
    pthread_mutex_lock(&fake_cuda_lock);
    struct CUgraph_st *g = graph_find_locked(hGraph);
    if (g == NULL) {
        rc = CUDA_ERROR_INVALID_VALUE;
    } else if (g->n > 0 && (e->ops = malloc(g->n * sizeof(*e->ops))) == NULL) {
        rc = CUDA_ERROR_OUT_OF_MEMORY;
    } else {
        if (g->n > 0)
            memcpy(e->ops, g->ops, g->n * sizeof(*e->ops));
        e->n = g->n;
        e->next = exec_registry;
        exec_registry = e;
        *phGraphExec = e;
    }
    pthread_mutex_unlock(&fake_cuda_lock);
    if (rc != CUDA_SUCCESS)
        free(e);
    return rc;
}

CUresult cuGraphInstantiateWithFlags(CUgraphExec *phGraphExec, CUgraph hGraph,
                                     unsigned long long flags) {
    if (flags & ~0xfull) /* AUTO_FREE_ON_LAUNCH, UPLOAD, DEVICE_LAUNCH, USE_NODE_PRIORITY */
        return CUDA_ERROR_INVALID_VALUE;
    return instantiate(phGraphExec, hGraph);
}

static CUresult instantiate_legacy(CUgraphExec *phGraphExec, CUgraph hGraph,
                                   CUgraphNode *phErrorNode, char *logBuffer, size_t bufferSize) {
    CUresult rc = instantiate(phGraphExec, hGraph);
    if (phErrorNode != NULL)
        *phErrorNode = NULL;
    if (logBuffer != NULL && bufferSize > 0)
        logBuffer[0] = '\0';
    return rc;
}

/* The pre-12.0 signature, exported under the name cuGraphInstantiate (cuda.h now maps that name
 * to cuGraphInstantiateWithFlags). */
CUresult cuGraphInstantiate(CUgraphExec *phGraphExec, CUgraph hGraph, CUgraphNode *phErrorNode,
                            char *logBuffer, size_t bufferSize) {
    return instantiate_legacy(phGraphExec, hGraph, phErrorNode, logBuffer, bufferSize);
}

CUresult cuGraphInstantiate_v2(CUgraphExec *phGraphExec, CUgraph hGraph, CUgraphNode *phErrorNode,
                               char *logBuffer, size_t bufferSize) {
    return instantiate_legacy(phGraphExec, hGraph, phErrorNode, logBuffer, bufferSize);
}

static CUresult graph_launch(CUgraphExec hGraphExec, CUstream hStream) {
    struct CUstream_st *s;
    struct fake_op *ops = NULL;
    size_t n = 0;
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    pthread_mutex_lock(&fake_cuda_lock);
    struct CUgraphExec_st *e = exec_find_locked(hGraphExec);
    rc = e == NULL ? CUDA_ERROR_INVALID_HANDLE : fake_stream_use_locked(hStream, &s);
    if (rc != CUDA_SUCCESS) {
        pthread_mutex_unlock(&fake_cuda_lock);
        return rc;
    }
    if (s->capture != NULL) {
        rc = fake_graph_append_locked(s->capture, e->ops, e->n);
    } else if (e->n > 0) {
        /* A copy: the exec may be destroyed while the launch waits for room in the queue. */
        ops = malloc(e->n * sizeof(*ops));
        if (ops == NULL) {
            rc = CUDA_ERROR_OUT_OF_MEMORY;
        } else {
            memcpy(ops, e->ops, e->n * sizeof(*ops));
            n = e->n;
            int64_t now = fake_now_ns(); /* queued now, whenever they were captured */
            for (size_t k = 0; k < n; k++)
                ops[k].at = now;
        }
    }
    pthread_mutex_unlock(&fake_cuda_lock);
    if (ops != NULL)
        rc = fake_stream_submit(s, ops, n);
    free(ops);
    fake_stream_put(s);
    return rc;
}

CUresult cuGraphLaunch(CUgraphExec hGraphExec, CUstream hStream) {
    return graph_launch(hGraphExec, hStream);
}

/* Queued launches hold their own copies of the kernels, so destroying is immediate. */
CUresult cuGraphExecDestroy(CUgraphExec hGraphExec) {
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    pthread_mutex_lock(&fake_cuda_lock);
    struct CUgraphExec_st **link = &exec_registry;
    while (*link != NULL && *link != hGraphExec)
        link = &(*link)->next;
    struct CUgraphExec_st *e = *link;
    if (e != NULL)
        *link = e->next;
    pthread_mutex_unlock(&fake_cuda_lock);
    if (e == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    free(e->ops);
    free(e);
    return CUDA_SUCCESS;
}

CUresult cuGraphDestroy(CUgraph hGraph) {
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    pthread_mutex_lock(&fake_cuda_lock);
    struct CUgraph_st **link = &graph_registry;
    while (*link != NULL && *link != hGraph)
        link = &(*link)->next;
    struct CUgraph_st *g = *link;
    if (g != NULL)
        *link = g->next;
    pthread_mutex_unlock(&fake_cuda_lock);
    if (g == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    free(g->ops);
    free(g);
    return CUDA_SUCCESS;
}

/* The hidden aliases of this file's entry points (fake_cuda.def). */
#define FAKE_IN_graph(x) x
#include "fake_cuda_locals.h"
