/* acl_shim.h - what the ACL hooks share (the twin of cuda/shim.h): the typed table of the real
 * libascendcl.so and aclnn functions (one member per acl_hooks.def line), lazy initialization and
 * the mapping of core statuses to aclError. The hooks know ACL and nothing about quotas: they ask
 * core/ (process.h, charge.h, gate.h, track.h) and translate its answers. Must never be included
 * by core/ or cuda/.
 */
#ifndef FX_ACL_SHIM_H
#define FX_ACL_SHIM_H

#include "acl_api.h"
#include "interpose.h"
#include "process.h"

/* Typed pointers to the real functions, one per acl_hooks.def line. */
struct fx_real_acl {
#define FX_ACL_HOOK(n) __typeof__(&n) n;
#define FX_ACL_REAL(n) __typeof__(&n) n;
#define FX_ACLNN_HOOK(n) __typeof__(&n) n;
#include "acl_hooks.def"
#undef FX_ACL_HOOK
#undef FX_ACL_REAL
#undef FX_ACLNN_HOOK
};

extern struct fx_real_acl fx_acl;

/* Initialize once (configuration, the real runtime, the node's state). 0 when usable; -1 while
 * initializing (a callback from the runtime we are loading), when the process is broken, or
 * when another vendor's backend runs this process. */
int fx_acl_init(void);

/* The aclError for a core status (FLEXAI_E_*; FLEXAI_OK is ACL_SUCCESS). */
aclError fx_acl_error(int32_t status);

/* Resolve the real functions of acl_hooks.def from the opened runtime and operator libraries
 * (either may be NULL); aclnn functions a dlsym lookup already found are kept. */
void fx_acl_hooks_resolve(void *acl, void *opapi);

/* The error every hook returns when flexai cannot be used (broken, refused, initializing). */
aclError fx_acl_unusable(void);

/* Common entry of every ACL hook: lazy init, fail closed, a missing function as an error. */
#define FX_ACL_ENTER(fn)                                                                       \
    do {                                                                                       \
        if (fx_acl_init() != 0) return fx_acl_unusable();                                      \
        if (!fx_acl.fn) return ACL_ERROR_API_NOT_SUPPORT;                                      \
    } while (0)

/* The calling thread's current context as an owner of allocations (track.h): what its
 * teardown frees. 0 when the runtime cannot say (then only a free gives the charge back). */
uint64_t fx_acl_owner_current(void);

/* A wrapper of an aclnn operator's second phase made on demand for a dlsym lookup, or NULL
 * (acl_hook_launch.c; called by the ACL hook table's lookup). */
const struct fx_hook *fx_aclnn_hook_for(const char *name);

#endif
