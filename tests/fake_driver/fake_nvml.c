/*
 * fake_nvml.c - simulated libnvidia-ml.so.1.
 *
 * NVML enumerates physical devices in FLEXAI_SIM_* order and ignores CUDA_VISIBLE_DEVICES, as the
 * real library does; UUIDs are the ones the fake libcuda reports. An nvmlDevice_t points into a
 * static table, so handles stay valid across nvmlShutdown/nvmlInit like real ones.
 *
 * Memory: like real NVML, the device-wide usage of every process on the node (the fake libcuda
 * keeps it in the node's shared memory file, fake_common.c).
 *
 * Health: FLEXAI_SIM_LOST_FILE names a file listing the NVML indices of devices that have
 * "fallen off the bus"; per-device queries on them answer NVML_ERROR_GPU_IS_LOST, read afresh on
 * every query, so a test can break and mend a device under a running process.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "fake.h"

#define NVML_DRIVER_VERSION "580.00-sim"
#define FAKE_NVML_ERROR_GPU_IS_LOST ((nvmlReturn_t)15) /* NVML_ERROR_GPU_IS_LOST */

struct nvmlDevice_st {
    unsigned int index;
    const struct fake_device_config *cfg;
};

static struct nvmlDevice_st devices[FAKE_MAX_DEVICES];
static unsigned int device_count;
static size_t device_memory;
static pthread_once_t table_once = PTHREAD_ONCE_INIT;
static unsigned int init_refs; /* nvmlInit/nvmlShutdown nest, as in the real library */
static pthread_mutex_t nvml_lock = PTHREAD_MUTEX_INITIALIZER;

/* Filled once and never changed: queries read it without the lock. They only run after an
 * nvmlInit, whose increment of init_refs under the lock orders them after this. */
static void table_fill(void) {
    const struct fake_config *cfg = fake_config_get();
    device_count = (unsigned int)cfg->ndevices;
    device_memory = cfg->memory;
    for (unsigned int i = 0; i < device_count; i++) {
        devices[i].index = i;
        devices[i].cfg = &cfg->dev[i];
    }
}

static nvmlReturn_t init(void) {
    if (fake_config_get() == NULL)
        return NVML_ERROR_UNKNOWN; /* the reason is on stderr */
    pthread_once(&table_once, table_fill);
    pthread_mutex_lock(&nvml_lock);
    init_refs++;
    pthread_mutex_unlock(&nvml_lock);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlInit(void) {
    return init();
}

nvmlReturn_t nvmlInit_v2(void) {
    return init();
}

/* The flags (no GPUs, no attach) change nothing for simulated devices. */
nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    return init();
}

nvmlReturn_t nvmlShutdown(void) {
    nvmlReturn_t rc = NVML_SUCCESS;
    pthread_mutex_lock(&nvml_lock);
    if (init_refs == 0)
        rc = NVML_ERROR_UNINITIALIZED;
    else
        init_refs--;
    pthread_mutex_unlock(&nvml_lock);
    return rc;
}

static int initialized(void) {
    pthread_mutex_lock(&nvml_lock);
    int up = init_refs > 0;
    pthread_mutex_unlock(&nvml_lock);
    return up;
}

const char *nvmlErrorString(nvmlReturn_t result) {
    if (result == FAKE_NVML_ERROR_GPU_IS_LOST) /* not among the shim header's codes */
        return "GPU is lost";
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_FUNCTION_NOT_FOUND: return "Function Not Found";
    case NVML_ERROR_ARGUMENT_VERSION_MISMATCH: return "Argument version mismatch";
    default: return "Unknown Error";
    }
}

