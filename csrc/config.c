/* config.c - parse and validate the FLEXAI_* variables (the user-facing contract).
 *
 * This is the only parser: the shim uses it on its environment, and the Python package calls
 * the same function through cffi, so `python -m flexai.config` and the shim can never disagree.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

#define MEMORY_EXAMPLE "FLEXAI_GPU_MEMORY=8GiB, 4096MiB, 0:8GiB,1:4GiB or 4GiB,1:2GiB"
#define COMPUTE_EXAMPLE "FLEXAI_GPU_COMPUTE=30 or 0:30,1:50"

const char *flexai_version(void)
{
    return FLEXAI_VERSION_STRING;
}

struct fx_unit {
    const char *name;
    uint64_t scale;
};

/* Binary units spelled with "i", decimal ones without (the Kubernetes convention). */
static const struct fx_unit fx_units[] = {
    {"", 1},
    {"b", 1},
    {"k", 1000ULL},
    {"kb", 1000ULL},
    {"ki", 1ULL << 10},
    {"kib", 1ULL << 10},
    {"m", 1000ULL * 1000},
    {"mb", 1000ULL * 1000},
    {"mi", 1ULL << 20},
    {"mib", 1ULL << 20},
    {"g", 1000ULL * 1000 * 1000},
    {"gb", 1000ULL * 1000 * 1000},
    {"gi", 1ULL << 30},
    {"gib", 1ULL << 30},
    {"t", 1000ULL * 1000 * 1000 * 1000},
    {"tb", 1000ULL * 1000 * 1000 * 1000},
    {"ti", 1ULL << 40},
    {"tib", 1ULL << 40},
};

/* Parse "<digits>[.<digits>]<unit>" of length len into bytes. */
static int fx_parse_size_n(const char *s, size_t len, uint64_t *bytes, int allow_zero,
                           const char *var, const char *example, char *err)
{
    size_t i = 0;
    uint64_t whole = 0;
    uint64_t frac_num = 0, frac_den = 1;
    if (len == 0) return fx_fail(err, "%s: empty size (expected e.g. %s)", var, example);
    if (!isdigit((unsigned char)s[0]))
        return fx_fail(err, "%s: '%.*s' is not a size (expected e.g. %s)", var, (int)len, s,
                       example);
    for (; i < len && isdigit((unsigned char)s[i]); i++) {
        if (whole > (UINT64_MAX - 9) / 10)
            return fx_fail(err, "%s: '%.*s' is too large (expected e.g. %s)", var, (int)len, s,
                           example);
        whole = whole * 10 + (uint64_t)(s[i] - '0');
    }
    if (i < len && s[i] == '.') {
        i++;
        if (i >= len || !isdigit((unsigned char)s[i]))
            return fx_fail(err, "%s: '%.*s' is not a size (expected e.g. %s)", var, (int)len, s,
                           example);
        for (; i < len && isdigit((unsigned char)s[i]); i++) {
            if (frac_den < 1000000000ULL) { /* nine decimals are plenty */
                frac_num = frac_num * 10 + (uint64_t)(s[i] - '0');
                frac_den *= 10;
            }
        }
    }
    char unit[8];
    size_t ulen = len - i;
    if (ulen >= sizeof unit)
        return fx_fail(err, "%s: unknown unit in '%.*s' (expected e.g. %s)", var, (int)len, s,
                       example);
    for (size_t k = 0; k < ulen; k++) unit[k] = (char)tolower((unsigned char)s[i + k]);
    unit[ulen] = '\0';
    const struct fx_unit *u = NULL;
    for (size_t k = 0; k < sizeof fx_units / sizeof fx_units[0]; k++)
        if (strcmp(fx_units[k].name, unit) == 0) u = &fx_units[k];
    if (!u)
        return fx_fail(err, "%s: unknown unit '%.*s' in '%.*s' (expected e.g. %s)", var,
                       (int)ulen, s + i, (int)len, s, example);
    if (whole > UINT64_MAX / u->scale)
        return fx_fail(err, "%s: '%.*s' is too large (expected e.g. %s)", var, (int)len, s,
                       example);
    uint64_t total = whole * u->scale;
    /* frac_num < frac_den <= 1e9 and scale <= 2^40, so the product fits in 64+ bits only via
     * splitting: scale / den first when it divides, else multiply in long double. */
    uint64_t frac_bytes = (uint64_t)((long double)frac_num * (long double)u->scale /
                                     (long double)frac_den);
    if (total > UINT64_MAX - frac_bytes)
        return fx_fail(err, "%s: '%.*s' is too large (expected e.g. %s)", var, (int)len, s,
                       example);
    total += frac_bytes;
    if (total == 0 && !allow_zero)
        return fx_fail(err, "%s: size must be greater than zero, got '%.*s' (expected e.g. %s)",
                       var, (int)len, s, example);
    *bytes = total;
    return 0;
}

