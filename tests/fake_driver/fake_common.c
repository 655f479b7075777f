/*
 * fake_common.c - configuration and UUIDs shared by the fake libcuda and libnvidia-ml.
 *
 * Each library links its own copy, so each parses the environment once on its own. The result
 * depends only on the environment, so both agree on device count, memory size and UUIDs.
 *
 * Variables: FLEXAI_SIM_DEVICES (1..16, default 1), FLEXAI_SIM_MEMORY (per device, default
 * 16GiB; the shim's units: "16G" is 16 * 10^9 bytes, "16GiB" 16 * 2^30), FLEXAI_SIM_UUIDS (one
 * GPU-... per device), FLEXAI_SIM_KERNEL_US (duration of kernels not named sleep_us*, default
 * 10), FLEXAI_SIM_MPS (1: kernels of different processes overlap).
 * FLEXAI_SIM_STATE_DIR (where the shared device timeline lives) is read by fake_cuda_sim.c.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fake.h"
#include "util.h"

#define DEFAULT_MEMORY ((size_t)16 << 30)

_Static_assert(SIZE_MAX >= UINT64_MAX, "a size parsed as uint64_t fits a size_t");

static struct fake_config config;
static int config_ok;
static pthread_once_t config_once = PTHREAD_ONCE_INIT;

static int hex_value(char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int fake_uuid_parse(const char *s, unsigned char out[16]) {
    /* Positions of the dashes after "GPU-": 8-4-4-4-12. */
    static const int dash_at[] = {8, 13, 18, 23};
    unsigned char bytes[16];
    int nbytes = 0, high = -1, dash = 0;

    if (s == NULL || strncmp(s, "GPU-", 4) != 0 || strlen(s) != FAKE_UUID_STRLEN)
        return -1;
    for (int i = 0; i < FAKE_UUID_STRLEN - 4; i++) {
        char c = s[4 + i];
        if (dash < 4 && i == dash_at[dash]) {
            if (c != '-')
                return -1;
            dash++;
            continue;
        }
        int v = hex_value(c);
        if (v < 0)
            return -1;
        if (high < 0) {
            high = v;
        } else {
            bytes[nbytes++] = (unsigned char)(high << 4 | v);
            high = -1;
        }
    }
    memcpy(out, bytes, sizeof(bytes));
    return 0;
}

/* GPU-f1e5a100-0000-4000-8000-00000000000N: recognisable in logs, valid version-4 layout, and
 * the same for a given physical index in every process. */
static void default_uuid(int index, unsigned char u[16]) {
    static const unsigned char base[16] = {0xf1, 0xe5, 0xa1, 0x00, 0x00, 0x00, 0x40, 0x00,
                                           0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00};
    memcpy(u, base, sizeof(base));
    u[15] = (unsigned char)index;
}

static int config_fail(const char *var, const char *value, const char *why) {
    /* stderr only: the fake runs inside the host program and must not touch its stdout. */
    fprintf(stderr, "flexai fake driver: %s=\"%s\" %s\n", var, value, why);
    return -1;
}

static int parse_devices(void) {
    const char *s = getenv("FLEXAI_SIM_DEVICES");
    char *end;

    config.ndevices = 1;
    if (s == NULL)
        return 0;
    errno = 0;
    long n = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || n < 1 || n > FAKE_MAX_DEVICES)
        return config_fail("FLEXAI_SIM_DEVICES", s, "is not a device count 1..16 (e.g. 2)");
    config.ndevices = (int)n;
    return 0;
}

/* The shim's size parser, so that "16G" means 16 * 10^9 bytes here as it does there. */
static int parse_memory(void) {
    const char *s = getenv("FLEXAI_SIM_MEMORY");
    flexai_error err;
    uint64_t bytes;

    config.memory = DEFAULT_MEMORY;
    if (s == NULL)
        return 0;
    if (fx_parse_size_n(s, strlen(s), &bytes, 0, "FLEXAI_SIM_MEMORY", "16GiB", &err) != 0) {
        fprintf(stderr, "flexai fake driver: %s\n", err.message);
        return -1;
    }
    config.memory = (size_t)bytes;
    return 0;
}

/* FLEXAI_SIM_KERNEL_US: microseconds, 0 .. 1 hour. */
static int parse_kernel_us(void) {
    const char *s = getenv("FLEXAI_SIM_KERNEL_US");
    char *end;

    config.kernel_us = 10;
    if (s == NULL)
        return 0;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < 0 || v > 3600L * 1000 * 1000)
        return config_fail("FLEXAI_SIM_KERNEL_US", s,
                           "is not a duration in microseconds (e.g. 10)");
    config.kernel_us = (unsigned)v;
    return 0;
}

static int parse_mps(void) {
    const char *s = getenv("FLEXAI_SIM_MPS");

    config.mps = 0;
    if (s == NULL || strcmp(s, "") == 0 || strcmp(s, "0") == 0)
        return 0;
    if (strcmp(s, "1") != 0)
        return config_fail("FLEXAI_SIM_MPS", s, "must be 0 or 1");
    config.mps = 1;
    return 0;
}

static int parse_uuids(void) {
    const char *s = getenv("FLEXAI_SIM_UUIDS");
    int n = 0;

    if (s == NULL) {
        for (int i = 0; i < config.ndevices; i++)
            default_uuid(i, config.dev[i].uuid);
    } else {
        const char *p = s;
        for (;;) {
            const char *comma = strchr(p, ',');
            size_t len = comma ? (size_t)(comma - p) : strlen(p);
            char entry[FAKE_UUID_STRLEN + 1];
            if (n == config.ndevices || len != FAKE_UUID_STRLEN)
                return config_fail("FLEXAI_SIM_UUIDS", s,
                                   "needs one GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx per device");
            memcpy(entry, p, len);
            entry[len] = '\0';
            if (fake_uuid_parse(entry, config.dev[n].uuid) != 0)
                return config_fail("FLEXAI_SIM_UUIDS", s, "holds a malformed UUID");
            n++;
            if (comma == NULL)
                break;
            p = comma + 1;
        }
        if (n != config.ndevices)
            return config_fail("FLEXAI_SIM_UUIDS", s, "must list exactly FLEXAI_SIM_DEVICES UUIDs");
    }
    for (int i = 0; i < config.ndevices; i++) {
        for (int j = 0; j < i; j++)
            if (memcmp(config.dev[i].uuid, config.dev[j].uuid, 16) == 0)
                return config_fail("FLEXAI_SIM_UUIDS", s ? s : "", "lists a UUID twice");
        fx_uuid_format(config.dev[i].uuid, config.dev[i].uuid_str);
    }
    return 0;
}

static void config_load(void) {
    /* UUIDs depend on the device count, so the order matters. */
    config_ok = parse_devices() == 0 && parse_memory() == 0 && parse_uuids() == 0 &&
                parse_kernel_us() == 0 && parse_mps() == 0;
}

const struct fake_config *fake_config_get(void) {
    pthread_once(&config_once, config_load);
    return config_ok ? &config : NULL;
}
