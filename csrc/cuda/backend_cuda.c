/* backend_cuda.c - the CUDA backend: lazy initialization of the shim (configuration, the real
 * driver, the node's state) and the table of operations the vendor-free core uses (devices by
 * UUID, events, capture checks, error codes). See core/backend.h for each operation's contract.
 *
 * Stream capture: while any thread captures a graph in global mode, a "potentially unsafe" call
 * (an event query, a synchronize) from a thread in global mode invalidates that capture, and the
 * user's torch.cuda.graph fails. So the gate's queries run in relaxed capture mode
 * (cuThreadExchangeStreamCaptureMode, set and restored around each). And while a blocking
 * stream captures, the legacy stream cannot be used at all (cuStreamIsCapturing(NULL) answers
 * CUDA_ERROR_STREAM_CAPTURE_IMPLICIT): it then counts as capturing, so no mark goes there.
 *
 * Contexts: an event can only be recorded on a stream of its own context, and the NULL stream
 * means the current context's: events are created, and recorded on the NULL stream, with the
 * gate's context pushed when it is not the current one.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "shim.h"
#include "util.h"

struct fx_real_cuda fx_cu;
struct fx_real_nvml fx_nv;

/* ---- devices ------------------------------------------------------------------------------ */

static int fx_cuda_devices(uint8_t (*uuid)[16], int max)
{
    int count = 0;
    if (!fx_cu.cuDeviceGetCount || !fx_cu.cuDeviceGet || !fx_cu.cuDeviceGetUuid) return -1;
    if (fx_cu.cuDeviceGetCount(&count) != CUDA_SUCCESS) return -1; /* not initialized yet */
    if (count > max) {
        FX_WARN("%d devices visible; flexai accounts the first %d", count, max);
        count = max;
    }
    for (int i = 0; i < count; i++) {
        CUdevice dev;
        CUuuid u;
        if (fx_cu.cuDeviceGet(&dev, i) != CUDA_SUCCESS || fx_cu.cuDeviceGetUuid(&u, dev) != 0)
            return -1;
        memcpy(uuid[i], u.bytes, 16);
    }
    return count;
}

/* For a process that only uses NVML (and must not initialize CUDA, e.g. before forking
 * workers): NVML's enumeration filtered by CUDA_VISIBLE_DEVICES with the same parser as the
 * simulated driver's. It matches CUDA's order whenever the GPUs are of one model or
 * CUDA_DEVICE_ORDER=PCI_BUS_ID (documented limitation otherwise). */
static int fx_cuda_devices_quiet(uint8_t (*uuid)[16], int max)
{
    unsigned n = 0;
    char text[FLEXAI_MAX_DEVICES][96];
    const char *names[FLEXAI_MAX_DEVICES];
    int order[FLEXAI_MAX_DEVICES];
    fx_nvml_load();
    if (!fx_nv.nvmlDeviceGetCount_v2 || !fx_nv.nvmlDeviceGetHandleByIndex_v2 ||
        !fx_nv.nvmlDeviceGetUUID)
        return -1;
    if (fx_nv.nvmlDeviceGetCount_v2(&n) != NVML_SUCCESS) return -1; /* NVML not initialized */
    if (n > FLEXAI_MAX_DEVICES) n = FLEXAI_MAX_DEVICES;
    for (unsigned i = 0; i < n; i++) {
        nvmlDevice_t h;
        if (fx_nv.nvmlDeviceGetHandleByIndex_v2(i, &h) != NVML_SUCCESS ||
            fx_nv.nvmlDeviceGetUUID(h, text[i], sizeof text[i]) != NVML_SUCCESS)
            return -1;
        names[i] = text[i];
    }
    int count = fx_visible_parse(getenv("CUDA_VISIBLE_DEVICES"), names, (int)n, order,
                                 max < FLEXAI_MAX_DEVICES ? max : FLEXAI_MAX_DEVICES);
    for (int i = 0; i < count; i++)
        if (fx_uuid_parse(text[order[i]], uuid[i]) != 0) return -1;
    return count;
}

static int fx_cuda_current_device(void)
{
    CUdevice d;
    if (!fx_cu.cuCtxGetDevice || fx_cu.cuCtxGetDevice(&d) != CUDA_SUCCESS) return -1;
    return d;
}

/* ---- events and capture ------------------------------------------------------------------- */

#define FX_PTSZ 1u /* queue flag: the per-thread default stream's variant of the entry point */

/* Run the next driver call in relaxed capture mode: it then never invalidates a capture of this
 * or another thread. Returns the mode to restore. */
