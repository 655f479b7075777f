/* bench_driver.c - driver-API micro-benchmarks, run natively and under LD_PRELOAD=libflexai.so
 * by overhead.py. Prints one JSON object.
 *   alloc_free_ns : one cuMemAlloc_v2 + cuMemFree_v2 pair (size given, default 1 MiB)
 *   launch_ns     : one cuLaunchKernel of an empty kernel, launch cost only (queue not full)
 *   launch_sync_ns: launches plus the final synchronize, per kernel (throughput)
 * Resolves the driver like cudart does (cuGetProcAddress_v2), so it measures the hooked path.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef int CUresult;
typedef unsigned long long CUdeviceptr;
typedef void *CUcontext, *CUmodule, *CUfunction, *CUstream;
typedef CUresult (*gpa_t)(const char *, void **, int, uint64_t, int *);

static const char ptx[] =
    ".version 7.0\n.target sm_52\n.address_size 64\n"
    ".visible .entry sleep_us(.param .u32 us)\n{\n ret;\n}\n";

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

int main(int argc, char **argv)
{
    long pairs = argc > 1 ? atol(argv[1]) : 20000;
    long launches = argc > 2 ? atol(argv[2]) : 20000;
    size_t size = argc > 3 ? (size_t)atol(argv[3]) : (1u << 20);
    void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "bench: %s\n", dlerror());
        return 1;
    }
    gpa_t boot = (gpa_t)dlsym(h, "cuGetProcAddress_v2"), gpa = NULL;
    if (!boot || boot("cuGetProcAddress", (void **)&gpa, 12000, 0, NULL) != 0) return 1;
    CUresult (*Init)(unsigned);
    CUresult (*DeviceGet)(int *, int);
    CUresult (*Retain)(CUcontext *, int);
    CUresult (*SetCurrent)(CUcontext);
    CUresult (*Alloc)(CUdeviceptr *, size_t);
    CUresult (*Free)(CUdeviceptr);
    CUresult (*Load)(CUmodule *, const void *);
    CUresult (*GetFunction)(CUfunction *, CUmodule, const char *);
    CUresult (*Launch)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                       unsigned, CUstream, void **, void **);
    CUresult (*Sync)(void);
    GET("cuInit", Init);
    GET("cuDeviceGet", DeviceGet);
    GET("cuDevicePrimaryCtxRetain", Retain);
    GET("cuCtxSetCurrent", SetCurrent);
    GET("cuMemAlloc", Alloc);
    GET("cuMemFree", Free);
    GET("cuModuleLoadData", Load);
    GET("cuModuleGetFunction", GetFunction);
    GET("cuLaunchKernel", Launch);
    GET("cuCtxSynchronize", Sync);
    int dev;
    CUcontext ctx;
    CUmodule mod;
    CUfunction fn;
    CHECK(Init(0));
    CHECK(DeviceGet(&dev, 0));
    CHECK(Retain(&ctx, dev));
    CHECK(SetCurrent(ctx));
    CHECK(Load(&mod, ptx));
    CHECK(GetFunction(&fn, mod, "sleep_us"));

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
