/* config.c - parse and validate the FLEXAI_* variables (the user-facing contract).
 *
 * This is the only parser, driven by the one table in contract.def: the shim uses it on its
 * environment, and the Python package calls the same function through cffi, so `python -m
 * flexai.config` and the shim can never disagree.
 */
#include "config.h"

#include <ctype.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "log.h"
#include "util.h"

enum fx_kind {
    FX_K_SIZES = FLEXAI_VAR_SIZES,
    FX_K_PERCENTS = FLEXAI_VAR_PERCENTS,
    FX_K_CHOICE = FLEXAI_VAR_CHOICE,
    FX_K_NAME = FLEXAI_VAR_NAME,
    FX_K_SIZE = FLEXAI_VAR_SIZE,
    FX_K_PATH = FLEXAI_VAR_PATH,
    FX_K_ABSPATH = 100 + FLEXAI_VAR_PATH, /* a path that must be absolute; public kind PATH */
};
#define FX_PUBLIC_KIND(k) ((k) == FX_K_ABSPATH ? FLEXAI_VAR_PATH : (int32_t)(k))

static const flexai_var fx_vars[] = {
#define FX_VAR(name, kind, field, option, example, choices, dflt, per_slice, help)             \
    {#name, option, example, choices, dflt, help, FX_PUBLIC_KIND(FX_K_##kind), per_slice},
#include "contract.def"
#undef FX_VAR
};

/* Where each variable's value goes, in table order. */
static const struct {
    int kind;
    size_t field;
} fx_var_fields[] = {
#define FX_VAR(name, kind, field, option, example, choices, dflt, per_slice, help)             \
    {FX_K_##kind, offsetof(flexai_config, field)},
#include "contract.def"
#undef FX_VAR
};

#define FX_NVARS (sizeof fx_vars / sizeof fx_vars[0])
_Static_assert(FX_NVARS == sizeof fx_var_fields / sizeof fx_var_fields[0], "one table");

size_t flexai_vars(const flexai_var **out)
{
    if (out) *out = fx_vars;
    return FX_NVARS;
}

const char *flexai_version(void)
{
    return FLEXAI_VERSION_STRING;
}

int flexai_parse_size(const char *text, uint64_t *bytes, flexai_error *err)
{
    if (!text || !bytes) return fx_fail(err, FLEXAI_E_BAD_VALUE, "size: missing argument");
    return fx_parse_size_n(text, strlen(text), bytes, 0, "size", "8GiB", err);
}

/* "NAME=example", and for per-device lists also the indexed form. */
static const char *fx_example(const flexai_var *v, char *buf, size_t size)
{
    if (v->kind == FLEXAI_VAR_SIZES || v->kind == FLEXAI_VAR_PERCENTS)
        snprintf(buf, size, "%s=%s or %s=0:%s,1:%s", v->name, v->example, v->name, v->example,
                 v->example);
    else snprintf(buf, size, "%s=%s", v->name, v->example);
    return buf;
}

#define FX_BAD(v, fmt, ...)                                                                    \
    fx_fail(err, FLEXAI_E_BAD_VALUE, "%s: " fmt " (expected e.g. %s)", (v)->name, __VA_ARGS__,  \
            fx_example((v), example, sizeof example))

static int fx_parse_percent_n(const flexai_var *v, const char *s, size_t len, uint32_t *out,
                              flexai_error *err)
{
    char example[160];
    size_t n = len;
    if (n > 0 && s[n - 1] == '%') n--;
    if (n == 0 || n > 3) return FX_BAD(v, "'%.*s' is not a percentage 1..100", (int)len, s);
    uint32_t val = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isdigit((unsigned char)s[i]))
            return FX_BAD(v, "'%.*s' is not a percentage 1..100", (int)len, s);
        val = val * 10 + (uint32_t)(s[i] - '0');
    }
    if (val < 1 || val > 100) return FX_BAD(v, "%u is outside 1..100", val);
    *out = val;
    return 0;
}

/* One list item's value into slot d of the list (or into the default when d < 0). */
static int fx_list_value(const flexai_var *v, int kind, void *field, int d, const char *val,
                         size_t vlen, flexai_error *err)
{
    char example[160];
    if (kind == FX_K_SIZES) {
        uint64_t m = 0;
        fx_example(v, example, sizeof example);
        if (fx_parse_size_n(val, vlen, &m, 0, v->name, example, err) != 0) return -1;
        uint64_t *arr = field;
        if (d >= 0) arr[d] = m;
        else for (int k = 0; k < FLEXAI_MAX_DEVICES; k++) arr[k] = m;
    } else {
        uint32_t c = 0;
        if (fx_parse_percent_n(v, val, vlen, &c, err) != 0) return -1;
        uint32_t *arr = field;
        if (d >= 0) arr[d] = c;
        else for (int k = 0; k < FLEXAI_MAX_DEVICES; k++) arr[k] = c;
    }
    return 0;
}

