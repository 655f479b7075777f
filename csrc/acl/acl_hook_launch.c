/* acl_hook_launch.c - every way work reaches an NPU through ACL passes the compute gate
 * (core/gate.c), as CUDA launches do: kernels (aclrtLaunchKernel, aclrtLaunchKernelV2,
 * aclrtLaunchKernelWithConfig, aclrtLaunchKernelWithHostArgs), single operators
 * (aclopExecuteV2), aclnn operators (the second phase, aclnnXxx after aclnnXxxGetWorkspaceSize:
 * the first phase only sizes the workspace and queues nothing) and models: offline models
 * (aclmdlExecuteAsync on a stream; aclmdlExecute, synchronous, is a launch on the current
 * context's default stream followed by a wait: the gate counts it before and marks it after,
 * when it is done) and captured ones (aclmdlRIExecuteAsync). A model is many kernels: the gate
 * estimates it as a graph (FX_WORK_GRAPH), apart from single kernels. Wrappers only: which
 * stream, what kind of work.
 *
 * aclnn operators are hundreds of functions in libopapi.so with one signature (workspace, its
 * size, the executor, the stream). Those in acl_hooks.def are exported by name for programs
 * linked against libopapi.so; any other is wrapped when a program looks it up with dlsym
 * (torch_npu does): the lookup gets one of FX_ACLNN_SLOTS prepared thunks, bound to that name,
 * whose real function is the one the program's own dlsym found. Names that are not operators
 * (the first phase, aclnnInit/Finalize, getters and setters) are never wrapped. When every slot
 * is taken, further operators are handed out unwrapped, with one error line: their work then
 * bypasses the compute share (memory quotas still hold).
 */
#include <pthread.h>
#include <string.h>

#include "acl_shim.h"
#include "gate.h"
#include "log.h"

/* One launch through the gate; `real` is called between enter and leave (unlocked). */
#define FX_ACL_LAUNCH_KIND(stream, call, kind)                                                 \
    int32_t st_;                                                                               \
    struct fx_gate *gate_ = fx_gate_enter((stream), 0u, &st_);                                 \
    if (st_ != FLEXAI_OK) return fx_acl_error(st_);                                            \
    aclError rc = (call);                                                                      \
    fx_gate_leave(gate_, rc == ACL_SUCCESS, (stream), 0u, (kind));                             \
    return rc
#define FX_ACL_LAUNCH(stream, call) FX_ACL_LAUNCH_KIND(stream, call, FX_WORK_KERNEL)

FX_EXPORT aclError aclrtLaunchKernel(aclrtFuncHandle funcHandle, uint32_t numBlocks,
                                     const void *argsData, size_t argsSize, aclrtStream stream)
{
    FX_ACL_ENTER(aclrtLaunchKernel);
    FX_ACL_LAUNCH(stream, fx_acl.aclrtLaunchKernel(funcHandle, numBlocks, argsData, argsSize,
                                                    stream));
}

FX_EXPORT aclError aclrtLaunchKernelV2(aclrtFuncHandle funcHandle, uint32_t numBlocks,
                                       const void *argsData, size_t argsSize,
                                       aclrtLaunchKernelCfg *cfg, aclrtStream stream)
{
    FX_ACL_ENTER(aclrtLaunchKernelV2);
    FX_ACL_LAUNCH(stream, fx_acl.aclrtLaunchKernelV2(funcHandle, numBlocks, argsData, argsSize,
                                                      cfg, stream));
}

FX_EXPORT aclError aclrtLaunchKernelWithConfig(aclrtFuncHandle funcHandle, uint32_t numBlocks,
                                               aclrtStream stream, aclrtLaunchKernelCfg *cfg,
                                               aclrtArgsHandle argsHandle, void *reserve)
{
    FX_ACL_ENTER(aclrtLaunchKernelWithConfig);
    FX_ACL_LAUNCH(stream, fx_acl.aclrtLaunchKernelWithConfig(funcHandle, numBlocks, stream, cfg,
                                                              argsHandle, reserve));
}

FX_EXPORT aclError aclrtLaunchKernelWithHostArgs(aclrtFuncHandle funcHandle, uint32_t numBlocks,
                                                 aclrtStream stream, aclrtLaunchKernelCfg *cfg,
                                                 void *hostArgs, size_t argsSize,
                                                 aclrtPlaceHolderInfo *placeHolderArray,
                                                 size_t placeHolderNum)
{
    FX_ACL_ENTER(aclrtLaunchKernelWithHostArgs);
    FX_ACL_LAUNCH(stream, fx_acl.aclrtLaunchKernelWithHostArgs(funcHandle, numBlocks, stream, cfg,
                                                                hostArgs, argsSize,
                                                                placeHolderArray,
                                                                placeHolderNum));
}

