/* unsupported.c - the driver names the remote client exports only to refuse (api.def
 * FX_RUNSUPPORTED): each logs its name once and returns CUDA_ERROR_NOT_SUPPORTED, so that a
 * program that links or dlsyms them learns at the call, never crashes on a missing symbol. Kept
 * apart from cuda_api.h on purpose: these take whatever arguments the caller passes and look at
 * none (a callee that ignores its arguments is safe in the C calling convention). Must never
 * touch the connection.
 */
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <unistd.h>

#define NOT_SUPPORTED 801 /* CUDA_ERROR_NOT_SUPPORTED */

void fxc_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int refuse(atomic_int *logged, const char *name) {
    if (!atomic_exchange(logged, 1))
        fxc_log(1, "%s is not supported by the remote client (CUDA_ERROR_NOT_SUPPORTED)", name);
    return NOT_SUPPORTED;
}

#define FX_RUNSUPPORTED(name)                                                                  \
    int name(void);                                                                            \
    __attribute__((visibility("default"))) int name(void) {                                    \
        static atomic_int logged;                                                              \
        return refuse(&logged, #name);                                                         \
    }
#include "api.def"
#undef FX_RUNSUPPORTED

/* The table procaddr.c searches (hidden: the library exports only cu* names). */
struct fxc_refused {
    const char *name;
    void *fn;
};
extern const struct fxc_refused fxc_refused_table[];
extern const size_t fxc_refused_count;
const struct fxc_refused fxc_refused_table[] = {
#define FX_RUNSUPPORTED(name) {#name, (void *)&name},
#include "api.def"
#undef FX_RUNSUPPORTED
};
const size_t fxc_refused_count = sizeof(fxc_refused_table) / sizeof(fxc_refused_table[0]);
