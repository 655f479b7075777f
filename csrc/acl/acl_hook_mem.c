/* acl_hook_mem.c - device memory on Ascend NPUs: every allocation path of ACL is charged to the
 * slice before the runtime is asked (racing processes cannot overshoot together) and given back
 * exactly on free; aclrtGetMemInfo reports the quota. Wrappers only: the bookkeeping is the
 * core's (charge.h), the sizes the runtime's documented rules (acl_sizes.h).
 *
 * The virtual-memory family: aclrtReserveMemAddress only reserves addresses and aclrtMapMem only
 * maps physical memory already charged, so the charge is at aclrtMallocPhysical and goes back at
 * aclrtFreePhysical (which the runtime only allows once the memory is unmapped).
 *
 * Linear allocations die with the context current when they were made (a context "manages the
 * lifetime of device memory", CANN guide): each is remembered with that context as its owner,
 * and the context's teardown (acl_hook_ctx.c: the last aclrtResetDevice of a device, its
 * aclrtDestroyContext) gives their charges back. Physical memory is tied to no context: it
 * stays charged until aclrtFreePhysical or the process's exit (more, never less, than the
 * device holds).
 */
#include "acl_shim.h"
#include "acl_sizes.h"
#include "charge.h"
#include "gate.h"
#include "track.h"

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
                  fx_acl_owner_current());                                                     \
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
