/* charge.h - the bookkeeping every vendor's memory hooks share: reserve against the slice's quota
 * before the driver is asked, remember what was charged when it answers yes, give it back when
 * it answers no, and on a free give back exactly what that allocation was charged. Also the
 * per-process overhead of using a device at all (a CUDA context, an ACL device context).
 *
 * Vendor-free: the hooks (cuda/, acl/) translate their driver's answer into `ok` and the core's
 * statuses (FLEXAI_*) into their own error codes. Must never call the vendor's driver itself,
 * except through fx_backend->mem_reclaim.
 */
#ifndef FX_CHARGE_H
#define FX_CHARGE_H

#include <stdint.h>

/* Reserve `bytes` on node device `dev`; over the quota, first learn what the driver gave back
 * behind our back (fx_backend->mem_reclaim: pools that released memory at a synchronization)
 * and try once more. FLEXAI_OK or why not (FLEXAI_E_QUOTA, FLEXAI_E_STATE, ...). */
int32_t fx_reserve_retry(uint32_t dev, uint64_t bytes);

/* Remember that allocation (kind, key) of `owner` was charged `size` on `dev`. A key the driver
 * handed out again was freed behind our back (a teardown racing with this allocation): its old
 * charge goes back. */
void fx_remember(int kind, uint64_t key, uint64_t size, uint32_t dev, uint64_t owner);

/* After the driver answered an allocation that was reserved: remember it (ok), or give the
 * reservation back. */
void fx_alloc_done(int ok, int kind, uint64_t key, uint64_t size, uint32_t dev, uint64_t owner);

/* Frees: the entry is taken *before* the driver frees (after it, another thread could get the
 * same address and its entry would be taken instead) and put back if the free fails. */
struct fx_taken {
    int found;
    uint64_t size;
    uint32_t dev;
    uint64_t owner;
};
struct fx_taken fx_free_begin(int kind, uint64_t key);
void fx_free_end(int ok, int kind, uint64_t key, struct fx_taken t);

/* The memory a process costs on a device just by using it (FLEXAI_CONTEXT_MEMORY: a CUDA primary
 * context, an ACL device's default context), charged once per process and node device.
 * fx_overhead_charge: FLEXAI_OK when charged now or already; *charged is `dev` when this call
 * charged it (so that a failed driver call can undo it with fx_overhead_undo), else FX_NONE.
 * fx_overhead_release: the process no longer uses the device (its context is gone). */
int32_t fx_overhead_charge(uint32_t dev, uint32_t *charged);
void fx_overhead_undo(uint32_t charged);
void fx_overhead_release(uint32_t dev);

#endif
