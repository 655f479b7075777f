/*
 * fake_cuda_ctx.c - simulated contexts (streams are in fake_cuda_exec.c).
 *
 * Like the real driver, each thread has a stack of current contexts; creating a context pushes
 * it, retaining a primary context does not. A context handle held by another thread may be
 * destroyed at any time, so every handle is checked against the registry (under the lock) before
 * it is dereferenced.
 */
#include <stdlib.h>

#include "fake_cuda_internal.h"

/* The real stack is unbounded; no program nests contexts this deep. */
#define CTX_STACK_MAX 64

static struct CUctx_st *ctx_registry; /* created (non-primary) contexts */

static _Thread_local struct CUctx_st *ctx_stack[CTX_STACK_MAX];
static _Thread_local int ctx_depth;

/* ---- helpers (lock held) ----------------------------------------------------------------- */

int fake_ctx_valid_locked(const struct CUctx_st *ctx) {
    if (ctx == NULL)
        return 0;
    for (int i = 0; i < fake_cuda_ndevices; i++)
        if (ctx == &fake_cuda_devices[i].primary)
            return ctx->retains > 0;
    for (const struct CUctx_st *c = ctx_registry; c != NULL; c = c->next)
        if (c == ctx)
            return 1;
    return 0;
}

CUresult fake_ctx_current_locked(struct CUctx_st **out) {
    struct CUctx_st *ctx = ctx_depth > 0 ? ctx_stack[ctx_depth - 1] : NULL;
    if (!fake_ctx_valid_locked(ctx)) /* destroyed by another thread while current here */
        return fake_grave_find_locked(ctx) ? CUDA_ERROR_CONTEXT_IS_DESTROYED
                                           : CUDA_ERROR_INVALID_CONTEXT;
    if (ctx->is_primary)
        ctx->active = 1; /* a reset primary context still retained is created again by use */
    *out = ctx;
    return CUDA_SUCCESS;
}

/* What dies with a context: its streams (their queued work still drains), events, modules and
 * memory. The handle itself is the caller's. */
static void ctx_release_resources_locked(struct CUctx_st *ctx) {
    fake_exec_release_ctx_locked(ctx);
    fake_event_release_ctx_locked(ctx);
    fake_launch_release_ctx_locked(ctx);
    fake_mem_release_ctx_locked(ctx);
}

/* Removes ctx from the calling thread's stack (other threads find out through validation). */
static void ctx_unstack(const struct CUctx_st *ctx) {
    int kept = 0;
    for (int i = 0; i < ctx_depth; i++)
        if (ctx_stack[i] != ctx)
            ctx_stack[kept++] = ctx_stack[i];
    ctx_depth = kept;
}

/* ---- context creation and destruction ---------------------------------------------------- */