int flexai_parse_size(const char *text, uint64_t *bytes, char *err)
{
    if (!text || !bytes) return fx_fail(err, "size: missing argument");
    return fx_parse_size_n(text, strlen(text), bytes, 0, "size", "8GiB", err);
}

static int fx_parse_percent_n(const char *var, const char *s, size_t len, uint32_t *out,
                              char *err)
{
    size_t n = len;
    if (n > 0 && s[n - 1] == '%') n--;
    if (n == 0 || n > 3)
        return fx_fail(err, "%s: '%.*s' is not a percentage 1..100 (expected e.g. %s)", var,
                       (int)len, s, COMPUTE_EXAMPLE);
    uint32_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isdigit((unsigned char)s[i]))
            return fx_fail(err, "%s: '%.*s' is not a percentage 1..100 (expected e.g. %s)",
                           var, (int)len, s, COMPUTE_EXAMPLE);
        v = v * 10 + (uint32_t)(s[i] - '0');
    }
    if (v < 1 || v > 100)
        return fx_fail(err, "%s: %u is outside 1..100 (expected e.g. %s)", var, v,
                       COMPUTE_EXAMPLE);
    *out = v;
    return 0;
}

/* A per-device list: "V", "i:V,j:V" or "V,i:V" (V without index is the default for the rest).
 * kind 0 = memory sizes into mem[], kind 1 = percentages into pct[]. */
static int fx_parse_device_list(const char *var, const char *text, int kind, uint64_t *mem,
                                uint32_t *pct, char *err)
{
    const char *example = kind == 0 ? MEMORY_EXAMPLE : COMPUTE_EXAMPLE;
    uint64_t mvals[FLEXAI_MAX_DEVICES] = {0}, mdefault = 0;
    uint32_t pvals[FLEXAI_MAX_DEVICES] = {0}, pdefault = 0;
    int have_default = 0, seen[FLEXAI_MAX_DEVICES] = {0};
    const char *p = text;
    if (*p == '\0') return fx_fail(err, "%s: empty value (expected e.g. %s)", var, example);
    while (1) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        const char *colon = memchr(p, ':', len);
        long idx = -1;
        const char *val = p;
        size_t vlen = len;
        if (colon) {
            size_t ilen = (size_t)(colon - p);
            if (ilen == 0 || ilen > 2)
                return fx_fail(err, "%s: bad device index in '%.*s' (expected e.g. %s)", var,
                               (int)len, p, example);
            idx = 0;
            for (size_t k = 0; k < ilen; k++) {
                if (!isdigit((unsigned char)p[k]))
                    return fx_fail(err, "%s: bad device index in '%.*s' (expected e.g. %s)", var,
                                   (int)len, p, example);
                idx = idx * 10 + (p[k] - '0');
            }
            if (idx >= FLEXAI_MAX_DEVICES)
                return fx_fail(err, "%s: device index %ld is over the maximum %d (expected "
                               "e.g. %s)", var, idx, FLEXAI_MAX_DEVICES - 1, example);
            if (seen[idx])
                return fx_fail(err, "%s: device %ld is listed twice (expected e.g. %s)", var,
                               idx, example);
            seen[idx] = 1;
            val = colon + 1;
            vlen = len - ilen - 1;
        } else if (have_default) {
            return fx_fail(err, "%s: more than one value without a device index (expected e.g. "
                           "%s)", var, example);
        } else {
            have_default = 1;
        }
        uint64_t m = 0;
        uint32_t c = 0;
        int rc = kind == 0 ? fx_parse_size_n(val, vlen, &m, 0, var, example, err)
                           : fx_parse_percent_n(var, val, vlen, &c, err);
        if (rc != 0) return -1;
        if (idx < 0) {
            mdefault = m;
            pdefault = c;
        } else {
            mvals[idx] = m;
            pvals[idx] = c;
        }
        if (!end) break;
        p = end + 1;
    }
    for (int d = 0; d < FLEXAI_MAX_DEVICES; d++) {
        if (kind == 0) mem[d] = seen[d] ? mvals[d] : mdefault;
        else pct[d] = seen[d] ? pvals[d] : pdefault;
    }
    return 0;
}

