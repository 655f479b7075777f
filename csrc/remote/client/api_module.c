/* api_module.c - the remote client's modules, libraries, functions and launches.
 *
 * An image (PTX text, cubin ELF, fatbin, or a fatbin wrapper) is sent whole; its size is read
 * from its own headers. Getting a function (or a library's kernel) asks the server once, and the
 * reply carries the parameter layout from the server's cuFuncGetParamInfo, kept per function:
 * a launch then packs each argument's bytes without asking again, and is queued (batched).
 * Must never read past an argument's size or an image's end as its headers state them, and
 * never forward a launch attribute that holds a handle of this side (events): those are refused.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client.h"

#define MAX_IMAGE ((size_t)1 << 30)

/* ---- images ------------------------------------------------------------------------------- */

static uint64_t rd(const unsigned char *p, unsigned n) {
    uint64_t v = 0;
    memcpy(&v, p, n);
    return v;
}

static size_t elf_size(const unsigned char *p) {
    if (p[4] != 2) /* ELFCLASS64 only: CUDA cubins are */
        return 0;
    uint64_t shoff = rd(p + 0x28, 8), phoff = rd(p + 0x20, 8);
    uint64_t shent = rd(p + 0x3a, 2), shnum = rd(p + 0x3c, 2);
    uint64_t phent = rd(p + 0x36, 2), phnum = rd(p + 0x38, 2);
    uint64_t end = 0x40;
    if (shoff > MAX_IMAGE || phoff > MAX_IMAGE)
        return 0;
    if (shoff + shent * shnum > end)
        end = shoff + shent * shnum;
    if (phoff + phent * phnum > end)
        end = phoff + phent * phnum;
    for (uint64_t i = 0; i < shnum && shent >= 0x28; i++) {
        const unsigned char *sh = p + shoff + i * shent;
        if (rd(sh + 4, 4) == 8) /* SHT_NOBITS takes no room in the file */
            continue;
        uint64_t off = rd(sh + 0x18, 8), size = rd(sh + 0x20, 8);
        if (off > MAX_IMAGE || size > MAX_IMAGE)
            return 0;
        if (off + size > end)
            end = off + size;
    }
    return end <= MAX_IMAGE ? (size_t)end : 0;
}

/* Bytes of the image at p (0: cannot tell, or too large). */
static size_t image_size(const void *image, const void **start) {
    const unsigned char *p = image;
    *start = image;
    if (rd(p, 4) == 0x466243b1u) { /* fatbin wrapper: {magic, version, data, filename} */
        const void *data;
        memcpy(&data, p + 8, sizeof(data));
        if (data == NULL)
            return 0;
        return image_size(data, start);
    }
    if (rd(p, 4) == 0xba55ed50u) { /* fatbin: magic, u16 version, u16 header size, u64 size */
        uint64_t n = rd(p + 6, 2) + rd(p + 8, 8);
        return n <= MAX_IMAGE ? (size_t)n : 0;
    }
    if (p[0] == 0x7f && p[1] == 'E' && p[2] == 'L' && p[3] == 'F')
        return elf_size(p);
    size_t n = strnlen(image, MAX_IMAGE); /* PTX text, with its NUL */
    return n < MAX_IMAGE ? n + 1 : 0;
}

