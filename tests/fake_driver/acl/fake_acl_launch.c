/*
 * fake_acl_launch.c - the ways work is submitted to the stand-in libascendcl.so (see
 * fake_acl_internal.h): kernels (aclrtLaunchKernel, aclrtLaunchKernelV2 with its arguments in
 * device memory, aclrtLaunchKernelWithHostArgs with them in host memory,
 * aclrtLaunchKernelWithConfig with an argument list built by aclrtKernelArgsInit / Append /
 * Finalize), single operators (aclopExecuteV2) and offline models (aclmdlLoadFromMem, then
 * aclmdlExecute, which returns once the model has run, or aclmdlExecuteAsync on a stream) and
 * model run instances captured from a stream (aclmdlRICaptureBegin / End, aclmdlRIExecuteAsync:
 * the captured work's summed duration, as one piece).
 *
 * Simulated durations: a kernel named "sleep_us" lasts the microseconds in the first 4 bytes of
 * its arguments ("device" memory is host memory here); other kernels, every operator and every
 * model last FLEXAI_SIM_KERNEL_US. A model is whatever bytes were loaded (the stand-in does not
 * read them). Must never be mistaken for the real runtime.
 */
#include <stdlib.h>
#include <string.h>

#include "fake_acl_internal.h"

#define NEED_INIT()                                                                            \
    do {                                                                                       \
        if (!fake_acl_ready()) return ACL_ERROR_UNINITIALIZE;                                  \
    } while (0)

struct fake_fn {
    char name[64];
};

/* An argument list of aclrtKernelArgsInit (host memory, copied at each append). */
#define ARGS_MAX 1024
struct fake_args {
    const struct fake_fn *fn;
    size_t len;
    int final;
    unsigned char data[ARGS_MAX];
};

int64_t fake_acl_default_ns(void)
{
    const struct fake_config *cfg = fake_config_get();
    return cfg ? (int64_t)cfg->kernel_us * 1000 : 10000;
}

int64_t fake_acl_kernel_ns(const void *fn, const void *args, size_t size)
{
    const struct fake_fn *f = fn;
    if (strcmp(f->name, "sleep_us") == 0 && args && size >= 4) {
        uint32_t us;
        memcpy(&us, args, sizeof us);
        return (int64_t)us * 1000;
    }
    return fake_acl_default_ns();
}

FAKE_ACL_EXPORT aclError aclrtBinaryLoadFromData(const void *data, size_t length,
                                                 const aclrtBinaryLoadOptions *options,
                                                 aclrtBinHandle *binHandle)
{
    (void)options;
    NEED_INIT();
    if (!data || length == 0 || !binHandle) return ACL_ERROR_INVALID_PARAM;
    *binHandle = (aclrtBinHandle)data; /* the stand-in's kernels live in the runtime */
    return ACL_SUCCESS;
}

FAKE_ACL_EXPORT aclError aclrtBinaryGetFunction(const aclrtBinHandle binHandle,
                                                const char *kernelName,
                                                aclrtFuncHandle *funcHandle)
{
    NEED_INIT();
    if (!binHandle || !kernelName || !funcHandle || strlen(kernelName) >= 64)
        return ACL_ERROR_INVALID_PARAM;
    struct fake_fn *f = calloc(1, sizeof *f);
    if (!f) return ACL_ERROR_RT_MEMORY_ALLOCATION;
    strcpy(f->name, kernelName);
    *funcHandle = f;
    return ACL_SUCCESS;
}

/* ---- kernels ------------------------------------------------------------------------------ */

static aclError launch(aclrtFuncHandle fn, uint32_t numBlocks, const void *args, size_t size,
                       aclrtStream stream)
{
    NEED_INIT();
    if (!fn || numBlocks == 0) return ACL_ERROR_INVALID_PARAM;
    return fake_acl_queue_work(stream, fake_acl_kernel_ns(fn, args, size), NULL, 0);
}

FAKE_ACL_EXPORT aclError aclrtLaunchKernel(aclrtFuncHandle funcHandle, uint32_t numBlocks,
                                           const void *argsData, size_t argsSize,
                                           aclrtStream stream)
{
    return launch(funcHandle, numBlocks, argsData, argsSize, stream);
}

