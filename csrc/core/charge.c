/* charge.c - charge before the driver is asked, settle after it answered (see charge.h). */
#include "charge.h"

#include "process.h"
#include "track.h"

int32_t fx_reserve_retry(uint32_t dev, uint64_t bytes)
{
    int32_t st = fx_reserve(dev, bytes);
    if (st == FLEXAI_E_QUOTA && fx_backend && fx_backend->mem_reclaim &&
        fx_backend->mem_reclaim() > 0)
        st = fx_reserve(dev, bytes);
    return st;
}

void fx_remember(int kind, uint64_t key, uint64_t size, uint32_t dev, uint64_t owner)
{
    struct fx_charge old = fx_track_add(kind, key, size, dev, owner);
    if (old.size) fx_release(old.dev, old.size);
}

void fx_alloc_done(int ok, int kind, uint64_t key, uint64_t size, uint32_t dev, uint64_t owner)
{
    if (ok) fx_remember(kind, key, size, dev, owner);
    else fx_release(dev, size);
}

struct fx_taken fx_free_begin(int kind, uint64_t key)
{
    struct fx_taken t = {0, 0, FX_NONE, 0};
    t.found = fx_track_take(kind, key, &t.size, &t.dev, &t.owner) == 0;
    return t;
}

void fx_free_end(int ok, int kind, uint64_t key, struct fx_taken t)
{
    if (!t.found) return;
    if (ok) fx_release(t.dev, t.size);
    else fx_remember(kind, key, t.size, t.dev, t.owner);
}

/* ctx_charged[dev] is set by the one thread that wins the exchange, so concurrent first uses of
 * a device charge it once. */
int32_t fx_overhead_charge(uint32_t dev, uint32_t *charged)
{
    *charged = FX_NONE;
    if (dev == FX_NONE || fx_self.cfg.context_memory == 0) return FLEXAI_OK;
    if (__atomic_load_n(&fx_self.ctx_charged[dev], __ATOMIC_ACQUIRE)) return FLEXAI_OK;
    if (__atomic_exchange_n(&fx_self.ctx_charged[dev], 1, __ATOMIC_ACQ_REL)) return FLEXAI_OK;
    int32_t st = fx_reserve_retry(dev, fx_self.cfg.context_memory);
    if (st != FLEXAI_OK) {
        __atomic_store_n(&fx_self.ctx_charged[dev], 0, __ATOMIC_RELEASE);
        return st;
    }
    *charged = dev;
    return FLEXAI_OK;
}

void fx_overhead_undo(uint32_t charged)
{
    if (charged == FX_NONE) return;
    fx_release(charged, fx_self.cfg.context_memory);
    __atomic_store_n(&fx_self.ctx_charged[charged], 0, __ATOMIC_RELEASE);
}

void fx_overhead_release(uint32_t dev)
{
    if (dev == FX_NONE) return;
    if (__atomic_exchange_n(&fx_self.ctx_charged[dev], 0, __ATOMIC_ACQ_REL))
        fx_release(dev, fx_self.cfg.context_memory);
}
