/* acl_hook_table.c - everything generated from acl_hooks.def: the name lookup the dlsym hook
 * asks (interpose/hooks.c, through FX_HOOKSET), and the resolution of the real functions. The
 * aclnn operators no table can list are wrapped on demand (acl_hook_launch.c). */
#include <dlfcn.h>
#include <string.h>

#include "acl_shim.h"
#include "log.h"

struct fx_real_acl fx_acl;

static const struct fx_hook fx_acl_hooks[] = {
#define FX_ACL_HOOK(n) {#n, (void *)&n, (void **)&fx_acl.n, #n, 0, 0},
#define FX_ACL_REAL(n)
#define FX_ACLNN_HOOK(n) {#n, (void *)&n, (void **)&fx_acl.n, #n, 0, 1},
#include "acl_hooks.def"
#undef FX_ACL_HOOK
#undef FX_ACL_REAL
#undef FX_ACLNN_HOOK
};

#define FX_NACL (sizeof fx_acl_hooks / sizeof fx_acl_hooks[0])

static const struct fx_hook *fx_acl_hook_find(const char *name)
{
    if (strncmp(name, "acl", 3) != 0) return NULL;
    for (size_t i = 0; i < FX_NACL; i++)
        if (strcmp(fx_acl_hooks[i].name, name) == 0) return &fx_acl_hooks[i];
    return fx_aclnn_hook_for(name);
}

/* The ACL layer's names, for the dlsym hook (interpose/hooks.c). */
static const struct fx_hookset fx_acl_hookset = {fx_acl_hook_find};
FX_HOOKSET(fx_acl_hookset);

/* Look `name` up in `lib` only, never through our own dlsym; never our own wrapper (a
 * FLEXAI_LIBACL naming libflexai itself would loop forever). */
static void *fx_acl_sym(void *lib, const char *name, void *wrapper)
{
    void *p = lib ? fx_real_dlsym(lib, name) : NULL;
    if (p && p == wrapper) {
        FX_ERROR("%s resolves to flexai itself; check FLEXAI_LIBACL/FLEXAI_LIBOPAPI", name);
        return NULL;
    }
    return p;
}

void fx_acl_hooks_resolve(void *acl, void *opapi)
{
#define FX_ACL_HOOK(n) fx_acl.n = (__typeof__(fx_acl.n))fx_acl_sym(acl, #n, (void *)&n);
#define FX_ACL_REAL(n) fx_acl.n = (__typeof__(fx_acl.n))fx_acl_sym(acl, #n, NULL);
#define FX_ACLNN_HOOK(n)                                                                       \
    if (!__atomic_load_n(&fx_acl.n, __ATOMIC_ACQUIRE))                                         \
        __atomic_store_n(&fx_acl.n, (__typeof__(fx_acl.n))fx_acl_sym(opapi, #n, (void *)&n),   \
                         __ATOMIC_RELEASE);
#include "acl_hooks.def"
#undef FX_ACL_HOOK
#undef FX_ACL_REAL
#undef FX_ACLNN_HOOK
}