FAKE_ACL_EXPORT aclError aclrtLaunchKernelV2(aclrtFuncHandle funcHandle, uint32_t numBlocks,
                                             const void *argsData, size_t argsSize,
                                             aclrtLaunchKernelCfg *cfg, aclrtStream stream)
{
    (void)cfg; /* NULL or attributes the stand-in does not model */
    return launch(funcHandle, numBlocks, argsData, argsSize, stream);
}

FAKE_ACL_EXPORT aclError aclrtLaunchKernelWithHostArgs(aclrtFuncHandle funcHandle,
                                                       uint32_t numBlocks, aclrtStream stream,
                                                       aclrtLaunchKernelCfg *cfg, void *hostArgs,
                                                       size_t argsSize,
                                                       aclrtPlaceHolderInfo *placeHolderArray,
                                                       size_t placeHolderNum)
{
    (void)cfg;
    if (placeHolderNum && !placeHolderArray) return ACL_ERROR_INVALID_PARAM;
    return launch(funcHandle, numBlocks, hostArgs, argsSize, stream);
}

FAKE_ACL_EXPORT aclError aclrtKernelArgsInit(aclrtFuncHandle funcHandle,
                                             aclrtArgsHandle *argsHandle)
{
    NEED_INIT();
    if (!funcHandle || !argsHandle) return ACL_ERROR_INVALID_PARAM;
    struct fake_args *a = calloc(1, sizeof *a);
    if (!a) return ACL_ERROR_BAD_ALLOC;
    a->fn = funcHandle;
    *argsHandle = a;
    return ACL_SUCCESS;
}

FAKE_ACL_EXPORT aclError aclrtKernelArgsAppend(aclrtArgsHandle argsHandle, void *param,
                                               size_t paramSize, aclrtParamHandle *paramHandle)
{
    struct fake_args *a = argsHandle;
    NEED_INIT();
    if (!a || a->final || !param || !paramHandle || paramSize > ARGS_MAX - a->len)
        return ACL_ERROR_INVALID_PARAM;
    memcpy(a->data + a->len, param, paramSize);
    *paramHandle = a->data + a->len;
    a->len += paramSize;
    return ACL_SUCCESS;
}

FAKE_ACL_EXPORT aclError aclrtKernelArgsFinalize(aclrtArgsHandle argsHandle)
{
    struct fake_args *a = argsHandle;
    NEED_INIT();
    if (!a || a->final) return ACL_ERROR_INVALID_PARAM;
    a->final = 1;
    return ACL_SUCCESS;
}

FAKE_ACL_EXPORT aclError aclrtLaunchKernelWithConfig(aclrtFuncHandle funcHandle,
                                                     uint32_t numBlocks, aclrtStream stream,
                                                     aclrtLaunchKernelCfg *cfg,
                                                     aclrtArgsHandle argsHandle, void *reserve)
{
    const struct fake_args *a = argsHandle;
    (void)cfg;
    if (!a || !a->final || a->fn != funcHandle || reserve) return ACL_ERROR_INVALID_PARAM;
    return launch(funcHandle, numBlocks, a->data, a->len, stream);
}

/* ---- single operators and offline models -------------------------------------------------- */

FAKE_ACL_EXPORT aclError aclopExecuteV2(const char *opType, int numInputs,
                                        aclTensorDesc *inputDesc[], aclDataBuffer *inputs[],
                                        int numOutputs, aclTensorDesc *outputDesc[],
                                        aclDataBuffer *outputs[], aclopAttr *attr,
                                        aclrtStream stream)
{
    (void)inputDesc, (void)inputs, (void)outputDesc, (void)outputs, (void)attr;
    NEED_INIT();
    if (!opType || numInputs < 0 || numOutputs < 0) return ACL_ERROR_INVALID_PARAM;
    return fake_acl_queue_work(stream, fake_acl_default_ns(), NULL, 0);
}

#define MODELS_MAX 64
static int models[MODELS_MAX]; /* loaded: 1 (model ids are index + 1) */
static pthread_mutex_t models_mu = PTHREAD_MUTEX_INITIALIZER;

static int model_loaded(uint32_t id)
{
    pthread_mutex_lock(&models_mu);
    int ok = id >= 1 && id <= MODELS_MAX && models[id - 1];
    pthread_mutex_unlock(&models_mu);
    return ok;
}

