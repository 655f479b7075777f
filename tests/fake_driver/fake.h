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

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "cuda_api.h"
#include "flexai.h"

/* ---- shared by both libraries (fake_common.c); hidden, never exported ------------------- */
#define FAKE_HIDDEN __attribute__((visibility("hidden")))

#define FAKE_MAX_DEVICES 16
#define FAKE_UUID_STRLEN 40 /* "GPU-" + 8-4-4-4-12 hex digits */
#define FAKE_DRIVER_VERSION 13000
#define FAKE_DEVICE_NAME "flexai simulated GPU" /* FLEXAI_SIM_NAME's default */
#define FAKE_NAME_MAX 63 /* characters: NVML's name buffer holds 64 bytes */

struct fake_device_config {
    unsigned char uuid[16];
    char uuid_str[FLEXAI_UUID_STR]; /* canonical lower-case form (fx_uuid_format) */
};

struct fake_config {
    int ndevices;      /* physical devices, 1..FAKE_MAX_DEVICES */
    size_t memory;     /* bytes per device */
    unsigned kernel_us; /* FLEXAI_SIM_KERNEL_US: duration of kernels not named sleep_us* */
    int mps;            /* FLEXAI_SIM_MPS=1: kernels of different processes may overlap */
    char name[FAKE_NAME_MAX + 1]; /* FLEXAI_SIM_NAME: the model name every device reports */
    struct fake_device_config dev[FAKE_MAX_DEVICES];
};

/* The FLEXAI_SIM_* configuration, parsed once per library. NULL when it is invalid; the reason
 * has then been written to stderr (once). Immutable after the first call. */
FAKE_HIDDEN const struct fake_config *fake_config_get(void);

/* Parses a full "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" (hex case-insensitive). 0 or -1.
 * Stricter than fx_uuid_parse on purpose: FLEXAI_SIM_UUIDS takes only the canonical form. Sizes,
 * UUID text and CUDA_VISIBLE_DEVICES otherwise go through csrc/core/util.h, as in the shim. */
FAKE_HIDDEN int fake_uuid_parse(const char *s, unsigned char out[16]);

/* ---- the simulated node's shared files (fake_common.c) ---------------------------------
 * What every process on the simulated machine sees alike lives in small files under
 * $FLEXAI_SIM_STATE_DIR (default: a folder of the user's in the flexai node's state directory,
 * else /dev/shm/flexai-sim-<uid>): the device timeline (fake_sim.c, dev<N>) and the device
 * memory (below, memory). Each file starts with struct fake_shared_header; locks in it are
 * robust process-shared mutexes. */
struct fake_shared_header {
    uint64_t magic; /* written last, with release: a file with it is fully initialised */
    uint64_t size;  /* of the whole file, so another layout is never taken for this one */
};

/* Maps state file `name` of `size` bytes, creating or (when its header is not magic/size)
 * re-initialising it under an exclusive flock: the region is zeroed, init() fills it, then the
 * header is written. NULL when the file cannot be used. */
FAKE_HIDDEN void *fake_state_map(const char *name, size_t size, uint64_t magic,
                                 void (*init)(void *region));
/* The same, in private memory: the fallback when the file cannot be used (nothing is shared). */
FAKE_HIDDEN void *fake_state_private(size_t size, uint64_t magic, void (*init)(void *region));
FAKE_HIDDEN void fake_robust_init(pthread_mutex_t *m);
/* Locks m; a holder that died leaves it to us, consistent (every user keeps its table valid
 * after each single store). */
FAKE_HIDDEN void fake_robust_lock(pthread_mutex_t *m);

/* Device memory of the simulated node, by physical device, as a real GPU has it: shared by every
 * process, so cuMemGetInfo and NVML report what is really left and one process's allocations
 * can make another's fail. Each process's holdings are kept apart and given back when it exits
 * (found by pid and start time, as the shim does); a forked child starts with none.
 * charge: 0, or -1 when fewer than `bytes` of `total` are free (CUDA_ERROR_OUT_OF_MEMORY).
 * uncharge never lets this process's count wrap below zero. used: every live process's sum. */
FAKE_HIDDEN int fake_node_mem_charge(int physical, size_t bytes, size_t total);
FAKE_HIDDEN void fake_node_mem_uncharge(int physical, size_t bytes);
FAKE_HIDDEN size_t fake_node_mem_used(int physical);

/* ---- the simulated device's time (fake_sim.c) ------------------------------------------
 * Occupies physical device dev for ns nanoseconds of device time, shared with every process on
 * the node, no earlier than `floor` (when the work reached the device's queue); returns when it
 * has ended, with its exact end. */
FAKE_HIDDEN int64_t fake_sim_kernel(int dev, int64_t ns, int64_t floor);
FAKE_HIDDEN int64_t fake_now_ns(void);

/* The state files of one library's devices start with this (the NPUs' with "npu-"), so that a
 * simulated node can have GPUs and NPUs side by side. */
#ifndef FAKE_STATE_PREFIX
#define FAKE_STATE_PREFIX ""
#endif

#endif /* FLEXAI_FAKE_H */
