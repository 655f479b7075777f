/*
 * fake_cuda_internal.h - state shared by the files of the fake libcuda.so.1.
 *
 * Locking: one mutex (fake_cuda_lock) guards every mutable structure below. Functions whose name
 * ends in _locked expect the caller to hold it. The device table is written once by cuInit before
 * fake_cuda_initialized is set (release store), and is read-only afterwards, so device lookups
 * need no lock.
 *
 * Interposition: libflexai.so is LD_PRELOADed and exports the same cu* names. An exported
 * function called or address-taken by name from inside this library would therefore resolve to
 * the shim's wrapper, and the shim would recurse into itself. So the fake never calls its own
 * exported names: shared logic lives in static or hidden helpers, and cuGetProcAddress hands out
 * the hidden aliases declared here (fake_local_<name>), which always bind inside this library.
 *
 * Execution (fake_cuda_exec.c, fake_cuda_event.c, fake_sim.c, fake_cuda_launch.c,
 * fake_cuda_graph.c): each
 * stream is an in-order queue of fake_op served by a worker thread of its own. Stream and event
 * queues have their own locks, taken after fake_cuda_lock when both are held; worker threads never
 * take fake_cuda_lock. Streams and events are reference counted, so a handle destroyed while work
 * that names it is queued stays valid until that work is done.
 */
#ifndef FLEXAI_FAKE_CUDA_INTERNAL_H
#define FLEXAI_FAKE_CUDA_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "fake.h"

/* Hidden alias of an exported entry point, for every name in fake_cuda.def. The alias must be
 * defined in the file that defines the function: fake_cuda_locals.h, included at its end. */
#define FAKE_DECLARE_LOCAL(name) extern __typeof__(name) fake_local_##name FAKE_HIDDEN;
#define FAKE_DEFINE_LOCAL(name)                                                                    \
    extern __typeof__(name) fake_local_##name __attribute__((alias(#name))) FAKE_HIDDEN;

