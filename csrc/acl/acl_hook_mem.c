/* acl_hook_mem.c - device memory on Ascend NPUs: every allocation path of ACL is charged to the
 * slice before the runtime is asked (racing processes cannot overshoot together) and given back
 * exactly on free; aclrtGetMemInfo reports the quota. Wrappers only: the bookkeeping is the
 * core's (charge.h), the sizes the runtime's documented rules (acl_sizes.h).
 *
 * The virtual-memory family: aclrtReserveMemAddress only reserves addresses and aclrtMapMem only
 * maps physical memory already charged, so the charge is at aclrtMallocPhysical and goes back at
 * aclrtFreePhysical (which the runtime only allows once the memory is unmapped). Neither
 * aclrtResetDevice nor anything else frees memory behind the program's back here: what is not
 * freed stays charged until the process exits (more, never less, than the device holds).
 * Using a device costs its default context's memory (FLEXAI_CONTEXT_MEMORY), charged at the
 * process's first aclrtSetDevice of it and given back at its last aclrtResetDevice.
 */
#include "acl_shim.h"
#include "acl_sizes.h"
#include "charge.h"
#include "gate.h"
#include "track.h"

/* ---- initialization and devices ---------------------------------------------------------- */

FX_EXPORT aclError aclInit(const char *configPath)
{
    FX_ACL_ENTER(aclInit);
    aclError rc = fx_acl.aclInit(configPath);
    if (rc == ACL_SUCCESS || rc == ACL_ERROR_REPEAT_INITIALIZE)
        fx_attach(1); /* map the NPUs, join the slice */
    return rc;
}

/* aclrtSetDevice calls per ordinal that a reset has not undone yet (the runtime counts them
 * too: the last reset releases the device). */
static int fx_set_count[FLEXAI_MAX_DEVICES];

FX_EXPORT aclError aclrtSetDevice(int32_t deviceId)
{
    uint32_t charged;
    FX_ACL_ENTER(aclrtSetDevice);
    int32_t st = fx_overhead_charge(fx_dev_of_ordinal(deviceId), &charged);
    if (st != FLEXAI_OK) return fx_acl_error(st);
    aclError rc = fx_acl.aclrtSetDevice(deviceId);
    if (rc != ACL_SUCCESS) fx_overhead_undo(charged);
    else if (deviceId >= 0 && deviceId < FLEXAI_MAX_DEVICES)
        __atomic_add_fetch(&fx_set_count[deviceId], 1, __ATOMIC_ACQ_REL);
    return rc;
}

FX_EXPORT aclError aclrtResetDevice(int32_t deviceId)
{
    FX_ACL_ENTER(aclrtResetDevice);
    int last = deviceId >= 0 && deviceId < FLEXAI_MAX_DEVICES &&
               __atomic_load_n(&fx_set_count[deviceId], __ATOMIC_ACQUIRE) == 1;
    /* the device's default context goes with the last reset, the gate's events in it */
    if (last) fx_gate_forget_context((fx_ctx_t)(uintptr_t)(deviceId + 1), 1);
    aclError rc = fx_acl.aclrtResetDevice(deviceId);
    if (rc == ACL_SUCCESS && deviceId >= 0 && deviceId < FLEXAI_MAX_DEVICES &&
        __atomic_sub_fetch(&fx_set_count[deviceId], 1, __ATOMIC_ACQ_REL) <= 0) {
        __atomic_store_n(&fx_set_count[deviceId], 0, __ATOMIC_RELEASE);
        fx_overhead_release(fx_dev_of_ordinal(deviceId));
    }
    return rc;
}

/* ---- linear allocations ------------------------------------------------------------------- */

/* Reserve, ask the runtime, settle: one path for the four malloc calls. */
#define FX_ACL_ALLOC(fn, bytes, call_args)                                                     \
    FX_ACL_ENTER(fn);                                                                          \
    uint32_t dev = fx_current_dev();                                                           \
    uint64_t charge = (bytes);                                                                 \
    int32_t st = fx_reserve_retry(dev, charge);                                                \
    if (st != FLEXAI_OK) return fx_acl_error(st);                                              \
    aclError rc = fx_acl.fn call_args;                                                         \
    fx_alloc_done(rc == ACL_SUCCESS && devPtr, FX_T_PTR,                                       \
                  rc == ACL_SUCCESS && devPtr ? (uint64_t)(uintptr_t)*devPtr : 0, charge, dev, \
                  0);                                                                          \
    return rc