static CUresult ctx_create(CUcontext *pctx, CUdevice dev) {
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (pctx == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    if (!fake_cuda_device_valid(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    if (ctx_depth == CTX_STACK_MAX)
        return CUDA_ERROR_UNKNOWN;
    struct CUctx_st *ctx = calloc(1, sizeof(*ctx));
    if (ctx == NULL)
        return CUDA_ERROR_OUT_OF_MEMORY;
    ctx->device = dev;
    pthread_mutex_lock(&fake_cuda_lock);
    ctx->next = ctx_registry;
    ctx_registry = ctx;
    pthread_mutex_unlock(&fake_cuda_lock);
    ctx_stack[ctx_depth++] = ctx;
    *pctx = ctx;
    return CUDA_SUCCESS;
}

/* Scheduling flags and execution-affinity parameters change nothing on the host. */
CUresult cuCtxCreate_v2(CUcontext *pctx, unsigned int flags, CUdevice dev) {
    (void)flags;
    return ctx_create(pctx, dev);
}

CUresult cuCtxCreate_v3(CUcontext *pctx, CUexecAffinityParam *paramsArray, int numParams,
                        unsigned int flags, CUdevice dev) {
    (void)flags;
    if (numParams < 0 || (numParams > 0 && paramsArray == NULL))
        return CUDA_ERROR_INVALID_VALUE;
    return ctx_create(pctx, dev);
}

CUresult cuCtxCreate_v4(CUcontext *pctx, CUctxCreateParams *ctxCreateParams, unsigned int flags,
                        CUdevice dev) {
    (void)ctxCreateParams;
    (void)flags;
    return ctx_create(pctx, dev);
}

CUresult cuCtxDestroy_v2(CUcontext ctx) {
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    pthread_mutex_lock(&fake_cuda_lock);
    struct CUctx_st **link = &ctx_registry;
    while (*link != NULL && *link != ctx)
        link = &(*link)->next;
    if (*link == NULL) {
        /* Unknown, already destroyed, or primary (which only Release/Reset may end). */
        rc = fake_stale_locked(ctx, CUDA_ERROR_INVALID_CONTEXT);
        pthread_mutex_unlock(&fake_cuda_lock);
        return rc;
    }
    *link = ctx->next;
    ctx_release_resources_locked(ctx);
    fake_grave_add_locked(ctx, "context", free); /* other threads may still name it */
    pthread_mutex_unlock(&fake_cuda_lock);
    ctx_unstack(ctx);
    return CUDA_SUCCESS;
}

/* ---- primary contexts -------------------------------------------------------------------- */

static CUresult primary_prologue(CUdevice dev) {
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    return fake_cuda_device_valid(dev) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_DEVICE;
}

CUresult cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev) {
    CUresult rc = primary_prologue(dev);
    if (rc != CUDA_SUCCESS)
        return rc;
    if (pctx == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&fake_cuda_lock);
    fake_cuda_devices[dev].primary.retains++;
    fake_cuda_devices[dev].primary.active = 1;
    pthread_mutex_unlock(&fake_cuda_lock);
    *pctx = &fake_cuda_devices[dev].primary;
    return CUDA_SUCCESS;
}

/* The last release deactivates the primary context and frees what it owned; the handle stays
 * the same for the next retain, as with the real driver. */
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev) {
    CUresult rc = primary_prologue(dev);
    if (rc != CUDA_SUCCESS)
        return rc;
    struct CUctx_st *primary = &fake_cuda_devices[dev].primary;
    pthread_mutex_lock(&fake_cuda_lock);
    if (primary->retains == 0) {
        rc = CUDA_ERROR_INVALID_CONTEXT;
    } else if (--primary->retains == 0) {
        ctx_release_resources_locked(primary);
        primary->active = 0;
    }
    pthread_mutex_unlock(&fake_cuda_lock);
    return rc;
}

/* Destroys the primary context and frees everything it owned (allocations, arrays, streams,
 * modules: their handles and pointers are invalid from now on). "Resetting the primary context
 * does not release it": retains are kept, and the next use creates the context again. */
CUresult cuDevicePrimaryCtxReset_v2(CUdevice dev) {
    CUresult rc = primary_prologue(dev);
    if (rc != CUDA_SUCCESS)
        return rc;
    pthread_mutex_lock(&fake_cuda_lock);
    ctx_release_resources_locked(&fake_cuda_devices[dev].primary);
    fake_cuda_devices[dev].primary.active = 0;
    pthread_mutex_unlock(&fake_cuda_lock);
    return CUDA_SUCCESS;
}

/* Flags are the defaults (cuDevicePrimaryCtxSetFlags is not simulated). */
CUresult cuDevicePrimaryCtxGetState(CUdevice dev, unsigned int *flags, int *active) {
    CUresult rc = primary_prologue(dev);
    if (rc != CUDA_SUCCESS)
        return rc;
    if (flags == NULL || active == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&fake_cuda_lock);
    *active = fake_cuda_devices[dev].primary.active;
    pthread_mutex_unlock(&fake_cuda_lock);
    *flags = 0;
    return CUDA_SUCCESS;
}

/* ---- the current-context stack ----------------------------------------------------------- */

static CUresult ctx_check(CUcontext ctx) {
    pthread_mutex_lock(&fake_cuda_lock);
    CUresult rc = fake_ctx_valid_locked(ctx) ? CUDA_SUCCESS
                                             : fake_stale_locked(ctx, CUDA_ERROR_INVALID_CONTEXT);
    pthread_mutex_unlock(&fake_cuda_lock);
    return rc;
}

/* Replaces the top of the stack; NULL unbinds (pops) it. */
CUresult cuCtxSetCurrent(CUcontext ctx) {
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (ctx == NULL) {
        if (ctx_depth > 0)
            ctx_depth--;
        return CUDA_SUCCESS;
    }
    rc = ctx_check(ctx);
    if (rc != CUDA_SUCCESS)
        return rc;
    if (ctx_depth == 0)
        ctx_depth = 1;
    ctx_stack[ctx_depth - 1] = ctx;
    return CUDA_SUCCESS;
}

CUresult cuCtxGetCurrent(CUcontext *pctx) {
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (pctx == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    *pctx = ctx_depth > 0 ? ctx_stack[ctx_depth - 1] : NULL;
    return CUDA_SUCCESS;
}

CUresult cuCtxPushCurrent_v2(CUcontext ctx) {
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    rc = ctx_check(ctx);
    if (rc != CUDA_SUCCESS)
        return rc;
    if (ctx_depth == CTX_STACK_MAX)
        return CUDA_ERROR_UNKNOWN;
    ctx_stack[ctx_depth++] = ctx;
    return CUDA_SUCCESS;
}

CUresult cuCtxPopCurrent_v2(CUcontext *pctx) {
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (ctx_depth == 0)
        return CUDA_ERROR_INVALID_CONTEXT;
    ctx_depth--;
    if (pctx != NULL)
        *pctx = ctx_stack[ctx_depth];
    return CUDA_SUCCESS;
}

CUresult cuCtxGetDevice(CUdevice *device) {
    struct CUctx_st *ctx;
    CUresult rc = fake_cuda_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (device == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&fake_cuda_lock);
    rc = fake_ctx_current_locked(&ctx);
    if (rc == CUDA_SUCCESS)
        *device = ctx->device;
    pthread_mutex_unlock(&fake_cuda_lock);
    return rc;
}

/* The hidden aliases of this file's entry points (fake_cuda.def). */
#define FAKE_IN_ctx(x) x
#include "fake_cuda_locals.h"
