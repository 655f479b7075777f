/* protocol.h - the wire protocol between flexai's remote client (client/, loaded as libcuda.so.1
 * on a GPU-less node) and `flexai remoted` (flexai/remote/server.py, the front that accepts and
 * authenticates; server/, the session worker that calls the driver).
 *
 * It must never carry a pointer of one side that the other side dereferences (host pointers stay
 * home; device pointers are plain numbers the driver validates), never carry the shared secret
 * (FLEXAI_REMOTE_TOKEN: only HMAC-SHA256 proofs over fresh nonces cross the wire), and never let
 * a length from the wire size an allocation without a bound. The Python front restates the
 * handshake constants (flexai/remote/wire.py); tests/test_remote_protocol.py checks both agree.
 *
 * Frames. Every message is a 16-byte header followed by `len` payload bytes, all integers
 * little-endian:
 *
 *   u32 len    payload bytes after the header (<= FX_R_MAX_PAYLOAD)
 *   u16 op     what it is: a handshake message or an operation of api.def
 *   u16 flags  FX_RF_*
 *   u32 a      request: the client's current context id (0: none); reply: CUresult
 *   u32 b      request: sequence number; reply: first error of the batched operations executed
 *              since the previous reply (0: none), which the client reports at its next
 *              synchronizing call, as a GPU reports asynchronous errors
 *
 * Handshake (front, before any operation):
 *   client  HELLO     a=FX_R_VERSION, payload: client nonce (32 bytes)
 *   server  CHALLENGE a=FX_R_VERSION (or 0 and close: version not served), payload: server
 *                     nonce (32)
 *   client  AUTH      payload: HMAC(token, "flexai-remote-client" | server nonce | client nonce)
 *                     (32), then the requested slice as "FLEXAI_NAME=value\n" lines
 *   server  WELCOME   a=0, payload: HMAC(token, "flexai-remote-server" | client nonce | server
 *                     nonce) (32) then the session id text; or a!=0 and an error text, and close
 * After WELCOME the session worker owns the connection and serves operations.
 *
 * Operations. A request with FX_RF_BATCH gets no reply: the client queues such requests (launches,
 * async copies and memsets, event records, stream waits, creations of client-side handles) and
 * sends them in one write with the next request that needs an answer. Every other request gets
 * exactly one reply frame with the same op and FX_RF_REPLY set. DtoH copies answer with DATA
 * frames (the bytes, in order) before that reply. Anything malformed (bad length, unknown op,
 * short payload, a handshake op after the handshake) ends the connection with an ERROR frame.
 *
 * Handles. Contexts, streams, events, modules, libraries, kernels and functions are numbered by
 * the client (ids, per kind, FX_R_FIRST_ID.. and growing), so creating one needs no round trip;
 * the worker maps ids to the driver's handles. Stream ids 0, 1, 2 are the NULL, legacy and
 * per-thread default streams. Primary contexts are ids 1..FX_R_MAX_DEVICES (device + 1).
 */
#ifndef FX_REMOTE_PROTOCOL_H
#define FX_REMOTE_PROTOCOL_H

#include <stdint.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "flexai remote: the wire format is little-endian and is written in host order here"
#endif

#define FX_R_MAGIC 0x52584c46u /* "FLXR" */
#define FX_R_VERSION 1u
#define FX_R_HEADER 16u
#define FX_R_NONCE 32u
#define FX_R_MAC 32u
#define FX_R_MAX_PAYLOAD ((uint32_t)(64u << 20)) /* any larger length closes the connection */
#define FX_R_CHUNK ((uint32_t)(4u << 20))        /* bulk copies travel in pieces of this size */
#define FX_R_MAX_AUTH 4096u                      /* handshake payloads are small */
#define FX_R_MAX_DEVICES 64u
#define FX_R_FIRST_ID 128u     /* first client-side id of every kind (below: specials) */
#define FX_R_MAX_IDS (1u << 20) /* per kind; a larger id is refused (bounds the worker's tables) */
#define FX_R_MAX_PARAMS 256u   /* kernel parameters */
#define FX_R_MAX_NAME 1024u    /* function, global and kernel names */

/* Stream ids with a fixed meaning. */
#define FX_R_STREAM_NULL 0u
#define FX_R_STREAM_LEGACY 1u
#define FX_R_STREAM_PER_THREAD 2u

enum fx_r_flags {
    FX_RF_BATCH = 1u << 0, /* request: no reply (queued on the client) */
    FX_RF_REPLY = 1u << 1, /* reply */
};

struct fx_r_header {
    uint32_t len;
    uint16_t op;
    uint16_t flags;
    uint32_t a;
    uint32_t b;
};
_Static_assert(sizeof(struct fx_r_header) == FX_R_HEADER, "header is 16 bytes on the wire");
_Static_assert(FX_R_FIRST_ID > FX_R_MAX_DEVICES, "primary context ids (1..64) come first");

/* Handshake and transport messages; operations (api.def) follow from FX_ROP_FIRST. */
enum fx_r_msg {
    FX_RMSG_HELLO = 1,
    FX_RMSG_CHALLENGE = 2,
    FX_RMSG_AUTH = 3,
    FX_RMSG_WELCOME = 4,
    FX_RMSG_ERROR = 5, /* payload: text; the sender closes the connection */
    FX_RMSG_DATA = 6,  /* bulk bytes of a DtoH copy */
    FX_RMSG_BYE = 7,   /* client: orderly end of the session */
};