static CUstreamCaptureMode fx_relaxed_begin(void)
{
    CUstreamCaptureMode mode = FX_CU_STREAM_CAPTURE_MODE_RELAXED;
    if (fx_cu.cuThreadExchangeStreamCaptureMode &&
        fx_cu.cuThreadExchangeStreamCaptureMode(&mode) != CUDA_SUCCESS)
        mode = FX_CU_STREAM_CAPTURE_MODE_RELAXED; /* unchanged: nothing to restore */
    return mode;
}

static void fx_relaxed_end(CUstreamCaptureMode mode)
{
    if (fx_cu.cuThreadExchangeStreamCaptureMode && mode != FX_CU_STREAM_CAPTURE_MODE_RELAXED)
        fx_cu.cuThreadExchangeStreamCaptureMode(&mode);
}

static int fx_special_stream(fx_queue_t q)
{
    return q == NULL || q == CU_STREAM_LEGACY || q == CU_STREAM_PER_THREAD;
}

/* Make ctx current for the next call unless it is: 1 when pushed (pop it with fx_ctx_pop), 0
 * when nothing was needed, -1 when it could not be made current. */
static int fx_ctx_push(fx_ctx_t ctx)
{
    CUcontext cur = NULL;
    if (!ctx || !fx_cu.cuCtxGetCurrent || fx_cu.cuCtxGetCurrent(&cur) != CUDA_SUCCESS ||
        cur == (CUcontext)ctx)
        return 0;
    if (!fx_cu.cuCtxPushCurrent_v2 || !fx_cu.cuCtxPopCurrent_v2) return -1;
    return fx_cu.cuCtxPushCurrent_v2((CUcontext)ctx) == CUDA_SUCCESS ? 1 : -1;
}

static void fx_ctx_pop(int pushed)
{
    CUcontext popped = NULL;
    if (pushed == 1) fx_cu.cuCtxPopCurrent_v2(&popped);
}

static int fx_cuda_event_create(fx_event_t *ev, fx_ctx_t ctx)
{
    CUevent e = NULL;
    int pushed = fx_ctx_push(ctx);
    if (pushed < 0) return -1;
    CUresult rc = fx_cu.cuEventCreate(&e, 0);
    fx_ctx_pop(pushed);
    if (rc != CUDA_SUCCESS) return -1;
    *ev = e;
    return 0;
}

static void fx_cuda_event_destroy(fx_event_t ev)
{
    if (fx_cu.cuEventDestroy_v2) fx_cu.cuEventDestroy_v2(ev);
}

static int fx_cuda_event_record(fx_event_t ev, fx_queue_t q, unsigned flags, fx_ctx_t ctx)
{
    int pushed = fx_special_stream(q) ? fx_ctx_push(ctx) : 0; /* NULL: ctx's stream */
    if (pushed < 0) return -1;
    CUresult rc = (flags & FX_PTSZ) && fx_cu.cuEventRecord_ptsz ? fx_cu.cuEventRecord_ptsz(ev, q)
                                                                : fx_cu.cuEventRecord(ev, q);
    fx_ctx_pop(pushed);
    return rc == CUDA_SUCCESS ? 0 : -1;
}

static enum fx_event_state fx_cuda_event_query(fx_event_t ev)
{
    CUstreamCaptureMode mode = fx_relaxed_begin();
    CUresult rc = fx_cu.cuEventQuery(ev);
    fx_relaxed_end(mode);
    if (rc == CUDA_SUCCESS) return FX_EV_DONE;
    return rc == (CUresult)FX_CUDA_ERROR_NOT_READY ? FX_EV_PENDING : FX_EV_ERROR;
}

static int fx_cuda_event_elapsed_ns(fx_event_t start, fx_event_t end, uint64_t *ns)
{
    __typeof__(fx_cu.cuEventElapsedTime) elapsed =
        fx_cu.cuEventElapsedTime_v2 ? fx_cu.cuEventElapsedTime_v2 : fx_cu.cuEventElapsedTime;
    float ms = 0;
    if (!elapsed) return -1;
    CUstreamCaptureMode mode = fx_relaxed_begin();
    CUresult rc = elapsed(&ms, start, end);
    fx_relaxed_end(mode);
    if (rc != CUDA_SUCCESS || ms < 0) return -1;
    *ns = (uint64_t)((double)ms * 1e6);
    return 0;
}

static int fx_cuda_queue_capturing(fx_queue_t q, unsigned flags)
{
    CUstreamCaptureStatus st = 0;
    __typeof__(fx_cu.cuStreamIsCapturing) is_capturing =
        (flags & FX_PTSZ) ? fx_cu.cuStreamIsCapturing_ptsz : fx_cu.cuStreamIsCapturing;
    if (!is_capturing) return 0;
    CUresult rc = is_capturing(q, &st);
    /* the legacy stream while a blocking stream captures: unusable, as good as capturing */
    if (rc == (CUresult)FX_CUDA_ERROR_STREAM_CAPTURE_IMPLICIT) return 1;
    return rc == CUDA_SUCCESS && st != 0;
}