/* A per-device list: "V", "i:V,j:V" or "V,i:V" (V without index is the default for the rest).
 * Sets bit i of *given for every device given by index. */
static int fx_parse_list(const flexai_var *v, int kind, void *field, uint32_t *given,
                         const char *text, flexai_error *err)
{
    struct {
        long idx;
        const char *val;
        size_t vlen;
    } items[FLEXAI_MAX_DEVICES + 1];
    int n = 0, have_default = 0;
    uint32_t seen = 0;
    char example[160];
    if (*text == '\0') return FX_BAD(v, "%s", "empty value");
    for (const char *p = text;;) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        const char *colon = memchr(p, ':', len);
        long idx = -1;
        if (colon) {
            size_t ilen = (size_t)(colon - p);
            if (ilen == 0 || ilen > 2) return FX_BAD(v, "bad device index in '%.*s'", (int)len, p);
            idx = 0;
            for (size_t k = 0; k < ilen; k++) {
                if (!isdigit((unsigned char)p[k]))
                    return FX_BAD(v, "bad device index in '%.*s'", (int)len, p);
                idx = idx * 10 + (p[k] - '0');
            }
            if (idx >= FLEXAI_MAX_DEVICES)
                return FX_BAD(v, "device index %ld is over the maximum %d", idx,
                              FLEXAI_MAX_DEVICES - 1);
            if (seen & (1u << idx)) return FX_BAD(v, "device %ld is listed twice", idx);
            seen |= 1u << idx;
        } else if (have_default) {
            return FX_BAD(v, "%s", "more than one value without a device index");
        } else {
            have_default = 1;
        }
        if (n > FLEXAI_MAX_DEVICES) return FX_BAD(v, "%s", "too many entries");
        items[n].idx = idx;
        items[n].val = colon ? colon + 1 : p;
        items[n].vlen = colon ? len - (size_t)(colon - p) - 1 : len;
        n++;
        if (!end) break;
        p = end + 1;
    }
    /* the default first, so that indexed entries win wherever they stand */
    if (kind == FX_K_SIZES) memset(field, 0, sizeof(uint64_t) * FLEXAI_MAX_DEVICES);
    else memset(field, 0, sizeof(uint32_t) * FLEXAI_MAX_DEVICES);
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < n; i++)
            if ((items[i].idx < 0) == (pass == 0) &&
                fx_list_value(v, kind, field, (int)items[i].idx, items[i].val, items[i].vlen,
                              err) != 0)
                return -1;
    *given = seen;
    return 0;
}

static int fx_parse_choice(const flexai_var *v, const char *value, int32_t *out,
                           flexai_error *err)
{
    char example[160];
    int i = 0;
    for (const char *p = v->choices; *p; i++) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (strlen(value) == len && strncasecmp(value, p, len) == 0) {
            *out = i;
            return 0;
        }
        if (!end) break;
        p = end + 1;
    }
    return FX_BAD(v, "unknown value '%s'; one of %s", value, v->choices);
}

int fx_slice_name_valid(const char *name, flexai_error *err)
{
    size_t n = strlen(name);
    if (n == 0 || n >= FLEXAI_NAME_MAX)
        return fx_fail(err, FLEXAI_E_BAD_VALUE, "FLEXAI_SLICE: name must be 1..%d characters "
                       "(expected e.g. FLEXAI_SLICE=job-42)", FLEXAI_NAME_MAX - 1);
    for (size_t i = 0; i < n; i++) {
        char ch = name[i];
        if (!(isalnum((unsigned char)ch) || ch == '-' || ch == '_' || ch == '.'))
            return fx_fail(err, FLEXAI_E_BAD_VALUE, "FLEXAI_SLICE: '%s' has the character '%c'; "
                           "use letters, digits, '-', '_' and '.' (expected e.g. "
                           "FLEXAI_SLICE=job-42)", name, ch);
    }
    return 0;
}

static int fx_parse_path(const flexai_var *v, const char *value, char *dst, int absolute,
                         flexai_error *err)
{
    char example[160];
    size_t n = strlen(value);
    if (n == 0) return FX_BAD(v, "%s", "empty value");
    if (n >= FLEXAI_PATH_MAX) return FX_BAD(v, "path longer than %d bytes", FLEXAI_PATH_MAX - 1);
    if (absolute && value[0] != '/') return FX_BAD(v, "'%s' is not an absolute path", value);
    memcpy(dst, value, n + 1);
    return 0;
}

