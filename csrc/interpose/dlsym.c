/* dlsym.c - interposing dlsym, so that programs which look driver functions up by handle
 * (libtorch, CuPy, ctypes, NVRTC users) get flexai's wrappers.
 *
 * The exported `dlsym` is a few instructions of assembly (dlsym_entry.S): it asks
 * fx_dlsym_lookup for a wrapper and, when there is none, *jumps* to the real dlsym with the
 * caller's own return address still on the stack. glibc resolves RTLD_NEXT relative to that
 * return address, so RTLD_NEXT keeps meaning "after the caller", not "after flexai"; a C
 * wrapper that calls the real dlsym would break other preloaded interposers. Every dlsym of
 * the process passes here (Python's extension loading too), so the common path is a few byte
 * compares and never initializes a driver.
 *
 * The real dlsym can only be found with dlvsym, which needs the symbol's version name, and
 * that name depends on the glibc and the architecture. fx_dlsym_bootstrap tries the known
 * names, then every version name that the loaded libc/libdl define, and when all of that fails
 * (no glibc we know of) installs a stand-in that answers NULL: fx_real_dlsym is never NULL
 * after it, so the entry never jumps to address 0 (tests/interpose/ checks each step).
 */
#include <dlfcn.h>
#include <link.h>
#include <string.h>

#include "interpose.h"
#include "log.h"

void *(*fx_real_dlsym)(void *, const char *);

/* Sanitizer runtimes call dlsym while they start, before instrumented code may run: the
 * functions on that path are not instrumented. */
#define FX_UNINSTRUMENTED __attribute__((no_sanitize("address", "undefined")))

/* The versions glibc has given dlsym, most likely first (read from glibc's ABI lists and
 * checked with readelf on x86-64 and aarch64 glibc 2.36, which keeps the old version as a
 * compatibility symbol beside the new default one):
 *   GLIBC_2.34   every architecture from glibc 2.34 on (libdl merged into libc.so.6);
 *   GLIBC_2.2.5  x86-64 before 2.34 (libdl.so.2; the first version of that ABI);
 *   GLIBC_2.17   aarch64 before 2.34 (libdl.so.2; aarch64's ABI starts at glibc 2.17).
 * dlvsym with a NULL version is no way out: glibc hashes the name without a NULL check. */
static const char *const fx_dlsym_versions[] = {"GLIBC_2.34", "GLIBC_2.2.5", "GLIBC_2.17"};

/* Version names defined by the loaded libc.so / libdl.so (at most this many are kept). */
#define FX_MAX_VERSIONS 128
struct fx_version_names {
    const char *name[FX_MAX_VERSIONS];
    int n;
};

/* dl_iterate_phdr callback: add the version definitions (DT_VERDEF) of libc.so and libdl.so.
 * Only collects pointers into their string tables (mapped as long as they are loaded, i.e.
 * for the process's life); dlvsym is called after the iteration, outside the loader lock. */
FX_UNINSTRUMENTED static int fx_collect_versions(struct dl_phdr_info *info, size_t size,
                                                 void *data)
{
    (void)size;
    struct fx_version_names *out = data;
    const char *base = info->dlpi_name ? strrchr(info->dlpi_name, '/') : NULL;
    base = base ? base + 1 : info->dlpi_name;
    if (!base || (strncmp(base, "libc.so", 7) != 0 && strncmp(base, "libdl.so", 8) != 0))
        return 0;
    const ElfW(Dyn) *dyn = NULL;
    for (ElfW(Half) i = 0; i < info->dlpi_phnum; i++)
        if (info->dlpi_phdr[i].p_type == PT_DYNAMIC)
            dyn = (const ElfW(Dyn) *)(info->dlpi_addr + info->dlpi_phdr[i].p_vaddr);
    if (!dyn) return 0;
    ElfW(Addr) strtab = 0, verdef = 0;
    ElfW(Xword) count = 0;
    for (; dyn->d_tag != DT_NULL; dyn++) {
        if (dyn->d_tag == DT_STRTAB) strtab = dyn->d_un.d_ptr;
        else if (dyn->d_tag == DT_VERDEF) verdef = dyn->d_un.d_ptr;
        else if (dyn->d_tag == DT_VERDEFNUM) count = dyn->d_un.d_val;
    }
    if (!strtab || !verdef) return 0;
    /* The loader relocates these entries in place, except where the dynamic section is
     * read-only (MIPS, RISC-V): there they are still offsets from the load address. */
    if (strtab < info->dlpi_addr) strtab += info->dlpi_addr;
    if (verdef < info->dlpi_addr) verdef += info->dlpi_addr;
    const ElfW(Verdef) *vd = (const ElfW(Verdef) *)verdef;
    for (ElfW(Xword) k = 0; k < count && out->n < FX_MAX_VERSIONS; k++) {
        if (!(vd->vd_flags & VER_FLG_BASE) && vd->vd_cnt > 0) {
            const ElfW(Verdaux) *aux = (const ElfW(Verdaux) *)((const char *)vd + vd->vd_aux);
            out->name[out->n++] = (const char *)strtab + aux->vda_name;
        }
        if (!vd->vd_next) break;
        vd = (const ElfW(Verdef) *)((const char *)vd + vd->vd_next);
    }
    return 0;
}

