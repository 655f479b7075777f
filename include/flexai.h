/*
 * flexai.h - the public control and statistics API of libflexai.so.
 *
 * libflexai.so has two faces. Loaded with LD_PRELOAD it interposes the CUDA driver and NVML and
 * enforces the quotas of the slice named in the environment (see docs/ and DESIGN.md). Loaded
 * normally (cffi, ctypes, a C program) it offers the functions below: parse and validate a slice
 * configuration, and read or change the node's shared state (slices, processes, usage).
 *
 * Conventions: every function returns 0 (or a count >= 0) on success and -1 on failure, with a
 * one-line message "what: why (expected e.g. ...)" written to `err` when `err` is not NULL.
 * No function prints, exits or aborts. All structures use fixed-width fields only.
 */
#ifndef FLEXAI_H
#define FLEXAI_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define FLEXAI_API __attribute__((visibility("default")))
#else
#define FLEXAI_API
#endif

/** Most devices one process can see and one node can hold in its shared state. */
#define FLEXAI_MAX_DEVICES 16
/** Longest slice name, including the terminating NUL. */
#define FLEXAI_NAME_MAX 64
/** Longest path stored in a configuration, including the terminating NUL. */
#define FLEXAI_PATH_MAX 512
/** Size of the buffer that error messages are written to (longer messages are cut). */
#define FLEXAI_ERR_MAX 256
/** A UUID as text, "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", with NUL. */
#define FLEXAI_UUID_STR 48

/** Priorities of FLEXAI_PRIORITY. */
#define FLEXAI_PRIORITY_LOW 0
#define FLEXAI_PRIORITY_NORMAL 1
#define FLEXAI_PRIORITY_HIGH 2

/** How slices share a device (FLEXAI_SHARING): auto picks spatial where an MPS daemon runs. */
#define FLEXAI_SHARING_AUTO 0
#define FLEXAI_SHARING_TIME 1
#define FLEXAI_SHARING_SPATIAL 2

/** Log levels of FLEXAI_LOG. */
#define FLEXAI_LOG_ERROR 0
#define FLEXAI_LOG_WARN 1
#define FLEXAI_LOG_INFO 2
#define FLEXAI_LOG_DEBUG 3

/**
 * @brief The effective configuration of one process, as read from FLEXAI_* variables.
 *
 * Quotas are per device index as the program sees it (after CUDA_VISIBLE_DEVICES).
 * A value of 0 means "no limit" for that device; the parser rejects an explicit 0.
 */
typedef struct flexai_config {
    uint64_t memory[FLEXAI_MAX_DEVICES];  /**< memory quota in bytes per visible device */
    uint32_t compute[FLEXAI_MAX_DEVICES]; /**< compute share in percent (1..100) per device */
    uint32_t burst[FLEXAI_MAX_DEVICES];   /**< 0: the share is a hard cap; else the cap (>= share)
                                               and the share is guaranteed under contention */
    uint64_t context_memory;              /**< charged per process and device for its context */
    int32_t priority;                     /**< FLEXAI_PRIORITY_* */
    int32_t log_level;                    /**< FLEXAI_LOG_* */
    uint32_t memory_set;                  /**< 1 when FLEXAI_GPU_MEMORY was given */
    uint32_t compute_set;                 /**< 1 when FLEXAI_GPU_COMPUTE was given */
    uint32_t burst_set;                   /**< 1 when FLEXAI_GPU_COMPUTE_BURST was given */
    int32_t sharing;                      /**< FLEXAI_SHARING_* */
    char slice[FLEXAI_NAME_MAX];          /**< slice name; empty: a private slice per process */
    char state_dir[FLEXAI_PATH_MAX];      /**< directory of the node's shared state */
    char libcuda[FLEXAI_PATH_MAX];        /**< the real CUDA driver library */
    char libnvml[FLEXAI_PATH_MAX];        /**< the real NVML library */
} flexai_config;

/**
 * @brief Parse a configuration from name/value pairs (normally the process environment).
 * @param names   variable names, e.g. "FLEXAI_GPU_MEMORY"; names this parser does not own
 *                (FLEXAI_SIM_*, other programs' variables) are ignored.
 * @param values  their values, same length as names.
 * @param count   number of pairs.
 * @param out     filled with defaults, then with every valid value.
 * @param err     FLEXAI_ERR_MAX bytes or NULL; on failure names the variable and an example.
 * @return 0 on success, -1 on the first invalid value.
 * Thread-safe; allocates nothing.
 */
