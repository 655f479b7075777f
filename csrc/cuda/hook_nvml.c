/* hook_nvml.c - NVML memory queries report the same quota and usage as cuMemGetInfo, so tools
 * that size themselves from NVML (vLLM, nvidia-smi-like monitors in the process) agree: total is
 * the quota, used the slice's usage, free the quota's room but never more than the device
 * really has free. */
#include <string.h>

#include "log.h"
#include "shim.h"
#include "util.h"

#define FX_NVML_ENTER(fn)                                                                      \
    do {                                                                                       \
        if (fx_cuda_init() != 0) return NVML_ERROR_UNKNOWN;                                    \
        fx_nvml_load();                                                                        \
        if (!fx_nv.fn) return NVML_ERROR_FUNCTION_NOT_FOUND;                                   \
    } while (0)

/* The slice's limit and usage for an NVML device this process sees; 1 when limited. */
static int fx_nvml_quota(nvmlDevice_t device, uint64_t *limit, uint64_t *used)
{
    char text[96];
    uint8_t uuid[16];
    if (!fx_nv.nvmlDeviceGetUUID || fx_nv.nvmlDeviceGetUUID(device, text, sizeof text) != 0)
        return 0;
    if (fx_uuid_parse(text, uuid) != 0) return 0;
    if (fx_self.proc == FX_NONE && fx_attach(0) != 0) return 0;
    for (int i = 0; i < fx_self.ndev; i++)
        if (memcmp(fx_self.uuid[i], uuid, 16) == 0) return fx_quota(fx_self.dev[i], limit, used);
    return 0; /* a device this process does not see: report it unchanged */
}

static unsigned long long fx_free_min(uint64_t room, unsigned long long real_free)
{
    return room < real_free ? room : real_free;
}

FX_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory)
{
    uint64_t limit, used;
    FX_NVML_ENTER(nvmlDeviceGetMemoryInfo);
    nvmlReturn_t rc = fx_nv.nvmlDeviceGetMemoryInfo(device, memory);
    if (rc == NVML_SUCCESS && fx_nvml_quota(device, &limit, &used)) {
        memory->total = limit;
        memory->used = used;
        memory->free = fx_free_min(fx_room(limit, used), memory->free);
    }
    return rc;
}

FX_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory)
{
    uint64_t limit, used;
    FX_NVML_ENTER(nvmlDeviceGetMemoryInfo_v2);
    nvmlReturn_t rc = fx_nv.nvmlDeviceGetMemoryInfo_v2(device, memory);
    if (rc == NVML_SUCCESS && fx_nvml_quota(device, &limit, &used)) {
        memory->total = limit;
        memory->reserved = 0;
        memory->used = used;
        memory->free = fx_free_min(fx_room(limit, used), memory->free);
    }
    return rc;
}
