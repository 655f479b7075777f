/* procaddr.c - cuGetProcAddress of the remote client: what cudart 11+, cuda-python and most
 * modern programs use to find every driver function. Every version and flag is answered from
 * api.def: the highest `since` of a base name not above the version asked for picks the variant,
 * and CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM picks its _ptsz twin where there is one.
 *
 * A name api.def does not forward still gets a function: one that logs the name once and returns
 * CUDA_ERROR_NOT_SUPPORTED (a pool of such stubs, one per name asked for), so that a program
 * finds out at the call, with a clear line on stderr, instead of crashing on a NULL pointer. It
 * must never hand out a stub for a name that does not look like a driver function ("cu...").
 */
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "client.h"

struct entry {
    const char *name, *base;
    int since;
    void *fn;
};

static const struct entry entries[] = {
#define FX_RENTRY(name, base, since, op) {#name, #base, since, (void *)&name},
#include "api.def"
#undef FX_RENTRY
};

/* The names exported only to refuse (unsupported.c, which keeps their table). */
extern const struct fxc_refused {
    const char *name;
    void *fn;
} fxc_refused_table[];
extern const size_t fxc_refused_count;

/* ---- stubs for names not forwarded -------------------------------------------------------- */

#define STUBS 1000
#define NAME_MAX_LEN 96

static char stub_names[STUBS][NAME_MAX_LEN];
static int stub_used;
static atomic_int stub_logged[STUBS];
static pthread_mutex_t stub_mu = PTHREAD_MUTEX_INITIALIZER;

static int unsupported(int slot) {
    if (slot < 0 || slot >= STUBS) {
        fxc_log(FXC_LOG_WARN, "a driver function the remote client does not forward was called "
                "(CUDA_ERROR_NOT_SUPPORTED)");
        return CUDA_ERROR_NOT_SUPPORTED;
    }
    if (!atomic_exchange(&stub_logged[slot], 1))
        fxc_log(FXC_LOG_WARN, "%s is not supported by the remote client "
                "(CUDA_ERROR_NOT_SUPPORTED)", stub_names[slot]);
    return CUDA_ERROR_NOT_SUPPORTED;
}

/* stub_1000 .. stub_1999, each returning unsupported(its number - 1000). */
#define S(n) static int stub_1##n(void) { return unsupported(1##n - 1000); }
#define S10(p) S(p##0) S(p##1) S(p##2) S(p##3) S(p##4) S(p##5) S(p##6) S(p##7) S(p##8) S(p##9)
#define S100(p) S10(p##0) S10(p##1) S10(p##2) S10(p##3) S10(p##4) S10(p##5) S10(p##6) \
    S10(p##7) S10(p##8) S10(p##9)
S100(0) S100(1) S100(2) S100(3) S100(4) S100(5) S100(6) S100(7) S100(8) S100(9)
#undef S
#define S(n) &stub_1##n,
static int (*const stubs[STUBS])(void) = {
    S100(0) S100(1) S100(2) S100(3) S100(4) S100(5) S100(6) S100(7) S100(8) S100(9)};
#undef S
#undef S10
#undef S100

static int overflow_stub(void) {
    return unsupported(-1);
}

static void *stub_for(const char *name) {
    void *fn = (void *)&overflow_stub;
    pthread_mutex_lock(&stub_mu);
    int i;
    for (i = 0; i < stub_used && strncmp(stub_names[i], name, NAME_MAX_LEN - 1) != 0; i++) {
    }
    if (i == stub_used && stub_used < STUBS) {
        strncpy(stub_names[i], name, NAME_MAX_LEN - 1);
        stub_used++;
    }
    if (i < stub_used)
        fn = (void *)stubs[i];
    pthread_mutex_unlock(&stub_mu);
    return fn;
}

/* ---- lookup ------------------------------------------------------------------------------- */

static const struct entry *by_name(const char *name) {
    for (size_t i = 0; i < sizeof(entries) / sizeof(entries[0]); i++)
        if (strcmp(entries[i].name, name) == 0)
            return &entries[i];
    return NULL;
}

static CUresult proc_address(const char *symbol, void **pfn, int version, cuuint64_t flags,
                             CUdriverProcAddressQueryResult *status) {
    const cuuint64_t known =
        CU_GET_PROC_ADDRESS_LEGACY_STREAM | CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM;
    if (symbol == NULL || pfn == NULL || (flags & ~known) != 0)
        return CUDA_ERROR_INVALID_VALUE;
    *pfn = NULL;
    const struct entry *best = NULL;
    int listed = 0;
    for (size_t i = 0; i < sizeof(entries) / sizeof(entries[0]); i++) {
        if (strcmp(entries[i].base, symbol) != 0)
            continue;
        listed = 1;
        if (entries[i].since <= version && (best == NULL || entries[i].since > best->since))
            best = &entries[i];
    }
    if (listed && best == NULL) {
        if (status != NULL)
            *status = CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT;
        return CUDA_ERROR_NOT_FOUND;
    }
    if (best != NULL && (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM)) {
        char twin[128];
        snprintf(twin, sizeof(twin), "%s_ptsz", best->name);
        const struct entry *t = by_name(twin);
        if (t != NULL)
            best = t;
    }
    if (best != NULL) {
        *pfn = best->fn;
    } else {
        size_t n = strlen(symbol);
        for (size_t i = 0; i < fxc_refused_count && *pfn == NULL; i++) {
            const char *r = fxc_refused_table[i].name;
            if (strncmp(r, symbol, n) == 0 && (r[n] == '\0' || strncmp(r + n, "_v", 2) == 0))
                *pfn = fxc_refused_table[i].fn;
        }
        if (*pfn == NULL && strncmp(symbol, "cu", 2) == 0)
            *pfn = stub_for(symbol);
    }
    if (status != NULL)
        *status = *pfn ? CU_GET_PROC_ADDRESS_SUCCESS : CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    return *pfn ? CUDA_SUCCESS : CUDA_ERROR_NOT_FOUND;
}

FXC_EXPORT CUresult cuGetProcAddress(const char *symbol, void **pfn, int cudaVersion,
                                     cuuint64_t flags) {
    return proc_address(symbol, pfn, cudaVersion, flags, NULL);
}

FXC_EXPORT CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int cudaVersion,
                                        cuuint64_t flags,
                                        CUdriverProcAddressQueryResult *symbolStatus) {
    return proc_address(symbol, pfn, cudaVersion, flags, symbolStatus);
}