/* Set one variable of the table; `set_flag` is the config's "given" flag for it, if any. */
static int fx_config_set(flexai_config *c, size_t i, const char *value, flexai_error *err)
{
    const flexai_var *v = &fx_vars[i];
    int kind = fx_var_fields[i].kind;
    void *field = (char *)c + fx_var_fields[i].field;
    switch (kind) {
    case FX_K_SIZES:
        c->memory_set = 1;
        return fx_parse_list(v, kind, field, &c->memory_given, value, err);
    case FX_K_PERCENTS: {
        int burst = field == (void *)c->burst;
        *(burst ? &c->burst_set : &c->compute_set) = 1;
        return fx_parse_list(v, kind, field, burst ? &c->burst_given : &c->compute_given, value,
                             err);
    }
    case FX_K_CHOICE: return fx_parse_choice(v, value, field, err);
    case FX_K_NAME:
        if (fx_slice_name_valid(value, err) != 0) return -1;
        snprintf(field, FLEXAI_NAME_MAX, "%s", value);
        return 0;
    case FX_K_SIZE: {
        char example[160];
        snprintf(example, sizeof example, "%s=%s or 0", v->name, v->example);
        return fx_parse_size_n(value, strlen(value), field, 1, v->name, example, err);
    }
    case FX_K_PATH:
    case FX_K_ABSPATH: return fx_parse_path(v, value, field, kind == FX_K_ABSPATH, err);
    default: return 0;
    }
}

void fx_config_defaults(flexai_config *c)
{
    memset(c, 0, sizeof *c);
    for (size_t i = 0; i < FX_NVARS; i++)
        if (fx_vars[i].default_text[0] && fx_config_set(c, i, fx_vars[i].default_text, NULL))
            FX_ERROR("contract.def: bad default for %s", fx_vars[i].name);
}

/* Rules between variables, once all are read. */
#define FX_BURST_EXAMPLE "(expected e.g. FLEXAI_GPU_COMPUTE=30 FLEXAI_GPU_COMPUTE_BURST=100)"
static int fx_config_check(const flexai_config *c, flexai_error *err)
{
    if (c->burst_set && !c->compute_set)
        return fx_fail(err, FLEXAI_E_BAD_VALUE, "FLEXAI_GPU_COMPUTE_BURST needs "
                       "FLEXAI_GPU_COMPUTE " FX_BURST_EXAMPLE);
    for (int d = 0; d < FLEXAI_MAX_DEVICES; d++) {
        if (c->burst[d] && !c->compute[d])
            return fx_fail(err, FLEXAI_E_BAD_VALUE, "FLEXAI_GPU_COMPUTE_BURST: device %d has a "
                           "burst but no FLEXAI_GPU_COMPUTE share " FX_BURST_EXAMPLE, d);
        if (c->burst[d] && c->burst[d] < c->compute[d])
            return fx_fail(err, FLEXAI_E_BAD_VALUE, "FLEXAI_GPU_COMPUTE_BURST: %u is below the "
                           "share %u on device %d; the burst is the most a slice may use "
                           FX_BURST_EXAMPLE, c->burst[d], c->compute[d], d);
    }
    return 0;
}

_Static_assert(FX_NVARS <= 32, "the seen-mask below has 32 bits");

/* One name=value pair. A name seen before is ignored: the first occurrence wins, as for
 * getenv() and Python's os.environ, so the shim and the tools read one environment alike. */
static int fx_config_pair(flexai_config *c, uint32_t *seen, const char *name, size_t name_len,
                          const char *value, flexai_error *err)
{
    for (size_t i = 0; i < FX_NVARS; i++) {
        if (strlen(fx_vars[i].name) != name_len || strncmp(fx_vars[i].name, name, name_len) != 0)
            continue;
        if (*seen & (1u << i)) return 0;
        *seen |= 1u << i;
        return fx_config_set(c, i, value, err);
    }
    return 0; /* not ours (FLEXAI_SIM_*, FLEXAI_LIB_DIR, ...): ignored */
}

static int fx_config_parse(const char *const *names, const char *const *values, size_t count,
                           flexai_config *out, flexai_error *err)
{
    uint32_t seen = 0;
    fx_config_defaults(out);
    for (size_t i = 0; i < count; i++) {
        if (!names || !values || !names[i] || !values[i]) continue;
        if (fx_config_pair(out, &seen, names[i], strlen(names[i]), values[i], err) != 0)
            return -1;
    }
    return fx_config_check(out, err);
}

int flexai_config_parse(const char *const *names, const char *const *values, size_t count,
                        flexai_config *out, size_t out_size, flexai_error *err)
{
    flexai_config c;
    if (!out || out_size == 0)
        return fx_fail(err, FLEXAI_E_BAD_VALUE, "flexai_config_parse: missing output");
    int rc = fx_config_parse(names, values, count, &c, err);
    memcpy(out, &c, out_size < sizeof c ? out_size : sizeof c);
    return rc;
}

extern char **environ;

int fx_config_from_env(flexai_config *out, flexai_error *err)
{
    /* Straight from environ, every FLEXAI_* entry in order: no copies, no limit, no malloc. */
    uint32_t seen = 0;
    fx_config_defaults(out);
    for (char **e = environ; e && *e; e++) {
        if (strncmp(*e, "FLEXAI_", 7) != 0) continue;
        const char *eq = strchr(*e, '=');
        if (eq && fx_config_pair(out, &seen, *e, (size_t)(eq - *e), eq + 1, err) != 0) return -1;
    }
    return fx_config_check(out, err);
}
