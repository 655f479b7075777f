/* track.h - what each live allocation of this process was charged, so that a free gives back
 * exactly that. Keys are the vendor's handles (addresses, allocation handles), kinds keep
 * handle spaces apart. Thread-safe; a forked child starts with an empty table. */
#ifndef FX_TRACK_H
#define FX_TRACK_H

#include <stdint.h>

enum fx_track_kind { FX_T_PTR = 1, FX_T_VMM = 2, FX_T_ARRAY = 3, FX_T_MIPMAP = 4 };

/* Remember that allocation (kind, key) was charged `size` bytes on node device `dev`. */
void fx_track_add(int kind, uint64_t key, uint64_t size, uint32_t dev);

/* Remove an entry and return what it was charged; 0 when found, -1 when unknown. */
int fx_track_take(int kind, uint64_t key, uint64_t *size, uint32_t *dev);

#endif