/* A twin has exactly its base's type (as in cuda.h), so the generated call forwards everything. */
#define FAKE_CHECK_TWIN(name, twin)                                                                \
    _Static_assert(__builtin_types_compatible_p(__typeof__(name), __typeof__(twin)),             \
                   #twin " must have the type of " #name);

#define FAKE_FN(file, name) FAKE_DECLARE_LOCAL(name)
#define FAKE_VER(file, name, base, since) FAKE_DECLARE_LOCAL(name)
#define FAKE_PTSZ(file, name, params, args)                                                        \
    FAKE_DECLARE_LOCAL(name##_ptsz) FAKE_CHECK_TWIN(name, name##_ptsz)
#include "fake_cuda.def"
#undef FAKE_FN
#undef FAKE_VER
#undef FAKE_PTSZ

/* A CUDA context. Primary contexts live in the device table; others are malloc'd and linked in
 * a registry so a stale or foreign handle is recognised before it is dereferenced. */
struct CUctx_st {
    struct CUctx_st *next; /* registry link (created contexts only) */
    int device;            /* visible ordinal */
    int is_primary;
    unsigned int retains; /* primary only: usable while > 0 */
    int active;           /* primary only: created; a reset or the last release destroys it,
                           * the next retain or use while retained creates it again */
    struct CUstream_st *default_stream; /* NULL stream; created on first use */
};

/* ---- execution ---------------------------------------------------------------------------- */

enum fake_op_kind {
    FAKE_OP_KERNEL = 1,  /* occupies the device for ns */
    FAKE_OP_RECORD,      /* event reaches record number gen */
    FAKE_OP_WAIT,        /* stream waits until event has reached record number gen */
    FAKE_OP_HOST,        /* the host function fn(data) runs on the stream's worker */
    FAKE_OP_WAIT_STREAM, /* stream waits until `stream` has completed gen operations (the
                          * legacy stream's implicit synchronization) */
};

/* One unit of work in a stream queue or a graph. RECORD and WAIT hold a reference on event,
 * WAIT_STREAM one on stream. */
struct fake_op {
    int kind;
    int64_t ns;
    struct CUevent_st *event;
    struct CUstream_st *stream;
    uint64_t gen;
    int64_t at; /* when it was submitted (CLOCK_MONOTONIC ns) */
    CUhostFn fn; /* FAKE_OP_HOST */
    void *data;
};

/* CUstream_st.is_default: the context's legacy NULL stream, or a thread's per-thread one. */
enum { FAKE_STREAM_CREATED = 0, FAKE_STREAM_LEGACY = 1, FAKE_STREAM_PER_THREAD = 2 };

struct CUstream_st {
    /* guarded by fake_cuda_lock */
    struct CUstream_st *next;   /* registry link */
    struct CUctx_st *ctx;       /* NULL once destroyed (the queue may still drain) */
    struct CUgraph_st *capture; /* graph this stream is capturing into, if any */
    /* immutable */
    int physical;   /* device whose time the kernels occupy */
    int is_default; /* FAKE_STREAM_*: created, the legacy stream, a per-thread default stream */
    uint64_t thread; /* per-thread default stream: its thread (fake_thread_id) */
    unsigned flags;
    int priority;
    atomic_int refs;
    /* guarded by mu */
    pthread_mutex_t mu;
    pthread_cond_t work_cv; /* worker: work arrived or stream dying */
    pthread_cond_t done_cv; /* an op completed */
    struct fake_op *ring;
    size_t cap, head, count;
    uint64_t submitted, completed;
    int64_t last_end;  /* when the latest completed operation ended on the device */
    uint64_t wake_at;  /* lowest `completed` a synchronising thread waits for; 0: none */
    int space_waiters; /* submitters waiting for room in a full queue */
    int worker, dying;
};

/* A graph: a linear list of kernels, in capture order (the fake does not need the DAG). */
struct CUgraph_st {
    struct CUgraph_st *next;    /* registry link (fake_cuda_lock), also while capturing */
    struct fake_op *ops;        /* FAKE_OP_KERNEL only */
    size_t n, cap;
    uint64_t capture_id;        /* nonzero while a capture is recording into it */
    struct CUstream_st *origin; /* the stream that began the capture */
    int invalidated;
    CUstreamCaptureMode mode; /* given to cuStreamBeginCapture */
    uint64_t thread;          /* the thread that began it (fake_thread_id) */
};

/* A stream-ordered pool (fake_cuda_mem.c) holds backing memory, `reserved`, charged to its device
 * (none for a host pool) in whole FAKE_VMM_GRANULARITY chunks, and keeps it when allocations are
 * freed: only a synchronization (down to the release threshold), cuMemPoolTrimTo, a context's
 * teardown or the pool's destruction gives it back, as with the real driver. */
struct CUmemPoolHandle_st {
    struct CUmemPoolHandle_st *next; /* registry link (created pools only) */
    int device;                      /* visible ordinal; -1: a host-located pool */
    int is_default;
    int destroyed;   /* cuMemPoolDestroy with allocations out: gone with the last of them */
    unsigned reuse_off; /* CU_MEMPOOL_ATTR_REUSE_* turned off, bit (attribute - 1) */
    size_t max_size; /* 0: only the device limits it */
    size_t used;     /* live allocations */
    size_t reserved; /* backing memory held */
    uint64_t threshold; /* CU_MEMPOOL_ATTR_RELEASE_THRESHOLD */
    size_t used_high, reserved_high;
};

struct fake_cuda_device {
    int physical;     /* index in FLEXAI_SIM_* numbering, which NVML uses too */
    size_t total;     /* bytes; what is used is the node's (fake_node_mem_used) */
    const struct fake_device_config *cfg;
    struct CUctx_st primary;
    struct CUmemPoolHandle_st default_pool;
};

FAKE_HIDDEN extern pthread_mutex_t fake_cuda_lock;
FAKE_HIDDEN extern atomic_int fake_cuda_initialized;
FAKE_HIDDEN extern int fake_cuda_ndevices; /* visible devices */
FAKE_HIDDEN extern struct fake_cuda_device fake_cuda_devices[FAKE_MAX_DEVICES];

#define FAKE_VMM_GRANULARITY ((size_t)2 << 20)

/* CUDA_SUCCESS after a successful cuInit, else CUDA_ERROR_NOT_INITIALIZED. */
static inline CUresult fake_cuda_check_init(void) {
    return atomic_load_explicit(&fake_cuda_initialized, memory_order_acquire)
               ? CUDA_SUCCESS
               : CUDA_ERROR_NOT_INITIALIZED;
}

static inline int fake_cuda_device_valid(CUdevice dev) {
    return dev >= 0 && dev < fake_cuda_ndevices;
}

/* ---- threads and destroyed handles (fake_cuda.c) ------------------------------------------ */

/* A number for the calling thread, never reused in the process (a pthread_t may be). */
FAKE_HIDDEN uint64_t fake_thread_id(void);
/* Nonzero while a _ptsz entry point runs on this thread: there the NULL stream is the thread's
 * per-thread default stream, not the legacy one. */
FAKE_HIDDEN extern _Thread_local int fake_ptsz_call;

/* Destroyed handles are kept (never freed, so never handed out again) in a bounded graveyard,
 * so that a later use is recognised and reported on stderr ("fail loudly"): a real driver may
 * answer CUDA_ERROR_INVALID_HANDLE, or act on a new object that got the same address. `release`
 * frees the object when it leaves the graveyard. */
FAKE_HIDDEN void fake_grave_add_locked(void *handle, const char *what, void (*release)(void *));
/* What a destroyed handle was ("stream", "event", "context"), or NULL. */
FAKE_HIDDEN const char *fake_grave_find_locked(const void *handle);
/* Returns rc for an unknown handle, and reports on stderr when it is one that was destroyed. */
FAKE_HIDDEN CUresult fake_stale_locked(const void *handle, CUresult rc);

/* Device accounting against the node's memory (fake_common.c): charge fails with
 * CUDA_ERROR_OUT_OF_MEMORY rather than exceed the total; uncharge never wraps below zero. */
FAKE_HIDDEN CUresult fake_dev_charge_locked(int dev, size_t bytes);
FAKE_HIDDEN void fake_dev_uncharge_locked(int dev, size_t bytes);

/* The calling thread's current context, validated (CUDA_ERROR_INVALID_CONTEXT otherwise). */
FAKE_HIDDEN CUresult fake_ctx_current_locked(struct CUctx_st **out);
/* The context work on hStream goes to; NULL and the two special handles mean the current one. */
FAKE_HIDDEN CUresult fake_stream_ctx_locked(CUstream hStream, struct CUctx_st **out);
/* Frees what a dying context owns (fake_cuda_mem.c): allocations and arrays. */
FAKE_HIDDEN void fake_mem_release_ctx_locked(const struct CUctx_st *ctx);
/* A synchronization point (cuCtxSynchronize, cuStreamSynchronize, cuEventSynchronize): every
 * pool gives back what it holds beyond its release threshold. Takes fake_cuda_lock. */
FAKE_HIDDEN void fake_mem_sync_release(void);
/* Whether [addr, addr+len) lies in mapped VMM memory with at least the given access. */
FAKE_HIDDEN int fake_vmm_covers_locked(uintptr_t addr, size_t len, int need_write);
/* Whether ctx is a live context (fake_cuda_ctx.c). */
FAKE_HIDDEN int fake_ctx_valid_locked(const struct CUctx_st *ctx);

/* Streams (fake_cuda_exec.c). get resolves a handle and takes a reference that put drops:
 * NULL and CU_STREAM_LEGACY mean the current context's legacy stream, CU_STREAM_PER_THREAD (and
 * NULL inside a _ptsz entry point) the calling thread's per-thread default stream there. */
FAKE_HIDDEN CUresult fake_stream_get_locked(CUstream hStream, struct CUstream_st **out);
FAKE_HIDDEN void fake_stream_put(struct CUstream_st *s);
/* get, for a call that queues work on the stream or waits for it: the legacy stream cannot be
 * used while a blocking stream of its context captures (CUDA_ERROR_STREAM_CAPTURE_IMPLICIT, and
 * those captures are invalidated). */
FAKE_HIDDEN CUresult fake_stream_use_locked(CUstream hStream, struct CUstream_st **out);
/* Queues ops on s behind its implicit dependencies (the legacy stream waits for the context's
 * blocking streams, a blocking stream for the legacy one). Takes fake_cuda_lock itself; blocks
 * while the queue is full. Takes over the ops' references (also on failure, when they are
 * dropped). */
FAKE_HIDDEN CUresult fake_stream_submit(struct CUstream_st *s, const struct fake_op *ops,
                                        size_t n);
/* Whether the legacy stream synchronizes with s (a created stream without
 * CU_STREAM_NON_BLOCKING, or a per-thread default stream). */
FAKE_HIDDEN int fake_stream_blocking(const struct CUstream_st *s);
/* Detaches a dying context's streams; their queued work still drains. */
FAKE_HIDDEN void fake_exec_release_ctx_locked(struct CUctx_st *ctx);
/* Ends capture g on every stream that records into it. */
FAKE_HIDDEN void fake_exec_uncapture_locked(const struct CUgraph_st *g);
/* A synchronous call on the legacy stream (copies, memset): waits for it and for the current
 * context's blocking streams. Fails, as the real driver does, while a blocking stream of the
 * context captures (CUDA_ERROR_STREAM_CAPTURE_IMPLICIT) or when the thread may not synchronize
 * during a capture (CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED). */
FAKE_HIDDEN CUresult fake_exec_sync_default(void);

/* Events (fake_cuda_event.c): the device reached record number gen / wait until it has; put
 * drops a reference. The fork hooks keep the event lock consistent across fork(). */
FAKE_HIDDEN void fake_event_reach(struct CUevent_st *ev, uint64_t gen, int64_t ts);
FAKE_HIDDEN void fake_event_wait(struct CUevent_st *ev, uint64_t gen);
FAKE_HIDDEN void fake_event_put(struct CUevent_st *ev);
FAKE_HIDDEN void fake_event_fork_prepare(void);
FAKE_HIDDEN void fake_event_fork_parent(void);
FAKE_HIDDEN void fake_event_fork_child(void);
/* A dying context's events are destroyed with it. */
FAKE_HIDDEN void fake_event_release_ctx_locked(const struct CUctx_st *ctx);

/* The simulated device's time: fake_sim_kernel and fake_now_ns, declared in fake.h. */

/* Device memory for fake_cuda_copy.c (fake_cuda_mem.c): the linear allocation holding a range,
 * and a range-checked copy (src, n bytes) or fill (n elements of elem bytes of value) on the
 * current context. */
FAKE_HIDDEN int fake_mem_find_locked(uintptr_t addr, size_t len, uintptr_t *base, size_t *size,
                                     const struct CUctx_st **ctx);
struct fake_access {
    void *dst;
    const void *src; /* copies */
    size_t n;        /* bytes of a copy, elements of a fill */
    int dst_dev, src_dev, fill;
    unsigned value, elem; /* fills: the element and its size (1, 2 or 4 bytes) */
};
FAKE_HIDDEN CUresult fake_mem_access(const struct fake_access *x);
/* Whether a function takes its duration as a first 4-byte parameter ("sleep_us..."): 1, 0, or
 * -1 for an unknown handle (fake_cuda_launch.c). */
FAKE_HIDDEN int fake_function_sleeps_locked(const void *handle);

/* Modules and functions die with their context (fake_cuda_launch.c). */
FAKE_HIDDEN void fake_launch_release_ctx_locked(const struct CUctx_st *ctx);

/* Stream capture (fake_cuda_graph.c). */
FAKE_HIDDEN CUresult fake_graph_append_locked(struct CUgraph_st *g, const struct fake_op *ops,
                                              size_t n);
/* The graph a capture with this id records into, or NULL once it ended. */
FAKE_HIDDEN struct CUgraph_st *fake_graph_capturing_locked(uint64_t capture_id);
/* A stream is going away: a capture it began is ended and invalidated. */
FAKE_HIDDEN void fake_graph_stream_gone_locked(struct CUstream_st *s);
/* Before a "potentially unsafe" call (one that synchronizes with or queries the device: event
 * and stream queries and synchronizes, context synchronize, synchronous copies): in the calling
 * thread's capture interaction mode (cuThreadExchangeStreamCaptureMode), is it prohibited by an
 * ongoing capture? Global mode: by a capture of this thread not begun in relaxed mode, or by a
 * global-mode capture of any other thread; thread-local mode: by this thread's own; relaxed:
 * never. A prohibited call invalidates those captures and fails with
 * CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED. */
FAKE_HIDDEN CUresult fake_capture_unsafe_locked(void);
/* Whether a blocking stream of ctx captures (the legacy stream is then unusable); with
 * invalidate, those captures are invalidated. */
FAKE_HIDDEN int fake_capture_legacy_locked(const struct CUctx_st *ctx, int invalidate);
/* A call that synchronizes a whole context: prohibited while any of its streams captures
 * (CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, those captures are invalidated). */
FAKE_HIDDEN CUresult fake_capture_ctx_sync_locked(const struct CUctx_st *ctx);

#endif /* FLEXAI_FAKE_CUDA_INTERNAL_H */