/* Synchronous: counted on the default stream of the current context, marked once it returned
 * (its work is then done: the mark's time is the model's). */
FX_EXPORT aclError aclmdlExecute(uint32_t modelId, const aclmdlDataset *input,
                                 aclmdlDataset *output)
{
    FX_ACL_ENTER(aclmdlExecute);
    FX_ACL_LAUNCH_KIND(NULL, fx_acl.aclmdlExecute(modelId, input, output), FX_WORK_GRAPH);
}

FX_EXPORT aclError aclmdlExecuteAsync(uint32_t modelId, const aclmdlDataset *input,
                                      aclmdlDataset *output, aclrtStream stream)
{
    FX_ACL_ENTER(aclmdlExecuteAsync);
    FX_ACL_LAUNCH_KIND(stream, fx_acl.aclmdlExecuteAsync(modelId, input, output, stream),
                       FX_WORK_GRAPH);
}

FX_EXPORT aclError aclmdlRIExecuteAsync(aclmdlRI modelRI, aclrtStream stream)
{
    FX_ACL_ENTER(aclmdlRIExecuteAsync);
    FX_ACL_LAUNCH_KIND(stream, fx_acl.aclmdlRIExecuteAsync(modelRI, stream), FX_WORK_GRAPH);
}

FX_EXPORT aclError aclopExecuteV2(const char *opType, int numInputs, aclTensorDesc *inputDesc[],
                                  aclDataBuffer *inputs[], int numOutputs,
                                  aclTensorDesc *outputDesc[], aclDataBuffer *outputs[],
                                  aclopAttr *attr, aclrtStream stream)
{
    FX_ACL_ENTER(aclopExecuteV2);
    FX_ACL_LAUNCH(stream, fx_acl.aclopExecuteV2(opType, numInputs, inputDesc, inputs, numOutputs,
                                                 outputDesc, outputs, attr, stream));
}

/* A stream going away: the gate closes what it knows of it with a mark first. */
FX_EXPORT aclError aclrtDestroyStream(aclrtStream stream)
{
    FX_ACL_ENTER(aclrtDestroyStream);
    if (stream) fx_gate_forget_queue(stream);
    return fx_acl.aclrtDestroyStream(stream);
}

/* ---- aclnn operators ---------------------------------------------------------------------- */

/* The second phase of an operator whose real function is `real` (NULL: not found). */
static aclnnStatus fx_aclnn_run(fx_aclnn_run_fn real, void *ws, uint64_t ws_size,
                                aclOpExecutor *ex, aclrtStream stream)
{
    if (fx_acl_init() != 0) return fx_acl_unusable();
    if (!real) return ACL_ERROR_API_NOT_SUPPORT;
    FX_ACL_LAUNCH(stream, real(ws, ws_size, ex, stream));
}

FX_EXPORT aclnnStatus aclnnInplaceZero(void *workspace, uint64_t workspaceSize,
                                       aclOpExecutor *executor, aclrtStream stream)
{
    fx_acl_init(); /* resolves the real one (from FLEXAI_LIBOPAPI) unless a lookup found it */
    fx_aclnn_run_fn real = __atomic_load_n(&fx_acl.aclnnInplaceZero, __ATOMIC_ACQUIRE);
    return fx_aclnn_run(real, workspace, workspaceSize, executor, stream);
}

/* On-demand wrappers: slot i's thunk runs slot i's real function through the gate. */
#define FX_ACLNN_SLOTS 1024
#define FX_ACLNN_NAME 128

struct fx_aclnn_slot {
    char name[FX_ACLNN_NAME];
    void *real; /* stored by the dlsym hook (late) */
    struct fx_hook hook;
};

static struct fx_aclnn_slot fx_slots[FX_ACLNN_SLOTS];
static unsigned fx_nslots; /* slots in use; written under fx_slots_mu, read with acquire */
static pthread_mutex_t fx_slots_mu = PTHREAD_MUTEX_INITIALIZER;

static aclnnStatus fx_aclnn_slot_run(unsigned i, void *ws, uint64_t n, aclOpExecutor *ex,
                                     aclrtStream s)
{
    void *p = __atomic_load_n(&fx_slots[i].real, __ATOMIC_ACQUIRE);
    fx_aclnn_run_fn real;
    memcpy(&real, &p, sizeof real);
    return fx_aclnn_run(real, ws, n, ex, s);
}

