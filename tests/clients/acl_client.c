/* acl_client.c - an Ascend ACL client for the tests (the twin of client.c): runs the operations
 * given on the command line and prints one JSON line per operation. It reaches the runtime the
 * way real programs do, chosen with --via:
 *   link      direct calls to the functions it was linked against (-lascendcl -lopapi)
 *   dlsym     dlopen("libascendcl.so") and dlopen("libopapi.so") + dlsym(handle) (torch_npu)
 *   default   dlsym(RTLD_DEFAULT)
 * Work: KIND is kernel (aclrtLaunchKernel of "sleep_us", its duration in its arguments),
 * kernelv2 / kernelcfg / kernelhost (the same kernel through aclrtLaunchKernelV2,
 * aclrtLaunchKernelWithConfig, aclrtLaunchKernelWithHostArgs), op (aclopExecuteV2,
 * FLEXAI_SIM_KERNEL_US long on the stand-in), model / modelasync (an offline model through
 * aclmdlExecute or aclmdlExecuteAsync: FLEXAI_SIM_KERNEL_US long on the stand-in), ri (a model
 * run instance captured from one sleep_us kernel, through aclmdlRIExecuteAsync) or aclnn
 * (aclnnInplaceZero over a tensor of US * 100 bytes: the stand-in's operator lasts 10 ns per
 * byte). Written for the stand-in runtime: "device" memory is written from the host.
 */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../../csrc/acl/acl_api.h"

#define FUNCS(X)                                                                               \
    X(aclInit) X(aclrtSetDevice) X(aclrtResetDevice) X(aclrtGetDeviceCount)                   \
    X(aclrtGetMemInfo) X(aclrtMalloc) X(aclrtMallocAlign32) X(aclrtMallocCached)               \
    X(aclrtMallocWithCfg) X(aclrtFree) X(aclrtReserveMemAddress) X(aclrtReleaseMemAddress)     \
    X(aclrtMallocPhysical) X(aclrtFreePhysical) X(aclrtMapMem) X(aclrtUnmapMem)                \
    X(aclrtCreateStream) X(aclrtDestroyStream) X(aclrtSynchronizeStream)                       \
    X(aclrtSynchronizeDevice) X(aclrtCreateEvent) X(aclrtRecordEvent) X(aclrtSynchronizeEvent) \
    X(aclrtEventElapsedTime) X(aclrtDestroyEvent) X(aclrtBinaryLoadFromData)                   \
    X(aclrtBinaryGetFunction) X(aclrtLaunchKernel) X(aclopExecuteV2) X(aclrtResetDeviceForce)  \
    X(aclrtCreateContext) X(aclrtDestroyContext) X(aclrtSetCurrentContext)                     \
    X(aclrtLaunchKernelV2) X(aclrtLaunchKernelWithConfig) X(aclrtLaunchKernelWithHostArgs)      \
    X(aclrtKernelArgsInit) X(aclrtKernelArgsAppend) X(aclrtKernelArgsFinalize)                 \
    X(aclmdlLoadFromMem) X(aclmdlExecute) X(aclmdlExecuteAsync) X(aclmdlRICaptureBegin)        \
    X(aclmdlRICaptureEnd) X(aclmdlRIExecuteAsync) X(aclrtMemPoolCreate) X(aclrtMemPoolDestroy) \
    X(aclrtMemPoolMallocAsync) X(aclrtMemPoolFreeAsync) X(aclrtMemPoolTrimTo)
#define OPAPI(X) X(aclCreateTensor) X(aclDestroyTensor) X(aclnnInplaceZeroGetWorkspaceSize)   \
    X(aclnnInplaceZero)

#define FIELD(name) __typeof__(&name) name;
static struct {
    FUNCS(FIELD)
    OPAPI(FIELD)
} a;

