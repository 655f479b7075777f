/*
 * fake_cuda.c - simulated libcuda.so.1: initialisation, CUDA_VISIBLE_DEVICES, device queries,
 * error strings and entry-point lookup (cuGetProcAddress).
 *
 * Contexts are in fake_cuda_ctx.c, linear memory, pools and arrays in fake_cuda_mem.c, the
 * virtual memory management API in fake_cuda_vmm.c; streams in fake_cuda_exec.c, events in
 * fake_cuda_event.c, the shared simulated device time in fake_sim.c, modules and launches
 * in fake_cuda_launch.c, stream capture and graphs in fake_cuda_graph.c.
 *
 * Destroyed handles are remembered here (the graveyard, fake_cuda_internal.h), so that their
 * later use fails loudly instead of silently reaching an object that got the same address.
 *
 * Every entry point is listed once, in fake_cuda.def; the _ptsz twins and cuGetProcAddress's
 * tables below are generated from that list.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fake_cuda_internal.h"
#include "util.h"

pthread_mutex_t fake_cuda_lock = PTHREAD_MUTEX_INITIALIZER;
atomic_int fake_cuda_initialized;
int fake_cuda_ndevices;
struct fake_cuda_device fake_cuda_devices[FAKE_MAX_DEVICES];

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static CUresult init_result; /* sticky, like the real driver's */

/* ---- errors ------------------------------------------------------------------------------ */