/* 1024 thunks, numbered in base 4 (a..e: the digits), and their table in the same order. */
#define FX_THUNK(a, b, c, d, e)                                                                \
    static aclnnStatus fx_thunk_##a##b##c##d##e(void *w, uint64_t n, aclOpExecutor *x,         \
                                                aclrtStream s)                                 \
    {                                                                                          \
        return fx_aclnn_slot_run(a * 256u + b * 64u + c * 16u + d * 4u + e, w, n, x, s);       \
    }
#define FX_THUNK_REF(a, b, c, d, e) fx_thunk_##a##b##c##d##e,
#define FX_T4(X, a, b, c, d) X(a, b, c, d, 0) X(a, b, c, d, 1) X(a, b, c, d, 2) X(a, b, c, d, 3)
#define FX_T16(X, a, b, c) FX_T4(X, a, b, c, 0) FX_T4(X, a, b, c, 1) FX_T4(X, a, b, c, 2)       \
    FX_T4(X, a, b, c, 3)
#define FX_T64(X, a, b) FX_T16(X, a, b, 0) FX_T16(X, a, b, 1) FX_T16(X, a, b, 2)                 \
    FX_T16(X, a, b, 3)
#define FX_T256(X, a) FX_T64(X, a, 0) FX_T64(X, a, 1) FX_T64(X, a, 2) FX_T64(X, a, 3)
#define FX_T1024(X) FX_T256(X, 0) FX_T256(X, 1) FX_T256(X, 2) FX_T256(X, 3)

FX_T1024(FX_THUNK)
static const fx_aclnn_run_fn fx_thunks[FX_ACLNN_SLOTS] = {FX_T1024(FX_THUNK_REF)};

static int fx_ends_with(const char *s, size_t n, const char *suffix)
{
    size_t k = strlen(suffix);
    return n >= k && memcmp(s + n - k, suffix, k) == 0;
}

/* Whether `name` is an operator's second phase: aclnn + an upper-case letter, not a first
 * phase, not one of the library's own calls. */
static int fx_aclnn_is_operator(const char *name, size_t n)
{
    static const char *const not_ops[] = {"aclnnInit", "aclnnFinalize", "aclnnGet", "aclnnSet",
                                          "aclnnCreate", "aclnnDestroy", "aclnnRelease"};
    if (n < 6 || n >= FX_ACLNN_NAME || strncmp(name, "aclnn", 5) != 0) return 0;
    if (name[5] < 'A' || name[5] > 'Z') return 0;
    if (fx_ends_with(name, n, "GetWorkspaceSize")) return 0;
    for (size_t i = 0; i < sizeof not_ops / sizeof not_ops[0]; i++)
        if (strncmp(name, not_ops[i], strlen(not_ops[i])) == 0) return 0;
    return 1;
}

const struct fx_hook *fx_aclnn_hook_for(const char *name)
{
    size_t n = strlen(name);
    if (!fx_aclnn_is_operator(name, n)) return NULL;
    unsigned used = __atomic_load_n(&fx_nslots, __ATOMIC_ACQUIRE);
    for (unsigned i = 0; i < used; i++)
        if (strcmp(fx_slots[i].name, name) == 0) return &fx_slots[i].hook;
    pthread_mutex_lock(&fx_slots_mu);
    const struct fx_hook *h = NULL;
    used = fx_nslots;
    for (unsigned i = 0; i < used && !h; i++)
        if (strcmp(fx_slots[i].name, name) == 0) h = &fx_slots[i].hook;
    if (!h && used < FX_ACLNN_SLOTS) {
        struct fx_aclnn_slot *s = &fx_slots[used];
        memcpy(s->name, name, n + 1);
        void *thunk;
        memcpy(&thunk, &fx_thunks[used], sizeof thunk);
        s->hook = (struct fx_hook){s->name, thunk, &s->real, s->name, 0, 1};
        __atomic_store_n(&fx_nslots, used + 1, __ATOMIC_RELEASE);
        h = &s->hook;
    } else if (!h) {
        static int told;
        if (!__atomic_exchange_n(&told, 1, __ATOMIC_RELAXED))
            FX_ERROR("more than %d aclnn operators looked up: %s and later ones run outside "
                     "the compute share", FX_ACLNN_SLOTS, name);
    }
    pthread_mutex_unlock(&fx_slots_mu);
    return h;
}