FAKE_ACL_EXPORT aclError aclmdlLoadFromMem(const void *model, size_t modelSize,
                                           uint32_t *modelId)
{
    NEED_INIT();
    if (!model || modelSize == 0 || !modelId) return ACL_ERROR_INVALID_PARAM;
    if (fake_acl_current() < 0) return ACL_ERROR_RT_CONTEXT_NULL;
    pthread_mutex_lock(&models_mu);
    int i = 0;
    while (i < MODELS_MAX && models[i]) i++;
    if (i < MODELS_MAX) models[i] = 1;
    pthread_mutex_unlock(&models_mu);
    if (i == MODELS_MAX) return ACL_ERROR_BAD_ALLOC;
    *modelId = (uint32_t)i + 1;
    return ACL_SUCCESS;
}

FAKE_ACL_EXPORT aclError aclmdlUnload(uint32_t modelId)
{
    NEED_INIT();
    if (!model_loaded(modelId)) return ACL_ERROR_INVALID_PARAM;
    pthread_mutex_lock(&models_mu);
    models[modelId - 1] = 0;
    pthread_mutex_unlock(&models_mu);
    return ACL_SUCCESS;
}

/* Synchronous: the model runs on the device, the call returns when it is done. */
FAKE_ACL_EXPORT aclError aclmdlExecute(uint32_t modelId, const aclmdlDataset *input,
                                       aclmdlDataset *output)
{
    (void)input, (void)output;
    NEED_INIT();
    if (!model_loaded(modelId)) return ACL_ERROR_INVALID_PARAM;
    return fake_acl_queue_sync(fake_acl_default_ns());
}

FAKE_ACL_EXPORT aclError aclmdlExecuteAsync(uint32_t modelId, const aclmdlDataset *input,
                                            aclmdlDataset *output, aclrtStream stream)
{
    (void)input, (void)output;
    NEED_INIT();
    if (!model_loaded(modelId)) return ACL_ERROR_INVALID_PARAM;
    return fake_acl_queue_work(stream, fake_acl_default_ns(), NULL, 0);
}

/* ---- captured model run instances (aclmdlRI) ---------------------------------------------- */

FAKE_ACL_EXPORT aclError aclmdlRICaptureBegin(aclrtStream stream, aclmdlRICaptureMode mode)
{
    struct fake_model_ri *old;
    (void)mode;
    NEED_INIT();
    struct fake_model_ri *m = stream ? calloc(1, sizeof *m) : NULL;
    if (!m) return stream ? ACL_ERROR_BAD_ALLOC : ACL_ERROR_INVALID_PARAM;
    if (fake_acl_capture_swap(stream, m, &old) == 0) return ACL_SUCCESS;
    free(m); /* already capturing */
    return ACL_ERROR_INVALID_PARAM;
}

FAKE_ACL_EXPORT aclError aclmdlRICaptureEnd(aclrtStream stream, aclmdlRI *modelRI)
{
    struct fake_model_ri *m = NULL;
    NEED_INIT();
    if (!modelRI || fake_acl_capture_swap(stream, NULL, &m) != 0) return ACL_ERROR_INVALID_PARAM;
    *modelRI = m;
    return ACL_SUCCESS;
}

FAKE_ACL_EXPORT aclError aclmdlRICaptureGetInfo(aclrtStream stream, aclmdlRICaptureStatus *status,
                                                aclmdlRI *modelRI)
{
    NEED_INIT();
    if (!status) return ACL_ERROR_INVALID_PARAM;
    struct fake_model_ri *m = fake_acl_capturing(stream);
    *status = m ? ACL_MODEL_RI_CAPTURE_STATUS_ACTIVE : ACL_MODEL_RI_CAPTURE_STATUS_NONE;
    if (modelRI) *modelRI = m;
    return ACL_SUCCESS;
}

FAKE_ACL_EXPORT aclError aclmdlRIExecuteAsync(aclmdlRI modelRI, aclrtStream stream)
{
    const struct fake_model_ri *m = modelRI;
    if (!m) return ACL_ERROR_INVALID_PARAM;
    return fake_acl_queue_work(stream, m->ns, NULL, 0);
}

FAKE_ACL_EXPORT aclError aclmdlRIDestroy(aclmdlRI modelRI)
{
    if (!modelRI) return ACL_ERROR_INVALID_PARAM;
    free(modelRI);
    return ACL_SUCCESS;
}
