/* cffi declarations of include/flexai.h (ABI mode: no compiler needed).
 *
 * Keep in step with include/flexai.h: tests/test_config.py compares the constants, the structs
 * and the function names of both files. Only the preprocessor lines, FLEXAI_API and the
 * comments are left out. flexai/_ffi.py also reads the FLEXAI_* constants from this file, so
 * Python never restates them.
 */

#define FLEXAI_MAX_DEVICES 16
#define FLEXAI_NAME_MAX 64
#define FLEXAI_PATH_MAX 512
#define FLEXAI_ERR_MAX 256
#define FLEXAI_UUID_STR 48

#define FLEXAI_PRIORITY_LOW 0
#define FLEXAI_PRIORITY_NORMAL 1
#define FLEXAI_PRIORITY_HIGH 2

#define FLEXAI_SHARING_AUTO 0
#define FLEXAI_SHARING_TIME 1
#define FLEXAI_SHARING_SPATIAL 2

#define FLEXAI_OK 0
#define FLEXAI_E_BAD_VALUE 1
#define FLEXAI_E_STATE 2
#define FLEXAI_E_FULL 3
#define FLEXAI_E_NOT_FOUND 4
#define FLEXAI_E_SYSTEM 5
#define FLEXAI_E_QUOTA 6
#define FLEXAI_E_DRIVER 7
#define FLEXAI_E_PERMISSION 8

typedef struct flexai_error {
    int32_t code;
    char message[FLEXAI_ERR_MAX];
} flexai_error;

const char *flexai_error_name(int32_t code);

#define FLEXAI_LOG_ERROR 0
#define FLEXAI_LOG_WARN 1
#define FLEXAI_LOG_INFO 2
#define FLEXAI_LOG_DEBUG 3

typedef struct flexai_config {
    uint64_t memory[FLEXAI_MAX_DEVICES];
    uint32_t compute[FLEXAI_MAX_DEVICES];
    uint32_t burst[FLEXAI_MAX_DEVICES];
    uint64_t context_memory;
    int32_t priority;
    int32_t log_level;
    uint32_t memory_set;
    uint32_t compute_set;
    uint32_t burst_set;
    uint32_t memory_given;
    uint32_t compute_given;
    uint32_t burst_given;
    uint32_t pad0;
    int32_t sharing;
    char slice[FLEXAI_NAME_MAX];
    char state_dir[FLEXAI_PATH_MAX];
    char libcuda[FLEXAI_PATH_MAX];
    char libnvml[FLEXAI_PATH_MAX];
    char libacl[FLEXAI_PATH_MAX];
    char libopapi[FLEXAI_PATH_MAX];
} flexai_config;

int flexai_config_parse(const char *const *names, const char *const *values, size_t count,
                        flexai_config *out, size_t out_size, flexai_error *err);
int flexai_parse_size(const char *text, uint64_t *bytes, flexai_error *err);

#define FLEXAI_VAR_SIZES 1
#define FLEXAI_VAR_PERCENTS 2
#define FLEXAI_VAR_CHOICE 3
#define FLEXAI_VAR_NAME 4
#define FLEXAI_VAR_SIZE 5
#define FLEXAI_VAR_PATH 6

typedef struct flexai_var {
    const char *name;
    const char *option;
    const char *example;
    const char *choices;
    const char *default_text;
    const char *help;
    int32_t kind;
    int32_t per_slice;
} flexai_var;

size_t flexai_vars(const flexai_var **out);
const char *flexai_version(void);

typedef struct flexai_node flexai_node;

int flexai_node_open(const char *state_dir, flexai_node **out, flexai_error *err);
void flexai_node_close(flexai_node *node);
int flexai_node_sweep(flexai_node *node, flexai_error *err);

typedef struct flexai_device_info {
    uint32_t id;
    uint32_t pad;
    char uuid[FLEXAI_UUID_STR];
} flexai_device_info;

typedef struct flexai_slice_info {
    uint32_t id;
    int32_t priority;
    uint32_t nprocs;
    uint32_t pad;
    char name[FLEXAI_NAME_MAX];
} flexai_slice_info;

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

int flexai_node_devices(flexai_node *node, flexai_device_info *out, size_t cap,
                        flexai_error *err);
int flexai_node_slices(flexai_node *node, flexai_slice_info *out, size_t cap, flexai_error *err);
int flexai_node_usage(flexai_node *node, flexai_usage_row *out, size_t cap, flexai_error *err);
int flexai_node_set_memory_limit(flexai_node *node, const char *slice, const char *uuid,
                                 uint64_t bytes, flexai_error *err);
int flexai_node_set_compute(flexai_node *node, const char *slice, const char *uuid,
                            uint32_t percent, uint32_t burst, flexai_error *err);
