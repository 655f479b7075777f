/* acl_hook_ctx.c - devices and contexts on Ascend NPUs: joining the slice (aclInit), the memory a
 * process costs by using a device, and the teardowns that free memory behind the program's back,
 * whose charges must then go back (the twin of the context hooks of cuda/hook_mem.c).
 *
 * What the runtime documents (CANN application development, runtime API reference):
 *   - a context is a container that "manages the lifetime of its objects (streams, events,
 *     device memory)" (guide, "Concepts");
 *   - aclrtSetDevice creates the device's default context at the process's first call and
 *     counts calls; aclrtResetDevice counts down, and the reset that reaches zero releases the
 *     device's resources (its default context, streams); aclrtResetDeviceForce releases them
 *     whatever the count;
 *   - aclrtCreateContext makes an explicit context (and the thread's current one);
 *     aclrtDestroyContext releases it and its resources.
 * So each allocation is remembered with its owner, the context current when it was made
 * (acl_hook_mem.c), and a teardown marks the owner's entries, lets the runtime free them, then
 * gives their charges back (or keeps them when the call failed), exactly as cuCtxDestroy does.
 *
 * The device's own memory (FLEXAI_CONTEXT_MEMORY) is charged at the process's first
 * aclrtSetDevice or aclrtCreateContext of it and given back when the default context goes. An
 * explicit context is not charged memory of its own (none is documented); one made without any
 * aclrtSetDevice keeps the device's charge until the process exits. Wrappers only: the
 * bookkeeping is the core's (charge.h, track.h, gate.h).
 */
#include "acl_shim.h"
#include "charge.h"
#include "gate.h"
#include "track.h"

FX_EXPORT aclError aclInit(const char *configPath)
{
    FX_ACL_ENTER(aclInit);
    aclError rc = fx_acl.aclInit(configPath);
    if (rc == ACL_SUCCESS || rc == ACL_ERROR_REPEAT_INITIALIZE)
        fx_attach(1); /* map the NPUs, join the slice */
    return rc;
}

uint64_t fx_acl_owner_current(void)
{
    aclrtContext c = NULL;
    if (!fx_acl.aclrtGetCurrentContext || fx_acl.aclrtGetCurrentContext(&c) != ACL_SUCCESS)
        return 0;
    return (uint64_t)(uintptr_t)c;
}

/* A teardown of `owner` (0: unknown, nothing tracked under it) around the runtime's call:
 * mark, call, then forget and give back what it freed, or keep it. `gate_ctx` is the gate's
 * name of the context (its events die with it). */
static void fx_teardown_begin(uint64_t owner, fx_ctx_t gate_ctx)
{
    if (owner) fx_track_owner_mark(owner);
    if (gate_ctx) fx_gate_forget_context(gate_ctx, 1);
}

static void fx_teardown_end(uint64_t owner, int ended)
{
    if (!owner) return;
    if (!ended) {
        fx_track_owner_keep(owner);
        return;
    }
    uint64_t freed[FLEXAI_MAX_DEVICES] = {0};
    fx_track_owner_forget(owner, freed);
    for (uint32_t d = 0; d < FLEXAI_MAX_DEVICES; d++)
        if (freed[d]) fx_release(d, freed[d]);
}

/* ---- the default context: aclrtSetDevice / aclrtResetDevice ------------------------------- */

/* Per user ordinal: aclrtSetDevice calls a reset has not undone yet (the runtime counts them
 * too), and the default context they share (0: unknown). */
static int fx_set_count[FLEXAI_MAX_DEVICES];
static uint64_t fx_default_owner[FLEXAI_MAX_DEVICES];

static int fx_ordinal_ok(int32_t d)
{
    return d >= 0 && d < FLEXAI_MAX_DEVICES;
}

FX_EXPORT aclError aclrtSetDevice(int32_t deviceId)
{
    uint32_t charged;
    FX_ACL_ENTER(aclrtSetDevice);
    int32_t st = fx_overhead_charge(fx_dev_of_ordinal(deviceId), &charged);
    if (st != FLEXAI_OK) return fx_acl_error(st);
    aclError rc = fx_acl.aclrtSetDevice(deviceId);
    if (rc != ACL_SUCCESS) {
        fx_overhead_undo(charged);
    } else if (fx_ordinal_ok(deviceId)) {
        __atomic_add_fetch(&fx_set_count[deviceId], 1, __ATOMIC_ACQ_REL);
        /* the thread now uses the device's default context */
        uint64_t owner = fx_acl_owner_current();
        if (owner) __atomic_store_n(&fx_default_owner[deviceId], owner, __ATOMIC_RELEASE);
    }
    return rc;
}

/* One reset (force: every aclrtSetDevice at once). The one that ends the default context takes
 * its memory, its streams and the gate's events in it. */
static aclError fx_reset(int32_t d, int force)
{
    int known = fx_ordinal_ok(d);
    int count = known ? __atomic_load_n(&fx_set_count[d], __ATOMIC_ACQUIRE) : 0;
    int last = count > 0 && (force || count == 1);
    uint64_t owner = last ? __atomic_load_n(&fx_default_owner[d], __ATOMIC_ACQUIRE) : 0;
    /* without the runtime's context handle the gate named the context by its ordinal */
    fx_ctx_t gate_ctx = owner ? (fx_ctx_t)(uintptr_t)owner : (fx_ctx_t)(uintptr_t)(d + 1);
    if (last) fx_teardown_begin(owner, gate_ctx);
    aclError rc = force ? fx_acl.aclrtResetDeviceForce(d) : fx_acl.aclrtResetDevice(d);
    int ended = 0;
    if (rc == ACL_SUCCESS && known) {
        int left = force ? 0 : __atomic_sub_fetch(&fx_set_count[d], 1, __ATOMIC_ACQ_REL);
        if (left <= 0) {
            __atomic_store_n(&fx_set_count[d], 0, __ATOMIC_RELEASE);
            __atomic_store_n(&fx_default_owner[d], 0, __ATOMIC_RELEASE);
            ended = 1;
        }
    }
    if (last) fx_teardown_end(owner, ended);
    if (ended) fx_overhead_release(fx_dev_of_ordinal(d));
    return rc;
}

FX_EXPORT aclError aclrtResetDevice(int32_t deviceId)
{
    FX_ACL_ENTER(aclrtResetDevice);
    return fx_reset(deviceId, 0);
}

FX_EXPORT aclError aclrtResetDeviceForce(int32_t deviceId)
{
    FX_ACL_ENTER(aclrtResetDeviceForce);
    return fx_reset(deviceId, 1);
}

/* ---- explicit contexts -------------------------------------------------------------------- */

FX_EXPORT aclError aclrtCreateContext(aclrtContext *context, int32_t deviceId)
{
    uint32_t charged;
    FX_ACL_ENTER(aclrtCreateContext);
    /* a process's first use of the device may be here (no aclrtSetDevice): its memory */
    int32_t st = fx_overhead_charge(fx_dev_of_ordinal(deviceId), &charged);
    if (st != FLEXAI_OK) return fx_acl_error(st);
    aclError rc = fx_acl.aclrtCreateContext(context, deviceId);
    if (rc != ACL_SUCCESS) fx_overhead_undo(charged);
    return rc;
}

FX_EXPORT aclError aclrtDestroyContext(aclrtContext context)
{
    FX_ACL_ENTER(aclrtDestroyContext);
    uint64_t owner = (uint64_t)(uintptr_t)context;
    fx_teardown_begin(owner, context);
    aclError rc = fx_acl.aclrtDestroyContext(context);
    fx_teardown_end(owner, rc == ACL_SUCCESS);
    return rc;
}