static int fx_copy_path(const char *var, const char *value, char *dst, int must_be_absolute,
                        const char *example, char *err)
{
    size_t n = strlen(value);
    if (n == 0) return fx_fail(err, "%s: empty value (expected e.g. %s)", var, example);
    if (n >= FLEXAI_PATH_MAX)
        return fx_fail(err, "%s: path longer than %d bytes", var, FLEXAI_PATH_MAX - 1);
    if (must_be_absolute && value[0] != '/')
        return fx_fail(err, "%s: '%s' is not an absolute path (expected e.g. %s)", var, value,
                       example);
    memcpy(dst, value, n + 1);
    return 0;
}

static int fx_parse_choice(const char *var, const char *value, const char *const *names,
                           int count, int *out, const char *example, char *err)
{
    for (int i = 0; i < count; i++) {
        if (strcasecmp(value, names[i]) == 0) {
            *out = i;
            return 0;
        }
    }
    return fx_fail(err, "%s: unknown value '%s' (expected e.g. %s)", var, value, example);
}

int fx_slice_name_valid(const char *name, char *err)
{
    size_t n = strlen(name);
    if (n == 0 || n >= FLEXAI_NAME_MAX)
        return fx_fail(err, "FLEXAI_SLICE: name must be 1..%d characters (expected e.g. "
                       "FLEXAI_SLICE=job-42)", FLEXAI_NAME_MAX - 1);
    for (size_t i = 0; i < n; i++) {
        char ch = name[i];
        if (!(isalnum((unsigned char)ch) || ch == '-' || ch == '_' || ch == '.'))
            return fx_fail(err, "FLEXAI_SLICE: '%s' has the character '%c'; use letters, digits, "
                           "'-', '_' and '.' (expected e.g. FLEXAI_SLICE=job-42)", name, ch);
    }
    return 0;
}

void fx_config_defaults(flexai_config *c)
{
    memset(c, 0, sizeof *c);
    c->priority = FLEXAI_PRIORITY_NORMAL;
    c->log_level = FLEXAI_LOG_WARN;
    c->context_memory = FX_DEFAULT_CONTEXT_MEMORY;
    strcpy(c->state_dir, "/dev/shm/flexai");
    strcpy(c->libcuda, "libcuda.so.1");
    strcpy(c->libnvml, "libnvidia-ml.so.1");
}