FX_EXPORT aclError aclrtMalloc(void **devPtr, size_t size, aclrtMemMallocPolicy policy)
{
    FX_ACL_ALLOC(aclrtMalloc, fx_acl_alloc_bytes(size, (unsigned)policy, 0),
                 (devPtr, size, policy));
}

FX_EXPORT aclError aclrtMallocAlign32(void **devPtr, size_t size, aclrtMemMallocPolicy policy)
{
    FX_ACL_ALLOC(aclrtMallocAlign32, fx_acl_alloc_bytes(size, (unsigned)policy, 1),
                 (devPtr, size, policy));
}

FX_EXPORT aclError aclrtMallocCached(void **devPtr, size_t size, aclrtMemMallocPolicy policy)
{
    FX_ACL_ALLOC(aclrtMallocCached, fx_acl_alloc_bytes(size, (unsigned)policy, 0),
                 (devPtr, size, policy));
}

FX_EXPORT aclError aclrtMallocWithCfg(void **devPtr, size_t size, aclrtMemMallocPolicy policy,
                                      aclrtMallocConfig *cfg)
{
    FX_ACL_ALLOC(aclrtMallocWithCfg, fx_acl_alloc_bytes(size, (unsigned)policy, 0),
                 (devPtr, size, policy, cfg));
}

FX_EXPORT aclError aclrtFree(void *devPtr)
{
    FX_ACL_ENTER(aclrtFree);
    uint64_t key = (uint64_t)(uintptr_t)devPtr;
    struct fx_taken t = fx_free_begin(FX_T_PTR, key);
    aclError rc = fx_acl.aclrtFree(devPtr);
    fx_free_end(rc == ACL_SUCCESS, FX_T_PTR, key, t);
    return rc;
}

/* ---- physical memory (the virtual-memory family) ----------------------------------------- */

FX_EXPORT aclError aclrtMallocPhysical(aclrtDrvMemHandle *handle, size_t size,
                                       const aclrtPhysicalMemProp *prop, uint64_t flags)
{
    FX_ACL_ENTER(aclrtMallocPhysical);
    uint32_t dev = FX_NONE; /* host memory (or no properties): not the device's */
    if (prop && prop->location.type == ACL_MEM_LOCATION_TYPE_DEVICE)
        dev = fx_dev_of_ordinal((int)prop->location.id);
    int32_t st = fx_reserve_retry(dev, size);
    if (st != FLEXAI_OK) return fx_acl_error(st);
    aclError rc = fx_acl.aclrtMallocPhysical(handle, size, prop, flags);
    int ok = rc == ACL_SUCCESS && handle;
    fx_alloc_done(ok, FX_T_VMM, ok ? (uint64_t)(uintptr_t)*handle : 0, size, dev, 0);
    return rc;
}

FX_EXPORT aclError aclrtFreePhysical(aclrtDrvMemHandle handle)
{
    FX_ACL_ENTER(aclrtFreePhysical);
    uint64_t key = (uint64_t)(uintptr_t)handle;
    struct fx_taken t = fx_free_begin(FX_T_VMM, key);
    aclError rc = fx_acl.aclrtFreePhysical(handle);
    fx_free_end(rc == ACL_SUCCESS, FX_T_VMM, key, t);
    return rc;
}

/* ---- queries ------------------------------------------------------------------------------ */

FX_EXPORT aclError aclrtGetMemInfo(aclrtMemAttr attr, size_t *free_bytes, size_t *total_bytes)
{
    uint64_t limit, used;
    FX_ACL_ENTER(aclrtGetMemInfo);
    aclError rc = fx_acl.aclrtGetMemInfo(attr, free_bytes, total_bytes);
    if (rc == ACL_SUCCESS && free_bytes && total_bytes &&
        fx_quota(fx_current_dev(), &limit, &used)) {
        /* the quota's room, never more than the device really has free */
        uint64_t room = fx_room(limit, used);
        *total_bytes = limit;
        *free_bytes = room < *free_bytes ? room : *free_bytes;
    }
    return rc;
}
