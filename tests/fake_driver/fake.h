/*
 * fake.h - what the simulated libcuda.so.1 and libnvidia-ml.so.1 share: the CUDA and NVML ABI
 * (csrc/cuda/cuda_api.h, the one header for the shim, the simulated driver and the clients) and
 * the FLEXAI_SIM_* configuration both libraries read.
 *
 * The fake libraries are loaded by real programs (PyTorch, ctypes clients) and by libflexai.so in
 * place of NVIDIA's, so every exported function, enum value and struct layout must match cuda.h
 * (CUDA 12/13, 64-bit) and nvml.h exactly; cuda_api.h says how to check that against a toolkit.
 * The entry points of the fake libcuda are listed in fake_cuda.def.
 */
#ifndef FLEXAI_FAKE_H
#define FLEXAI_FAKE_H

#include <stddef.h>
#include <stdint.h>

#include "cuda_api.h"
#include "flexai.h"

/* ---- shared by both libraries (fake_common.c); hidden, never exported ------------------- */
#define FAKE_HIDDEN __attribute__((visibility("hidden")))

#define FAKE_MAX_DEVICES 16
#define FAKE_UUID_STRLEN 40 /* "GPU-" + 8-4-4-4-12 hex digits */
#define FAKE_DRIVER_VERSION 13000
#define FAKE_DEVICE_NAME "flexai simulated GPU"

struct fake_device_config {
    unsigned char uuid[16];
    char uuid_str[FLEXAI_UUID_STR]; /* canonical lower-case form (fx_uuid_format) */
};

struct fake_config {
    int ndevices;      /* physical devices, 1..FAKE_MAX_DEVICES */
    size_t memory;     /* bytes per device */
    unsigned kernel_us; /* FLEXAI_SIM_KERNEL_US: duration of kernels not named sleep_us* */
    int mps;            /* FLEXAI_SIM_MPS=1: kernels of different processes may overlap */
    struct fake_device_config dev[FAKE_MAX_DEVICES];
};

/* The FLEXAI_SIM_* configuration, parsed once per library. NULL when it is invalid; the reason
 * has then been written to stderr (once). Immutable after the first call. */
FAKE_HIDDEN const struct fake_config *fake_config_get(void);

/* Parses a full "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" (hex case-insensitive). 0 or -1.
 * Stricter than fx_uuid_parse on purpose: FLEXAI_SIM_UUIDS takes only the canonical form. Sizes,
 * UUID text and CUDA_VISIBLE_DEVICES otherwise go through csrc/core/util.h, as in the shim. */
FAKE_HIDDEN int fake_uuid_parse(const char *s, unsigned char out[16]);

#endif /* FLEXAI_FAKE_H */
