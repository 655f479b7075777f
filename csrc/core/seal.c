/* seal.c - seals on the shared region's records: a hash of a slice's settings and of a process
 * entry, written by every change and checked before they are relied on, so that damaged bytes
 * (random, zeroed, a flipped bit) fail closed instead of lifting a limit. Not a defence against
 * a deliberate forger (docs/security.md). Lock held for all of them. */
#include <stddef.h>

#include "shm.h"
#include "util.h"

/* The sealed settings: everything before mem_used (name, in_use, priority, private_to_pid,
 * mem_limit), then compute and burst, and the owner. */
static uint64_t fx_slice_hash(const struct fx_region *r, uint32_t s)
{
    const struct fx_slice *sl = &r->slices[s];
    uint64_t h = fx_hash_words((const uint64_t *)(const void *)sl,
                               offsetof(struct fx_slice, mem_used) / 8, s);
    h = fx_hash_words((const uint64_t *)(const void *)sl->compute,
                      (sizeof sl->compute + sizeof sl->burst) / 8, h);
    uint64_t owner = sl->owner_uid;
    return fx_hash_words(&owner, 1, h);
}

void fx_slice_seal(struct fx_region *r, uint32_t s)
{
    r->slices[s].sealed = fx_slice_hash(r, s);
}

int fx_slice_intact(const struct fx_region *r, uint32_t s)
{
    return s < FX_MAX_SLICES && r->slices[s].sealed == fx_slice_hash(r, s);
}

static uint64_t fx_usage_hash(const struct fx_region *r, uint32_t s)
{
    return fx_hash_words(r->slices[s].mem_used, FLEXAI_MAX_DEVICES, ~(uint64_t)s);
}

void fx_usage_seal(struct fx_region *r, uint32_t s)
{
    r->slices[s].usage_sealed = fx_usage_hash(r, s);
}

int fx_usage_intact(const struct fx_region *r, uint32_t s)
{
    return s < FX_MAX_SLICES && r->slices[s].usage_sealed == fx_usage_hash(r, s);
}

static uint32_t fx_proc_hash(const struct fx_region *r, uint32_t p)
{
    const struct fx_proc *pr = &r->procs[p];
    uint64_t w[2] = {(uint64_t)(uint32_t)pr->pid << 32 | pr->slice, pr->start_time};
    uint64_t h = fx_hash_words(w, 2, p);
    return (uint32_t)fx_hash_words(pr->mem_used, FLEXAI_MAX_DEVICES, h) | 1u;
}

void fx_proc_seal(struct fx_region *r, uint32_t p)
{
    r->procs[p].sealed = fx_proc_hash(r, p);
}

int fx_proc_intact(const struct fx_region *r, uint32_t p)
{
    return p < FX_MAX_PROCS && r->procs[p].sealed == fx_proc_hash(r, p);
}
