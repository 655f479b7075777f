/* storm.c - one worker of the crash storm (benchmarks/crash_storm.py, tests/test_shared_node.py):
 * allocates and frees for ever at random sizes on the given allocation paths, and keeps in its
 * slot of a shared file what it holds and how long its longest call took, so that the figures
 * survive the SIGKILL that ends it.
 *
 *   storm SLOTS_FILE INDEX SEED PATH...      PATH: alloc managed async pool vmm
 *
 * The slot is written so that it never says more than the worker holds: an allocation is
 * added after the driver returned it, a free is subtracted before the driver is asked. A sum
 * of the slots of live workers above the quota is therefore a real overshoot.
 */
#include <dlfcn.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "../../csrc/cuda/cuda_api.h"

/* One worker's slot: 64 bytes, fields written with single aligned stores. */
struct slot {
    uint64_t held;        /* bytes this worker holds now (never more than it holds) */
    uint64_t max_call_ns; /* longest allocation or free call */
    uint64_t calls;
    uint64_t refused;     /* allocations the quota refused */
    uint64_t errors;      /* other failures (must stay 0) */
    uint64_t ready;       /* 1 once the context exists */
    uint64_t pad[2];
};

#define FUNCS(X)                                                                               \
    X(Init, cuInit)                                                                            \
    X(DeviceGet, cuDeviceGet)                                                                  \
    X(PrimaryCtxRetain, cuDevicePrimaryCtxRetain)                                              \
    X(CtxSetCurrent, cuCtxSetCurrent)                                                          \
    X(MemAlloc, cuMemAlloc_v2)                                                                 \
    X(MemAllocManaged, cuMemAllocManaged)                                                      \
    X(MemFree, cuMemFree_v2)                                                                   \
    X(MemAllocAsync, cuMemAllocAsync)                                                          \
    X(MemFreeAsync, cuMemFreeAsync)                                                            \
    X(DeviceGetDefaultMemPool, cuDeviceGetDefaultMemPool)                                      \
    X(MemAllocFromPoolAsync, cuMemAllocFromPoolAsync)                                          \
    X(MemCreate, cuMemCreate)                                                                  \
    X(MemRelease, cuMemRelease)

#define FIELD(field, name) __typeof__(&name) field;
static struct {
    FUNCS(FIELD)
} cu;

enum path { P_ALLOC, P_MANAGED, P_ASYNC, P_POOL, P_VMM, P_COUNT };
static const char *const path_names[P_COUNT] = {"alloc", "managed", "async", "pool", "vmm"};

#define MAX_HELD 6
static struct {
    int path;
    uint64_t id, size;
} held[MAX_HELD];
static int nheld;
static volatile struct slot *me;
static CUmemoryPool pool;

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ULL + (uint64_t)t.tv_nsec;
}

static void timed_end(uint64_t start)
{
    uint64_t took = now_ns() - start;
    if (took > me->max_call_ns) me->max_call_ns = took;
    me->calls = me->calls + 1;
}

static CUresult allocate(int path, uint64_t size, uint64_t *id)
{
    CUdeviceptr p = 0;
    CUresult rc;
    if (path == P_ALLOC) rc = cu.MemAlloc(&p, size);
    else if (path == P_MANAGED) rc = cu.MemAllocManaged(&p, size, 1);
    else if (path == P_ASYNC) rc = cu.MemAllocAsync(&p, size, NULL);
    else if (path == P_POOL) rc = cu.MemAllocFromPoolAsync(&p, size, pool, NULL);
    else {
        CUmemAllocationProp prop;
        CUmemGenericAllocationHandle h = 0;
        memset(&prop, 0, sizeof prop);
        prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
        prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
        prop.location.id = 0;
        rc = cu.MemCreate(&h, size, &prop, 0);
        p = (CUdeviceptr)h;
    }
    *id = (uint64_t)p;
    return rc;
}

static CUresult release(int k)
{
    int path = held[k].path;
    uint64_t id = held[k].id;
    if (path == P_ALLOC || path == P_MANAGED) return cu.MemFree(id);
    if (path == P_ASYNC || path == P_POOL) return cu.MemFreeAsync(id, NULL);
    return cu.MemRelease(id);
}

/* A call that failed for another reason than the quota: counted, and the first few told. */
static void error(const char *what, int path, CUresult rc)
{
    if (me->errors < 3) fprintf(stderr, "storm: %s on %s: error %d\n", what, path_names[path], rc);
    me->errors = me->errors + 1;
}

static void free_one(int k)
{
    me->held = me->held - held[k].size; /* first: the slot never says more than is held */
    uint64_t start = now_ns();
    CUresult rc = release(k);
    if (rc != CUDA_SUCCESS) error("free", held[k].path, rc);
    timed_end(start);
    held[k] = held[--nheld];
}

int main(int argc, char **argv)
{
    int paths[P_COUNT], npaths = 0;
    if (argc < 5) {
        fprintf(stderr, "usage: storm SLOTS_FILE INDEX SEED PATH...\n");
        return 2;
    }
    for (int i = 4; i < argc; i++)
        for (int p = 0; p < P_COUNT; p++)
            if (strcmp(argv[i], path_names[p]) == 0) paths[npaths++] = p;
    int fd = open(argv[1], O_RDWR | O_CLOEXEC);
    long index = atol(argv[2]);
    void *map = fd < 0 ? MAP_FAILED : mmap(NULL, (size_t)(index + 1) * sizeof(struct slot),
                                          PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED || npaths == 0) {
        fprintf(stderr, "storm: cannot map %s or no path given\n", argv[1]);
        return 2;
    }
    me = (volatile struct slot *)map + index;
    srand((unsigned)atol(argv[3]));

    void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
#define RESOLVE(field, name)                                                                   \
    do {                                                                                       \
        void *sym = h ? dlsym(h, #name) : NULL;                                                \
        memcpy(&cu.field, &sym, sizeof sym);                                                   \
        if (!sym) {                                                                            \
            fprintf(stderr, "storm: no %s\n", #name);                                          \
            return 3;                                                                          \
        }                                                                                      \
    } while (0);
    FUNCS(RESOLVE)
    CUdevice dev = 0;
    CUcontext ctx = NULL;
    if (cu.Init(0) != 0 || cu.DeviceGet(&dev, 0) != 0 || cu.PrimaryCtxRetain(&ctx, dev) != 0 ||
        cu.CtxSetCurrent(ctx) != 0 || cu.DeviceGetDefaultMemPool(&pool, dev) != 0) {
        me->errors = me->errors + 1;
        return 4;
    }
    me->ready = 1;
    for (;;) {
        if (nheld == MAX_HELD || (nheld > 0 && rand() % 3 == 0)) {
            free_one(rand() % nheld);
            continue;
        }
        int path = paths[rand() % npaths];
        uint64_t size = (uint64_t)(1 + rand() % 48) << 21, id = 0; /* VMM granularity: 2 MiB */
        uint64_t start = now_ns();
        CUresult rc = allocate(path, size, &id);
        timed_end(start);
        if (rc == CUDA_SUCCESS) {
            held[nheld].path = path;
            held[nheld].id = id;
            held[nheld++].size = size;
            me->held = me->held + size;
        } else if (rc == CUDA_ERROR_OUT_OF_MEMORY) {
            me->refused = me->refused + 1;
            if (nheld > 0) free_one(rand() % nheld);
        } else {
            error("allocation", path, rc);
        }
    }
}
