/* client.h - internals of flexai's remote client, the libcuda.so.1 of GPU-less nodes: the
 * connection to `flexai remoted` (conn.c), client-side handles (handles.c), the entry points
 * (api_*.c) and cuGetProcAddress (procaddr.c).
 *
 * Rules for every file here: never dereference anything the server sends as a pointer; never
 * block without the connection's lock released on error; never crash or hang on a lost server
 * (every call then returns FX_R_LOST_ERROR); never print to stdout. Entry points return the
 * driver's error codes; nothing here calls exit or abort.
 */
#ifndef FXC_CLIENT_H
#define FXC_CLIENT_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "cuda_api.h"
#include "protocol.h"

#define FXC_EXPORT __attribute__((visibility("default")))

/* ---- logging (conn.c) --------------------------------------------------------------------- */
enum { FXC_LOG_ERROR = 0, FXC_LOG_WARN = 1, FXC_LOG_INFO = 2, FXC_LOG_DEBUG = 3 };
extern int fxc_log_level;
void fxc_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- HMAC-SHA256 (sha256.c) --------------------------------------------------------------- */
struct fxc_span {
    const void *p;
    size_t n;
};
void fxc_hmac_sha256(const void *key, size_t klen, const struct fxc_span *parts, size_t nparts,
                     uint8_t out[32]);

/* ---- the connection (conn.c) -------------------------------------------------------------- */

/* Connects and authenticates once (FLEXAI_REMOTE, FLEXAI_REMOTE_TOKEN); CUDA_SUCCESS, or the
 * error every call returns from now on. */
CUresult fxc_connect(void);

/* A request that needs the answer: queued batched requests go first, in the same write; `data`
 * (dlen bytes) follows `req` in the payload without being copied. The reply's payload is copied
 * to `out` (at most outcap bytes; *outlen: how many, may be NULL). Returns the reply's CUresult. */
CUresult fxc_call(uint16_t op, const void *req, uint32_t rlen, const void *data, uint32_t dlen,
                  void *out, uint32_t outcap, uint32_t *outlen);

/* A batched request (no reply): queued, sent with the next fxc_call or when the queue is full.
 * Returns CUDA_SUCCESS, or the connection's error. */
CUresult fxc_batch(uint16_t op, const void *req, uint32_t rlen, const void *data, uint32_t dlen);

/* A DtoH copy: the request, then DATA frames straight into dst (n bytes), then the reply. */
CUresult fxc_call_dtoh(const void *req, uint32_t rlen, void *dst, uint64_t n);

/* For calls that synchronize with the device: the first error of batched operations the server
 * reported since, if rc is success (and forgets it), else rc. */
CUresult fxc_sync_result(CUresult rc);

/* The server's driver version and device count, learned by the INIT exchange. */
extern int fxc_driver_version, fxc_device_count, fxc_initialized;

/* ---- handles (handles.c) ------------------------------------------------------------------ */
enum fxc_kind {
    FXC_CTX = 1,
    FXC_STREAM,
    FXC_EVENT,
    FXC_MODULE,
    FXC_LIBRARY,
    FXC_KERNEL,
    FXC_FUNC,
    FXC_KINDS
};

#define FXC_PARAMS_UNKNOWN UINT32_MAX

struct fxc_obj {
    uint32_t id;
    uint32_t ctx;      /* streams, events, modules, functions: the context they belong to */
    int dev;           /* contexts: their device */
    unsigned flags;    /* streams, events, contexts: creation flags */
    int prio;          /* streams */
    uint32_t parent;   /* functions: module id; kernels: library id */
    uint32_t nparams;  /* functions, kernels: FXC_PARAMS_UNKNOWN when the server cannot say */
    uint32_t *poff, *psize;
    uint32_t argbytes; /* sum of psize */
    char *name;        /* functions, kernels */
};

/* A new object of `kind` with a fresh id (NULL: out of memory or ids). */
struct fxc_obj *fxc_obj_new(enum fxc_kind kind);
/* The live object a handle names, or NULL. Objects are never moved or freed while live. */
struct fxc_obj *fxc_obj_get(enum fxc_kind kind, const void *handle);
struct fxc_obj *fxc_obj_by_id(enum fxc_kind kind, uint32_t id);
/* Forgets an object; its id may be given again. */
void fxc_obj_drop(enum fxc_kind kind, uint32_t id);
void *fxc_handle(enum fxc_kind kind, uint32_t id);
/* Forget everything (a forked child starts anew). */
void fxc_handles_reset(void);

/* The calling thread's context stack (ids; 0: none). */
uint32_t fxc_ctx_current(void);
void fxc_ctx_set(uint32_t id);
int fxc_ctx_push(uint32_t id);
uint32_t fxc_ctx_pop(void);
/* Removes id from the calling thread's stack (a destroyed context). */
void fxc_ctx_forget(uint32_t id);

/* The wire id of a stream handle (NULL: per_thread ? FX_R_STREAM_PER_THREAD : NULL stream);
 * CUDA_ERROR_INVALID_HANDLE for anything else than a live stream. */
CUresult fxc_stream_id(CUstream s, int per_thread, uint32_t *id);

/* ---- shared helpers of the entry points --------------------------------------------------- */
/* cuInit done and connection up: CUDA_SUCCESS, else the error to return. */
CUresult fxc_ready(void);
/* fxc_ready(), then CUDA_ERROR_INVALID_VALUE if the call's out pointer is NULL (that order). */
CUresult fxc_ready_out(const void *out);

#endif
