/*
 * fake_cuda_func.c - what a program asks about functions and modules beyond loading and
 * launching (fake_cuda_launch.c): parameter layout, attributes, globals, occupancy. The remote
 * client (csrc/remote) needs the parameter layout to forward a launch's arguments.
 *
 * The simulated device does not read images, so it knows one layout: a "sleep_us" function takes
 * one 4-byte parameter (its duration); every other function takes none. Modules have no globals
 * (cuModuleGetGlobal answers CUDA_ERROR_NOT_FOUND, as for a name the image lacks). Attributes and
 * occupancy are plausible constants of a 1024-thread, 2048-threads-per-SM device. It must never
 * answer for a handle it does not know: every call checks the function first.
 */
#include "fake_cuda_internal.h"

enum { ATTR_MAX_THREADS_PER_BLOCK = 0, ATTR_SHARED_SIZE = 1, ATTR_CONST_SIZE = 2,
       ATTR_LOCAL_SIZE = 3, ATTR_NUM_REGS = 4, ATTR_PTX_VERSION = 5, ATTR_BINARY_VERSION = 6,
       ATTR_CACHE_MODE_CA = 7, ATTR_MAX_DYNAMIC_SHARED = 8, ATTR_PREFERRED_CARVEOUT = 9,
       ATTR_COUNT = 10 };

static CUresult function_sleeps(const void *f, int *sleeps) {
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    pthread_mutex_lock(&fake_cuda_lock);
    *sleeps = fake_function_sleeps_locked(f);
    pthread_mutex_unlock(&fake_cuda_lock);
    return *sleeps < 0 ? CUDA_ERROR_INVALID_HANDLE : CUDA_SUCCESS;
}

/* JIT options are accepted and ignored. */
CUresult cuModuleLoadDataEx(CUmodule *module, const void *image, unsigned int numOptions,
                            CUjit_option *options, void **optionValues) {
    if (numOptions > 0 && (options == NULL || optionValues == NULL))
        return fake_cuda_check_init() != CUDA_SUCCESS ? CUDA_ERROR_NOT_INITIALIZED
                                                      : CUDA_ERROR_INVALID_VALUE;
    return fake_local_cuModuleLoadData(module, image);
}

CUresult cuModuleGetGlobal_v2(CUdeviceptr *dptr, size_t *bytes, CUmodule hmod, const char *name) {
    CUfunction probe;
    (void)dptr;
    (void)bytes;
    if (name == NULL)
        return fake_cuda_check_init() != CUDA_SUCCESS ? CUDA_ERROR_NOT_INITIALIZED
                                                      : CUDA_ERROR_INVALID_VALUE;
    /* The module must exist (getting a function checks it); it holds no variables. */
    CUresult rc = fake_local_cuModuleGetFunction(&probe, hmod, name);
    return rc != CUDA_SUCCESS ? rc : CUDA_ERROR_NOT_FOUND;
}

static CUresult param_info(const void *f, size_t index, size_t *offset, size_t *size) {
    int sleeps;
    CUresult rc = function_sleeps(f, &sleeps);
    if (rc != CUDA_SUCCESS)
        return rc;
    if (offset == NULL || size == NULL || !sleeps || index > 0)
        return CUDA_ERROR_INVALID_VALUE; /* past the last parameter, as the real driver says */
    *offset = 0;
    *size = sizeof(uint32_t);
    return CUDA_SUCCESS;
}

CUresult cuFuncGetParamInfo(CUfunction func, size_t paramIndex, size_t *paramOffset,
                            size_t *paramSize) {
    return param_info(func, paramIndex, paramOffset, paramSize);
}

/* A CUkernel is the same object as its CUfunction here (fake_cuda_launch.c). */
CUresult cuKernelGetParamInfo(CUkernel kernel, size_t paramIndex, size_t *paramOffset,
                              size_t *paramSize) {
    return param_info(kernel, paramIndex, paramOffset, paramSize);
}

CUresult cuFuncGetAttribute(int *pi, CUfunction_attribute attrib, CUfunction hfunc) {
    static const int values[ATTR_COUNT] = {
        [ATTR_MAX_THREADS_PER_BLOCK] = 1024, [ATTR_NUM_REGS] = 32, [ATTR_PTX_VERSION] = 80,
        [ATTR_BINARY_VERSION] = 80, [ATTR_PREFERRED_CARVEOUT] = -1};
    int sleeps;
    CUresult rc = function_sleeps(hfunc, &sleeps);
    if (rc != CUDA_SUCCESS)
        return rc;
    int a = (int)attrib;
    if (pi == NULL || a < 0 || a >= ATTR_COUNT)
        return CUDA_ERROR_INVALID_VALUE;
    *pi = values[a];
    return CUDA_SUCCESS;
}

CUresult cuFuncSetAttribute(CUfunction hfunc, CUfunction_attribute attrib, int value) {
    int sleeps;
    CUresult rc = function_sleeps(hfunc, &sleeps);
    if (rc != CUDA_SUCCESS)
        return rc;
    if ((int)attrib != ATTR_MAX_DYNAMIC_SHARED && (int)attrib != ATTR_PREFERRED_CARVEOUT)
        return CUDA_ERROR_INVALID_VALUE;
    return value < -1 ? CUDA_ERROR_INVALID_VALUE : CUDA_SUCCESS;
}

CUresult cuFuncSetCacheConfig(CUfunction hfunc, CUfunc_cache config) {
    int sleeps;
    CUresult rc = function_sleeps(hfunc, &sleeps);
    if (rc != CUDA_SUCCESS)
        return rc;
    return config < 0 || config > 3 ? CUDA_ERROR_INVALID_VALUE : CUDA_SUCCESS;
}

static CUresult occupancy(int *numBlocks, CUfunction func, int blockSize) {
    int sleeps;
    CUresult rc = function_sleeps(func, &sleeps);
    if (rc != CUDA_SUCCESS)
        return rc;
    if (numBlocks == NULL || blockSize <= 0 || blockSize > 1024)
        return CUDA_ERROR_INVALID_VALUE;
    int warps = (blockSize + 31) / 32;
    int blocks = 64 / warps; /* 64 warps per SM */
    *numBlocks = blocks > 32 ? 32 : blocks;
    return CUDA_SUCCESS;
}

CUresult cuOccupancyMaxActiveBlocksPerMultiprocessor(int *numBlocks, CUfunction func,
                                                     int blockSize, size_t dynamicSMemSize) {
    (void)dynamicSMemSize;
    return occupancy(numBlocks, func, blockSize);
}

CUresult cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(int *numBlocks, CUfunction func,
                                                              int blockSize,
                                                              size_t dynamicSMemSize,
                                                              unsigned int flags) {
    (void)dynamicSMemSize;
    (void)flags;
    return occupancy(numBlocks, func, blockSize);
}

/* The hidden aliases of this file's entry points (fake_cuda.def). */
#define FAKE_IN_func(x) x
#include "fake_cuda_locals.h"