FLEXAI_API int flexai_config_parse(const char *const *names, const char *const *values,
                                   size_t count, flexai_config *out, char *err);

/**
 * @brief Parse one size such as "8GiB", "4096MiB", "1.5G" (decimal) or "1073741824" (bytes).
 * @return 0 and *bytes on success, -1 on a malformed, zero or overflowing size.
 */
FLEXAI_API int flexai_parse_size(const char *text, uint64_t *bytes, char *err);

/** @brief The library's version, e.g. "0.1.0". */
FLEXAI_API const char *flexai_version(void);

/** Opaque handle on the node's shared state. */
typedef struct flexai_node flexai_node;

/**
 * @brief Attach to (creating if needed) the shared state in `state_dir`.
 * @param state_dir directory; NULL or "" means FLEXAI_STATE_DIR or /dev/shm/flexai.
 * @param out       receives the handle; release it with flexai_node_close.
 * @return 0 on success, -1 when the directory or state file cannot be used (wrong version,
 *         permissions, corrupt), with the reason in err.
 */
FLEXAI_API int flexai_node_open(const char *state_dir, flexai_node **out, char *err);

/** @brief Detach from the shared state. Accepts NULL. */
FLEXAI_API void flexai_node_close(flexai_node *node);

/**
 * @brief Reclaim the usage of processes that have exited (or were killed).
 * @return the number of processes reclaimed, or -1.
 */
FLEXAI_API int flexai_node_sweep(flexai_node *node, char *err);

/** One device known to the node. */
typedef struct flexai_device_info {
    uint32_t id;                     /**< index in the node's device table */
    uint32_t pad;
    char uuid[FLEXAI_UUID_STR];      /**< "GPU-..." */
} flexai_device_info;

/** One slice of the node. */
typedef struct flexai_slice_info {
    uint32_t id;                     /**< index in the node's slice table */
    int32_t priority;                /**< FLEXAI_PRIORITY_* */
    uint32_t nprocs;                 /**< live processes attached */
    uint32_t pad;
    char name[FLEXAI_NAME_MAX];
} flexai_slice_info;

/**
 * One usage row: a slice (pid == 0) or one of its processes (pid > 0) on one device.
 * limit_bytes is the slice's quota on that device (0: none); used_bytes is what is charged.
 * compute/burst are the slice's share and burst in percent (0: none); gpu_ns is the GPU time
 * the slice used on the device while it was scheduled (slice rows only).
 */
typedef struct flexai_usage_row {
    uint32_t slice_id;
    uint32_t device_id;
    int32_t pid;
    uint32_t compute;
    uint64_t limit_bytes;
    uint64_t used_bytes;
    uint32_t burst;
    uint32_t pad;
    uint64_t gpu_ns;
} flexai_usage_row;

/** @brief Copy up to `cap` devices into out. @return the number of devices, or -1. */
FLEXAI_API int flexai_node_devices(flexai_node *node, flexai_device_info *out, size_t cap,
                                   char *err);

/** @brief Copy up to `cap` slices into out. @return the number of slices, or -1. */
FLEXAI_API int flexai_node_slices(flexai_node *node, flexai_slice_info *out, size_t cap, char *err);

/**
 * @brief Copy up to `cap` usage rows: for every slice and device with a limit or usage, one
 *        slice row (pid 0) followed by one row per process charged on that device.
 * @return the number of rows (may exceed cap: call again with a bigger buffer), or -1.
 */
FLEXAI_API int flexai_node_usage(flexai_node *node, flexai_usage_row *out, size_t cap, char *err);

/**
 * @brief Set a slice's memory quota on one device (creating the slice if needed).
 * @param bytes new quota, 0 to remove the limit. Lowering it below current usage refuses new
 *              allocations until usage drops; nothing already allocated is freed.
 * @param uuid  "GPU-..." of the device.
 */
FLEXAI_API int flexai_node_set_memory_limit(flexai_node *node, const char *slice, const char *uuid,
                                 uint64_t bytes, char *err);

/**
 * @brief Set a slice's compute share and burst on one device (creating the slice if needed);
 *        running processes apply it at their next kernel launch.
 * @param percent share 1..100, or 0 to remove it; burst 0 (hard cap) or percent..100.
 */
FLEXAI_API int flexai_node_set_compute(flexai_node *node, const char *slice, const char *uuid,
                                       uint32_t percent, uint32_t burst, char *err);

#ifdef __cplusplus
}
#endif

#endif /* FLEXAI_H */