static int resolve(const char *via)
{
    void *h = RTLD_DEFAULT, *o = RTLD_DEFAULT;
    if (strcmp(via, "link") == 0) {
#define LINK(name) a.name = name;
        FUNCS(LINK)
        OPAPI(LINK)
        return 0;
    }
    if (strcmp(via, "dlsym") == 0) {
        h = dlopen("libascendcl.so", RTLD_NOW | RTLD_LOCAL);
        o = dlopen("libopapi.so", RTLD_NOW | RTLD_LOCAL);
        if (!h || !o) {
            printf("{\"op\":\"resolve\",\"error\":\"dlopen\"}\n");
            return -1;
        }
    } else if (strcmp(via, "default") != 0) {
        fprintf(stderr, "acl_client: unknown --via %s\n", via);
        return -1;
    }
#define SYM(lib, name)                                                                         \
    do {                                                                                       \
        void *p_ = dlsym(lib, #name);                                                          \
        memcpy(&a.name, &p_, sizeof p_);                                                       \
    } while (0);
#define SYM_ACL(name) SYM(h, name)
#define SYM_OP(name) SYM(o, name)
    FUNCS(SYM_ACL)
    OPAPI(SYM_OP)
    return 0;
}

static double now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e6 + (double)t.tv_nsec / 1e3;
}

static size_t parse_size(const char *s)
{
    char *end;
    double v = strtod(s, &end);
    if (strcmp(end, "KiB") == 0) v *= 1024.0;
    else if (strcmp(end, "MiB") == 0) v *= 1048576.0;
    else if (strcmp(end, "GiB") == 0) v *= 1073741824.0;
    return (size_t)v;
}

/* What the client holds, freed last-in first-out. */
enum { K_PTR = 1, K_PHYS = 2 };
struct held {
    int kind;
    void *ptr;     /* K_PTR; K_PHYS: the reserved address */
    void *handle;  /* K_PHYS */
    int mapped;    /* K_PHYS: mapped at ptr */
};
static struct held held[8192];
static int nheld;
static aclrtContext ctxs[16]; /* made by the ctx operation */
static int nctx;
static aclrtMemPool pool;     /* made by the pool operation */
static void *pool_ptrs[256];  /* its live allocations */
static int npool;

static int release_last(void)
{
    if (!nheld) return -1;
    struct held h = held[--nheld];
    if (h.kind == K_PTR) return a.aclrtFree(h.ptr);
    int rc = h.mapped ? a.aclrtUnmapMem(h.ptr) : 0;
    if (rc == 0) rc = a.aclrtFreePhysical(h.handle);
    if (rc == 0) rc = a.aclrtReleaseMemAddress(h.ptr);
    return rc;
}

static int phys_alloc(size_t size, int map)
{
    void *va = NULL, *h = NULL;
    aclrtPhysicalMemProp prop = {0, 0, ACL_HBM_MEM, {0, ACL_MEM_LOCATION_TYPE_DEVICE}, 0};
    int32_t dev = 0;
    int rc = a.aclrtReserveMemAddress(&va, size, 0, NULL, 0);
    (void)dev;
    if (rc == 0) rc = a.aclrtMallocPhysical(&h, size, &prop, 0);
    if (rc == 0 && map) rc = a.aclrtMapMem(va, size, 0, h, 0);
    if (rc == 0) {
        held[nheld++] = (struct held){K_PHYS, va, h, map};
    } else {
        if (h) a.aclrtFreePhysical(h);
        if (va) a.aclrtReleaseMemAddress(va);
    }
    return rc;
}

/* ---- work --------------------------------------------------------------------------------- */

static aclrtFuncHandle sleep_fn;
static uint32_t *kernel_args; /* device memory holding the kernel's duration */
static void *zero_buf;        /* device memory the aclnn operator clears */
static size_t zero_cap;

static int prepare(void)
{
    static const char bin[] = "stand-in kernels";
    aclrtBinHandle b;
    int rc = 0;
    if (!sleep_fn) {
        rc = a.aclrtBinaryLoadFromData(bin, sizeof bin, NULL, &b);
        if (rc == 0) rc = a.aclrtBinaryGetFunction(b, "sleep_us", &sleep_fn);
        if (rc == 0) rc = a.aclrtMalloc((void **)&kernel_args, 64, ACL_MEM_MALLOC_NORMAL_ONLY);
    }
    return rc;
}

