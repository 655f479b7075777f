/*
 * flexai.h - the public control and statistics API of libflexai.so.
 *
 * libflexai.so has two faces. Loaded with LD_PRELOAD it interposes the CUDA driver and NVML and
 * enforces the quotas of the slice named in the environment (see docs/ and DESIGN.md). Loaded
 * normally (cffi, ctypes, a C program) it offers the functions below: parse and validate a slice
 * configuration, and read or change the node's shared state (slices, processes, usage).
 *
 * Conventions: every function returns 0 (or a count >= 0) on success and -1 on failure, and then
 * fills `err` (when not NULL) with a category (FLEXAI_E_*) and a one-line message
 * "what: why (expected e.g. ...)". No function prints, exits or aborts. Structures shared with
 * the caller use fixed-width fields only.
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

/** Error categories (flexai_error.code). Programs act on the category, people read the message;
 *  the command line's exit status follows the category (bad value: 2). */
#define FLEXAI_OK 0
#define FLEXAI_E_BAD_VALUE 1  /**< a value given by the caller is invalid (names it + an example) */
#define FLEXAI_E_STATE 2      /**< the node's shared state cannot be used (permissions, layout) */
#define FLEXAI_E_FULL 3       /**< a table of the node's state is full (slices, devices, procs) */
#define FLEXAI_E_NOT_FOUND 4  /**< no such slice, device or variable */
#define FLEXAI_E_SYSTEM 5     /**< the operating system refused (memory, files, locks) */
#define FLEXAI_E_QUOTA 6      /**< the request does not fit the slice's quota */
#define FLEXAI_E_DRIVER 7     /**< the real driver is missing or failed */
#define FLEXAI_E_PERMISSION 8 /**< the slice belongs to another user */

/** @brief A failure: its category and its one-line message. */
typedef struct flexai_error {
    int32_t code;                 /**< FLEXAI_E_*; FLEXAI_OK when nothing failed */
    char message[FLEXAI_ERR_MAX]; /**< "what: why (expected e.g. ...)" */
} flexai_error;

/** @brief Short name of an error category ("bad value", "unusable state", ...). */
FLEXAI_API const char *flexai_error_name(int32_t code);

/** Log levels of FLEXAI_LOG. */
#define FLEXAI_LOG_ERROR 0
#define FLEXAI_LOG_WARN 1
#define FLEXAI_LOG_INFO 2
#define FLEXAI_LOG_DEBUG 3

/**
 * @brief The effective configuration of one process, as read from FLEXAI_* variables.
 *
 * Quotas are per device index as the program sees it (after CUDA_VISIBLE_DEVICES, or
 * ASCEND_RT_VISIBLE_DEVICES on Ascend NPUs).
 * A value of 0 means "no limit" for that device; the parser rejects an explicit 0.
 * The struct grows at its end only: callers pass the size they know to flexai_config_parse,
 * which fills that much, so a program built against an older header keeps working.
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
    uint32_t memory_given;                /**< bit d: device d was given by index ("d:8GiB") */
    uint32_t compute_given;               /**< bit d: device d's share was given by index */
    uint32_t burst_given;                 /**< bit d: device d's burst was given by index */
    uint32_t pad0;
    int32_t sharing;                      /**< FLEXAI_SHARING_* */
    char slice[FLEXAI_NAME_MAX];          /**< slice name; empty: a private slice per process */
    char state_dir[FLEXAI_PATH_MAX];      /**< directory of the node's shared state */
    char libcuda[FLEXAI_PATH_MAX];        /**< the real CUDA driver library */
    char libnvml[FLEXAI_PATH_MAX];        /**< the real NVML library */
    char libacl[FLEXAI_PATH_MAX];         /**< the real Ascend runtime (libascendcl.so) */
    char libopapi[FLEXAI_PATH_MAX];       /**< the real Ascend operator library (aclnn) */
} flexai_config;

/**
 * @brief Parse a configuration from name/value pairs (normally the process environment).
 * @param names    variable names, e.g. "FLEXAI_GPU_MEMORY"; names this parser does not own
 *                 (FLEXAI_SIM_*, other programs' variables) are ignored. A name given twice
 *                 takes its first value, as getenv() and Python's os.environ do.
 * @param values   their values, same length as names.
 * @param count    number of pairs.
 * @param out      filled with defaults, then with every valid value.
 * @param out_size sizeof(flexai_config) as the caller knows it; at most that much is written.
 * @param err      NULL or filled on failure with FLEXAI_E_BAD_VALUE, the variable and an example.
 * @return 0 on success, -1 on the first invalid value.
 * Thread-safe; allocates nothing.
 */
FLEXAI_API int flexai_config_parse(const char *const *names, const char *const *values,
                                   size_t count, flexai_config *out, size_t out_size,
                                   flexai_error *err);

