/* hooks.c - one lookup over every hook layer's table (cuda/, acl/), found through the linker
 * section "fx_hooksets" that each layer adds its struct fx_hookset to (FX_HOOKSET): this file
 * names no vendor and knows no quota. Must stay cheap and allocation-free: every dlsym of the
 * process may ask it. */
#include <string.h>

#include "interpose.h"

/* Defined by the linker around the section; hidden, so they resolve inside libflexai.so. */
extern const struct fx_hookset *const __start_fx_hooksets[] __attribute__((visibility("hidden")));
extern const struct fx_hookset *const __stop_fx_hooksets[] __attribute__((visibility("hidden")));

const struct fx_hook *fx_hook_find(const char *name)
{
    for (const struct fx_hookset *const *s = __start_fx_hooksets; s < __stop_fx_hooksets; s++) {
        const struct fx_hook *h = (*s)->find(name);
        if (h) return h;
    }
    return NULL;
}
