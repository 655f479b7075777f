/* interpose.h - loader tricks, vendor-neutral: the exported dlsym (dlsym_entry.S + dlsym.c),
 * the real dlsym, recursion-safe lazy initialization. Knows no vendor and no quota: it asks the
 * hook tables (fx_hook_find, one table of all hooked names) and nothing else.
 */
#ifndef FX_INTERPOSE_H
#define FX_INTERPOSE_H

#include <pthread.h>

#define FX_EXPORT __attribute__((visibility("default")))

/* One hooked function: its name, our wrapper, where the real one is kept, and the versioned
 * name it answers for (`base` from ABI version `since`; since 0: the only variant). `late`: the
 * real function is the one the caller's own dlsym finds (a library flexai does not open itself,
 * e.g. ACL's operator library): the dlsym hook stores it in *real before handing out wrapper. */
struct fx_hook {
    const char *name;
    void *wrapper;
    void **real;
    const char *base;
    int since;
    int late;
};

/* The hook named `name`, or NULL: asks every hook layer's table (interpose/hooks.c). */
const struct fx_hook *fx_hook_find(const char *name);

/* One hook layer's names (cuda/, acl/), registered with FX_HOOKSET in its table's file: the
 * interpose layer finds them through a linker section and so never names a vendor. `find`: its
 * hook for a name, or NULL; cheap and allocation-free, as every dlsym of the process may ask
 * (after the first-letters filter of dlsym.c). */
struct fx_hookset {
    const struct fx_hook *(*find)(const char *name);
};
#define FX_HOOKSET(var)                                                                        \
    static const struct fx_hookset *const var##_registered                                     \
        __attribute__((used, section("fx_hooksets"))) = &var

/* The real dlsym (resolved with dlvsym, never through our own). */
extern void *(*fx_real_dlsym)(void *, const char *);
void fx_dlsym_bootstrap(void);

/* Per-thread re-entrancy guard: nonzero while flexai itself initializes (loads libraries), so
 * that the driver's calls back into dlsym or into hooks pass straight through. Initial-exec
 * TLS: reading it must not call __tls_get_addr, which sanitizer runtimes intercept and which is
 * not usable yet when they call dlsym during their own start-up. */
extern __thread int fx_in_init __attribute__((tls_model("initial-exec")));

/* Lazy, once-only initialization that the initializer's own driver calls cannot recurse into. */
struct fx_once {
    pthread_once_t once;
    int done; /* written once inside pthread_once, read with acquire */
    void (*fn)(void);
};
#define FX_ONCE_INIT(fn) {PTHREAD_ONCE_INIT, 0, fn}

/* Run o->fn once per process (fx_in_init set meanwhile). 0 once it has run; -1 when called
 * from inside fn itself (a callback during initialization). Cheap after the first call. */
static inline int fx_once_run(struct fx_once *o)
{
    extern void fx_once_slow(struct fx_once *o);
    if (__builtin_expect(__atomic_load_n(&o->done, __ATOMIC_ACQUIRE), 1)) return 0;
    if (fx_in_init) return -1;
    fx_once_slow(o);
    return 0;
}

#endif
