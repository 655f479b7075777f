/* driver_bench.c - driver-API benchmark client, run natively and under LD_PRELOAD=libflexai.so
 * by overhead.py and compute_share.py. Prints one JSON object. Resolves the driver like cudart
 * does (cuGetProcAddress_v2), so it measures the hooked path.
 *
 *   driver_bench overhead [PAIRS] [LAUNCHES] [BYTES]
 *       alloc_free_ns : one cuMemAlloc_v2 + cuMemFree_v2 pair
 *       launch_ns     : one cuLaunchKernel of an empty kernel, call cost (queue never full)
 *       launch_sync_ns: launches plus the final synchronize, per kernel
 *   driver_bench saturate US SECONDS
 *       keeps the device busy with kernels of US microseconds; reports the work done per
 *       second of wall time ("rate", in GPU-us per us: 1.0 = the whole device)
 *   driver_bench probe US PERIOD_MS SECONDS
 *       every PERIOD_MS launches one US-us kernel and waits for it; reports the p50/p99 of
 *       the step time in ms (a latency-sensitive job)
 *
 * The kernel "sleep_us" spins on %globaltimer for its parameter's microseconds on a real GPU
 * (one block per SM, so it also fills the device under MPS); the simulated device runs it for
 * that long by name.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* The project's one CUDA header, found relative to this file (no include flag needed). */
#include "../csrc/cuda/cuda_api.h"

typedef __typeof__(&cuGetProcAddress_v2) gpa_t;

static const char ptx[] =
    ".version 7.0\n.target sm_70\n.address_size 64\n"
    ".visible .entry sleep_us(.param .u32 us)\n{\n"
    " .reg .u64 %t0, %t1, %lim;\n .reg .u32 %u;\n .reg .pred %p;\n"
    " ld.param.u32 %u, [us];\n cvt.u64.u32 %lim, %u;\n mul.lo.u64 %lim, %lim, 1000;\n"
    " mov.u64 %t0, %globaltimer;\n"
    "LOOP:\n mov.u64 %t1, %globaltimer;\n sub.u64 %t1, %t1, %t0;\n"
    " setp.lt.u64 %p, %t1, %lim;\n @%p bra LOOP;\n ret;\n}\n";

static double now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

#define GET(name, var)                                                                         \
    if (gpa(name, (void **)&var, 12000, 0, NULL) != 0 || !var) {                               \
        fprintf(stderr, "bench: cannot resolve %s\n", name);                                   \
        return 1;                                                                              \
    }
#define CHECK(call)                                                                            \
    do {                                                                                       \
        CUresult rc_ = (call);                                                                 \
        if (rc_ != 0) {                                                                        \
            fprintf(stderr, "bench: %s failed with %d\n", #call, rc_);                         \
            return 1;                                                                          \
        }                                                                                      \
    } while (0)

static __typeof__(&cuMemAlloc_v2) Alloc;
static __typeof__(&cuMemFree_v2) Free;
static __typeof__(&cuLaunchKernel) Launch;
static __typeof__(&cuCtxSynchronize) Sync;
static CUfunction fn;
static unsigned blocks = 1;

static int setup(void)
{
    void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "bench: %s\n", dlerror());
        return 1;
    }
    gpa_t boot, gpa = NULL;
    void *sym = dlsym(h, "cuGetProcAddress_v2");
    memcpy(&boot, &sym, sizeof sym);
    if (!boot || boot("cuGetProcAddress", (void **)&gpa, 12000, 0, NULL) != 0) return 1;
    __typeof__(&cuInit) Init;
    __typeof__(&cuDeviceGet) DeviceGet;
    __typeof__(&cuDeviceGetAttribute) Attr;
    __typeof__(&cuDevicePrimaryCtxRetain) Retain;
    __typeof__(&cuCtxSetCurrent) SetCurrent;
    __typeof__(&cuModuleLoadData) Load;
    __typeof__(&cuModuleGetFunction) GetFunction;
    GET("cuInit", Init);
    GET("cuDeviceGet", DeviceGet);
    GET("cuDeviceGetAttribute", Attr);
    GET("cuDevicePrimaryCtxRetain", Retain);
    GET("cuCtxSetCurrent", SetCurrent);
    GET("cuMemAlloc", Alloc);
    GET("cuMemFree", Free);
    GET("cuModuleLoadData", Load);
    GET("cuModuleGetFunction", GetFunction);
    GET("cuLaunchKernel", Launch);
    GET("cuCtxSynchronize", Sync);
    CUdevice dev;
    int sms = 1;
    CUcontext ctx;
    CUmodule mod;
    CHECK(Init(0));
    CHECK(DeviceGet(&dev, 0));
    if (Attr(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev) == 0 && sms > 0)
        blocks = (unsigned)sms;
    CHECK(Retain(&ctx, dev));
    CHECK(SetCurrent(ctx));
    CHECK(Load(&mod, ptx));
    CHECK(GetFunction(&fn, mod, "sleep_us"));
    return 0;
}