static uint32_t model_id;  /* an offline model (the stand-in does not read its bytes) */
static aclmdlRI model_ri;  /* captured from one sleep_us kernel */
static uint32_t ri_us;

static int prepare_model(const char *kind, uint32_t us)
{
    static const char blob[] = "stand-in model";
    int rc = prepare();
    if (rc == 0 && !model_id && kind[0] == 'm') rc = a.aclmdlLoadFromMem(blob, sizeof blob, &model_id);
    if (rc == 0 && kind[0] == 'r' && (!model_ri || ri_us != us)) {
        aclrtStream cap = NULL;
        rc = a.aclrtCreateStream(&cap);
        if (rc == 0) rc = a.aclmdlRICaptureBegin(cap, 0);
        *kernel_args = us;
        if (rc == 0) rc = a.aclrtLaunchKernel(sleep_fn, 1, kernel_args, sizeof *kernel_args, cap);
        if (rc == 0) rc = a.aclmdlRICaptureEnd(cap, &model_ri);
        if (rc == 0) ri_us = us;
    }
    return rc;
}

/* aclrtLaunchKernelWithConfig: an argument list with the duration, built each time. */
static int launch_cfg(uint32_t us, aclrtStream s)
{
    aclrtArgsHandle args = NULL;
    aclrtParamHandle p = NULL;
    int rc = a.aclrtKernelArgsInit(sleep_fn, &args);
    if (rc == 0) rc = a.aclrtKernelArgsAppend(args, &us, sizeof us, &p);
    if (rc == 0) rc = a.aclrtKernelArgsFinalize(args);
    return rc ? rc : a.aclrtLaunchKernelWithConfig(sleep_fn, 1, s, NULL, args, NULL);
}

static int launch_one(const char *kind, uint32_t us, aclrtStream s)
{
    if (strncmp(kind, "kernel", 6) == 0) {
        int rc = prepare();
        if (rc) return rc;
        *kernel_args = us;
        if (strcmp(kind, "kernelv2") == 0)
            return a.aclrtLaunchKernelV2(sleep_fn, 1, kernel_args, sizeof *kernel_args, NULL, s);
        if (strcmp(kind, "kernelhost") == 0)
            return a.aclrtLaunchKernelWithHostArgs(sleep_fn, 1, s, NULL, &us, sizeof us, NULL, 0);
        if (strcmp(kind, "kernelcfg") == 0) return launch_cfg(us, s);
        return a.aclrtLaunchKernel(sleep_fn, 1, kernel_args, sizeof *kernel_args, s);
    }
    if (strcmp(kind, "op") == 0) return a.aclopExecuteV2("Add", 0, NULL, NULL, 0, NULL, NULL, NULL, s);
    if (strncmp(kind, "model", 5) == 0 || strcmp(kind, "ri") == 0) {
        int rc = prepare_model(kind, us);
        if (rc) return rc;
        if (strcmp(kind, "model") == 0) return a.aclmdlExecute(model_id, NULL, NULL);
        if (strcmp(kind, "modelasync") == 0) return a.aclmdlExecuteAsync(model_id, NULL, NULL, s);
        return a.aclmdlRIExecuteAsync(model_ri, s);
    }
    /* aclnn: a tensor of us * 100 bytes (10 ns per byte), both phases */
    size_t bytes = (size_t)us * 100;
    if (bytes > zero_cap) {
        if (zero_buf) a.aclrtFree(zero_buf);
        int rc = a.aclrtMalloc(&zero_buf, bytes, ACL_MEM_MALLOC_NORMAL_ONLY);
        if (rc) return rc;
        zero_cap = bytes;
    }
    int64_t dims[1] = {(int64_t)bytes}, stride[1] = {1};
    aclTensor *t = a.aclCreateTensor(dims, 1, 2 /* ACL_INT8 */, stride, 0, 2, dims, 1, zero_buf);
    uint64_t ws = 0;
    aclOpExecutor *ex = NULL;
    int rc = t ? a.aclnnInplaceZeroGetWorkspaceSize(t, &ws, &ex) : -1;
    if (rc == 0) rc = a.aclnnInplaceZero(NULL, ws, ex, s);
    if (t) a.aclDestroyTensor(t);
    return rc;
}

