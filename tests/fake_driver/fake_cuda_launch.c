/*
 * fake_cuda_launch.c - modules, libraries, functions and kernel launches.
 *
 * Any image loads (PTX text, cubin, fatbin: the bytes are not looked at) and any function name
 * resolves; each module remembers the names asked for, so a function handle is stable. A kernel
 * does nothing but occupy the device for a simulated duration:
 *
 *   - a function whose name starts with "sleep_us" lasts *(const uint32_t *)kernelParams[0]
 *     microseconds (or the first 4 bytes of the CU_LAUNCH_PARAM_BUFFER_POINTER buffer given in
 *     `extra`); 0 is allowed;
 *   - any other function lasts FLEXAI_SIM_KERNEL_US microseconds (default 10).
 *
 * The duration is read when the kernel is launched, as the real driver copies the arguments.
 *
 * Libraries (cuLibraryLoadData) are context-independent modules; a CUkernel is the same object
 * as a CUfunction, so either can be launched (as with the real driver since CUDA 12).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fake_cuda_internal.h"

#define SLEEP_PREFIX "sleep_us"

struct CUfunc_st {
    struct CUfunc_st *next;
    struct CUmod_st *mod;
    int sleep; /* duration comes from the first parameter */
    char name[];
};

struct CUmod_st {
    struct CUmod_st *next;      /* registry link */
    const struct CUctx_st *ctx; /* NULL for libraries */
    struct CUfunc_st *funcs;
};

static struct CUmod_st *module_registry; /* modules and libraries, fake_cuda_lock */

/* ---- modules ----------------------------------------------------------------------------- */

static struct CUmod_st *module_find_locked(const void *handle) {
    for (struct CUmod_st *m = module_registry; m != NULL; m = m->next)
        if (m == handle)
            return m;
    return NULL;
}

static struct CUfunc_st *function_find_locked(const void *handle) {
    for (struct CUmod_st *m = module_registry; m != NULL; m = m->next)
        for (struct CUfunc_st *f = m->funcs; f != NULL; f = f->next)
            if (f == handle)
                return f;
    return NULL;
}

static void module_free(struct CUmod_st *m) {
    while (m->funcs != NULL) {
        struct CUfunc_st *f = m->funcs;
        m->funcs = f->next;
        free(f);
    }
    free(m);
}

/* Queued launches hold only their duration, so a module may go while its kernels run. */
void fake_launch_release_ctx_locked(const struct CUctx_st *ctx) {
    struct CUmod_st **link = &module_registry;
    while (*link != NULL) {
        struct CUmod_st *m = *link;
        if (m->ctx == ctx) {
            *link = m->next;
            module_free(m);
        } else {
            link = &m->next;
        }
    }
}

