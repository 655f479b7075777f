/* dlsym.c - interposing dlsym, so that programs which look driver functions up by handle
 * (libtorch, CuPy, ctypes, NVRTC users) get flexai's wrappers.
 *
 * The exported `dlsym` is a few instructions of assembly (dlsym_entry.S): it asks
 * fx_dlsym_lookup for a wrapper and, when there is none, *jumps* to the real dlsym with the
 * caller's own return address still on the stack. glibc resolves RTLD_NEXT relative to that
 * return address, so RTLD_NEXT keeps meaning "after the caller", not "after flexai"; a C
 * wrapper that calls the real dlsym would break other preloaded interposers. Every dlsym of
 * the process passes here (Python's extension loading too), so the common path is two byte
 * compares and never initializes CUDA.
 */
#include <dlfcn.h>
#include <string.h>

#include "interpose.h"
#include "log.h"

void *(*fx_real_dlsym)(void *, const char *);

/* Sanitizer runtimes call dlsym while they start, before instrumented code may run: the
 * functions on that path are not instrumented. */
#define FX_UNINSTRUMENTED __attribute__((no_sanitize("address", "undefined")))

FX_UNINSTRUMENTED void fx_dlsym_bootstrap(void)
{
    if (__atomic_load_n(&fx_real_dlsym, __ATOMIC_ACQUIRE)) return;
    /* dlvsym is not interposed, so this finds glibc's dlsym. Racing threads store the same
     * value. */
    void *p = dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.34");
    if (!p) p = dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.2.5"); /* x86-64, glibc < 2.34 */
    if (!p) p = dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.17");  /* aarch64, glibc < 2.34 */
    __atomic_store_n(&fx_real_dlsym, (void *(*)(void *, const char *))p, __ATOMIC_RELEASE);
}

/* Called by the assembly entry. Returns our wrapper for a hooked driver function, or NULL to
 * let the real dlsym answer. Must not be inlined away: the entry calls it by name. */
void *fx_dlsym_lookup(void *handle, const char *name);
FX_UNINSTRUMENTED __attribute__((used, visibility("hidden"))) void *
fx_dlsym_lookup(void *handle, const char *name)
{
    fx_dlsym_bootstrap(); /* the entry jumps to fx_real_dlsym whatever we answer */
    if (!name || !((name[0] == 'c' && name[1] == 'u') || (name[0] == 'n' && name[1] == 'v')))
        return NULL;
    if (fx_in_init) return NULL;
    const struct fx_hook *h = fx_hook_find(name);
    if (!h || !fx_real_dlsym) return NULL;
    /* Hand out a wrapper only where the real symbol exists, so feature probes stay truthful.
     * RTLD_NEXT here would mean "after flexai": ask the global scope instead. */
    void *real = fx_real_dlsym(handle == RTLD_NEXT ? RTLD_DEFAULT : handle, name);
    if (!real || real == h->wrapper) return real;
    FX_DEBUG("dlsym(%s) -> flexai", name);
    return h->wrapper;
}

#if !defined(__x86_64__) && !defined(__aarch64__)
/* Other architectures: a C tail call. GCC and Clang compile it to a jump at -O2, which keeps
 * the caller's return address; the RTLD_NEXT test checks it. */
FX_EXPORT void *dlsym(void *handle, const char *name)
{
    void *w = fx_dlsym_lookup(handle, name);
    if (w) return w;
    return fx_real_dlsym(handle, name);
}
#endif