static fx_ctx_t fx_cuda_queue_context(fx_queue_t q, unsigned flags)
{
    CUcontext ctx = NULL;
    (void)flags;
    if (fx_special_stream(q))
        return fx_cu.cuCtxGetCurrent && fx_cu.cuCtxGetCurrent(&ctx) == CUDA_SUCCESS ? ctx : NULL;
    return fx_cu.cuStreamGetCtx && fx_cu.cuStreamGetCtx(q, &ctx) == CUDA_SUCCESS ? ctx : NULL;
}

static int fx_cuda_queue_per_thread(fx_queue_t q, unsigned flags)
{
    return q == CU_STREAM_PER_THREAD || (q == NULL && (flags & FX_PTSZ));
}

/* ---- errors ------------------------------------------------------------------------------- */

CUresult fx_cuda_error(int32_t status)
{
    switch (status) {
    case FLEXAI_OK: return CUDA_SUCCESS;
    case FLEXAI_E_QUOTA: return CUDA_ERROR_OUT_OF_MEMORY;
    case FLEXAI_E_BAD_VALUE: return CUDA_ERROR_INVALID_VALUE;
    case FLEXAI_E_DRIVER: return CUDA_ERROR_NO_DEVICE;
    default: return CUDA_ERROR_OPERATING_SYSTEM; /* unusable state, node full, system */
    }
}

static int fx_cuda_error_code(int32_t status)
{
    return (int)fx_cuda_error(status);
}

static const struct fx_backend fx_cuda_backend = {
    .name = "cuda",
    .visible_env = "CUDA_VISIBLE_DEVICES",
    .devices = fx_cuda_devices,
    .devices_quiet = fx_cuda_devices_quiet,
    .current_device = fx_cuda_current_device,
    .event_create = fx_cuda_event_create,
    .event_destroy = fx_cuda_event_destroy,
    .event_record = fx_cuda_event_record,
    .event_query = fx_cuda_event_query,
    .event_elapsed_ns = fx_cuda_event_elapsed_ns,
    .queue_capturing = fx_cuda_queue_capturing,
    .queue_context = fx_cuda_queue_context,
    .queue_per_thread = fx_cuda_queue_per_thread,
    .mem_reclaim = fx_cuda_pools_refresh,
    .error_code = fx_cuda_error_code,
};

/* ---- initialization ----------------------------------------------------------------------- */

/* FLEXAI_SHARING=auto: spatial sharing where an MPS control daemon answers for this process
 * (its pipe directory has the control socket), time-slicing otherwise. */
static int fx_mps_present(void)
{
    char path[FLEXAI_PATH_MAX + 16];
    const char *dir = getenv("CUDA_MPS_PIPE_DIRECTORY");
    snprintf(path, sizeof path, "%s/control", dir && *dir ? dir : "/tmp/nvidia-mps");
    return access(path, F_OK) == 0;
}

static int fx_cuda_refused;

static void fx_cuda_init_once(void)
{
    fx_dlsym_bootstrap();
    fx_process_configure();
    /* RTLD_LOCAL: the real driver's symbols must not enter the global scope ahead of ours. */
    void *cuda = dlopen(fx_self.cfg.libcuda, RTLD_NOW | RTLD_LOCAL);
    if (!cuda) FX_WARN("cannot load the CUDA driver %s: %s", fx_self.cfg.libcuda, dlerror());
    fx_hooks_resolve_cuda(cuda);
    /* refused when another vendor's backend runs this process: CUDA calls then fail */
    fx_cuda_refused = fx_process_start(&fx_cuda_backend, fx_mps_present()) != 0;
}

static struct fx_once fx_cuda_once = FX_ONCE_INIT(fx_cuda_init_once);

int fx_cuda_init(void)
{
    if (fx_once_run(&fx_cuda_once) != 0) return -1; /* the driver called back while loading */
    return fx_self.broken || fx_cuda_refused ? -1 : 0;
}

static void fx_nvml_load_once(void)
{
    void *nvml = dlopen(fx_self.cfg.libnvml, RTLD_NOW | RTLD_LOCAL);
    if (!nvml) FX_DEBUG("cannot load NVML %s: %s", fx_self.cfg.libnvml, dlerror());
    if (nvml) fx_hooks_resolve_nvml(nvml);
}

static pthread_once_t fx_nvml_once = PTHREAD_ONCE_INIT;

void fx_nvml_load(void)
{
    pthread_once(&fx_nvml_once, fx_nvml_load_once);
}