static int cmp_double(const void *x, const void *y)
{
    double d = *(const double *)x - *(const double *)y;
    return d < 0 ? -1 : d > 0;
}

#define ARG(k) argv[i + (k)]
#define NEED(n)                                                                                \
    do {                                                                                       \
        if (i + (n) >= argc) {                                                                 \
            fprintf(stderr, "acl_client: %s needs %d argument(s)\n", op, n);                   \
            return 2;                                                                          \
        }                                                                                      \
    } while (0)
#define REPORT(rc) printf("{\"op\":\"%s\",\"rc\":%d}\n", op, (int)(rc))

int main(int argc, char **argv)
{
    int i = 1;
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc > 2 && strcmp(argv[1], "--via") == 0) {
        if (resolve(argv[2]) != 0) return 1;
        i = 3;
    } else if (resolve("dlsym") != 0) {
        return 1;
    }
    for (; i < argc; i++) {
        const char *op = argv[i];
        int rc = 0;
        if (strcmp(op, "init") == 0) {
            REPORT(a.aclInit(NULL));
        } else if (!strcmp(op, "dev") || !strcmp(op, "reset") || !strcmp(op, "resetforce")) {
            NEED(1);
            int32_t d = atoi(ARG(1));
            REPORT(op[0] == 'd' ? a.aclrtSetDevice(d)
                   : op[5] ? a.aclrtResetDeviceForce(d) : a.aclrtResetDevice(d));
            i += 1;
        } else if (strcmp(op, "ctx") == 0) {
            /* ctx D: an explicit context on device D, now the thread's */
            NEED(1);
            REPORT(a.aclrtCreateContext(&ctxs[nctx++], atoi(ARG(1))));
            i += 1;
        } else if (strcmp(op, "usectx") == 0) {
            /* usectx K: make the K-th context made by ctx current again */
            NEED(1);
            REPORT(a.aclrtSetCurrentContext(ctxs[atoi(ARG(1))]));
            i += 1;
        } else if (strcmp(op, "dctx") == 0) {
            /* dctx K: destroy the K-th context made by ctx; what was allocated in it goes too */
            NEED(1);
            REPORT(a.aclrtDestroyContext(ctxs[atoi(ARG(1))]));
            i += 1;
        } else if (strcmp(op, "pool") == 0) {
            /* pool D: a stream-ordered memory pool on device D */
            NEED(1);
            aclrtMemPoolProps props;
            memset(&props, 0, sizeof props);
            props.location.type = ACL_MEM_LOCATION_TYPE_DEVICE;
            props.location.id = (uint32_t)atoi(ARG(1));
            REPORT(a.aclrtMemPoolCreate(&pool, &props));
            i += 1;
        } else if (strcmp(op, "palloc") == 0) {
            NEED(1);
            void *p = NULL;
            rc = a.aclrtMemPoolMallocAsync(&p, parse_size(ARG(1)), pool, NULL);
            if (rc == 0) pool_ptrs[npool++] = p;
            REPORT(rc);
            i += 1;
        } else if (strcmp(op, "pfree") == 0) {
            REPORT(npool ? a.aclrtMemPoolFreeAsync(pool_ptrs[--npool], NULL) : -1);
        } else if (strcmp(op, "ptrim") == 0) {
            NEED(1);
            REPORT(a.aclrtMemPoolTrimTo(pool, parse_size(ARG(1))));
            i += 1;
        } else if (strcmp(op, "pdestroy") == 0) {
            npool = 0;
            REPORT(a.aclrtMemPoolDestroy(pool));
        } else if (strcmp(op, "forget") == 0) {
            /* what the client holds was freed by a reset or a context's destruction */
            nheld = 0;
            REPORT(0);
        } else if (strcmp(op, "count") == 0) {
            uint32_t n = 0;
            rc = a.aclrtGetDeviceCount(&n);
            printf("{\"op\":\"count\",\"rc\":%d,\"count\":%u}\n", rc, n);
        } else if (strcmp(op, "info") == 0) {
            size_t fr = 0, tot = 0;
            rc = a.aclrtGetMemInfo(ACL_HBM_MEM, &fr, &tot);
            printf("{\"op\":\"info\",\"rc\":%d,\"free\":%zu,\"total\":%zu}\n", rc, fr, tot);
        } else if (!strcmp(op, "alloc") || !strcmp(op, "align32") || !strcmp(op, "cached") ||
                   !strcmp(op, "cfg") || !strcmp(op, "huge")) {
            NEED(1);
            size_t n = parse_size(ARG(1));
            void *p = NULL;
            aclrtMemMallocPolicy pol = ACL_MEM_MALLOC_NORMAL_ONLY;
            if (!strcmp(op, "alloc")) rc = a.aclrtMalloc(&p, n, pol);
            else if (!strcmp(op, "align32")) rc = a.aclrtMallocAlign32(&p, n, pol);
            else if (!strcmp(op, "cached")) rc = a.aclrtMallocCached(&p, n, pol);
            else if (!strcmp(op, "cfg")) rc = a.aclrtMallocWithCfg(&p, n, pol, NULL);
            else rc = a.aclrtMalloc(&p, n, ACL_MEM_MALLOC_HUGE_FIRST);
            if (rc == 0) held[nheld++] = (struct held){K_PTR, p, NULL, 0};
            REPORT(rc);
            i += 1;
        } else if (strcmp(op, "phys") == 0 || strcmp(op, "physonly") == 0) {
            NEED(1);
            REPORT(phys_alloc(parse_size(ARG(1)), op[4] != 'o'));
            i += 1;
        } else if (strcmp(op, "free") == 0) {
            REPORT(release_last());
        } else if (strcmp(op, "freeall") == 0) {
            int bad = 0;
            while (nheld) bad |= release_last() != 0;
            REPORT(bad);
        } else if (strcmp(op, "fill") == 0) {
            NEED(1);
            size_t n = parse_size(ARG(1)), got = 0;
            void *p;
            while (nheld < 8192 && (rc = a.aclrtMalloc(&p, n, ACL_MEM_MALLOC_NORMAL_ONLY)) == 0)
                held[nheld++] = (struct held){K_PTR, p, NULL, 0}, got += n;
            printf("{\"op\":\"fill\",\"rc\":%d,\"bytes\":%zu}\n", rc, got);
            i += 1;
        } else if (strcmp(op, "loop") == 0) {
            NEED(1);
            size_t n = parse_size(ARG(1));
            void *p;
            printf("{\"op\":\"loop\",\"rc\":0}\n");
            for (;;)
                if (a.aclrtMalloc(&p, n, ACL_MEM_MALLOC_NORMAL_ONLY) == 0) a.aclrtFree(p);
        } else if (strcmp(op, "launch") == 0) {
            /* launch KIND US: one piece of work on the default stream, then synchronize */
            NEED(2);
            rc = launch_one(ARG(1), (uint32_t)atoi(ARG(2)), NULL);
            int sync = a.aclrtSynchronizeDevice();
            printf("{\"op\":\"launch\",\"rc\":%d,\"sync\":%d}\n", rc, sync);
            i += 2;
        } else if (strcmp(op, "evtime") == 0) {
            /* evtime US N: N kernels of US between two events on a created stream */
            NEED(2);
            aclrtStream s = NULL;
            aclrtEvent e0 = NULL, e1 = NULL;
            float ms = -1;
            int n = atoi(ARG(2));
            rc = a.aclrtCreateStream(&s);
            if (rc == 0) rc = a.aclrtCreateEvent(&e0);
            if (rc == 0) rc = a.aclrtCreateEvent(&e1);
            if (rc == 0) rc = a.aclrtRecordEvent(e0, s);
            for (int k = 0; k < n && rc == 0; k++) rc = launch_one("kernel", (uint32_t)atoi(ARG(1)), s);
            if (rc == 0) rc = a.aclrtRecordEvent(e1, s);
            if (rc == 0) rc = a.aclrtSynchronizeEvent(e1);
            if (rc == 0) rc = a.aclrtEventElapsedTime(&ms, e0, e1);
            if (e0) a.aclrtDestroyEvent(e0);
            if (e1) a.aclrtDestroyEvent(e1);
            int d = s ? a.aclrtDestroyStream(s) : 0;
            printf("{\"op\":\"evtime\",\"rc\":%d,\"destroy\":%d,\"ms\":%.4f}\n", rc, d, ms);
            i += 2;
        } else if (strcmp(op, "saturate") == 0 || strcmp(op, "phases") == 0) {
            /* saturate KIND US MS / phases KIND US MS N: keep the NPU busy with US-us work for MS
             * ms of wall time (N times), then report the work done as a fraction of the wall */
            int phases = strcmp(op, "phases") == 0;
            NEED(phases ? 4 : 3);
            const char *kind = ARG(1);
            uint32_t us = (uint32_t)atoi(ARG(2));
            double ms = atof(ARG(3));
            int n = phases ? atoi(ARG(4)) : 1;
            for (int ph = 0; ph < n; ph++) {
                double start = now_us(), until = start + ms * 1000.0;
                long units = 0;
                rc = 0;
                while (rc == 0 && now_us() < until)
                    if ((rc = launch_one(kind, us, NULL)) == 0) units++;
                int sync = a.aclrtSynchronizeDevice();
                double wall = now_us() - start, busy = (double)units * us;
                printf("{\"op\":\"%s\",\"rc\":%d,\"sync\":%d,\"n\":%d,\"start_s\":%.6f,"
                       "\"units\":%ld,\"fraction\":%.4f}\n", phases ? "phase" : "saturate", rc,
                       sync, ph, start / 1e6, units, busy / wall);
            }
            i += phases ? 4 : 3;
        } else if (strcmp(op, "latency") == 0) {
            /* latency KIND US N GAP_US: N times one piece of work and wait for it; the delay is
             * the wall time beyond US. Reports p50 and p99 in us. */
            NEED(4);
            const char *kind = ARG(1);
            uint32_t us = (uint32_t)atoi(ARG(2));
            int n = atoi(ARG(3));
            useconds_t gap = (useconds_t)atoi(ARG(4));
            double *d = calloc((size_t)n, sizeof *d);
            rc = 0;
            for (int k = 0; k < n && rc == 0; k++) {
                double t0 = now_us();
                rc = launch_one(kind, us, NULL);
                if (rc == 0) rc = a.aclrtSynchronizeDevice();
                d[k] = now_us() - t0 - us;
                usleep(gap);
            }
            qsort(d, (size_t)n, sizeof *d, cmp_double);
            printf("{\"op\":\"latency\",\"rc\":%d,\"p50_us\":%.1f,\"p99_us\":%.1f}\n", rc,
                   d[n / 2], d[(n * 99) / 100]);
            free(d);
            i += 4;
        } else if (strcmp(op, "wait") == 0) {
            char line[16];
            printf("{\"op\":\"wait\",\"rc\":0}\n");
            if (!fgets(line, sizeof line, stdin)) { /* EOF: go on */ }
        } else if (strcmp(op, "sleep") == 0) {
            NEED(1);
            usleep((useconds_t)atoi(ARG(1)) * 1000u);
            i += 1;
        } else {
            fprintf(stderr, "acl_client: unknown operation %s\n", op);
            return 2;
        }
    }
    return 0;
}
