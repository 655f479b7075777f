/* util.h - small vendor-free helpers shared by the shim and the simulated driver: sizes, UUIDs,
 * the visible-device list, the clock. One implementation of each, so that "16G" or
 * "CUDA_VISIBLE_DEVICES=0,0" mean the same thing to every part of the project.
 * Nothing here allocates, locks or logs.
 */
#ifndef FX_UTIL_H
#define FX_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "flexai.h"

/* CLOCK_MONOTONIC in nanoseconds; the coarse one (a few ms of resolution, cheaper) for
 * deadlines of tens of milliseconds. */
uint64_t fx_now_ns(void);
uint64_t fx_now_coarse_ns(void);

/* a * b, saturating at UINT64_MAX. */
uint64_t fx_mul_sat(uint64_t a, uint64_t b);

/* Parse "<digits>[.<digits>]<unit>" (the first `len` bytes of s) into bytes. Units: none or B,
 * binary KiB/MiB/GiB/TiB (also Ki, Mi, ...), decimal K/KB/M/MB/G/GB/T/TB (the Kubernetes
 * convention: "16G" is 16 * 10^9 bytes); case does not matter. On error fills err with
 * FLEXAI_E_BAD_VALUE naming `var` and showing `example`. */
int fx_parse_size_n(const char *s, size_t len, uint64_t *bytes, int allow_zero, const char *var,
                    const char *example, flexai_error *err);

/* A 64-bit mix of `n` 64-bit words (not cryptographic: it detects accidental damage, a bit
 * flip, random or zeroed bytes, never a deliberate forger). A few ns per word. */
uint64_t fx_hash_words(const uint64_t *w, size_t n, uint64_t seed);

/* "GPU-xxxxxxxx-xxxx-..." or "NPU-..." (or 32 bare hex digits) to 16 bytes; 0 or -1. */
int fx_uuid_parse(const char *text, uint8_t out[16]);
void fx_uuid_format(const uint8_t uuid[16], char out[FLEXAI_UUID_STR]);

/* Devices are keyed by 16 bytes. A GPU's are its UUID; an NPU has no UUID, so its backend makes
 * 16 bytes from a stable id that begin with the tag 'N' 'P' 'U' 0 (0x4e505500): such ids are
 * written "NPU-..." instead of "GPU-..." (a GPU UUID starting with those 4 bytes, 1 in 2^32,
 * would only be shown as NPU). */
#define FX_NPU_TAG0 0x4e
#define FX_NPU_TAG1 0x50
#define FX_NPU_TAG2 0x55
int fx_uuid_is_npu(const uint8_t uuid[16]);

/* Which of `n` devices (named uuid_text[i], "GPU-...") a list such as CUDA_VISIBLE_DEVICES makes
 * visible, in order: order[k] = index of the k-th visible device. Entries are indices, whole
 * UUIDs or unique UUID prefixes; as in NVIDIA's driver, the list ends at the first entry that is
 * invalid, unknown, ambiguous or repeated. `list` NULL: all devices. Returns the count. */
int fx_visible_parse(const char *list, const char *const *uuid_text, int n, int *order, int max);

#endif