static int overhead(long pairs, long launches, size_t size)
{
    CUdeviceptr p;
    for (int i = 0; i < 100; i++) { /* warm the driver's own caches */
        CHECK(Alloc(&p, size));
        CHECK(Free(p));
    }
    double t0 = now_ns();
    for (long i = 0; i < pairs; i++) {
        CHECK(Alloc(&p, size));
        CHECK(Free(p));
    }
    double alloc_ns = (now_ns() - t0) / (double)pairs;

    uint32_t zero = 0;
    void *params[] = {&zero};
    for (int i = 0; i < 100; i++) CHECK(Launch(fn, 1, 1, 1, 32, 1, 1, 0, NULL, params, NULL));
    CHECK(Sync());
    /* Launch in batches small enough not to fill the driver's queue, timing only the calls. */
    double launch_total = 0, t_all = now_ns();
    for (long done = 0; done < launches; done += 256) {
        double t = now_ns();
        for (int i = 0; i < 256; i++) CHECK(Launch(fn, 1, 1, 1, 32, 1, 1, 0, NULL, params, NULL));
        launch_total += now_ns() - t;
        CHECK(Sync());
    }
    long n = ((launches + 255) / 256) * 256;
    double sync_ns = (now_ns() - t_all) / (double)n;
    printf("{\"alloc_free_ns\": %.1f, \"launch_ns\": %.1f, \"launch_sync_ns\": %.1f, "
           "\"pairs\": %ld, \"launches\": %ld, \"alloc_bytes\": %zu}\n",
           alloc_ns, launch_total / (double)n, sync_ns, pairs, n, size);
    return 0;
}

static int saturate(uint32_t us, double seconds)
{
    void *params[] = {&us};
    double start = now_ns(), until = start + seconds * 1e9;
    long n = 0;
    while (now_ns() < until) {
        CHECK(Launch(fn, blocks, 1, 1, 32, 1, 1, 0, NULL, params, NULL));
        n++;
    }
    CHECK(Sync());
    double wall = now_ns() - start;
    printf("{\"kernels\": %ld, \"kernel_us\": %u, \"wall_s\": %.4f, \"rate\": %.5f}\n", n, us,
           wall / 1e9, (double)n * us * 1e3 / wall);
    return 0;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int probe(uint32_t us, double period_ms, double seconds)
{
    void *params[] = {&us};
    long cap = (long)(seconds * 1000 / period_ms) + 1, n = 0;
    double *steps = calloc((size_t)cap, sizeof *steps), until = now_ns() + seconds * 1e9;
    if (!steps) return 1;
    while (n < cap && now_ns() < until) {
        double t = now_ns();
        CHECK(Launch(fn, 1, 1, 1, 32, 1, 1, 0, NULL, params, NULL));
        CHECK(Sync());
        steps[n++] = (now_ns() - t) / 1e6;
        double next = t + period_ms * 1e6;
        while (now_ns() < next) {
        }
    }
    qsort(steps, (size_t)n, sizeof *steps, cmp);
    printf("{\"steps\": %ld, \"p50_ms\": %.4f, \"p99_ms\": %.4f}\n", n, steps[n / 2],
           steps[(n * 99) / 100]);
    free(steps);
    return 0;
}

/* With BENCH_BARRIER set, say "ready" once set up and wait for a line on stdin, so that a
 * benchmark can start several processes' measurements together. */
static void barrier(void)
{
    char line[16];
    if (!getenv("BENCH_BARRIER")) return;
    printf("ready\n");
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin)) return;
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "overhead";
    if (setup() != 0) return 1;
    barrier();
    if (strcmp(mode, "overhead") == 0)
        return overhead(argc > 2 ? atol(argv[2]) : 20000, argc > 3 ? atol(argv[3]) : 20000,
                        argc > 4 ? (size_t)atol(argv[4]) : (1u << 20));
    if (strcmp(mode, "saturate") == 0 && argc > 3)
        return saturate((uint32_t)atoi(argv[2]), atof(argv[3]));
    if (strcmp(mode, "probe") == 0 && argc > 4)
        return probe((uint32_t)atoi(argv[2]), atof(argv[3]), atof(argv[4]));
    fprintf(stderr, "usage: driver_bench overhead|saturate US S|probe US PERIOD_MS S\n");
    return 2;
}