/**
 * @brief Parse one size such as "8GiB", "4096MiB", "1.5G" (decimal: 10^9) or "1073741824".
 * @return 0 and *bytes on success, -1 (FLEXAI_E_BAD_VALUE) on a malformed, zero or overflowing
 *         size.
 */
FLEXAI_API int flexai_parse_size(const char *text, uint64_t *bytes, flexai_error *err);

/** Kinds of FLEXAI_* variables (flexai_var.kind). */
#define FLEXAI_VAR_SIZES 1    /**< per-device list of sizes: "8GiB" or "0:8GiB,1:4GiB" */
#define FLEXAI_VAR_PERCENTS 2 /**< per-device list of percentages 1..100: "30" or "0:30,1:50" */
#define FLEXAI_VAR_CHOICE 3   /**< one of the words in `choices` */
#define FLEXAI_VAR_NAME 4     /**< a slice name: letters, digits, '-', '_', '.' */
#define FLEXAI_VAR_SIZE 5     /**< one size, 0 allowed */
#define FLEXAI_VAR_PATH 6     /**< a path (absolute where `example` is) */

/**
 * @brief One FLEXAI_* variable of the user-facing contract. The table is the parser's own:
 *        tools build their variable lists, command-line options and environments from it.
 */
typedef struct flexai_var {
    const char *name;         /**< "FLEXAI_GPU_MEMORY" */
    const char *option;       /**< command-line option of `flexai run`, e.g. "--gpu-memory";
                                   NULL when the variable has none */
    const char *example;      /**< a valid value, e.g. "8GiB" */
    const char *choices;      /**< FLEXAI_VAR_CHOICE: "low,normal,high"; else NULL */
    const char *default_text; /**< the default, as a user would write it, or "" for none */
    const char *help;         /**< one line */
    int32_t kind;             /**< FLEXAI_VAR_* */
    int32_t per_slice;        /**< 1: a setting of the slice (memory, compute, ...); 0: of the
                                   process or the node (logging, paths) */
} flexai_var;

/**
 * @brief The contract table.
 * @param out receives a pointer to the first of the returned entries (static storage).
 * @return the number of variables.
 */
FLEXAI_API size_t flexai_vars(const flexai_var **out);

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
FLEXAI_API int flexai_node_open(const char *state_dir, flexai_node **out, flexai_error *err);

/** @brief Detach from the shared state. Accepts NULL. */
FLEXAI_API void flexai_node_close(flexai_node *node);

/**
 * @brief Reclaim the usage of processes that have exited (or were killed).
 * @return the number of processes reclaimed, or -1.
 */
FLEXAI_API int flexai_node_sweep(flexai_node *node, flexai_error *err);

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
 * the slice used on the device while it was scheduled, throttled_ns the time its launches were
 * held back by the scheduler (a cap, a higher priority, another slice's lease) (slice rows
 * only).
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
    uint64_t throttled_ns;
} flexai_usage_row;

/** @brief Copy up to `cap` devices into out. @return the number of devices, or -1. */
FLEXAI_API int flexai_node_devices(flexai_node *node, flexai_device_info *out, size_t cap,
                                   flexai_error *err);

/** @brief Copy up to `cap` slices into out: the caller's own slices (all of them for root).
 *  @return the number of slices, or -1. */
FLEXAI_API int flexai_node_slices(flexai_node *node, flexai_slice_info *out, size_t cap,
                                  flexai_error *err);

/**
 * @brief Copy up to `cap` usage rows: for every slice (the caller's own; all for root) and
 *        device with a limit or usage, one slice row (pid 0) followed by one row per process
 *        charged on that device.
 * @return the number of rows (may exceed cap: call again with a bigger buffer), or -1.
 */
FLEXAI_API int flexai_node_usage(flexai_node *node, flexai_usage_row *out, size_t cap,
                                 flexai_error *err);

/**
 * @brief Set a slice's memory quota on one device (creating the slice if needed, owned by the
 *        caller). Only the slice's owner or root may change it (FLEXAI_E_PERMISSION).
 * @param bytes new quota, 0 to remove the limit. Lowering it below current usage refuses new
 *              allocations until usage drops; nothing already allocated is freed.
 * @param uuid  "GPU-..." of the device.
 */
FLEXAI_API int flexai_node_set_memory_limit(flexai_node *node, const char *slice,
                                            const char *uuid, uint64_t bytes, flexai_error *err);

/**
 * @brief Set a slice's compute share and burst on one device (creating the slice if needed,
 *        owned by the caller); running processes apply it at their next kernel launch. Only the
 *        slice's owner or root may change it (FLEXAI_E_PERMISSION).
 * @param percent share 1..100, or 0 to remove it; burst 0 (hard cap) or percent..100.
 */
FLEXAI_API int flexai_node_set_compute(flexai_node *node, const char *slice, const char *uuid,
                                       uint32_t percent, uint32_t burst, flexai_error *err);

#ifdef __cplusplus
}
#endif

#endif /* FLEXAI_H */