/* Copies a string out the way NVML does: all of it or INSUFFICIENT_SIZE, never truncated. */
static nvmlReturn_t copy_string(char *dst, unsigned int length, const char *src) {
    size_t need = strlen(src) + 1;
    if (dst == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (length < need)
        return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(dst, src, need);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    if (!initialized())
        return NVML_ERROR_UNINITIALIZED;
    return copy_string(version, length, NVML_DRIVER_VERSION);
}

/* Answers without nvmlInit, like the real one (it only asks the CUDA driver). */
nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *cudaDriverVersion) {
    if (cudaDriverVersion == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    *cudaDriverVersion = FAKE_DRIVER_VERSION;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *cudaDriverVersion) {
    if (cudaDriverVersion == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    *cudaDriverVersion = FAKE_DRIVER_VERSION;
    return NVML_SUCCESS;
}

static nvmlReturn_t get_count(unsigned int *deviceCount) {
    if (!initialized())
        return NVML_ERROR_UNINITIALIZED;
    if (deviceCount == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    *deviceCount = device_count;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetCount(unsigned int *deviceCount) {
    return get_count(deviceCount);
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *deviceCount) {
    return get_count(deviceCount);
}

static nvmlReturn_t handle_by_index(unsigned int index, nvmlDevice_t *device) {
    if (!initialized())
        return NVML_ERROR_UNINITIALIZED;
    if (device == NULL || index >= device_count)
        return NVML_ERROR_INVALID_ARGUMENT;
    *device = &devices[index];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device) {
    return handle_by_index(index, device);
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    return handle_by_index(index, device);
}

nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device) {
    if (!initialized())
        return NVML_ERROR_UNINITIALIZED;
    if (uuid == NULL || device == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    for (unsigned int i = 0; i < device_count; i++) {
        if (strcasecmp(devices[i].cfg->uuid_str, uuid) == 0) {
            *device = &devices[i];
            return NVML_SUCCESS;
        }
    }
    return NVML_ERROR_NOT_FOUND;
}

/* Validates a handle by address, so a garbage one is rejected without being dereferenced. */
static const struct nvmlDevice_st *device_check(nvmlDevice_t device) {
    for (unsigned int i = 0; i < device_count; i++)
        if (device == &devices[i])
            return device;
    return NULL;
}

/* Whether FLEXAI_SIM_LOST_FILE lists the device (indices separated by blanks or commas). */
static int device_lost(unsigned int index) {
    const char *path = getenv("FLEXAI_SIM_LOST_FILE");
    char buf[256];
    size_t n = 0;
    FILE *f = path != NULL && *path != '\0' ? fopen(path, "re") : NULL;
    if (f == NULL)
        return 0;
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    for (char *save = NULL, *tok = strtok_r(buf, " ,\t\n", &save); tok != NULL;
         tok = strtok_r(NULL, " ,\t\n", &save)) {
        char *end = NULL;
        unsigned long v = strtoul(tok, &end, 10);
        if (end != tok && *end == '\0' && v == index)
            return 1;
    }
    return 0;
}

/* Prologue of per-device queries: initialised, known handle, output pointer, not lost. */
static nvmlReturn_t device_query(nvmlDevice_t device, const void *out,
                                 const struct nvmlDevice_st **dev) {
    if (!initialized())
        return NVML_ERROR_UNINITIALIZED;
    *dev = device_check(device);
    if (*dev == NULL || out == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (device_lost((*dev)->index))
        return FAKE_NVML_ERROR_GPU_IS_LOST;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    const struct nvmlDevice_st *dev;
    nvmlReturn_t rc = device_query(device, uuid, &dev);
    return rc != NVML_SUCCESS ? rc : copy_string(uuid, length, dev->cfg->uuid_str);
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    const struct nvmlDevice_st *dev;
    nvmlReturn_t rc = device_query(device, name, &dev);
    return rc != NVML_SUCCESS ? rc : copy_string(name, length, fake_config_get()->name);
}

nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index) {
    const struct nvmlDevice_st *dev;
    nvmlReturn_t rc = device_query(device, index, &dev);
    if (rc == NVML_SUCCESS)
        *index = dev->index;
    return rc;
}

/* Bytes every process on the node holds on the device, never above its size. */
static size_t device_used(const struct nvmlDevice_st *dev) {
    size_t used = fake_node_mem_used((int)dev->index);
    return used < device_memory ? used : device_memory;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory) {
    const struct nvmlDevice_st *dev;
    nvmlReturn_t rc = device_query(device, memory, &dev);
    if (rc != NVML_SUCCESS)
        return rc;
    size_t used = device_used(dev);
    memory->total = device_memory;
    memory->free = device_memory - used;
    memory->used = used;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory) {
    const struct nvmlDevice_st *dev;
    nvmlReturn_t rc = device_query(device, memory, &dev);
    if (rc != NVML_SUCCESS)
        return rc;
    if (memory->version != nvmlMemory_v2)
        return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    size_t used = device_used(dev);
    memory->total = device_memory;
    memory->reserved = 0;
    memory->free = device_memory - used;
    memory->used = used;
    return NVML_SUCCESS;
}