static const struct {
    CUresult code;
    const char *name;
    const char *text;
} error_table[] = {
    {CUDA_SUCCESS, "CUDA_SUCCESS", "no error"},
    {CUDA_ERROR_INVALID_VALUE, "CUDA_ERROR_INVALID_VALUE", "invalid argument"},
    {CUDA_ERROR_OUT_OF_MEMORY, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory"},
    {CUDA_ERROR_NOT_INITIALIZED, "CUDA_ERROR_NOT_INITIALIZED", "initialization error"},
    {CUDA_ERROR_NO_DEVICE, "CUDA_ERROR_NO_DEVICE", "no CUDA-capable device is detected"},
    {CUDA_ERROR_INVALID_DEVICE, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal"},
    {CUDA_ERROR_INVALID_IMAGE, "CUDA_ERROR_INVALID_IMAGE", "device kernel image is invalid"},
    {CUDA_ERROR_INVALID_CONTEXT, "CUDA_ERROR_INVALID_CONTEXT", "invalid device context"},
    {CUDA_ERROR_FILE_NOT_FOUND, "CUDA_ERROR_FILE_NOT_FOUND", "file not found"},
    {CUDA_ERROR_INVALID_HANDLE, "CUDA_ERROR_INVALID_HANDLE", "invalid resource handle"},
    {CUDA_ERROR_ILLEGAL_STATE, "CUDA_ERROR_ILLEGAL_STATE",
     "the operation cannot be performed in the present state"},
    {CUDA_ERROR_NOT_FOUND, "CUDA_ERROR_NOT_FOUND", "named symbol not found"},
    {CUDA_ERROR_NOT_READY, "CUDA_ERROR_NOT_READY", "device not ready"},
    {CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES, "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES",
     "too many resources requested for launch"},
    {CUDA_ERROR_NOT_SUPPORTED, "CUDA_ERROR_NOT_SUPPORTED", "operation not supported"},
    {CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED",
     "operation not permitted when stream is capturing"},
    {CUDA_ERROR_STREAM_CAPTURE_INVALIDATED, "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED",
     "operation failed due to a previous error during capture"},
    {CUDA_ERROR_STREAM_CAPTURE_UNMATCHED, "CUDA_ERROR_STREAM_CAPTURE_UNMATCHED",
     "the capture was not initiated in this stream"},
    {CUDA_ERROR_STREAM_CAPTURE_IMPLICIT, "CUDA_ERROR_STREAM_CAPTURE_IMPLICIT",
     "operation would make the legacy stream depend on a capturing blocking stream"},
    {CUDA_ERROR_CAPTURED_EVENT, "CUDA_ERROR_CAPTURED_EVENT",
     "operation not permitted on an event last recorded in a capturing stream"},
    {CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD, "CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD",
     "attempt to terminate a thread-local capture sequence from another thread"},
    {CUDA_ERROR_CONTEXT_IS_DESTROYED, "CUDA_ERROR_CONTEXT_IS_DESTROYED",
     "context is destroyed"},
    {CUDA_ERROR_UNKNOWN, "CUDA_ERROR_UNKNOWN", "unknown error"},
};

/* ---- threads and destroyed handles -------------------------------------------------------- */

_Thread_local int fake_ptsz_call;

uint64_t fake_thread_id(void) {
    static atomic_uint_fast64_t next = 1;
    static _Thread_local uint64_t id;
    if (id == 0)
        id = atomic_fetch_add(&next, 1);
    return id;
}

#define GRAVE_MAX 1024 /* destroyed handles remembered; the oldest is freed beyond */

static struct grave {
    void *handle;
    const char *what;
    void (*release)(void *);
} graves[GRAVE_MAX];
static size_t grave_next, grave_count; /* fake_cuda_lock */

void fake_grave_add_locked(void *handle, const char *what, void (*release)(void *)) {
    struct grave *g = &graves[grave_next];
    if (grave_count == GRAVE_MAX && g->release != NULL)
        g->release(g->handle);
    g->handle = handle;
    g->what = what;
    g->release = release;
    grave_next = (grave_next + 1) % GRAVE_MAX;
    if (grave_count < GRAVE_MAX)
        grave_count++;
}

const char *fake_grave_find_locked(const void *handle) {
    for (size_t i = 0; handle != NULL && i < grave_count; i++)
        if (graves[i].handle == handle)
            return graves[i].what;
    return NULL;
}

CUresult fake_stale_locked(const void *handle, CUresult rc) {
    const char *what = fake_grave_find_locked(handle);
    const char *name = "?";
    if (what == NULL)
        return rc;
    for (size_t i = 0; i < sizeof(error_table) / sizeof(error_table[0]); i++)
        if (error_table[i].code == rc)
            name = error_table[i].name;
    /* stderr only: the fake runs inside the host program and must not touch its stdout. */
    fprintf(stderr, "flexai fake driver: use of a destroyed %s (%p): %s\n", what, handle, name);
    return rc;
}

/* ---- CUDA_VISIBLE_DEVICES ---------------------------------------------------------------- */

/* Fills map[visible] = physical with the shim's parser (fx_visible_parse), so both read the list
 * the same way: like the real driver, it ends at the first entry that is invalid, unknown,
 * ambiguous or repeated; the devices before it stay visible. */
static int visible_devices(const struct fake_config *cfg, int map[FAKE_MAX_DEVICES]) {
    const char *uuids[FAKE_MAX_DEVICES];

    for (int i = 0; i < cfg->ndevices; i++)
        uuids[i] = cfg->dev[i].uuid_str;
    return fx_visible_parse(getenv("CUDA_VISIBLE_DEVICES"), uuids, cfg->ndevices, map,
                            cfg->ndevices);
}

/* ---- initialisation and devices ---------------------------------------------------------- */

static void init_once_fn(void) {
    const struct fake_config *cfg = fake_config_get();
    int map[FAKE_MAX_DEVICES];

    if (cfg == NULL) {
        init_result = CUDA_ERROR_INVALID_VALUE;
        return;
    }
    fake_cuda_ndevices = visible_devices(cfg, map);
    if (fake_cuda_ndevices == 0) {
        init_result = CUDA_ERROR_NO_DEVICE;
        return;
    }
    for (int i = 0; i < fake_cuda_ndevices; i++) {
        struct fake_cuda_device *d = &fake_cuda_devices[i];
        d->physical = map[i];
        d->total = cfg->memory;
        d->cfg = &cfg->dev[map[i]];
        d->primary.device = i;
        d->primary.is_primary = 1;
        d->default_pool.device = i;
        d->default_pool.is_default = 1;
    }
    init_result = CUDA_SUCCESS;
    /* Release: whoever sees the flag also sees the device table written above. */
    atomic_store_explicit(&fake_cuda_initialized, 1, memory_order_release);
}

CUresult cuInit(unsigned int flags) {
    if (flags != 0)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_once(&init_once, init_once_fn);
    return init_result;
}

CUresult cuDriverGetVersion(int *driverVersion) {
    if (driverVersion == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    *driverVersion = FAKE_DRIVER_VERSION;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetCount(int *count) {
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (count == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    *count = fake_cuda_ndevices;
    return CUDA_SUCCESS;
}

/* The common prologue of device queries: initialised, output pointer, device ordinal. */
static CUresult device_query(const void *out, CUdevice dev) {
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (out == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    return fake_cuda_device_valid(dev) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_DEVICE;
}

CUresult cuDeviceGet(CUdevice *device, int ordinal) {
    CUresult rc = device_query(device, ordinal);
    if (rc == CUDA_SUCCESS)
        *device = ordinal;
    return rc;
}

CUresult cuDeviceGetName(char *name, int len, CUdevice dev) {
    CUresult rc = device_query(name, dev);
    if (rc != CUDA_SUCCESS)
        return rc;
    if (len <= 0)
        return CUDA_ERROR_INVALID_VALUE;
    snprintf(name, (size_t)len, "%s", fake_config_get()->name);
    return CUDA_SUCCESS;
}

static CUresult device_uuid(CUuuid *uuid, CUdevice dev) {
    CUresult rc = device_query(uuid, dev);
    if (rc == CUDA_SUCCESS)
        memcpy(uuid->bytes, fake_cuda_devices[dev].cfg->uuid, sizeof(uuid->bytes));
    return rc;
}

CUresult cuDeviceGetUuid(CUuuid *uuid, CUdevice dev) {
    return device_uuid(uuid, dev);
}

/* _v2 differs from the original only for MIG instances, which the fake does not simulate. */
CUresult cuDeviceGetUuid_v2(CUuuid *uuid, CUdevice dev) {
    return device_uuid(uuid, dev);
}

CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice dev) {
    CUresult rc = device_query(bytes, dev);
    if (rc == CUDA_SUCCESS)
        *bytes = fake_cuda_devices[dev].total;
    return rc;
}

/* A PCI bus number per physical device, so the attribute and the bus-id string agree. */
static int pci_bus(CUdevice dev) {
    return 0x10 + fake_cuda_devices[dev].physical;
}

/* Roughly an H100 SXM; programs size launches and workspaces from these. */
static int attribute_value(CUdevice_attribute attrib, CUdevice dev) {
    switch (attrib) {
    case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK: return 1024;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X: return 1024;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y: return 1024;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z: return 64;
    case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X: return 2147483647;
    case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y: return 65535;
    case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z: return 65535;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK: return 48 << 10;
    case CU_DEVICE_ATTRIBUTE_TOTAL_CONSTANT_MEMORY: return 64 << 10;
    case CU_DEVICE_ATTRIBUTE_WARP_SIZE: return 32;
    case CU_DEVICE_ATTRIBUTE_MAX_PITCH: return 2147483647;
    case CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_BLOCK: return 65536;
    case CU_DEVICE_ATTRIBUTE_CLOCK_RATE: return 1980000;
    case CU_DEVICE_ATTRIBUTE_TEXTURE_ALIGNMENT: return 512;
    case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: return 132;
    case CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY: return 1;
    case CU_DEVICE_ATTRIBUTE_CONCURRENT_KERNELS: return 1;
    case CU_DEVICE_ATTRIBUTE_PCI_BUS_ID: return pci_bus(dev);
    case CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID: return 0;
    case CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE: return 2619000;
    case CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH: return 5120;
    case CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE: return 50 << 20;
    case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR: return 2048;
    case CU_DEVICE_ATTRIBUTE_ASYNC_ENGINE_COUNT: return 2;
    case CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING: return 1;
    case CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID: return 0;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: return 9;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: return 0;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR: return 228 << 10;
    case CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_MULTIPROCESSOR: return 65536;
    case CU_DEVICE_ATTRIBUTE_MANAGED_MEMORY: return 1;
    case CU_DEVICE_ATTRIBUTE_CONCURRENT_MANAGED_ACCESS: return 1;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: return 227 << 10;
    case CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED: return 1;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCKS_PER_MULTIPROCESSOR: return 32;
    case CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED: return 1;
    default: return 0; /* unknown or unsimulated: "not supported" reads as 0 */
    }
}

CUresult cuDeviceGetAttribute(int *pi, CUdevice_attribute attrib, CUdevice dev) {
    CUresult rc = device_query(pi, dev);
    if (rc == CUDA_SUCCESS)
        *pi = attribute_value(attrib, dev);
    return rc;
}

CUresult cuDeviceGetPCIBusId(char *pciBusId, int len, CUdevice dev) {
    CUresult rc = device_query(pciBusId, dev);
    if (rc != CUDA_SUCCESS)
        return rc;
    if (len <= 0)
        return CUDA_ERROR_INVALID_VALUE;
    snprintf(pciBusId, (size_t)len, "0000:%02x:00.0", (unsigned)pci_bus(dev));
    return CUDA_SUCCESS;
}

/* ---- error strings ----------------------------------------------------------------------- */

static CUresult error_lookup(CUresult error, const char **pStr, int want_name) {
    if (pStr == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    for (size_t i = 0; i < sizeof(error_table) / sizeof(error_table[0]); i++) {
        if (error_table[i].code == error) {
            *pStr = want_name ? error_table[i].name : error_table[i].text;
            return CUDA_SUCCESS;
        }
    }
    *pStr = NULL;
    return CUDA_ERROR_INVALID_VALUE;
}

CUresult cuGetErrorString(CUresult error, const char **pStr) {
    return error_lookup(error, pStr, 0);
}

CUresult cuGetErrorName(CUresult error, const char **pStr) {
    return error_lookup(error, pStr, 1);
}

/* cudart asks for private tables by UUID; the fake has none, and says so instead of handing out
 * a table that callers would jump through. */
CUresult cuGetExportTable(const void **ppExportTable, const CUuuid *pExportTableId) {
    CUresult rc = fake_cuda_check_init();
    (void)pExportTableId;
    if (ppExportTable != NULL)
        *ppExportTable = NULL;
    return rc != CUDA_SUCCESS ? rc : CUDA_ERROR_INVALID_VALUE;
}

/* ---- per-thread default stream twins ------------------------------------------------------ */

/* Each _ptsz twin in fake_cuda.def calls its base through the base's hidden alias, with
 * fake_ptsz_call raised so that the NULL stream means the calling thread's per-thread default
 * stream there, and gets a hidden alias of its own for the table below. */
#define FAKE_FN(file, name)
#define FAKE_VER(file, name, base, since)
#define FAKE_PTSZ(file, name, params, args)                                                        \
    CUresult name##_ptsz params {                                                                  \
        fake_ptsz_call++;                                                                          \
        CUresult rc_ = fake_local_##name args;                                                     \
        fake_ptsz_call--;                                                                          \
        return rc_;                                                                                \
    }                                                                                              \
    FAKE_DEFINE_LOCAL(name##_ptsz)
#include "fake_cuda.def"
#undef FAKE_FN
#undef FAKE_VER
#undef FAKE_PTSZ

/* ---- cuGetProcAddress -------------------------------------------------------------------- */

/* Every exported entry point with its hidden local alias (see fake_cuda_internal.h). */
static const struct {
    const char *name;
    void *fn;
} exports[] = {
#define FAKE_FN(file, name) {#name, (void *)&fake_local_##name},
#define FAKE_VER(file, name, base, since) FAKE_FN(file, name)
#define FAKE_PTSZ(file, name, params, args) {#name "_ptsz", (void *)&fake_local_##name##_ptsz},
#include "fake_cuda.def"
#undef FAKE_FN
#undef FAKE_VER
#undef FAKE_PTSZ
};

/* Base name -> exported name by the caller's CUDA version: the highest min_version not above
 * the requested version wins. Names not listed resolve to themselves. */
static const struct {
    const char *base;
    int min_version;
    const char *name;
} versioned[] = {
#define FAKE_FN(file, name)
#define FAKE_VER(file, name, base, since) {#base, since, #name},
#define FAKE_PTSZ(file, name, params, args)
#include "fake_cuda.def"
#undef FAKE_FN
#undef FAKE_VER
#undef FAKE_PTSZ
};

static void *export_lookup(const char *name) {
    for (size_t i = 0; i < sizeof(exports) / sizeof(exports[0]); i++)
        if (strcmp(exports[i].name, name) == 0)
            return exports[i].fn;
    return NULL;
}

/* Per-thread default stream variants: _ptsz for functions taking a stream, _ptds for those using
 * the default stream implicitly. The fake only has _ptsz ones, but the rule costs nothing. */
static void *per_thread_lookup(const char *name) {
    static const char *const suffixes[] = {"_ptsz", "_ptds"};
    char buf[128];
    for (size_t i = 0; i < sizeof(suffixes) / sizeof(suffixes[0]); i++) {
        int n = snprintf(buf, sizeof(buf), "%s%s", name, suffixes[i]);
        if (n > 0 && (size_t)n < sizeof(buf)) {
            void *fn = export_lookup(buf);
            if (fn != NULL)
                return fn;
        }
    }
    return NULL;
}

/* FLEXAI_SIM_PROC_THUNKS=1: hand out, for a few functions, thunks whose addresses differ from the
 * exported symbols', as a driver may; the shim must then still recognize what it was given. */
static CUresult thunk_cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize) {
    return fake_local_cuMemAlloc_v2(dptr, bytesize);
}
static CUresult thunk_cuMemGetInfo_v2(size_t *free_bytes, size_t *total) {
    return fake_local_cuMemGetInfo_v2(free_bytes, total);
}
static CUresult thunk_cuGetProcAddress_v2(const char *symbol, void **pfn, int cudaVersion,
                                          cuuint64_t flags,
                                          CUdriverProcAddressQueryResult *symbolStatus) {
    return fake_local_cuGetProcAddress_v2(symbol, pfn, cudaVersion, flags, symbolStatus);
}

static void *thunk_for(void *fn) {
    static int mode = -1;
    if (mode < 0) {
        const char *v = getenv("FLEXAI_SIM_PROC_THUNKS");
        mode = v != NULL && strcmp(v, "1") == 0;
    }
    if (!mode)
        return fn;
    if (fn == (void *)&fake_local_cuMemAlloc_v2)
        return (void *)&thunk_cuMemAlloc_v2;
    if (fn == (void *)&fake_local_cuMemGetInfo_v2)
        return (void *)&thunk_cuMemGetInfo_v2;
    if (fn == (void *)&fake_local_cuGetProcAddress_v2)
        return (void *)&thunk_cuGetProcAddress_v2;
    return fn;
}

static CUresult proc_address(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags,
                             CUdriverProcAddressQueryResult *status) {
    const cuuint64_t known = CU_GET_PROC_ADDRESS_LEGACY_STREAM |
                             CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM;
    const char *name = symbol;
    int listed = 0, best = -1;
    void *fn = NULL;

    if (symbol == NULL || pfn == NULL || (flags & ~known) != 0)
        return CUDA_ERROR_INVALID_VALUE;
    *pfn = NULL;
    for (size_t i = 0; i < sizeof(versioned) / sizeof(versioned[0]); i++) {
        if (strcmp(versioned[i].base, symbol) != 0)
            continue;
        listed = 1;
        if (versioned[i].min_version <= cudaVersion && versioned[i].min_version > best) {
            best = versioned[i].min_version;
            name = versioned[i].name;
        }
    }
    if (listed && best < 0) {
        if (status != NULL)
            *status = CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT;
        return CUDA_ERROR_NOT_FOUND;
    }
    if (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM)
        fn = per_thread_lookup(name);
    if (fn == NULL)
        fn = export_lookup(name);
    if (status != NULL)
        *status = fn ? CU_GET_PROC_ADDRESS_SUCCESS : CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    if (fn == NULL)
        return CUDA_ERROR_NOT_FOUND;
    *pfn = thunk_for(fn);
    return CUDA_SUCCESS;
}

CUresult cuGetProcAddress(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags) {
    return proc_address(symbol, pfn, cudaVersion, flags, NULL);
}

CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags,
                             CUdriverProcAddressQueryResult *symbolStatus) {
    return proc_address(symbol, pfn, cudaVersion, flags, symbolStatus);
}

/* The hidden aliases of this file's entry points (fake_cuda.def). */
#define FAKE_IN_core(x) x
#include "fake_cuda_locals.h"