static CUresult load(enum fxc_kind kind, void **out, const void *image) {
    CUresult rc = fxc_ready();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (out == NULL || image == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    const void *start;
    size_t n = image_size(image, &start);
    if (n == 0 || n > FX_R_MAX_PAYLOAD - sizeof(struct fx_rq_load))
        return CUDA_ERROR_INVALID_IMAGE;
    struct fxc_obj *o = fxc_obj_new(kind);
    if (o == NULL)
        return CUDA_ERROR_OUT_OF_MEMORY;
    o->ctx = fxc_ctx_current();
    struct fx_rq_load rq = {o->id, 0};
    uint16_t op = kind == FXC_MODULE ? FX_ROP_MODULE_LOAD_DATA : FX_ROP_LIBRARY_LOAD_DATA;
    rc = fxc_call(op, &rq, sizeof(rq), start, (uint32_t)n, NULL, 0, NULL);
    if (rc != CUDA_SUCCESS) {
        fxc_obj_drop(kind, o->id);
        return rc;
    }
    *out = fxc_handle(kind, o->id);
    return CUDA_SUCCESS;
}

FXC_EXPORT CUresult cuModuleLoadData(CUmodule *module, const void *image) {
    return load(FXC_MODULE, (void **)module, image);
}

/* JIT options steer the server's compiler; stage 1 does not forward them. */
FXC_EXPORT CUresult cuModuleLoadDataEx(CUmodule *module, const void *image, unsigned int numOptions,
                                       CUjit_option *options, void **optionValues) {
    (void)numOptions;
    (void)options;
    (void)optionValues;
    return load(FXC_MODULE, (void **)module, image);
}

FXC_EXPORT CUresult cuModuleLoadFatBinary(CUmodule *module, const void *fatCubin) {
    return load(FXC_MODULE, (void **)module, fatCubin);
}

/* The file is read here: the server has no access to this machine's files. */
FXC_EXPORT CUresult cuModuleLoad(CUmodule *module, const char *fname) {
    CUresult rc = fxc_ready();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (fname == NULL || module == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    FILE *f = fopen(fname, "rb");
    if (f == NULL)
        return CUDA_ERROR_FILE_NOT_FOUND;
    char *buf = NULL;
    long n = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
    if (n >= 0 && (size_t)n < MAX_IMAGE && fseek(f, 0, SEEK_SET) == 0 &&
        (buf = calloc(1, (size_t)n + 1)) != NULL && fread(buf, 1, (size_t)n, f) == (size_t)n)
        rc = load(FXC_MODULE, (void **)module, buf);
    else
        rc = CUDA_ERROR_FILE_NOT_FOUND;
    fclose(f);
    free(buf);
    return rc;
}

static CUresult unload(enum fxc_kind kind, const void *h) {
    CUresult rc = fxc_ready();
    if (rc != CUDA_SUCCESS)
        return rc;
    struct fxc_obj *o = fxc_obj_get(kind, h);
    if (o == NULL)
        return CUDA_ERROR_INVALID_HANDLE;
    struct fx_rq_id rq = {o->id, 0};
    uint16_t op = kind == FXC_MODULE ? FX_ROP_MODULE_UNLOAD : FX_ROP_LIBRARY_UNLOAD;
    rc = fxc_call(op, &rq, sizeof(rq), NULL, 0, NULL, 0, NULL);
    if (rc == CUDA_SUCCESS)
        fxc_obj_drop(kind, o->id);
    return rc;
}

FXC_EXPORT CUresult cuModuleUnload(CUmodule hmod) {
    return unload(FXC_MODULE, hmod);
}

FXC_EXPORT CUresult cuLibraryUnload(CUlibrary library) {
    return unload(FXC_LIBRARY, library);
}

/* JIT and library options are not forwarded (stage 1). */
FXC_EXPORT CUresult cuLibraryLoadData(CUlibrary *library, const void *code,
                                      CUjit_option *jitOptions, void **jitOptionsValues,
                                      unsigned int numJitOptions, CUlibraryOption *libraryOptions,
                                      void **libraryOptionValues, unsigned int numLibraryOptions) {
    (void)jitOptions, (void)jitOptionsValues, (void)numJitOptions;
    (void)libraryOptions, (void)libraryOptionValues, (void)numLibraryOptions;
    return load(FXC_LIBRARY, (void **)library, code);
}

/* ---- functions and kernels ---------------------------------------------------------------- */

/* Takes the parameter layout of a function or kernel reply into o. */
static CUresult take_params(struct fxc_obj *o, const uint32_t *rp, uint32_t got) {
    if (got < 4)
        return CUDA_ERROR_UNKNOWN;
    o->nparams = rp[0];
    if (o->nparams == FXC_PARAMS_UNKNOWN || o->nparams == 0)
        return CUDA_SUCCESS;
    if (o->nparams > FX_R_MAX_PARAMS || got < 4 + 8 * o->nparams)
        return CUDA_ERROR_UNKNOWN;
    o->poff = malloc(o->nparams * sizeof(uint32_t));
    o->psize = malloc(o->nparams * sizeof(uint32_t));
    if (o->poff == NULL || o->psize == NULL)
        return CUDA_ERROR_OUT_OF_MEMORY;
    for (uint32_t i = 0; i < o->nparams; i++) {
        o->poff[i] = rp[1 + 2 * i];
        o->psize[i] = rp[2 + 2 * i];
        if (o->poff[i] > 65536 || o->psize[i] > 65536)
            return CUDA_ERROR_UNKNOWN;
        if (o->poff[i] + o->psize[i] > o->argbytes)
            o->argbytes = o->poff[i] + o->psize[i];
    }
    return CUDA_SUCCESS;
}

static CUresult get_named(enum fxc_kind kind, enum fxc_kind parent_kind, void **out,
                          const void *parent, const char *name) {
    static uint32_t rp[1 + 2 * FX_R_MAX_PARAMS];
    static pthread_mutex_t rp_mu = PTHREAD_MUTEX_INITIALIZER;
    CUresult rc = fxc_ready();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (out == NULL || name == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    size_t len = strnlen(name, FX_R_MAX_NAME);
    if (len == FX_R_MAX_NAME)
        return CUDA_ERROR_INVALID_VALUE;
    struct fxc_obj *p = fxc_obj_get(parent_kind, parent);
    if (p == NULL)
        return CUDA_ERROR_INVALID_HANDLE;
    struct fxc_obj *o = fxc_obj_new(kind);
    if (o == NULL || (o->name = strdup(name)) == NULL) {
        if (o != NULL)
            fxc_obj_drop(kind, o->id);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    o->parent = p->id;
    o->ctx = fxc_ctx_current();
    struct fx_rq_name rq = {o->id, p->id};
    uint16_t op = kind == FXC_FUNC ? FX_ROP_MODULE_GET_FUNCTION : FX_ROP_LIBRARY_GET_KERNEL;
    uint32_t got = 0;
    pthread_mutex_lock(&rp_mu);
    rc = fxc_call(op, &rq, sizeof(rq), name, (uint32_t)len + 1, rp, sizeof(rp), &got);
    if (rc == CUDA_SUCCESS)
        rc = take_params(o, rp, got);
    pthread_mutex_unlock(&rp_mu);
    if (rc != CUDA_SUCCESS) {
        fxc_obj_drop(kind, o->id);
        return rc;
    }
    *out = fxc_handle(kind, o->id);
    return CUDA_SUCCESS;
}

FXC_EXPORT CUresult cuModuleGetFunction(CUfunction *hfunc, CUmodule hmod, const char *name) {
    return get_named(FXC_FUNC, FXC_MODULE, (void **)hfunc, hmod, name);
}

FXC_EXPORT CUresult cuLibraryGetKernel(CUkernel *pKernel, CUlibrary library, const char *name) {
    return get_named(FXC_KERNEL, FXC_LIBRARY, (void **)pKernel, library, name);
}

FXC_EXPORT CUresult cuKernelGetFunction(CUfunction *pFunc, CUkernel kernel) {
    CUresult rc = fxc_ready_out(pFunc);
    if (rc != CUDA_SUCCESS)
        return rc;
    struct fxc_obj *k = fxc_obj_get(FXC_KERNEL, kernel);
    if (k == NULL)
        return CUDA_ERROR_INVALID_HANDLE;
    struct fxc_obj *o = fxc_obj_new(FXC_FUNC);
    if (o == NULL)
        return CUDA_ERROR_OUT_OF_MEMORY;
    struct fx_rq_func rq = {.id = k->id, .kind = FX_RK_KERNEL, .arg0 = (int32_t)o->id};
    rc = fxc_call(FX_ROP_KERNEL_GET_FUNCTION, &rq, sizeof(rq), NULL, 0, NULL, 0, NULL);
    if (rc == CUDA_SUCCESS && k->name != NULL && (o->name = strdup(k->name)) == NULL)
        rc = CUDA_ERROR_OUT_OF_MEMORY;
    o->nparams = k->nparams;
    if (rc == CUDA_SUCCESS && k->nparams != FXC_PARAMS_UNKNOWN && k->nparams > 0) {
        o->poff = malloc(k->nparams * sizeof(uint32_t));
        o->psize = malloc(k->nparams * sizeof(uint32_t));
        if (o->poff == NULL || o->psize == NULL) {
            rc = CUDA_ERROR_OUT_OF_MEMORY;
        } else {
            memcpy(o->poff, k->poff, k->nparams * sizeof(uint32_t));
            memcpy(o->psize, k->psize, k->nparams * sizeof(uint32_t));
            o->argbytes = k->argbytes;
        }
    }
    if (rc != CUDA_SUCCESS) {
        fxc_obj_drop(FXC_FUNC, o->id);
        return rc;
    }
    *pFunc = fxc_handle(FXC_FUNC, o->id);
    return CUDA_SUCCESS;
}

/* A CUfunction, or a CUkernel passed as one (allowed since CUDA 12). */
static struct fxc_obj *callable(const void *f, uint32_t *kind) {
    struct fxc_obj *o = fxc_obj_get(FXC_FUNC, f);
    *kind = 0;
    if (o == NULL && (o = fxc_obj_get(FXC_KERNEL, f)) != NULL)
        *kind = FX_RK_KERNEL;
    return o;
}

FXC_EXPORT CUresult cuFuncGetParamInfo(CUfunction func, size_t paramIndex, size_t *paramOffset,
                                       size_t *paramSize) {
    uint32_t kind;
    CUresult rc = fxc_ready();
    if (rc != CUDA_SUCCESS)
        return rc;
    struct fxc_obj *o = callable(func, &kind);
    if (o == NULL)
        return CUDA_ERROR_INVALID_HANDLE;
    if (o->nparams == FXC_PARAMS_UNKNOWN)
        return CUDA_ERROR_NOT_SUPPORTED;
    if (paramIndex >= o->nparams || (paramOffset == NULL && paramSize == NULL))
        return CUDA_ERROR_INVALID_VALUE;
    if (paramOffset != NULL)
        *paramOffset = o->poff[paramIndex];
    if (paramSize != NULL)
        *paramSize = o->psize[paramIndex];
    return CUDA_SUCCESS;
}

FXC_EXPORT CUresult cuFuncGetName(const char **name, CUfunction hfunc) {
    uint32_t kind;
    CUresult rc = fxc_ready();
    if (rc != CUDA_SUCCESS)
        return rc;
    struct fxc_obj *o = callable(hfunc, &kind);
    if (name == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    if (o == NULL || o->name == NULL)
        return CUDA_ERROR_INVALID_HANDLE;
    *name = o->name;
    return CUDA_SUCCESS;
}

FXC_EXPORT CUresult cuModuleGetGlobal_v2(CUdeviceptr *dptr, size_t *bytes, CUmodule hmod,
                                         const char *name) {
    uint64_t rp[2] = {0, 0};
    CUresult rc = fxc_ready();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (name == NULL || strnlen(name, FX_R_MAX_NAME) == FX_R_MAX_NAME)
        return CUDA_ERROR_INVALID_VALUE;
    struct fxc_obj *m = fxc_obj_get(FXC_MODULE, hmod);
    if (m == NULL)
        return CUDA_ERROR_INVALID_HANDLE;
    struct fx_rq_name rq = {0, m->id};
    rc = fxc_call(FX_ROP_MODULE_GET_GLOBAL, &rq, sizeof(rq), name, (uint32_t)strlen(name) + 1, rp,
                  sizeof(rp), NULL);
    if (rc == CUDA_SUCCESS && dptr != NULL)
        *dptr = (CUdeviceptr)rp[0];
    if (rc == CUDA_SUCCESS && bytes != NULL)
        *bytes = (size_t)rp[1];
    return rc;
}

static CUresult func_call(uint16_t op, const void *f, struct fx_rq_func *rq, void *out,
                          uint32_t cap) {
    CUresult rc = fxc_ready();
    if (rc != CUDA_SUCCESS)
        return rc;
    struct fxc_obj *o = callable(f, &rq->kind);
    if (o == NULL)
        return CUDA_ERROR_INVALID_HANDLE;
    rq->id = o->id;
    if (op == FX_ROP_FUNC_SET_CACHE_CONFIG)
        return fxc_batch(op, rq, sizeof(*rq), NULL, 0);
    return fxc_call(op, rq, sizeof(*rq), NULL, 0, out, cap, NULL);
}

FXC_EXPORT CUresult cuFuncGetAttribute(int *pi, CUfunction_attribute attrib, CUfunction hfunc) {
    struct fx_rq_func rq = {.arg0 = attrib};
    int32_t v = 0;
    if (pi == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = func_call(FX_ROP_FUNC_GET_ATTRIBUTE, hfunc, &rq, &v, sizeof(v));
    if (rc == CUDA_SUCCESS)
        *pi = v;
    return rc;
}

FXC_EXPORT CUresult cuFuncSetAttribute(CUfunction hfunc, CUfunction_attribute attrib, int value) {
    struct fx_rq_func rq = {.arg0 = attrib, .arg1 = value};
    return func_call(FX_ROP_FUNC_SET_ATTRIBUTE, hfunc, &rq, NULL, 0);
}

FXC_EXPORT CUresult cuFuncSetCacheConfig(CUfunction hfunc, CUfunc_cache config) {
    struct fx_rq_func rq = {.arg0 = config};
    return func_call(FX_ROP_FUNC_SET_CACHE_CONFIG, hfunc, &rq, NULL, 0);
}

static CUresult blocks(int *numBlocks, CUfunction func, int blockSize, size_t smem,
                       unsigned flags) {
    struct fx_rq_func rq = {.arg0 = blockSize, .bytes = smem, .flags = flags};
    int32_t v = 0;
    if (numBlocks == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = func_call(FX_ROP_OCCUPANCY_BLOCKS, func, &rq, &v, sizeof(v));
    if (rc == CUDA_SUCCESS)
        *numBlocks = v;
    return rc;
}

FXC_EXPORT CUresult cuOccupancyMaxActiveBlocksPerMultiprocessor(int *numBlocks, CUfunction func,
                                                                int blockSize,
                                                                size_t dynamicSMemSize) {
    return blocks(numBlocks, func, blockSize, dynamicSMemSize, 0);
}

FXC_EXPORT CUresult cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(
    int *numBlocks, CUfunction func, int blockSize, size_t dynamicSMemSize, unsigned int flags) {
    return blocks(numBlocks, func, blockSize, dynamicSMemSize, flags);
}

/* A callback for the shared memory per block size would run on this side: not forwarded. */
static CUresult block_size(int *minGrid, int *blockSize, CUfunction func, CUoccupancyB2DSize cb,
                           size_t smem, int limit, unsigned flags) {
    struct fx_rq_func rq = {.arg1 = limit, .bytes = smem, .flags = flags};
    int32_t v[2] = {0, 0};
    if (minGrid == NULL || blockSize == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    if (cb != NULL)
        return CUDA_ERROR_NOT_SUPPORTED;
    CUresult rc = func_call(FX_ROP_OCCUPANCY_BLOCK_SIZE, func, &rq, v, sizeof(v));
    if (rc == CUDA_SUCCESS) {
        *minGrid = v[0];
        *blockSize = v[1];
    }
    return rc;
}

FXC_EXPORT CUresult cuOccupancyMaxPotentialBlockSize(int *minGridSize, int *blockSize,
                                                     CUfunction func, CUoccupancyB2DSize cb,
                                                     size_t dynamicSMemSize, int blockSizeLimit) {
    return block_size(minGridSize, blockSize, func, cb, dynamicSMemSize, blockSizeLimit, 0);
}

FXC_EXPORT CUresult cuOccupancyMaxPotentialBlockSizeWithFlags(int *minGridSize, int *blockSize,
                                                              CUfunction func,
                                                              CUoccupancyB2DSize cb,
                                                              size_t dynamicSMemSize,
                                                              int blockSizeLimit,
                                                              unsigned int flags) {
    return block_size(minGridSize, blockSize, func, cb, dynamicSMemSize, blockSizeLimit, flags);
}
