/* util.c - sizes, UUIDs, visible-device lists and the clock (see util.h). */
#include "util.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "log.h"

uint64_t fx_now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ULL + (uint64_t)t.tv_nsec;
}

uint64_t fx_now_coarse_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &t);
    return (uint64_t)t.tv_sec * 1000000000ULL + (uint64_t)t.tv_nsec;
}

uint64_t fx_mul_sat(uint64_t a, uint64_t b)
{
    uint64_t r;
    return __builtin_mul_overflow(a, b, &r) ? UINT64_MAX : r;
}

#define FX_MIX(h, x) (((h) ^ (x)) * 0xc4ceb9fe1a85ec53ULL)

uint64_t fx_hash_words(const uint64_t *w, size_t n, uint64_t seed)
{
    /* four independent lanes: the multiplications overlap instead of waiting on each other */
    uint64_t a = seed ^ 0x9e3779b97f4a7c15ULL, b = seed + n, c = ~seed, d = seed ^ (n << 32);
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        a = FX_MIX(a, w[i]);
        b = FX_MIX(b, w[i + 1]);
        c = FX_MIX(c, w[i + 2]);
        d = FX_MIX(d, w[i + 3]);
    }
    for (; i < n; i++) a = FX_MIX(a, w[i]);
    uint64_t x = a ^ ((b << 17) | (b >> 47)) ^ ((c << 31) | (c >> 33)) ^ ((d << 47) | (d >> 17));
    x = (x ^ (x >> 33)) * 0xff51afd7ed558ccdULL;
    x = (x ^ (x >> 29)) * 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 32;
    return x ? x : 1; /* never 0: a zero-filled record must not look sealed */
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

#define FX_BAD_SIZE(what)                                                                      \
    fx_fail(err, FLEXAI_E_BAD_VALUE, "%s: '%.*s' " what " (expected e.g. %s)", var, (int)len, s, \
            example)

int fx_parse_size_n(const char *s, size_t len, uint64_t *bytes, int allow_zero, const char *var,
                    const char *example, flexai_error *err)
{
    size_t i = 0;
    uint64_t whole = 0;
    uint64_t frac_num = 0, frac_den = 1;
    if (len == 0)
        return fx_fail(err, FLEXAI_E_BAD_VALUE, "%s: empty size (expected e.g. %s)", var,
                       example);
    if (!isdigit((unsigned char)s[0])) return FX_BAD_SIZE("is not a size");
    for (; i < len && isdigit((unsigned char)s[i]); i++) {
        if (whole > (UINT64_MAX - 9) / 10) return FX_BAD_SIZE("is too large");
        whole = whole * 10 + (uint64_t)(s[i] - '0');
    }
    if (i < len && s[i] == '.') {
        i++;
        if (i >= len || !isdigit((unsigned char)s[i])) return FX_BAD_SIZE("is not a size");
        for (; i < len && isdigit((unsigned char)s[i]); i++) {
            if (frac_den < 1000000000ULL) { /* nine decimals are plenty */
                frac_num = frac_num * 10 + (uint64_t)(s[i] - '0');
                frac_den *= 10;
            }
        }
    }
    char unit[8];
    size_t ulen = len - i;
    if (ulen >= sizeof unit) return FX_BAD_SIZE("has an unknown unit");
    for (size_t k = 0; k < ulen; k++) unit[k] = (char)tolower((unsigned char)s[i + k]);
    unit[ulen] = '\0';
    const struct fx_unit *u = NULL;
    for (size_t k = 0; k < sizeof fx_units / sizeof fx_units[0]; k++)
        if (strcmp(fx_units[k].name, unit) == 0) u = &fx_units[k];
    if (!u) return FX_BAD_SIZE("has an unknown unit");
    if (whole > UINT64_MAX / u->scale) return FX_BAD_SIZE("is too large");
    uint64_t total = whole * u->scale;
    /* frac_num < frac_den <= 1e9 and scale <= 2^40: long double holds the product exactly
     * enough for a byte count */
    uint64_t frac_bytes =
        (uint64_t)((long double)frac_num * (long double)u->scale / (long double)frac_den);
    if (total > UINT64_MAX - frac_bytes) return FX_BAD_SIZE("is too large");
    total += frac_bytes;
    if (total == 0 && !allow_zero) return FX_BAD_SIZE("must be greater than zero");
    *bytes = total;
    return 0;
}

static int fx_hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

int fx_uuid_parse(const char *text, uint8_t out[16])
{
    const char *p = text;
    if (strncmp(p, "GPU-", 4) == 0 || strncmp(p, "NPU-", 4) == 0) p += 4;
    int n = 0;
    for (; *p && n < 32; p++) {
        if (*p == '-') continue;
        int v = fx_hexval(*p);
        if (v < 0) return -1;
        if (n % 2 == 0) out[n / 2] = (uint8_t)(v << 4);
        else out[n / 2] = (uint8_t)(out[n / 2] | v);
        n++;
    }
    return (n == 32 && *p == '\0') ? 0 : -1;
}

int fx_uuid_is_npu(const uint8_t u[16])
{
    return u[0] == FX_NPU_TAG0 && u[1] == FX_NPU_TAG1 && u[2] == FX_NPU_TAG2 && u[3] == 0;
}

void fx_uuid_format(const uint8_t u[16], char out[FLEXAI_UUID_STR])
{
    snprintf(out, FLEXAI_UUID_STR,
             "%s-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
             fx_uuid_is_npu(u) ? "NPU" : "GPU", u[0],
             u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13],
             u[14], u[15]);
}

/* One entry to a device index, -1 when invalid, unknown or ambiguous. */
static int fx_visible_entry(const char *tok, size_t len, const char *const *uuid_text, int n)
{
    while (len && isspace((unsigned char)*tok)) tok++, len--;
    while (len && isspace((unsigned char)tok[len - 1])) len--;
    if (len == 0) return -1;
    if (isdigit((unsigned char)tok[0])) {
        unsigned v = 0;
        for (size_t i = 0; i < len; i++) {
            if (!isdigit((unsigned char)tok[i]) || v > 1000000) return -1;
            v = v * 10 + (unsigned)(tok[i] - '0');
        }
        return v < (unsigned)n ? (int)v : -1;
    }
    if (len <= 4 || strncmp(tok, "GPU-", 4) != 0) return -1;
    int found = -1;
    for (int i = 0; i < n; i++) {
        if (strlen(uuid_text[i]) < len || strncasecmp(uuid_text[i], tok, len) != 0) continue;
        if (found >= 0) return -1; /* ambiguous prefix */
        found = i;
    }
    return found;
}

int fx_visible_parse(const char *list, const char *const *uuid_text, int n, int *order, int max)
{
    int count = 0;
    if (!list) {
        for (; count < n && count < max; count++) order[count] = count;
        return count;
    }
    for (const char *p = list; count < max;) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        int idx = fx_visible_entry(p, len, uuid_text, n);
        if (idx < 0) break;
        for (int k = 0; k < count; k++)
            if (order[k] == idx) return count; /* a repeated device ends the list */
        order[count++] = idx;
        if (!end) break;
        p = end + 1;
    }
    return count;
}
