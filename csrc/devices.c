/* devices.c - which physical devices this process sees, by UUID, in CUDA ordinal order.
 *
 * Quotas are given per index as the program sees it; the ledger is keyed by UUID, so two
 * programs that see one card under different indices (CUDA_VISIBLE_DEVICES subsets, UUIDs)
 * share one account. The CUDA driver is the authority. A process that only uses NVML (and
 * must not initialize CUDA, e.g. before forking workers) gets the same answer from NVML's
 * enumeration filtered by CUDA_VISIBLE_DEVICES, which matches CUDA's order whenever the GPUs
 * are of one model or CUDA_DEVICE_ORDER=PCI_BUS_ID (documented limitation otherwise).
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "runtime.h"

static int fx_map_from_cuda(void)
{
    int count = 0;
    if (!fx_cu.cuDeviceGetCount || !fx_cu.cuDeviceGet || !fx_cu.cuDeviceGetUuid) return -1;
    if (fx_cu.cuDeviceGetCount(&count) != CUDA_SUCCESS) return -1; /* not initialized yet */
    if (count > FLEXAI_MAX_DEVICES) {
        FX_WARN("%d devices visible; flexai accounts the first %d", count, FLEXAI_MAX_DEVICES);
        count = FLEXAI_MAX_DEVICES;
    }
    for (int i = 0; i < count; i++) {
        CUdevice dev;
        CUuuid u;
        if (fx_cu.cuDeviceGet(&dev, i) != CUDA_SUCCESS || fx_cu.cuDeviceGetUuid(&u, dev) != 0)
            return -1;
        memcpy(fx_rt.uuid[i], u.bytes, 16);
    }
    fx_rt.ndev = count;
    fx_rt.devices_from_cuda = 1;
    return 0;
}

/* One CUDA_VISIBLE_DEVICES entry to an NVML index, -1 when invalid (which, as in CUDA, ends
 * the list). Accepts an index, a full UUID or a unique UUID prefix ("GPU-5ca1"). */
static int fx_visible_entry(const char *tok, size_t len, unsigned n, char uuids[][96])
{
    while (len && isspace((unsigned char)*tok)) tok++, len--;
    if (len == 0) return -1;
    if (isdigit((unsigned char)tok[0])) {
        unsigned v = 0;
        for (size_t i = 0; i < len; i++) {
            if (!isdigit((unsigned char)tok[i])) return -1;
            v = v * 10 + (unsigned)(tok[i] - '0');
        }
        return v < n ? (int)v : -1;
    }
    int found = -1;
    for (unsigned i = 0; i < n; i++) {
        if (strncmp(uuids[i], tok, len) == 0) {
            if (found >= 0) return -1; /* ambiguous prefix */
            found = (int)i;
        }
    }
    return found;
}

static int fx_map_from_nvml(void)
{
    unsigned n = 0;
    char uuids[FLEXAI_MAX_DEVICES][96];
    fx_nvml_load();
    if (!fx_nv.nvmlDeviceGetCount_v2 || !fx_nv.nvmlDeviceGetHandleByIndex_v2 ||
        !fx_nv.nvmlDeviceGetUUID)
        return -1;
    if (fx_nv.nvmlDeviceGetCount_v2(&n) != NVML_SUCCESS) return -1; /* NVML not initialized */
    if (n > FLEXAI_MAX_DEVICES) n = FLEXAI_MAX_DEVICES;
    for (unsigned i = 0; i < n; i++) {
        nvmlDevice_t h;
        if (fx_nv.nvmlDeviceGetHandleByIndex_v2(i, &h) != NVML_SUCCESS ||
            fx_nv.nvmlDeviceGetUUID(h, uuids[i], sizeof uuids[i]) != NVML_SUCCESS)
            return -1;
    }
    int order[FLEXAI_MAX_DEVICES], count = 0;
    const char *vis = getenv("CUDA_VISIBLE_DEVICES");
    if (!vis) {
        for (unsigned i = 0; i < n; i++) order[count++] = (int)i;
    } else {
        const char *p = vis;
        while (*p && count < FLEXAI_MAX_DEVICES) {
            const char *end = strchr(p, ',');
            size_t len = end ? (size_t)(end - p) : strlen(p);
            int idx = fx_visible_entry(p, len, n, uuids);
            if (idx < 0) break;
            order[count++] = idx;
            if (!end) break;
            p = end + 1;
        }
    }
    for (int i = 0; i < count; i++)
        if (fx_uuid_parse(uuids[order[i]], fx_rt.uuid[i]) != 0) return -1;
    fx_rt.ndev = count;
    fx_rt.devices_from_cuda = 0;
    return 0;
}

int fx_devices_map(int from_cuda)
{
    if (fx_map_from_cuda() == 0) return 0;
    if (from_cuda) return -1;
    return fx_map_from_nvml();
}
