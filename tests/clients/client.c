/* client.c - a CUDA driver client for the tests: runs a list of operations given on the command
 * line and prints one JSON line per operation. It reaches the driver the way real programs do,
 * chosen with --via:
 *   link      direct calls to the functions it was linked against (-lcuda)
 *   dlsym     dlopen("libcuda.so.1") + dlsym(handle)          (libtorch, CuPy, ctypes)
 *   deepbind  dlopen(..., RTLD_DEEPBIND) + dlsym(handle)
 *   default   dlsym(RTLD_DEFAULT)
 *   next      dlsym(RTLD_NEXT)
 *   gpa11     cuGetProcAddress, cudaVersion 11030              (cudart 11)
 *   gpa12     cuGetProcAddress_v2 for "cuGetProcAddress" itself, then everything through the
 *             pointer it returned, cudaVersion 12000           (cudart 12/13)
 *   ptsz      as gpa12 with CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* The one CUDA/NVML header of the project (the shim's); found relative to this file, so that no
 * include flag is needed. */
#include "../../csrc/cuda/cuda_api.h"

/* {field, exported name, base name for cuGetProcAddress}: the table below is typed from the
 * exported name's prototype, so every call is checked by the compiler. */
#define FUNCS(X)                                                                               \
    X(Init, cuInit, "cuInit")                                                                  \
    X(DeviceGet, cuDeviceGet, "cuDeviceGet")                                                   \
    X(PrimaryCtxRetain, cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain")                  \
    X(CtxCreate, cuCtxCreate_v2, "cuCtxCreate")                                                \
    X(CtxSetCurrent, cuCtxSetCurrent, "cuCtxSetCurrent")                                       \
    X(CtxGetCurrent, cuCtxGetCurrent, "cuCtxGetCurrent")                                       \
    X(CtxDestroy, cuCtxDestroy_v2, "cuCtxDestroy")                                             \
    X(PrimaryCtxRelease, cuDevicePrimaryCtxRelease_v2, "cuDevicePrimaryCtxRelease")            \
    X(PrimaryCtxReset, cuDevicePrimaryCtxReset_v2, "cuDevicePrimaryCtxReset")                  \
    X(MemsetD8, cuMemsetD8_v2, "cuMemsetD8")                                                   \
    X(MemGetInfo, cuMemGetInfo_v2, "cuMemGetInfo")                                             \
    X(DeviceTotalMem, cuDeviceTotalMem_v2, "cuDeviceTotalMem")                                 \
    X(DeviceGetUuid, cuDeviceGetUuid, "cuDeviceGetUuid")                                       \
    X(MemAlloc, cuMemAlloc_v2, "cuMemAlloc")                                                   \
    X(MemAllocPitch, cuMemAllocPitch_v2, "cuMemAllocPitch")                                    \
    X(MemAllocManaged, cuMemAllocManaged, "cuMemAllocManaged")                                 \
    X(MemFree, cuMemFree_v2, "cuMemFree")                                                      \
    X(MemAllocAsync, cuMemAllocAsync, "cuMemAllocAsync")                                       \
    X(MemFreeAsync, cuMemFreeAsync, "cuMemFreeAsync")                                          \
    X(DeviceGetDefaultMemPool, cuDeviceGetDefaultMemPool, "cuDeviceGetDefaultMemPool")         \
    X(MemAllocFromPoolAsync, cuMemAllocFromPoolAsync, "cuMemAllocFromPoolAsync")               \
    X(MemCreate, cuMemCreate, "cuMemCreate")                                                   \
    X(MemRelease, cuMemRelease, "cuMemRelease")                                                \
    X(ArrayCreate, cuArrayCreate_v2, "cuArrayCreate")                                          \
    X(Array3DCreate, cuArray3DCreate_v2, "cuArray3DCreate")                                    \
    X(ArrayDestroy, cuArrayDestroy, "cuArrayDestroy")                                          \
    X(MipmappedArrayCreate, cuMipmappedArrayCreate, "cuMipmappedArrayCreate")                  \
    X(MipmappedArrayDestroy, cuMipmappedArrayDestroy, "cuMipmappedArrayDestroy")               \
    X(ModuleLoadData, cuModuleLoadData, "cuModuleLoadData")                                    \
    X(ModuleGetFunction, cuModuleGetFunction, "cuModuleGetFunction")                           \
    X(LaunchKernel, cuLaunchKernel, "cuLaunchKernel")                                          \
    X(LaunchKernelEx, cuLaunchKernelEx, "cuLaunchKernelEx")                                    \
    X(LaunchCooperativeKernel, cuLaunchCooperativeKernel, "cuLaunchCooperativeKernel")         \
    X(StreamBeginCapture, cuStreamBeginCapture_v2, "cuStreamBeginCapture")                     \
    X(StreamEndCapture, cuStreamEndCapture, "cuStreamEndCapture")                              \
    X(GraphInstantiate, cuGraphInstantiateWithFlags, "cuGraphInstantiateWithFlags")            \
    X(GraphLaunch, cuGraphLaunch, "cuGraphLaunch")                                             \
    X(StreamCreate, cuStreamCreate, "cuStreamCreate")                                          \
    X(LaunchHostFunc, cuLaunchHostFunc, "cuLaunchHostFunc")                                    \
    X(EventCreate, cuEventCreate, "cuEventCreate")                                             \
    X(EventRecord, cuEventRecord, "cuEventRecord")                                             \
    X(EventQuery, cuEventQuery, "cuEventQuery")                                                \
    X(EventElapsedTime, cuEventElapsedTime, "cuEventElapsedTime")                              \
    X(EventDestroy, cuEventDestroy_v2, "cuEventDestroy")                                       \
    X(StreamDestroy, cuStreamDestroy_v2, "cuStreamDestroy")                                    \
    X(StreamSynchronize, cuStreamSynchronize, "cuStreamSynchronize")                           \
    X(StreamIsCapturing, cuStreamIsCapturing, "cuStreamIsCapturing")                           \
    X(ThreadExchangeStreamCaptureMode, cuThreadExchangeStreamCaptureMode,                      \
      "cuThreadExchangeStreamCaptureMode")                                                     \
    X(CtxSynchronize, cuCtxSynchronize, "cuCtxSynchronize")                                    \
    X(MemPoolCreate, cuMemPoolCreate, "cuMemPoolCreate")                                       \
    X(MemPoolDestroy, cuMemPoolDestroy, "cuMemPoolDestroy")                                    \
    X(MemPoolSetAttribute, cuMemPoolSetAttribute, "cuMemPoolSetAttribute")                     \
    X(MemPoolGetAttribute, cuMemPoolGetAttribute, "cuMemPoolGetAttribute")                     \
    X(MemPoolTrimTo, cuMemPoolTrimTo, "cuMemPoolTrimTo")                                       \
    X(MemAddressReserve, cuMemAddressReserve, "cuMemAddressReserve")                           \
    X(MemAddressFree, cuMemAddressFree, "cuMemAddressFree")                                    \
    X(MemMap, cuMemMap, "cuMemMap")                                                            \
    X(MemUnmap, cuMemUnmap, "cuMemUnmap")                                                      \
    X(MemSetAccess, cuMemSetAccess, "cuMemSetAccess")

#define FIELD(field, name, base) __typeof__(&name) field;
static struct {
    FUNCS(FIELD)
} cu;

static int resolve(const char *via)
{
    void *h = NULL;
    int gpa = 0, ver = 12000;
    uint64_t flags = 0;
    if (strcmp(via, "link") == 0) {
        h = dlopen(NULL, RTLD_NOW); /* the executable's own view: what a direct call binds to */
    } else if (strcmp(via, "dlsym") == 0 || strcmp(via, "gpa12") == 0 ||
               strcmp(via, "gpa11") == 0 || strcmp(via, "ptsz") == 0) {
        h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
        gpa = strcmp(via, "dlsym") != 0;
        if (strcmp(via, "gpa11") == 0) ver = 11030;
        if (strcmp(via, "ptsz") == 0) flags = CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM;
    } else if (strcmp(via, "deepbind") == 0) {
        h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    } else if (strcmp(via, "default") == 0) {
        h = RTLD_DEFAULT;
    } else if (strcmp(via, "next") == 0) {
        h = RTLD_NEXT;
    } else {
        fprintf(stderr, "client: unknown --via %s\n", via);
        return -1;
    }
    if (!h && strcmp(via, "default") != 0) { /* RTLD_DEFAULT is a null handle */
        printf("{\"op\":\"resolve\",\"error\":\"dlopen\"}\n");
        return -1;
    }
    if (strcmp(via, "link") == 0) {
        /* Bind the way the compiler would: the linked symbols themselves. */
        cu.MemAlloc = cuMemAlloc_v2;
        cu.MemFree = cuMemFree_v2;
        cu.MemGetInfo = cuMemGetInfo_v2;
        cu.Init = cuInit;
    }
    __typeof__(&cuGetProcAddress_v2) gpa12 = NULL;
    __typeof__(&cuGetProcAddress) gpa11 = NULL;
    if (gpa && ver >= 12000) {
        /* cudart's bootstrap: find cuGetProcAddress_v2, then ask it for itself. */
        __typeof__(&cuGetProcAddress_v2) boot;
        void *sym = dlsym(h, "cuGetProcAddress_v2");
        memcpy(&boot, &sym, sizeof sym);
        if (!boot || boot("cuGetProcAddress", (void **)&gpa12, ver, 0, NULL) != 0) return -1;
    } else if (gpa) {
        __typeof__(&cuGetProcAddress) boot;
        void *sym = dlsym(h, "cuGetProcAddress");
        memcpy(&boot, &sym, sizeof sym);
        if (!boot || boot("cuGetProcAddress", (void **)&gpa11, ver, 0) != 0) return -1;
    }
#define RESOLVE(field, name, base)                                                             \
    if (!cu.field) {                                                                           \
        void *p = NULL;                                                                        \
        if (gpa12) gpa12(base, &p, ver, flags, NULL);                                          \
        else if (gpa11) gpa11(base, &p, ver, flags);                                           \
        else p = dlsym(h, #name);                                                              \
        memcpy(&cu.field, &p, sizeof p);                                                       \
    }
    FUNCS(RESOLVE)
    return 0;
}

static size_t parse_size(const char *s)
{
    char *end;
    double v = strtod(s, &end);
    if (strcmp(end, "KiB") == 0) v *= 1024.0;
    else if (strcmp(end, "MiB") == 0) v *= 1024.0 * 1024;
    else if (strcmp(end, "GiB") == 0) v *= 1024.0 * 1024 * 1024;
    return (size_t)v;
}

/* Contexts made by "ctxcreate", for "ctxdestroy" (the last one first). */
static CUcontext made[64];
static int nmade;

enum kind { K_PTR, K_ASYNC, K_VMM, K_ARRAY, K_MIPMAP };

/* Stream-ordered memory: the stream "async"/"frompool" and their frees use (NULL until
 * "stream"), the pool "usepool" chose; the last "vmm" handle and the last "map" of it. */
static CUstream mem_stream;
static CUmemoryPool cur_pool;
static CUmemGenericAllocationHandle last_vmm;
static size_t last_vmm_size;
static CUdeviceptr last_map;
static size_t last_map_size;
static struct { int kind; uint64_t id; } held[4096];
static int nheld;

static void hold(int kind, uint64_t id)
{
    if (nheld < 4096) held[nheld].kind = kind, held[nheld++].id = id;
}

static CUresult release_last(void)
{
    if (nheld == 0) return -1;
    nheld--;
    uint64_t id = held[nheld].id;
    switch (held[nheld].kind) {
    case K_PTR: return cu.MemFree(id);
    case K_ASYNC: return cu.MemFreeAsync(id, mem_stream);
    case K_VMM: return cu.MemRelease(id);
    case K_ARRAY: return cu.ArrayDestroy((CUarray)(uintptr_t)id);
    default: return cu.MipmappedArrayDestroy((CUmipmappedArray)(uintptr_t)id);
    }
}

/* ---- simulated kernels: the fake driver runs "sleep_us" for its first parameter's us ------ */
static const char sleep_ptx[] =
    ".version 7.0\n.target sm_52\n.address_size 64\n"
    ".visible .entry sleep_us(.param .u32 us)\n{\n ret;\n}\n";
static CUfunction sleep_fn;
static uint32_t kernel_us;
static void *kernel_params[] = {&kernel_us};
static CUgraphExec graph_exec;
static CUstream graph_stream;

static double now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e6 + (double)t.tv_nsec / 1e3;
}

/* One unit of work of the given kind: a kernel, or a graph of 4 kernels. */
static CUresult launch_one(const char *kind)
{
    if (strcmp(kind, "kernel") == 0)
        return cu.LaunchKernel(sleep_fn, 1, 1, 1, 32, 1, 1, 0, NULL, kernel_params, NULL);
    if (strcmp(kind, "ex") == 0) {
        CUlaunchConfig c = {1, 1, 1, 32, 1, 1, 0, NULL, NULL, 0};
        return cu.LaunchKernelEx(&c, sleep_fn, kernel_params, NULL);
    }
    if (strcmp(kind, "coop") == 0)
        return cu.LaunchCooperativeKernel(sleep_fn, 1, 1, 1, 32, 1, 1, 0, NULL, kernel_params);
    if (strcmp(kind, "graph") == 0) {
        if (!graph_exec) {
            CUgraph graph = NULL;
            CUresult rc = cu.StreamCreate(&graph_stream, CU_STREAM_DEFAULT);
            if (rc == 0) rc = cu.StreamBeginCapture(graph_stream, CU_STREAM_CAPTURE_MODE_GLOBAL);
            for (int i = 0; rc == 0 && i < 4; i++)
                rc = cu.LaunchKernel(sleep_fn, 1, 1, 1, 32, 1, 1, 0, graph_stream, kernel_params,
                                     NULL);
            if (rc == 0) rc = cu.StreamEndCapture(graph_stream, &graph);
            if (rc == 0) rc = cu.GraphInstantiate(&graph_exec, graph, 0);
            if (rc != 0) return rc;
        }
        return cu.GraphLaunch(graph_exec, graph_stream);
    }
    return -1;
}

/* ---- several threads: capture on one while another launches; per-thread default streams ---- */

static CUstreamCaptureMode parse_mode(const char *s)
{
    if (strcmp(s, "relaxed") == 0) return CU_STREAM_CAPTURE_MODE_RELAXED;
    if (strcmp(s, "thread") == 0) return CU_STREAM_CAPTURE_MODE_THREAD_LOCAL;
    return CU_STREAM_CAPTURE_MODE_GLOBAL;
}

static CUresult launch_on(CUstream s)
{
    return cu.LaunchKernel(sleep_fn, 1, 1, 1, 32, 1, 1, 0, s, kernel_params, NULL);
}

/* hostblock: a host function that holds its stream for `hold_ms` (a kernel waiting on the
 * host, as NCCL's proxy or a data loader's callback can make one). */
static double hold_ms;
static void hold_host(void *arg)
{
    (void)arg;
    usleep((useconds_t)(hold_ms * 1000.0));
}

struct worker {
    CUcontext ctx;
    int n, query;      /* launches; then query an event behind them (an "unsafe" call) */
    double until;      /* saturate: launch until then (us) */
    CUresult rc, sync_rc; /* capmt: the query's answer */
    long units;
    double max_us;     /* hostblock: the longest launch */
};

/* hostblock's other thread: launches on a stream of its own until w->until, timing each. */
static void *hostblock_other(void *arg)
{
    struct worker *w = arg;
    CUstream b = NULL;
    w->rc = cu.CtxSetCurrent(w->ctx);
    if (w->rc == 0) w->rc = cu.StreamCreate(&b, CU_STREAM_NON_BLOCKING);
    while (w->rc == 0 && now_us() < w->until) {
        double t = now_us();
        if ((w->rc = launch_on(b)) == 0) w->units++;
        if (now_us() - t > w->max_us) w->max_us = now_us() - t;
    }
    if (w->rc == 0) w->sync_rc = cu.StreamSynchronize(b);
    return NULL;
}

/* capmt: launches n kernels on a stream of its own, then optionally polls an event recorded
 * behind them until it is not CUDA_ERROR_NOT_READY (as NCCL's watchdog does). */
static void *capture_neighbour(void *arg)
{
    struct worker *w = arg;
    CUstream t = NULL;
    CUevent e = NULL;
    w->rc = cu.CtxSetCurrent(w->ctx);
    if (w->rc == 0) w->rc = cu.StreamCreate(&t, CU_STREAM_NON_BLOCKING);
    for (int k = 0; k < w->n && w->rc == 0; k++) w->rc = launch_on(t);
    if (w->query && w->rc == 0) w->rc = cu.EventCreate(&e, 0);
    if (w->query && w->rc == 0) w->rc = cu.EventRecord(e, t);
    if (w->query && w->rc == 0) {
        while ((w->sync_rc = cu.EventQuery(e)) == 600) usleep(100);
    }
    return NULL;
}

/* saturatemt: launches on the thread's default stream (its per-thread one through --via ptsz)
 * until w->until, then waits for them. */
static void *saturate_thread(void *arg)
{
    struct worker *w = arg;
    w->rc = cu.CtxSetCurrent(w->ctx);
    while (w->rc == 0 && now_us() < w->until)
        if ((w->rc = launch_on(NULL)) == 0) w->units++;
    w->sync_rc = cu.StreamSynchronize(NULL);
    return NULL;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

#define NEED(n)                                                                                \
    if (i + (n) >= argc) {                                                                     \
        fprintf(stderr, "client: %s needs %d args\n", op, n);                                  \
        return 2;                                                                              \
    }
#define ARG(k) argv[i + (k)]
/* dlsym into a typed function pointer (ISO C has no cast between data and function pointers). */
#define NVML_SYM(var, name)                                                                    \
    do {                                                                                       \
        void *sym_ = dlsym(nv, #name);                                                         \
        memcpy(&var, &sym_, sizeof sym_);                                                      \
    } while (0)
#define REPORT(rc) printf("{\"op\":\"%s\",\"rc\":%d}\n", op, (int)(rc))

int main(int argc, char **argv)
{
    const char *via = "dlsym";
    int i = 1;
    if (argc > 2 && strcmp(argv[1], "--via") == 0) via = argv[2], i = 3;
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (resolve(via) != 0) return 3;
    for (; i < argc; i++) {
        const char *op = argv[i];
        CUresult rc;
        if (strcmp(op, "init") == 0) {
            rc = cu.Init ? cu.Init(0) : (CUresult)-1;
            REPORT(rc);
        } else if (strcmp(op, "ctx") == 0 || strcmp(op, "ctxcreate") == 0) {
            NEED(1);
            int dev = -1;
            CUcontext c = NULL;
            rc = cu.DeviceGet(&dev, atoi(ARG(1)));
            if (rc == 0 && op[3] == 'c') {
                rc = cu.CtxCreate(&c, 0, dev);
                if (rc == 0 && nmade < 64) made[nmade++] = c;
            } else if (rc == 0) {
                rc = cu.PrimaryCtxRetain(&c, dev);
                if (rc == 0) rc = cu.CtxSetCurrent(c);
            }
            REPORT(rc);
            i += 1;
        } else if (strcmp(op, "reset") == 0 || strcmp(op, "release") == 0) {
            /* reset N | release N: the primary context of device N */
            NEED(1);
            int dev = -1;
            rc = cu.DeviceGet(&dev, atoi(ARG(1)));
            if (rc == 0) rc = op[2] == 's' ? cu.PrimaryCtxReset(dev) : cu.PrimaryCtxRelease(dev);
            REPORT(rc);
            i += 1;
        } else if (strcmp(op, "ctxdestroy") == 0) {
            /* destroys the context the last "ctxcreate" made */
            rc = nmade > 0 ? cu.CtxDestroy(made[--nmade]) : (CUresult)-1;
            REPORT(rc);
        } else if (strcmp(op, "touch") == 0) {
            /* writes the first byte of the last linear allocation held (stale after a reset) */
            rc = nheld > 0 && (held[nheld - 1].kind == K_PTR || held[nheld - 1].kind == K_ASYNC)
                     ? cu.MemsetD8(held[nheld - 1].id, 0x5a, 1)
                     : (CUresult)-1;
            REPORT(rc);
        } else if (strcmp(op, "info") == 0) {
            size_t f = 0, t = 0;
            rc = cu.MemGetInfo(&f, &t);
            printf("{\"op\":\"info\",\"rc\":%d,\"free\":%zu,\"total\":%zu}\n", rc, f, t);
        } else if (strcmp(op, "total") == 0) {
            NEED(1);
            size_t t = 0;
            rc = cu.DeviceTotalMem(&t, atoi(ARG(1)));
            printf("{\"op\":\"total\",\"rc\":%d,\"total\":%zu}\n", rc, t);
            i += 1;
        } else if (strcmp(op, "uuid") == 0) {
            /* uuid N: the UUID of visible device N, as 32 hex digits */
            NEED(1);
            CUdevice dev = -1;
            CUuuid u;
            char hex[2 * sizeof u.bytes + 1] = "";
            memset(&u, 0, sizeof u);
            rc = cu.DeviceGet(&dev, atoi(ARG(1)));
            if (rc == 0) rc = cu.DeviceGetUuid(&u, dev);
            for (size_t k = 0; rc == 0 && k < sizeof u.bytes; k++)
                snprintf(hex + 2 * k, 3, "%02x", (unsigned char)u.bytes[k]);
            printf("{\"op\":\"uuid\",\"rc\":%d,\"uuid\":\"%s\"}\n", (int)rc, hex);
            i += 1;
        } else if (strcmp(op, "alloc") == 0 || strcmp(op, "managed") == 0 ||
                   strcmp(op, "async") == 0 || strcmp(op, "pool") == 0) {
            NEED(1);
            CUdeviceptr p = 0;
            size_t n = parse_size(ARG(1));
            int kind = K_PTR;
            if (op[0] == 'a' && op[1] == 'l') rc = cu.MemAlloc(&p, n);
            else if (op[0] == 'm') rc = cu.MemAllocManaged(&p, n, 1);
            else if (op[0] == 'a') rc = cu.MemAllocAsync(&p, n, mem_stream), kind = K_ASYNC;
            else {
                CUmemoryPool pool = NULL;
                rc = cu.DeviceGetDefaultMemPool(&pool, 0);
                if (rc == 0) rc = cu.MemAllocFromPoolAsync(&p, n, pool, NULL);
                kind = K_ASYNC;
            }
            if (rc == 0) hold(kind, p);
            REPORT(rc);
            i += 1;
        } else if (strcmp(op, "pitch") == 0) {
            NEED(2);
            CUdeviceptr p = 0;
            size_t pitch = 0;
            rc = cu.MemAllocPitch(&p, &pitch, parse_size(ARG(1)), parse_size(ARG(2)), 4);
            if (rc == 0) hold(K_PTR, p);
            printf("{\"op\":\"pitch\",\"rc\":%d,\"pitch\":%zu}\n", rc, pitch);
            i += 2;
        } else if (strcmp(op, "map") == 0) {
            /* maps the last "vmm" handle whole at a new address, read-write on device 0 */
            CUmemAccessDesc acc;
            memset(&acc, 0, sizeof acc);
            acc.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
            acc.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
            rc = cu.MemAddressReserve(&last_map, last_vmm_size, 0, 0, 0);
            if (rc == 0) rc = cu.MemMap(last_map, last_vmm_size, 0, last_vmm, 0);
            if (rc == 0) rc = cu.MemSetAccess(last_map, last_vmm_size, &acc, 1);
            if (rc == 0) last_map_size = last_vmm_size;
            REPORT(rc);
        } else if (strcmp(op, "unmap") == 0) {
            /* unmaps the last "map" and frees its addresses */
            rc = cu.MemUnmap(last_map, last_map_size);
            if (rc == 0) rc = cu.MemAddressFree(last_map, last_map_size);
            REPORT(rc);
        } else if (strcmp(op, "stream") == 0) {
            /* a stream of the current context for "async", "frompool" and their frees */
            rc = cu.StreamCreate(&mem_stream, CU_STREAM_DEFAULT);
            REPORT(rc);
        } else if (strcmp(op, "usepool") == 0) {
            /* usepool default N | device N | host: the pool of "frompool", "threshold", ... */
            NEED(1);
            CUmemPoolProps props;
            memset(&props, 0, sizeof props);
            props.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
            int host = strcmp(ARG(1), "host") == 0;
            if (!host) NEED(2);
            int dev = host ? 0 : atoi(ARG(2));
            if (strcmp(ARG(1), "default") == 0) {
                rc = cu.DeviceGetDefaultMemPool(&cur_pool, dev);
            } else {
                props.location.type = host ? CU_MEM_LOCATION_TYPE_HOST : CU_MEM_LOCATION_TYPE_DEVICE;
                props.location.id = dev;
                rc = cu.MemPoolCreate(&cur_pool, &props);
            }
            REPORT(rc);
            i += host ? 1 : 2;
        } else if (strcmp(op, "frompool") == 0) {
            NEED(1);
            CUdeviceptr p = 0;
            rc = cu.MemAllocFromPoolAsync(&p, parse_size(ARG(1)), cur_pool, mem_stream);
            if (rc == 0) hold(K_ASYNC, p);
            REPORT(rc);
            i += 1;
        } else if (strcmp(op, "threshold") == 0) {
            /* threshold SIZE|max: the pool's release threshold */
            NEED(1);
            cuuint64_t v = strcmp(ARG(1), "max") == 0 ? UINT64_MAX : parse_size(ARG(1));
            rc = cu.MemPoolSetAttribute(cur_pool, CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, &v);
            REPORT(rc);
            i += 1;
        } else if (strcmp(op, "trim") == 0) {
            NEED(1);
            rc = cu.MemPoolTrimTo(cur_pool, parse_size(ARG(1)));
            REPORT(rc);
            i += 1;
        } else if (strcmp(op, "poolattr") == 0) {
            cuuint64_t reserved = 0, used = 0;
            rc = cu.MemPoolGetAttribute(cur_pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT, &reserved);
            if (rc == 0) rc = cu.MemPoolGetAttribute(cur_pool, CU_MEMPOOL_ATTR_USED_MEM_CURRENT, &used);
            printf("{\"op\":\"poolattr\",\"rc\":%d,\"reserved\":%llu,\"used\":%llu}\n", (int)rc,
                   (unsigned long long)reserved, (unsigned long long)used);
        } else if (strcmp(op, "pooldestroy") == 0) {
            REPORT(cu.MemPoolDestroy(cur_pool));
        } else if (strcmp(op, "sync") == 0) {
            REPORT(cu.CtxSynchronize());
        } else if (strcmp(op, "vmm") == 0) {
            NEED(1);
            CUmemAllocationProp prop;
            memset(&prop, 0, sizeof prop);
            prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
            prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
            prop.location.id = 0;
            CUmemGenericAllocationHandle h = 0;
            rc = cu.MemCreate(&h, parse_size(ARG(1)), &prop, 0);
            if (rc == 0) hold(K_VMM, h), last_vmm = h, last_vmm_size = parse_size(ARG(1));
            REPORT(rc);
            i += 1;
        } else if (strcmp(op, "array") == 0 || strcmp(op, "array3d") == 0 ||
                   strcmp(op, "mipmap") == 0) {
            /* float32 arrays: array W H | array3d W H D | mipmap W H LEVELS */
            NEED(op[5] == '3' || op[0] == 'm' ? 3 : 2);
            CUarray a = NULL;
            CUmipmappedArray m = NULL;
            if (strcmp(op, "array") == 0) {
                CUDA_ARRAY_DESCRIPTOR d = {parse_size(ARG(1)), parse_size(ARG(2)),
                                           CU_AD_FORMAT_FLOAT, 1};
                rc = cu.ArrayCreate(&a, &d);
                if (rc == 0) hold(K_ARRAY, (uint64_t)(uintptr_t)a);
                i += 2;
            } else if (op[0] == 'a') {
                CUDA_ARRAY3D_DESCRIPTOR d = {parse_size(ARG(1)), parse_size(ARG(2)),
                                             parse_size(ARG(3)), CU_AD_FORMAT_FLOAT, 1, 0};
                rc = cu.Array3DCreate(&a, &d);
                if (rc == 0) hold(K_ARRAY, (uint64_t)(uintptr_t)a);
                i += 3;
            } else {
                CUDA_ARRAY3D_DESCRIPTOR d = {parse_size(ARG(1)), parse_size(ARG(2)), 0,
                                             CU_AD_FORMAT_FLOAT, 1, 0};
                rc = cu.MipmappedArrayCreate(&m, &d, (unsigned)atoi(ARG(3)));
                if (rc == 0) hold(K_MIPMAP, (uint64_t)(uintptr_t)m);
                i += 3;
            }
            REPORT(rc);
        } else if (strcmp(op, "free") == 0) {
            REPORT(release_last());
        } else if (strcmp(op, "freeall") == 0) {
            int bad = 0;
            while (nheld) bad |= release_last() != 0;
            REPORT(bad);
        } else if (strcmp(op, "fill") == 0) {
            /* allocate chunks until refused; report what was obtained */
            NEED(1);
            size_t n = parse_size(ARG(1)), got = 0;
            CUdeviceptr p;
            while ((rc = cu.MemAlloc(&p, n)) == 0 && nheld < 4096) hold(K_PTR, p), got += n;
            printf("{\"op\":\"fill\",\"rc\":%d,\"bytes\":%zu}\n", rc, got);
            i += 1;
        } else if (strcmp(op, "loop") == 0) {
            /* alloc/free forever, for the kill tests */
            NEED(1);
            size_t n = parse_size(ARG(1));
            CUdeviceptr p;
            printf("{\"op\":\"loop\",\"rc\":0}\n");
            for (;;)
                if (cu.MemAlloc(&p, n) == 0) cu.MemFree(p);
        } else if (strcmp(op, "nvml") == 0) {
            void *nv = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
            __typeof__(&nvmlInit_v2) init = NULL;
            __typeof__(&nvmlDeviceGetHandleByIndex_v2) byidx = NULL;
            __typeof__(&nvmlDeviceGetMemoryInfo) m1 = NULL;
            __typeof__(&nvmlDeviceGetMemoryInfo_v2) m2 = NULL;
            if (nv) {
                NVML_SYM(init, nvmlInit_v2);
                NVML_SYM(byidx, nvmlDeviceGetHandleByIndex_v2);
                NVML_SYM(m1, nvmlDeviceGetMemoryInfo);
                NVML_SYM(m2, nvmlDeviceGetMemoryInfo_v2);
            }
            nvmlDevice_t dev = NULL;
            nvmlMemory_t a = {0, 0, 0};
            nvmlMemory_v2_t b = {nvmlMemory_v2, 0, 0, 0, 0};
            NEED(1);
            int r = (!init || !byidx || !m1 || !m2) ? -1 : (int)init();
            if (r == 0) r = (int)byidx((unsigned)atoi(ARG(1)), &dev);
            if (r == 0) r = (int)m1(dev, &a);
            if (r == 0) r = (int)m2(dev, &b);
            printf("{\"op\":\"nvml\",\"rc\":%d,\"total\":%llu,\"free\":%llu,\"used\":%llu,"
                   "\"total2\":%llu,\"free2\":%llu,\"used2\":%llu}\n",
                   r, a.total, a.free, a.used, b.total, b.free, b.used);
            i += 1;
        } else if (strcmp(op, "module") == 0) {
            CUmodule mod = NULL;
            rc = cu.ModuleLoadData(&mod, sleep_ptx);
            if (rc == 0) rc = cu.ModuleGetFunction(&sleep_fn, mod, "sleep_us");
            REPORT(rc);
        } else if (strcmp(op, "saturate") == 0) {
            /* saturate KIND US MS: keep the device busy with US-us work for MS ms of wall time,
             * then report the work done and the fraction of the wall time it represents */
            NEED(3);
            const char *kind = ARG(1);
            kernel_us = (uint32_t)atoi(ARG(2));
            double until = now_us() + atof(ARG(3)) * 1000.0, start = now_us();
            long units = 0;
            rc = 0;
            while (rc == 0 && now_us() < until) {
                rc = launch_one(kind);
                if (rc == 0) units++;
            }
            CUresult sync = cu.CtxSynchronize();
            double wall = now_us() - start;
            double busy = (double)units * kernel_us * (strcmp(kind, "graph") == 0 ? 4 : 1);
            printf("{\"op\":\"saturate\",\"rc\":%d,\"sync\":%d,\"units\":%ld,"
                   "\"busy_us\":%.0f,\"wall_us\":%.0f,\"fraction\":%.4f}\n",
                   rc, sync, units, busy, wall, busy / wall);
            i += 3;
        } else if (strcmp(op, "phases") == 0) {
            /* phases KIND US MS N: like saturate, N phases of MS ms, one report per phase
             * (work is counted when it completes: each phase ends with a synchronize) */
            NEED(4);
            const char *kind = ARG(1);
            kernel_us = (uint32_t)atoi(ARG(2));
            double ms = atof(ARG(3));
            int n = atoi(ARG(4));
            for (int ph = 0; ph < n; ph++) {
                double start = now_us(), until = start + ms * 1000.0;
                long units = 0;
                rc = 0;
                while (rc == 0 && now_us() < until)
                    if ((rc = launch_one(kind)) == 0) units++;
                cu.CtxSynchronize();
                double wall = now_us() - start;
                double busy = (double)units * kernel_us * (strcmp(kind, "graph") == 0 ? 4 : 1);
                printf("{\"op\":\"phase\",\"rc\":%d,\"n\":%d,\"start_s\":%.6f,"
                       "\"fraction\":%.4f}\n", rc, ph, start / 1e6, busy / wall);
            }
            i += 4;
        } else if (strcmp(op, "duty") == 0) {
            /* duty US PCT MS: a light-duty job. In 10 ms cycles for MS ms, launch US-us kernels
             * back to back for PCT% of the cycle's device time, then sleep the rest without
             * synchronizing (CPU work, data loading). Reports the kernels' time, the fraction of
             * the wall time, and the time spent inside launches (p50/p99/max, in us). */
            NEED(3);
            kernel_us = (uint32_t)atoi(ARG(1));
            double pct = atof(ARG(2)), start = now_us(), until = start + atof(ARG(3)) * 1000.0;
            int per_cycle = (int)(10000.0 * pct / 100.0 / kernel_us + 0.5), cap = 1 << 16, n = 0;
            double *d = calloc((size_t)cap, sizeof *d), stalled = 0;
            rc = 0;
            while (rc == 0 && now_us() < until) {
                double cycle = now_us();
                for (int k = 0; k < per_cycle && rc == 0 && n < cap; k++) {
                    double t0 = now_us();
                    rc = launch_one("kernel");
                    d[n] = now_us() - t0;
                    stalled += d[n++];
                }
                double left = cycle + 10000.0 - now_us();
                if (left > 0) usleep((useconds_t)left);
            }
            CUresult sync = cu.CtxSynchronize();
            double wall = now_us() - start, busy = (double)n * kernel_us;
            qsort(d, (size_t)n, sizeof *d, cmp_double);
            printf("{\"op\":\"duty\",\"rc\":%d,\"sync\":%d,\"launches\":%d,\"busy_us\":%.0f,"
                   "\"fraction\":%.4f,\"stall_p50_us\":%.1f,\"stall_p99_us\":%.1f,"
                   "\"stall_max_us\":%.1f,\"stall_total_us\":%.0f}\n", rc, sync, n, busy,
                   busy / wall, n ? d[n / 2] : 0.0, n ? d[(n * 99) / 100] : 0.0,
                   n ? d[n - 1] : 0.0, stalled);
            free(d);
            i += 3;
        } else if (strcmp(op, "mixed") == 0) {
            /* mixed BIG_US SMALL_US N MS: work of mixed sizes, as a training step with CUDA
             * graphs: for MS ms, one graph of 4 BIG_US-us kernels, then N SMALL_US-us kernels.
             * Before each step an event goes on the legacy stream: the device reaches it when the
             * work queued before the step is done, so its time on the device against the host's
             * time of the step's start tells how much work the process had queued ahead (the
             * first step starts on an idle device). Reports the steps done, the device time they
             * represent, and the queued-ahead time p50/p99/max in us. */
            NEED(4);
            uint32_t big = (uint32_t)atoi(ARG(1)), small = (uint32_t)atoi(ARG(2));
            int n = atoi(ARG(3)), cap = 8192;
            double start = now_us(), until = start + atof(ARG(4)) * 1000.0;
            CUevent *ev = calloc((size_t)cap, sizeof *ev);
            double *host = calloc((size_t)cap, sizeof *host), *ahead = calloc((size_t)cap,
                                                                             sizeof *ahead);
            long steps = 0;
            rc = 0;
            while (rc == 0 && now_us() < until && steps < cap) {
                rc = cu.EventCreate(&ev[steps], CU_EVENT_DEFAULT);
                host[steps] = now_us();
                if (rc == 0) rc = cu.EventRecord(ev[steps], NULL);
                kernel_us = big; /* the graph is captured once, with its kernels' length */
                if (rc == 0) rc = launch_one("graph");
                kernel_us = small;
                for (int k = 0; k < n && rc == 0; k++) rc = launch_one("kernel");
                if (rc == 0) steps++;
            }
            CUresult sync = cu.CtxSynchronize();
            double wall = now_us() - start, busy = (double)steps * (4.0 * big + (double)n * small);
            for (long k = 0; k < steps; k++) {
                float ms = 0;
                CUresult e = cu.EventElapsedTime(&ms, ev[0], ev[k]);
                ahead[k] = e == 0 ? ms * 1000.0 - (host[k] - host[0]) : -1e9;
            }
            for (long k = steps - 1; k >= 0; k--) cu.EventDestroy(ev[k]);
            qsort(ahead, (size_t)steps, sizeof *ahead, cmp_double);
            long last = steps > 0 ? steps - 1 : 0;
            printf("{\"op\":\"mixed\",\"rc\":%d,\"sync\":%d,\"steps\":%ld,"
                   "\"busy_us\":%.0f,\"wall_us\":%.0f,\"fraction\":%.4f,\"ahead_p50_us\":%.0f,"
                   "\"ahead_p99_us\":%.0f,\"ahead_max_us\":%.0f}\n",
                   rc, sync, steps, busy, wall, busy / wall, ahead[steps / 2],
                   ahead[(steps * 99) / 100], ahead[last]);
            free(ev);
            free(host);
            free(ahead);
            i += 4;
        } else if (strcmp(op, "latency") == 0) {
            /* latency US N GAP_US: N times launch one US-us kernel and wait for it; the delay
             * is the wall time beyond US. Reports p50 and p99 in us. */
            NEED(3);
            kernel_us = (uint32_t)atoi(ARG(1));
            int n = atoi(ARG(2));
            useconds_t gap = (useconds_t)atoi(ARG(3));
            double *d = calloc((size_t)n, sizeof *d);
            rc = 0;
            for (int k = 0; k < n && rc == 0; k++) {
                double t0 = now_us();
                rc = launch_one("kernel");
                if (rc == 0) rc = cu.CtxSynchronize();
                d[k] = now_us() - t0 - kernel_us;
                usleep(gap);
            }
            qsort(d, (size_t)n, sizeof *d, cmp_double);
            printf("{\"op\":\"latency\",\"rc\":%d,\"p50_us\":%.1f,\"p99_us\":%.1f}\n", rc,
                   d[n / 2], d[(n * 99) / 100]);
            free(d);
            i += 3;
        } else if (strcmp(op, "capmt") == 0) {
            /* capmt MODE N US QUERY: this thread captures a stream in MODE (global, thread,
             * relaxed) while another thread launches N US-us kernels on a stream of its own
             * (then, when QUERY is 1, polls an event behind them); then ends the capture, runs
             * the graph and waits. Reports the capture's end, the other thread's launches and
             * the answer to its query. */
            NEED(4);
            CUstreamCaptureMode mode = parse_mode(ARG(1));
            struct worker w = {NULL, atoi(ARG(2)), atoi(ARG(4)), 0, 0, 0, 0, 0};
            CUstream s = NULL;
            CUgraph graph = NULL;
            CUgraphExec exec = NULL;
            pthread_t tid;
            kernel_us = (uint32_t)atoi(ARG(3));
            rc = cu.CtxGetCurrent(&w.ctx);
            if (rc == 0) rc = cu.StreamCreate(&s, CU_STREAM_NON_BLOCKING);
            if (rc == 0) rc = cu.StreamBeginCapture(s, mode);
            for (int k = 0; k < 2 && rc == 0; k++) rc = launch_on(s);
            if (rc == 0 && pthread_create(&tid, NULL, capture_neighbour, &w) == 0)
                pthread_join(tid, NULL);
            for (int k = 0; k < 2 && rc == 0; k++) rc = launch_on(s);
            CUresult end = rc == 0 ? cu.StreamEndCapture(s, &graph) : rc;
            CUresult run = end == 0 ? cu.GraphInstantiate(&exec, graph, 0) : end;
            if (run == 0) run = cu.GraphLaunch(exec, s);
            CUresult sync = cu.CtxSynchronize();
            printf("{\"op\":\"capmt\",\"rc\":%d,\"end\":%d,\"graph\":%d,\"launch\":%d,"
                   "\"neighbour_query\":%d,\"sync\":%d}\n", rc, end, run, w.rc, w.sync_rc, sync);
            i += 4;
        } else if (strcmp(op, "caplegacy") == 0) {
            /* caplegacy MODE N ROUNDS: ROUNDS times: N 1-us kernels on the legacy stream, then
             * a capture in MODE of a blocking stream, during which N kernels go to a
             * non-blocking stream (the legacy stream itself is unusable then). Reports the
             * first failure of each kind: ends of the captures, the legacy stream's capture
             * status (906 expected), launches. */
            NEED(3);
            CUstreamCaptureMode mode = parse_mode(ARG(1));
            int n = atoi(ARG(2)), rounds = atoi(ARG(3));
            CUresult end = 0, implicit = 0, launches = 0;
            kernel_us = 1;
            rc = 0;
            for (int r = 0; r < rounds && rc == 0; r++) {
                CUstream s = NULL, t = NULL;
                CUgraph graph = NULL;
                CUstreamCaptureStatus st = 0;
                for (int k = 0; k < n && launches == 0; k++) launches = launch_on(NULL);
                rc = cu.StreamCreate(&s, CU_STREAM_DEFAULT);
                if (rc == 0) rc = cu.StreamCreate(&t, CU_STREAM_NON_BLOCKING);
                if (rc == 0) rc = cu.StreamBeginCapture(s, mode);
                if (rc == 0 && launches == 0) launches = launch_on(s);
                CUresult imp = rc == 0 ? cu.StreamIsCapturing(NULL, &st) : rc;
                if (implicit == 0 || implicit == 906) implicit = imp;
                for (int k = 0; k < n && rc == 0 && launches == 0; k++) launches = launch_on(t);
                CUresult e = rc == 0 ? cu.StreamEndCapture(s, &graph) : rc;
                if (end == 0) end = e;
                if (rc == 0) rc = cu.CtxSynchronize();
            }
            printf("{\"op\":\"caplegacy\",\"rc\":%d,\"end\":%d,\"implicit\":%d,"
                   "\"launch\":%d}\n", rc, end, implicit, launches);
            i += 3;
        } else if (strcmp(op, "legacyuse") == 0) {
            /* a launch on the legacy stream while a blocking stream captures: reports the
             * launch and the end of the capture */
            CUstream s = NULL;
            CUgraph graph = NULL;
            kernel_us = 1;
            rc = cu.StreamCreate(&s, CU_STREAM_DEFAULT);
            if (rc == 0) rc = cu.StreamBeginCapture(s, CU_STREAM_CAPTURE_MODE_RELAXED);
            CUresult launched = rc == 0 ? launch_on(NULL) : rc;
            CUresult end = rc == 0 ? cu.StreamEndCapture(s, &graph) : rc;
            printf("{\"op\":\"legacyuse\",\"rc\":%d,\"launch\":%d,\"end\":%d}\n", rc,
                   launched, end);
        } else if (strcmp(op, "stale") == 0) {
            /* a launch on a stream just destroyed */
            CUstream t = NULL;
            kernel_us = 1;
            rc = cu.StreamCreate(&t, CU_STREAM_DEFAULT);
            if (rc == 0) rc = cu.StreamDestroy(t);
            REPORT(rc == 0 ? launch_on(t) : rc);
        } else if (strcmp(op, "eventctx") == 0) {
            /* eventctx N: an event of the current context recorded on the legacy stream of a new
             * context of device N, then on its own; an event of the new context recorded after
             * that context was destroyed */
            NEED(1);
            CUcontext a = NULL, b = NULL;
            CUevent ea = NULL, eb = NULL;
            CUresult other = -1, same = -1, dead = -1;
            int dev = -1;
            rc = cu.CtxGetCurrent(&a);
            if (rc == 0) rc = cu.EventCreate(&ea, 0);
            if (rc == 0) rc = cu.DeviceGet(&dev, atoi(ARG(1)));
            if (rc == 0) rc = cu.CtxCreate(&b, 0, dev);
            if (rc == 0) other = cu.EventRecord(ea, NULL);
            if (rc == 0) rc = cu.EventCreate(&eb, 0);
            if (rc == 0) rc = cu.CtxSetCurrent(a);
            if (rc == 0) same = cu.EventRecord(ea, NULL);
            if (rc == 0) rc = cu.CtxDestroy(b);
            if (rc == 0) dead = cu.EventRecord(eb, NULL);
            printf("{\"op\":\"eventctx\",\"rc\":%d,\"other\":%d,\"same\":%d,\"dead\":%d}\n",
                   rc, other, same, dead);
            i += 1;
        } else if (strcmp(op, "streamgone") == 0) {
            /* streamgone N ROUNDS: ROUNDS times: N 1-us kernels on a new stream, destroy it,
             * then N on the legacy stream; waits. Reports the first failure. */
            NEED(2);
            int n = atoi(ARG(1)), rounds = atoi(ARG(2));
            kernel_us = 1;
            rc = 0;
            for (int r = 0; r < rounds && rc == 0; r++) {
                CUstream t = NULL;
                rc = cu.StreamCreate(&t, CU_STREAM_NON_BLOCKING);
                for (int k = 0; k < n && rc == 0; k++) rc = launch_on(t);
                if (rc == 0) rc = cu.StreamDestroy(t);
                for (int k = 0; k < n && rc == 0; k++) rc = launch_on(NULL);
                if (rc == 0) rc = cu.CtxSynchronize();
            }
            REPORT(rc);
            i += 2;
        } else if (strcmp(op, "hostblock") == 0) {
            /* hostblock US HOLD_MS MS: on stream A, one US-us kernel, a host function that holds
             * A for HOLD_MS, then kernels on A (their work waits behind the host); meanwhile
             * another thread launches US-us kernels on stream B for MS ms and reports the
             * longest time one of its launches took (us): work waiting on the host must not
             * stall the process's other launching threads, nor hang it */
            NEED(3);
            kernel_us = (uint32_t)atoi(ARG(1));
            hold_ms = atof(ARG(2));
            CUstream a = NULL;
            struct worker w = {NULL, 0, 0, 0, 0, 0, 0, 0};
            pthread_t tid;
            rc = cu.CtxGetCurrent(&w.ctx);
            if (rc == 0) rc = cu.StreamCreate(&a, CU_STREAM_NON_BLOCKING);
            if (rc == 0) rc = launch_on(a);
            if (rc == 0) rc = cu.LaunchHostFunc(a, hold_host, NULL);
            w.until = now_us() + atof(ARG(3)) * 1000.0;
            if (rc == 0) pthread_create(&tid, NULL, hostblock_other, &w);
            double a_start = now_us();
            for (int k = 0; rc == 0 && k < 50; k++) rc = launch_on(a);
            double a_took = now_us() - a_start;
            if (rc == 0) pthread_join(tid, NULL);
            CUresult sync = cu.CtxSynchronize();
            printf("{\"op\":\"hostblock\",\"rc\":%d,\"other_rc\":%d,\"sync\":%d,"
                   "\"other_launches\":%ld,\"other_max_us\":%.0f,\"a_launch_us\":%.0f}\n",
                   rc, w.rc, sync, w.units, w.max_us, a_took);
            i += 3;
        } else if (strcmp(op, "saturatemt") == 0) {
            /* saturatemt US MS THREADS: THREADS threads keep their default stream (their
             * per-thread one with --via ptsz) busy with US-us kernels for MS ms; reports the
             * work done as a fraction of the wall time */
            NEED(3);
            int n = atoi(ARG(3));
            struct worker w[16];
            pthread_t tid[16];
            CUcontext ctx = NULL;
            double start = now_us();
            long units = 0;
            kernel_us = (uint32_t)atoi(ARG(1));
            rc = cu.CtxGetCurrent(&ctx);
            for (int k = 0; k < n && k < 16; k++) {
                w[k] = (struct worker){ctx, 0, 0, start + atof(ARG(2)) * 1000.0, 0, 0, 0, 0};
                pthread_create(&tid[k], NULL, saturate_thread, &w[k]);
            }
            for (int k = 0; k < n && k < 16; k++) {
                pthread_join(tid[k], NULL);
                if (rc == 0) rc = w[k].rc ? w[k].rc : w[k].sync_rc;
                units += w[k].units;
            }
            CUresult sync = cu.CtxSynchronize();
            double wall = now_us() - start, busy = (double)units * kernel_us;
            printf("{\"op\":\"saturatemt\",\"rc\":%d,\"sync\":%d,\"units\":%ld,"
                   "\"fraction\":%.4f}\n", rc, sync, units, busy / wall);
            i += 3;
        } else if (strcmp(op, "wait") == 0) {
            char line[16];
            printf("{\"op\":\"wait\",\"rc\":0}\n");
            if (!fgets(line, sizeof line, stdin)) { /* EOF: go on */ }
        } else if (strcmp(op, "sleep") == 0) {
            NEED(1);
            usleep((useconds_t)atoi(ARG(1)) * 1000u);
            i += 1;
        } else if (strcmp(op, "getpid") == 0) {
            printf("{\"op\":\"getpid\",\"rc\":0,\"pid\":%d}\n", (int)getpid());
        } else if (strcmp(op, "fork") == 0) {
            /* fork N: the child runs the next N arguments (operations with their own arguments) and
             * exits; the parent waits for it, reports its status and goes on after them. */
            NEED(1);
            int n = atoi(ARG(1));
            i += 1;
            pid_t c = fork();
            if (c == 0) {
                int end = i + n < argc ? i + n : argc - 1;
                argc = end + 1; /* the loop stops after the child's operations */
                continue;
            }
            int st = 0;
            waitpid(c, &st, 0);
            printf("{\"op\":\"fork\",\"rc\":%d}\n", WIFEXITED(st) ? WEXITSTATUS(st) : 128);
            i += n;
        } else {
            fprintf(stderr, "client: unknown operation %s\n", op);
            return 2;
        }
    }
    return 0;
}