#define FX_ROP_FIRST 16
enum fx_r_op {
    FX_ROP_FIRST_MINUS_ONE = FX_ROP_FIRST - 1,
#define FX_RWIRE(op, mode) FX_ROP_##op,
#include "api.def"
#undef FX_RWIRE
    FX_ROP_END
};

/* Whether a wire op waits for an answer (SYNC) or is queued (BATCH). */
enum fx_r_mode { FX_RMODE_SYNC = 0, FX_RMODE_BATCH = 1 };

/* Labels of the HMAC inputs (without a terminating NUL). */
#define FX_R_CLIENT_LABEL "flexai-remote-client"
#define FX_R_SERVER_LABEL "flexai-remote-server"

/* The error a client reports once its server is gone (and for every call after). */
#define FX_R_LOST_ERROR 46 /* CUDA_ERROR_DEVICES_UNAVAILABLE */

/* ---- operation payloads (the fixed part; data, names or images may follow) ---------------- */

/* INIT. flags: cuInit's; version_only: answer the driver version without cuInit. */
struct fx_rq_init {
    uint32_t flags, version_only;
};
struct fx_rp_init {
    int32_t driver_version, device_count;
};

/* DEVICE_*, PRIMARY_CTX_*: the device and an argument (attribute, flags, context id). */
struct fx_rq_dev {
    int32_t dev, arg;
};

/* CTX_CREATE. */
struct fx_rq_ctx {
    uint32_t id, flags;
    int32_t dev, pad;
};

/* One id (+ an argument): CTX_DESTROY, CTX_SYNCHRONIZE (0: the current context), MODULE_UNLOAD,
 * LIBRARY_UNLOAD, STREAM_DESTROY, STREAM_SYNCHRONIZE, STREAM_QUERY, EVENT_DESTROY, EVENT_QUERY,
 * EVENT_SYNCHRONIZE, GET_ERROR_STRING (id: the code). */
struct fx_rq_id {
    uint32_t id, arg;
};

/* Memory: MEM_ALLOC (n), MEM_FREE (dst), MEM_HTOD (dst, stream, flags; the bytes follow),
 * MEM_DTOH (src, n, stream, flags), MEM_DTOD[_ASYNC] (dst, src, n, stream), MEMSET[_ASYNC] (dst,
 * n elements of elem bytes of value, stream), POINTER_GET_ATTRIBUTE (src, value: the attribute;
 * the reply is 8 bytes). */
struct fx_rq_mem {
    uint64_t dst, src, n;
    uint32_t stream, value, elem, flags;
};
#define FX_RQ_MEM_ASYNC 1u /* MEM_HTOD, MEM_DTOH: stream-ordered (cu*Async) */

/* MODULE_LOAD_DATA, LIBRARY_LOAD_DATA: the new id; the image follows. */
struct fx_rq_load {
    uint32_t id, pad;
};

/* MODULE_GET_FUNCTION (id: new function, parent: module), LIBRARY_GET_KERNEL (id: new kernel,
 * parent: library), MODULE_GET_GLOBAL (parent: module): a NUL-terminated name follows. Function
 * and kernel replies: u32 count (FX_R_PARAMS_UNKNOWN: the driver cannot say), then count pairs of
 * u32 offset, size. */
struct fx_rq_name {
    uint32_t id, parent;
};
#define FX_R_PARAMS_UNKNOWN UINT32_MAX

/* Functions: FUNC_GET_ATTRIBUTE (arg0: attribute), FUNC_SET_ATTRIBUTE (arg0, arg1: value),
 * FUNC_SET_CACHE_CONFIG (arg0), OCCUPANCY_BLOCKS (arg0: block size, bytes: dynamic shared
 * memory, flags), OCCUPANCY_BLOCK_SIZE (arg1: block size limit, bytes, flags),
 * KERNEL_GET_FUNCTION (id: kernel, arg0: the new function's id). kind: FX_RK_*. */
struct fx_rq_func {
    uint32_t id, kind;
    int32_t arg0, arg1;
    uint64_t bytes;
    uint32_t flags, pad;
};
#define FX_RK_KERNEL 1u      /* id names a kernel (cuLibraryGetKernel), not a function */
#define FX_RK_COOPERATIVE 2u /* LAUNCH: cuLaunchCooperativeKernel */
#define FX_RK_EXTRA 4u       /* LAUNCH: the arguments are one CU_LAUNCH_PARAM_BUFFER */

/* LAUNCH: nattrs raw CUlaunchAttribute (FX_R_ATTR_SIZE bytes each), then argbytes of arguments
 * (each parameter's bytes at its offset, or the extra buffer). */
struct fx_rq_launch {
    uint32_t func, kind;
    uint32_t grid[3], block[3];
    uint32_t shmem, stream, nattrs, argbytes;
};
#define FX_R_ATTR_SIZE 72u
#define FX_R_MAX_ATTRS 16u

/* STREAM_CREATE. */
struct fx_rq_stream {
    uint32_t id, flags;
    int32_t prio, pad;
};

/* EVENT_CREATE (id, flags), EVENT_RECORD (id, stream, flags: cuEventRecordWithFlags'),
 * STREAM_WAIT_EVENT (id: event, stream, flags), EVENT_ELAPSED (id: start, stream: end). */
struct fx_rq_event {
    uint32_t id, flags, stream, pad;
};

#endif
