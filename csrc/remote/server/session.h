/* session.h - internals of the remote session worker (`flexai-remote-session FD`): one process
 * per client, started by `flexai remoted` after the handshake, under libflexai.so in the
 * client's slice, reaching the driver through FLEXAI_LIBCUDA.
 *
 * The worker trusts nothing in a frame: every length is checked against what was received,
 * every id against its table, every name for its terminator; a frame that breaks the protocol
 * ends this session (its process) and nothing else. It must never call exit from a handler
 * (handlers return a CUresult, or FXS_CLOSE), never keep a pointer into the input buffer across
 * frames, and never grow a table past FX_R_MAX_IDS entries.
 */
#ifndef FXS_SESSION_H
#define FXS_SESSION_H

#include <stddef.h>
#include <stdint.h>

#include "cuda_api.h"
#include "protocol.h"

/* The driver functions the worker calls; a missing one answers CUDA_ERROR_NOT_SUPPORTED. */
#define FXS_DRIVER(X)                                                                          \
    X(cuInit) X(cuDriverGetVersion) X(cuGetErrorString) X(cuDeviceGetCount)                    \
    X(cuDeviceGetName) X(cuDeviceGetUuid) X(cuDeviceTotalMem_v2) X(cuDeviceGetAttribute)       \
    X(cuDeviceGetPCIBusId) X(cuDevicePrimaryCtxRetain) X(cuDevicePrimaryCtxRelease_v2)         \
    X(cuDevicePrimaryCtxReset_v2) X(cuDevicePrimaryCtxGetState)                                \
    X(cuDevicePrimaryCtxSetFlags_v2) X(cuCtxCreate_v2) X(cuCtxDestroy_v2) X(cuCtxSetCurrent)   \
    X(cuCtxSynchronize) X(cuMemGetInfo_v2) X(cuMemAlloc_v2) X(cuMemFree_v2)                    \
    X(cuMemcpyHtoD_v2) X(cuMemcpyHtoDAsync_v2) X(cuMemcpyDtoH_v2) X(cuMemcpyDtoHAsync_v2)      \
    X(cuMemcpyDtoD_v2) X(cuMemcpyDtoDAsync_v2) X(cuMemsetD8_v2) X(cuMemsetD16_v2)              \
    X(cuMemsetD32_v2) X(cuMemsetD8Async) X(cuMemsetD16Async) X(cuMemsetD32Async)               \
    X(cuPointerGetAttribute) X(cuModuleLoadData) X(cuModuleUnload) X(cuModuleGetFunction)      \
    X(cuModuleGetGlobal_v2) X(cuLibraryLoadData) X(cuLibraryUnload) X(cuLibraryGetKernel)      \
    X(cuKernelGetFunction) X(cuFuncGetParamInfo) X(cuKernelGetParamInfo) X(cuFuncGetAttribute) \
    X(cuFuncSetAttribute) X(cuFuncSetCacheConfig)                                              \
    X(cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags)                                    \
    X(cuOccupancyMaxPotentialBlockSizeWithFlags) X(cuLaunchKernel) X(cuLaunchKernelEx)         \
    X(cuLaunchCooperativeKernel) X(cuStreamCreateWithPriority) X(cuStreamDestroy_v2)           \
    X(cuStreamSynchronize) X(cuStreamQuery) X(cuStreamWaitEvent) X(cuEventCreate)              \
    X(cuEventDestroy_v2) X(cuEventRecord) X(cuEventRecordWithFlags) X(cuEventQuery)            \
    X(cuEventSynchronize) X(cuEventElapsedTime)

struct fxs_driver {
#define FXS_FIELD(name) __typeof__(&name) name;
    FXS_DRIVER(FXS_FIELD)
#undef FXS_FIELD
};
extern struct fxs_driver fxs_cu;

/* Calls driver function `name`, or answers CUDA_ERROR_NOT_SUPPORTED where it is missing. */
#define FXS_CALL(name, ...) (fxs_cu.name ? fxs_cu.name(__VA_ARGS__) : CUDA_ERROR_NOT_SUPPORTED)

/* Loads the driver (FLEXAI_LIBCUDA, else libcuda.so.1); -1 when it cannot be opened. */
int fxs_driver_load(void);

/* Handler result meaning: the frame breaks the protocol, end the session. */
#define FXS_CLOSE ((CUresult)0x7fffffff)

/* ---- handles ------------------------------------------------------------------------------ */
enum fxs_kind { FXS_CTX = 1, FXS_STREAM, FXS_EVENT, FXS_MODULE, FXS_LIBRARY, FXS_KERNEL,
                FXS_FUNC, FXS_KINDS };

/* A function or kernel: the driver's handle and its parameter layout. */
struct fxs_callable {
    void *h;
    uint32_t n; /* FX_R_PARAMS_UNKNOWN when the driver cannot say */
    uint32_t off[FX_R_MAX_PARAMS], size[FX_R_MAX_PARAMS];
    uint32_t argbytes;
};

/* The driver handle stored for (kind, id), or NULL. Functions and kernels store a callable. */
void *fxs_get(enum fxs_kind kind, uint32_t id);
/* Stores h for a new id: -1 when the id is out of range or taken. */
int fxs_put(enum fxs_kind kind, uint32_t id, void *h);
void fxs_del(enum fxs_kind kind, uint32_t id);
/* The id whose handle is h (contexts; 0: none). */
uint32_t fxs_find(enum fxs_kind kind, const void *h);
/* A stream id to the driver's handle (the three special ones included); -1: unknown id. */
int fxs_stream(uint32_t id, CUstream *out);
/* The context the driver now has current is no longer known (creation, release, reset). */
void fxs_ctx_unknown(void);
/* Primary contexts this session retained, per device (released at the end). */
extern int fxs_primary_retains[FX_R_MAX_DEVICES];

/* ---- replies ------------------------------------------------------------------------------ */
struct fxs_out {
    uint8_t *p;
    uint32_t len, cap;
};
/* Appends n bytes to the reply payload (bounded by its capacity; the handlers' replies are
 * small and fixed, so this never truncates what a handler writes). */
void fxs_reply(struct fxs_out *out, const void *p, uint32_t n);

/* Bulk transfer on the session's socket (MEM_HTOD's bytes, MEM_DTOH's DATA frames). */
int fxs_read_payload(void *dst, size_t n);
int fxs_send_data(const void *p, uint32_t n);

/* A handler: the request's payload (all of it, except for MEM_HTOD whose bytes beyond the fixed
 * part are still on the socket: `more`), the reply to fill; returns a CUresult or FXS_CLOSE. */
typedef CUresult (*fxs_handler)(const uint8_t *p, uint32_t len, uint32_t more, struct fxs_out *out);

#define FX_RWIRE(op, mode)                                                                     \
    CUresult fxs_op_##op(const uint8_t *p, uint32_t len, uint32_t more, struct fxs_out *out);
#include "api.def"
#undef FX_RWIRE

/* Reads the fixed part of a request: FXS_CLOSE unless len is at least its size. */
#define FXS_TAKE(type, var, p, len)                                                            \
    type var;                                                                                  \
    if ((len) < sizeof(type))                                                                  \
        return FXS_CLOSE;                                                                      \
    memcpy(&var, (p), sizeof(type))

#endif