/* A module of the current context, or a library (is_library) which needs none. */
static CUresult module_load(void **out, const void *image, int is_library) {
    struct CUctx_st *ctx = NULL;
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (out == NULL || image == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    struct CUmod_st *m = calloc(1, sizeof(*m));
    if (m == NULL)
        return CUDA_ERROR_OUT_OF_MEMORY;
    pthread_mutex_lock(&fake_cuda_lock);
    if (!is_library)
        rc = fake_ctx_current_locked(&ctx);
    if (rc == CUDA_SUCCESS) {
        m->ctx = ctx;
        m->next = module_registry;
        module_registry = m;
        *out = m;
    }
    pthread_mutex_unlock(&fake_cuda_lock);
    if (rc != CUDA_SUCCESS)
        free(m);
    return rc;
}

static CUresult module_unload(const void *handle) {
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    pthread_mutex_lock(&fake_cuda_lock);
    struct CUmod_st **link = &module_registry;
    while (*link != NULL && *link != handle)
        link = &(*link)->next;
    struct CUmod_st *m = *link;
    if (m != NULL)
        *link = m->next;
    pthread_mutex_unlock(&fake_cuda_lock);
    if (m == NULL)
        return CUDA_ERROR_INVALID_HANDLE;
    module_free(m);
    return CUDA_SUCCESS;
}

/* Finds or adds function `name` of module `handle`. */
static CUresult module_function(void **out, const void *handle, const char *name) {
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (out == NULL || name == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    size_t len = strlen(name);
    pthread_mutex_lock(&fake_cuda_lock);
    struct CUmod_st *m = module_find_locked(handle);
    struct CUfunc_st *f = NULL;
    if (m == NULL) {
        rc = CUDA_ERROR_INVALID_HANDLE;
    } else {
        for (f = m->funcs; f != NULL && strcmp(f->name, name) != 0; f = f->next) {
        }
        if (f == NULL && (f = malloc(sizeof(*f) + len + 1)) != NULL) {
            memcpy(f->name, name, len + 1);
            f->mod = m;
            f->sleep = strncmp(name, SLEEP_PREFIX, strlen(SLEEP_PREFIX)) == 0;
            f->next = m->funcs;
            m->funcs = f;
        }
        if (f == NULL)
            rc = CUDA_ERROR_OUT_OF_MEMORY;
        else
            *out = f;
    }
    pthread_mutex_unlock(&fake_cuda_lock);
    return rc;
}

CUresult cuModuleLoadData(CUmodule *module, const void *image) {
    return module_load((void **)module, image, 0);
}

/* The file must exist and be readable; its contents are not looked at. */
CUresult cuModuleLoad(CUmodule *module, const char *fname) {
    if (fname == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    FILE *f = fopen(fname, "rb");
    if (f == NULL)
        return fake_cuda_check_init() != CUDA_SUCCESS ? CUDA_ERROR_NOT_INITIALIZED
                                                      : CUDA_ERROR_FILE_NOT_FOUND;
    fclose(f);
    return module_load((void **)module, fname, 0);
}

CUresult cuModuleUnload(CUmodule hmod) {
    return module_unload(hmod);
}

CUresult cuModuleGetFunction(CUfunction *hfunc, CUmodule hmod, const char *name) {
    return module_function((void **)hfunc, hmod, name);
}

/* JIT and library options are accepted and ignored. */
CUresult cuLibraryLoadData(CUlibrary *library, const void *code, CUjit_option *jitOptions,
                           void **jitOptionsValues, unsigned int numJitOptions,
                           CUlibraryOption *libraryOptions, void **libraryOptionValues,
                           unsigned int numLibraryOptions) {
    if ((numJitOptions > 0 && (jitOptions == NULL || jitOptionsValues == NULL)) ||
        (numLibraryOptions > 0 && (libraryOptions == NULL || libraryOptionValues == NULL)))
        return CUDA_ERROR_INVALID_VALUE;
    return module_load((void **)library, code, 1);
}

CUresult cuLibraryUnload(CUlibrary library) {
    return module_unload(library);
}

CUresult cuLibraryGetKernel(CUkernel *pKernel, CUlibrary library, const char *name) {
    return module_function((void **)pKernel, library, name);
}

CUresult cuKernelGetFunction(CUfunction *pFunc, CUkernel kernel) {
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (pFunc == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&fake_cuda_lock);
    struct CUfunc_st *f = function_find_locked(kernel);
    pthread_mutex_unlock(&fake_cuda_lock);
    if (f == NULL)
        return CUDA_ERROR_INVALID_HANDLE;
    *pFunc = f;
    return CUDA_SUCCESS;
}

CUresult cuFuncGetName(const char **name, CUfunction hfunc) {
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (name == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&fake_cuda_lock);
    struct CUfunc_st *f = function_find_locked(hfunc);
    if (f != NULL)
        *name = f->name; /* lives as long as the module */
    pthread_mutex_unlock(&fake_cuda_lock);
    return f != NULL ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

int fake_function_sleeps_locked(const void *handle) {
    const struct CUfunc_st *f = function_find_locked(handle);
    return f == NULL ? -1 : f->sleep;
}

/* ---- launches ---------------------------------------------------------------------------- */

struct launch {
    unsigned grid[3], block[3];
    CUstream stream;
    void **params;
    void **extra;
};

/* The first 4 bytes of the argument buffer passed in `extra`, or NULL. */
static const void *extra_first_arg(void **extra) {
    const void *buf = NULL;
    size_t size = 0;
    for (size_t i = 0; extra != NULL && extra[i] != CU_LAUNCH_PARAM_END; i += 2) {
        if (extra[i] == CU_LAUNCH_PARAM_BUFFER_POINTER)
            buf = extra[i + 1];
        else if (extra[i] == CU_LAUNCH_PARAM_BUFFER_SIZE && extra[i + 1] != NULL)
            size = *(const size_t *)extra[i + 1];
        else
            return NULL;
    }
    return size >= sizeof(uint32_t) ? buf : NULL;
}

/* Launch-time checks of the real driver that a test may trip on, then the simulated duration. */
static CUresult launch_duration(const struct CUfunc_st *f, const struct launch *l, int64_t *ns) {
    uint64_t threads = (uint64_t)l->block[0] * l->block[1] * l->block[2];
    if (l->grid[0] == 0 || l->grid[1] == 0 || l->grid[2] == 0 || threads == 0 ||
        l->grid[1] > 65535 || l->grid[2] > 65535 || l->block[2] > 64 || threads > 1024 ||
        l->block[0] > 1024 || l->block[1] > 1024)
        return CUDA_ERROR_INVALID_VALUE;
    if (l->params != NULL && l->extra != NULL)
        return CUDA_ERROR_INVALID_VALUE;
    if (!f->sleep) {
        const struct fake_config *cfg = fake_config_get();
        *ns = (int64_t)(cfg != NULL ? cfg->kernel_us : 10) * 1000;
        return CUDA_SUCCESS;
    }
    const void *arg = l->params != NULL ? l->params[0] : extra_first_arg(l->extra);
    if (arg == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    uint32_t us;
    memcpy(&us, arg, sizeof(us));
    *ns = (int64_t)us * 1000;
    return CUDA_SUCCESS;
}

static CUresult launch(CUfunction hfunc, const struct launch *l) {
    struct CUstream_st *s;
    struct fake_op op = {.kind = FAKE_OP_KERNEL, .at = fake_now_ns()};
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    pthread_mutex_lock(&fake_cuda_lock);
    struct CUfunc_st *f = function_find_locked(hfunc);
    rc = f == NULL ? CUDA_ERROR_INVALID_HANDLE : launch_duration(f, l, &op.ns);
    if (rc == CUDA_SUCCESS)
        rc = fake_stream_use_locked(l->stream, &s);
    if (rc != CUDA_SUCCESS) {
        pthread_mutex_unlock(&fake_cuda_lock);
        return rc;
    }
    if (s->capture != NULL) {
        rc = fake_graph_append_locked(s->capture, &op, 1);
        pthread_mutex_unlock(&fake_cuda_lock);
    } else {
        pthread_mutex_unlock(&fake_cuda_lock);
        rc = fake_stream_submit(s, &op, 1);
    }
    fake_stream_put(s);
    return rc;
}

static CUresult launch_kernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                              unsigned by, unsigned bz, CUstream hStream, void **kernelParams,
                              void **extra) {
    struct launch l = {{gx, gy, gz}, {bx, by, bz}, hStream, kernelParams, extra};
    return launch(f, &l);
}

CUresult cuLaunchKernel(CUfunction f, unsigned int gridDimX, unsigned int gridDimY,
                        unsigned int gridDimZ, unsigned int blockDimX, unsigned int blockDimY,
                        unsigned int blockDimZ, unsigned int sharedMemBytes, CUstream hStream,
                        void **kernelParams, void **extra) {
    (void)sharedMemBytes;
    return launch_kernel(f, gridDimX, gridDimY, gridDimZ, blockDimX, blockDimY, blockDimZ,
                         hStream, kernelParams, extra);
}

/* Launch attributes (cluster shape, cooperative, priority, ...) are accepted and ignored. */
static CUresult launch_ex(const CUlaunchConfig *config, CUfunction f, void **kernelParams,
                          void **extra) {
    if (config == NULL || (config->numAttrs > 0 && config->attrs == NULL))
        return fake_cuda_check_init() != CUDA_SUCCESS ? CUDA_ERROR_NOT_INITIALIZED
                                                       : CUDA_ERROR_INVALID_VALUE;
    return launch_kernel(f, config->gridDimX, config->gridDimY, config->gridDimZ,
                         config->blockDimX, config->blockDimY, config->blockDimZ,
                         config->hStream, kernelParams, extra);
}

CUresult cuLaunchKernelEx(const CUlaunchConfig *config, CUfunction f, void **kernelParams,
                          void **extra) {
    return launch_ex(config, f, kernelParams, extra);
}

CUresult cuLaunchCooperativeKernel(CUfunction f, unsigned int gridDimX, unsigned int gridDimY,
                                   unsigned int gridDimZ, unsigned int blockDimX,
                                   unsigned int blockDimY, unsigned int blockDimZ,
                                   unsigned int sharedMemBytes, CUstream hStream,
                                   void **kernelParams) {
    (void)sharedMemBytes;
    return launch_kernel(f, gridDimX, gridDimY, gridDimZ, blockDimX, blockDimY, blockDimZ,
                         hStream, kernelParams, NULL);
}

/* The hidden aliases of this file's entry points (fake_cuda.def). */
#define FAKE_IN_launch(x) x
#include "fake_cuda_locals.h"
