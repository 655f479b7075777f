/* track.h - what each live allocation of this process was charged, so that a free gives back
 * exactly that, and a teardown everything it freed. Keys are the vendor's handles (addresses,
 * allocation handles), kinds keep handle spaces apart. Every entry names its owner: an opaque
 * handle of what the vendor frees wholesale (a context), 0 for memory nothing frees behind the
 * program's back. Thread-safe; a forked child starts with an empty table. */
#ifndef FX_TRACK_H
#define FX_TRACK_H

#include <stdint.h>

#include "flexai.h"

enum fx_track_kind {
    FX_T_PTR = 1,
    FX_T_VMM = 2,
    FX_T_ARRAY = 3,
    FX_T_MIPMAP = 4,
    FX_T_OWNER = 5, /* an owner itself (key = owner; size: what it costs by itself) */
    FX_T_MAP = 6,   /* a mapping of physical memory (key = address, size 0, ref = its handle) */
    FX_T_VMM_MAPPED = 7, /* a released handle whose memory lives on in mappings (key = handle) */
    FX_T_POOL = 8,  /* a device's memory pool (key = pool; size: its reserve as last charged) */
    FX_T_HOST_POOL = 9, /* a host-located pool (key = pool, size 0): not device memory */
};

/* What one entry was charged. size 0: nothing. */
struct fx_charge {
    uint64_t size;
    uint32_t dev;
};

/* Remember that allocation (kind, key) of `owner` was charged `size` bytes on node device `dev`
 * (FX_NONE: not accounted, nothing to remember). Returns what an entry with the same key still
 * held: the vendor handed the key out again, so what it named was freed behind our back (a
 * teardown racing with this allocation) and that charge must be given back. */
struct fx_charge fx_track_add(int kind, uint64_t key, uint64_t size, uint32_t dev,
                              uint64_t owner);

/* The same, for an entry that refers to another (kind, key) by `ref` (FX_T_MAP: its handle). */
struct fx_charge fx_track_add_ref(int kind, uint64_t key, uint64_t size, uint32_t dev,
                                  uint64_t ref);

/* Remove an entry and return what it was charged, and its owner; 0 when found, -1 when
 * unknown. */
int fx_track_take(int kind, uint64_t key, uint64_t *size, uint32_t *dev, uint64_t *owner);

/* Whether (kind, key) is remembered: 0 and its device, or -1. */
int fx_track_find(int kind, uint64_t key, uint32_t *dev);

/* Its charge (0), or -1 when unknown; set_size replaces the size and returns the old one. */
int fx_track_get(int kind, uint64_t key, uint64_t *size, uint32_t *dev);
int fx_track_set_size(int kind, uint64_t key, uint64_t size, uint64_t *old);

/* Remove every entry of `kind` whose key lies in [lo, hi); their refs go to refs[] (at most
 * max, the rest are left: call again). Returns how many were removed. */
unsigned fx_track_take_range(int kind, uint64_t lo, uint64_t hi, uint64_t *refs, unsigned max);

/* How many entries of `kind` refer to `ref`. */
unsigned fx_track_count_ref(int kind, uint64_t ref);

/* Up to max keys of the entries of `kind`; returns how many there are in all. */
unsigned fx_track_keys(int kind, uint64_t *keys, unsigned max);

/* The teardown of an owner, around the vendor's call that frees everything it holds: mark its
 * entries before the call; then forget them (the call freed them: their bytes are added to
 * freed[] by node device) or keep them (it failed). Entries the owner gains in between are not
 * marked: a context that lives on after a reset keeps what it allocates again. */
void fx_track_owner_mark(uint64_t owner);
void fx_track_owner_forget(uint64_t owner, uint64_t freed[FLEXAI_MAX_DEVICES]);
void fx_track_owner_keep(uint64_t owner);

/* How many entries of `kind` are remembered on node device `dev`. */
unsigned fx_track_count(int kind, uint32_t dev);

#endif