/* Stands in for the real dlsym when none could be found: every lookup fails (NULL), with one
 * error line, instead of a jump to address 0. No glibc we know of gets here. */
FX_UNINSTRUMENTED static void *fx_dlsym_unavailable(void *handle, const char *name)
{
    static int told;
    (void)handle;
    if (!__atomic_exchange_n(&told, 1, __ATOMIC_RELAXED))
        FX_ERROR("the real dlsym was not found under any version of the loaded glibc: "
                 "every dlsym fails (first: %s)", name ? name : "(null)");
    return NULL;
}

FX_UNINSTRUMENTED void fx_dlsym_bootstrap(void)
{
    if (__atomic_load_n(&fx_real_dlsym, __ATOMIC_ACQUIRE)) return;
    /* dlvsym is not interposed, so this finds glibc's dlsym. Racing threads store the same
     * value. */
    void *p = NULL;
    for (size_t i = 0; !p && i < sizeof fx_dlsym_versions / sizeof fx_dlsym_versions[0]; i++)
        p = dlvsym(RTLD_NEXT, "dlsym", fx_dlsym_versions[i]);
    if (!p) {
        /* An unknown glibc or architecture: try every version libc/libdl define, the newest
         * (the last defined) first; the newest version of dlsym is its default one. */
        struct fx_version_names v = {{0}, 0};
        dl_iterate_phdr(fx_collect_versions, &v);
        while (!p && v.n > 0)
            p = dlvsym(RTLD_NEXT, "dlsym", v.name[--v.n]);
    }
    void *(*real)(void *, const char *) =
        p ? (void *(*)(void *, const char *))p : fx_dlsym_unavailable;
    __atomic_store_n(&fx_real_dlsym, real, __ATOMIC_RELEASE);
}

/* Called by the assembly entry. Returns our wrapper for a hooked driver function, or NULL to
 * let the real dlsym answer. Must not be inlined away: the entry calls it by name. */
void *fx_dlsym_lookup(void *handle, const char *name);
FX_UNINSTRUMENTED __attribute__((used, visibility("hidden"))) void *
fx_dlsym_lookup(void *handle, const char *name)
{
    fx_dlsym_bootstrap(); /* the entry jumps to fx_real_dlsym whatever we answer: never NULL */
    /* the first letters of every hooked name (cuda/: cu*, nvml*; acl/: acl*); the hook
     * layers' own lists (interpose/hooks.c) decide the rest */
    if (!name || !((name[0] == 'c' && name[1] == 'u') || (name[0] == 'n' && name[1] == 'v') ||
                   (name[0] == 'a' && name[1] == 'c')))
        return NULL;
    if (fx_in_init) return NULL;
    const struct fx_hook *h = fx_hook_find(name);
    if (!h) return NULL;
    /* Hand out a wrapper only where the real symbol exists, so feature probes stay truthful.
     * RTLD_NEXT here would mean "after flexai": ask the global scope instead. */
    void *real = fx_real_dlsym(handle == RTLD_NEXT ? RTLD_DEFAULT : handle, name);
    if (!real || real == h->wrapper) return real;
    if (h->late) __atomic_store_n(h->real, real, __ATOMIC_RELEASE); /* the caller's library */
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