static int fx_config_set(flexai_config *c, const char *name, const char *value, char *err)
{
    static const char *const priorities[] = {"low", "normal", "high"};
    static const char *const levels[] = {"error", "warn", "info", "debug"};
    static const char *const sharing[] = {"auto", "time", "spatial"};
    if (strcmp(name, "FLEXAI_GPU_MEMORY") == 0) {
        c->memory_set = 1;
        return fx_parse_device_list(name, value, 0, c->memory, NULL, err);
    }
    if (strcmp(name, "FLEXAI_GPU_COMPUTE") == 0) {
        c->compute_set = 1;
        return fx_parse_device_list(name, value, 1, NULL, c->compute, err);
    }
    if (strcmp(name, "FLEXAI_GPU_COMPUTE_BURST") == 0) {
        c->burst_set = 1;
        return fx_parse_device_list(name, value, 1, NULL, c->burst, err);
    }
    if (strcmp(name, "FLEXAI_SLICE") == 0) {
        if (fx_slice_name_valid(value, err) != 0) return -1;
        strcpy(c->slice, value);
        return 0;
    }
    if (strcmp(name, "FLEXAI_PRIORITY") == 0)
        return fx_parse_choice(name, value, priorities, 3, &c->priority,
                               "FLEXAI_PRIORITY=high, normal or low", err);
    if (strcmp(name, "FLEXAI_SHARING") == 0)
        return fx_parse_choice(name, value, sharing, 3, &c->sharing,
                               "FLEXAI_SHARING=auto (time, spatial)", err);
    if (strcmp(name, "FLEXAI_LOG") == 0)
        return fx_parse_choice(name, value, levels, 4, &c->log_level,
                               "FLEXAI_LOG=warn (error, warn, info, debug)", err);
    if (strcmp(name, "FLEXAI_CONTEXT_MEMORY") == 0)
        return fx_parse_size_n(value, strlen(value), &c->context_memory, 1, name,
                               "FLEXAI_CONTEXT_MEMORY=512MiB or 0", err);
    if (strcmp(name, "FLEXAI_STATE_DIR") == 0)
        return fx_copy_path(name, value, c->state_dir, 1, "FLEXAI_STATE_DIR=/dev/shm/flexai",
                            err);
    if (strcmp(name, "FLEXAI_LIBCUDA") == 0)
        return fx_copy_path(name, value, c->libcuda, 0, "FLEXAI_LIBCUDA=libcuda.so.1", err);
    if (strcmp(name, "FLEXAI_LIBNVML") == 0)
        return fx_copy_path(name, value, c->libnvml, 0, "FLEXAI_LIBNVML=libnvidia-ml.so.1",
                            err);
    return 0; /* not ours (FLEXAI_SIM_*, FLEXAI_LIB_DIR, ...): ignored */
}

/* Rules between variables, once all are read. */
static int fx_config_check(const flexai_config *c, char *err)
{
    if (c->burst_set && !c->compute_set)
        return fx_fail(err, "FLEXAI_GPU_COMPUTE_BURST needs FLEXAI_GPU_COMPUTE (expected e.g. "
                       "FLEXAI_GPU_COMPUTE=30 FLEXAI_GPU_COMPUTE_BURST=100)");
    for (int d = 0; d < FLEXAI_MAX_DEVICES; d++) {
        if (c->burst[d] && !c->compute[d])
            return fx_fail(err, "FLEXAI_GPU_COMPUTE_BURST: device %d has a burst but no "
                           "FLEXAI_GPU_COMPUTE share (expected e.g. FLEXAI_GPU_COMPUTE=30 "
                           "FLEXAI_GPU_COMPUTE_BURST=100)", d);
        if (c->burst[d] && c->burst[d] < c->compute[d])
            return fx_fail(err, "FLEXAI_GPU_COMPUTE_BURST: %u is below the share %u on device "
                           "%d; the burst is the most a slice may use (expected e.g. "
                           "FLEXAI_GPU_COMPUTE=30 FLEXAI_GPU_COMPUTE_BURST=100)", c->burst[d],
                           c->compute[d], d);
    }
    return 0;
}

int flexai_config_parse(const char *const *names, const char *const *values, size_t count,
                        flexai_config *out, char *err)
{
    if (!out) return fx_fail(err, "config: missing output");
    fx_config_defaults(out);
    for (size_t i = 0; i < count; i++) {
        if (!names || !values || !names[i] || !values[i]) continue;
        if (fx_config_set(out, names[i], values[i], err) != 0) return -1;
    }
    return fx_config_check(out, err);
}

extern char **environ;

int fx_config_from_env(flexai_config *out, char *err)
{
    /* Collect FLEXAI_* pairs from environ into fixed buffers: no malloc inside the host. */
    enum { MAX_VARS = 32 };
    char names[MAX_VARS][40];
    const char *name_ptrs[MAX_VARS];
    const char *values[MAX_VARS];
    size_t n = 0;
    for (char **e = environ; e && *e && n < MAX_VARS; e++) {
        if (strncmp(*e, "FLEXAI_", 7) != 0) continue;
        const char *eq = strchr(*e, '=');
        if (!eq || (size_t)(eq - *e) >= sizeof names[0]) continue;
        memcpy(names[n], *e, (size_t)(eq - *e));
        names[n][eq - *e] = '\0';
        name_ptrs[n] = names[n];
        values[n] = eq + 1;
        n++;
    }
    return flexai_config_parse(name_ptrs, values, n, out, err);
}
