/* api_core.c - the remote client's entry points for initialisation, versions, errors, devices
 * and contexts.
 *
 * What the client can decide stays here: the current context (a per-thread stack of ids, sent
 * with every request), cuDeviceGet, cuCtxGetDevice, error names; device facts that cannot change
 * (name, UUID, attributes, PCI id) are asked once and kept. cuDeviceTotalMem and cuMemGetInfo are
 * always asked: they show the slice's quota, which `flexai resize` may change. Must never answer
 * for a device the server did not report.
 */
#include <stdlib.h>
#include <string.h>

#include "client.h"

#define ATTR_MAX 256

static pthread_mutex_t cache_mu = PTHREAD_MUTEX_INITIALIZER;
static int attr_cache[FX_R_MAX_DEVICES][ATTR_MAX];
static uint8_t attr_known[FX_R_MAX_DEVICES][ATTR_MAX];
static char *name_cache[FX_R_MAX_DEVICES];
static CUuuid uuid_cache[FX_R_MAX_DEVICES];
static uint8_t uuid_known[FX_R_MAX_DEVICES];
static char *errstr_cache[1024];

static int dev_ok(CUdevice d) {
    return d >= 0 && d < fxc_device_count && d < (int)FX_R_MAX_DEVICES;
}

CUresult fxc_ready(void) {
    CUresult rc = fxc_connect();
    if (rc != CUDA_SUCCESS)
        return rc;
    return fxc_initialized ? CUDA_SUCCESS : CUDA_ERROR_NOT_INITIALIZED;
}

CUresult fxc_ready_out(const void *out) {
    CUresult rc = fxc_ready();
    if (rc != CUDA_SUCCESS)
        return rc;
    return out == NULL ? CUDA_ERROR_INVALID_VALUE : CUDA_SUCCESS;
}

static CUresult init_exchange(unsigned flags, int version_only) {
    CUresult rc = fxc_connect();
    if (rc != CUDA_SUCCESS)
        return rc;
    struct fx_rq_init rq = {flags, (uint32_t)version_only};
    struct fx_rp_init rp = {0, 0};
    uint32_t got = 0;
    rc = fxc_call(FX_ROP_INIT, &rq, sizeof(rq), NULL, 0, &rp, sizeof(rp), &got);
    if (got == sizeof(rp))
        fxc_driver_version = rp.driver_version;
    if (rc == CUDA_SUCCESS && !version_only && got == sizeof(rp)) {
        fxc_device_count = rp.device_count < 0 ? 0
                           : rp.device_count > (int)FX_R_MAX_DEVICES ? (int)FX_R_MAX_DEVICES
                                                                     : rp.device_count;
        fxc_initialized = 1;
    }
    return rc;
}

FXC_EXPORT CUresult cuInit(unsigned int flags) {
    if (fxc_initialized)
        return CUDA_SUCCESS;
    return init_exchange(flags, 0);
}

FXC_EXPORT CUresult cuDriverGetVersion(int *driverVersion) {
    if (driverVersion == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    if (fxc_driver_version == 0) {
        CUresult rc = init_exchange(0, 1);
        if (rc != CUDA_SUCCESS && fxc_driver_version == 0)
            return rc;
    }
    *driverVersion = fxc_driver_version;
    return CUDA_SUCCESS;
}

/* ---- errors ------------------------------------------------------------------------------- */

static const struct {
    int code;
    const char *name;
} error_names[] = {
#define E(n, v) {v, #n},
    E(CUDA_SUCCESS, 0) E(CUDA_ERROR_INVALID_VALUE, 1) E(CUDA_ERROR_OUT_OF_MEMORY, 2)
    E(CUDA_ERROR_NOT_INITIALIZED, 3) E(CUDA_ERROR_DEINITIALIZED, 4)
    E(CUDA_ERROR_PROFILER_DISABLED, 5) E(CUDA_ERROR_STUB_LIBRARY, 34)
    E(CUDA_ERROR_DEVICE_UNAVAILABLE, 46) E(CUDA_ERROR_NO_DEVICE, 100)
    E(CUDA_ERROR_INVALID_DEVICE, 101) E(CUDA_ERROR_DEVICE_NOT_LICENSED, 102)
    E(CUDA_ERROR_INVALID_IMAGE, 200) E(CUDA_ERROR_INVALID_CONTEXT, 201)
    E(CUDA_ERROR_CONTEXT_ALREADY_CURRENT, 202) E(CUDA_ERROR_MAP_FAILED, 205)
    E(CUDA_ERROR_UNMAP_FAILED, 206) E(CUDA_ERROR_ARRAY_IS_MAPPED, 207)
    E(CUDA_ERROR_ALREADY_MAPPED, 208) E(CUDA_ERROR_NO_BINARY_FOR_GPU, 209)
    E(CUDA_ERROR_ALREADY_ACQUIRED, 210) E(CUDA_ERROR_NOT_MAPPED, 211)
    E(CUDA_ERROR_ECC_UNCORRECTABLE, 214) E(CUDA_ERROR_UNSUPPORTED_LIMIT, 215)
    E(CUDA_ERROR_CONTEXT_ALREADY_IN_USE, 216) E(CUDA_ERROR_PEER_ACCESS_UNSUPPORTED, 217)
    E(CUDA_ERROR_INVALID_PTX, 218) E(CUDA_ERROR_JIT_COMPILER_NOT_FOUND, 221)
    E(CUDA_ERROR_UNSUPPORTED_PTX_VERSION, 222) E(CUDA_ERROR_INVALID_SOURCE, 300)
    E(CUDA_ERROR_FILE_NOT_FOUND, 301) E(CUDA_ERROR_SHARED_OBJECT_SYMBOL_NOT_FOUND, 302)
    E(CUDA_ERROR_SHARED_OBJECT_INIT_FAILED, 303) E(CUDA_ERROR_OPERATING_SYSTEM, 304)
    E(CUDA_ERROR_INVALID_HANDLE, 400) E(CUDA_ERROR_ILLEGAL_STATE, 401)
    E(CUDA_ERROR_NOT_FOUND, 500) E(CUDA_ERROR_NOT_READY, 600)
    E(CUDA_ERROR_ILLEGAL_ADDRESS, 700) E(CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES, 701)
    E(CUDA_ERROR_LAUNCH_TIMEOUT, 702) E(CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED, 704)
    E(CUDA_ERROR_PEER_ACCESS_NOT_ENABLED, 705) E(CUDA_ERROR_PRIMARY_CONTEXT_ACTIVE, 708)
    E(CUDA_ERROR_CONTEXT_IS_DESTROYED, 709) E(CUDA_ERROR_ASSERT, 710)
    E(CUDA_ERROR_LAUNCH_FAILED, 719) E(CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE, 720)
    E(CUDA_ERROR_NOT_PERMITTED, 800) E(CUDA_ERROR_NOT_SUPPORTED, 801)
    E(CUDA_ERROR_SYSTEM_NOT_READY, 802) E(CUDA_ERROR_SYSTEM_DRIVER_MISMATCH, 803)
    E(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, 900) E(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED, 901)
    E(CUDA_ERROR_STREAM_CAPTURE_MERGE, 902) E(CUDA_ERROR_STREAM_CAPTURE_UNMATCHED, 903)
    E(CUDA_ERROR_STREAM_CAPTURE_UNJOINED, 904) E(CUDA_ERROR_STREAM_CAPTURE_ISOLATION, 905)
    E(CUDA_ERROR_STREAM_CAPTURE_IMPLICIT, 906) E(CUDA_ERROR_CAPTURED_EVENT, 907)
    E(CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD, 908) E(CUDA_ERROR_TIMEOUT, 909)
    E(CUDA_ERROR_UNKNOWN, 999)
#undef E
};

FXC_EXPORT CUresult cuGetErrorName(CUresult error, const char **pStr) {
    if (pStr == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    for (size_t i = 0; i < sizeof(error_names) / sizeof(error_names[0]); i++)
        if (error_names[i].code == (int)error) {
            *pStr = error_names[i].name;
            return CUDA_SUCCESS;
        }
    *pStr = NULL;
    return CUDA_ERROR_INVALID_VALUE;
}

/* The server's driver text, kept per code; the name when the server cannot be asked. */
FXC_EXPORT CUresult cuGetErrorString(CUresult error, const char **pStr) {
    if (pStr == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    unsigned code = (unsigned)error;
    if (code < 1024) {
        pthread_mutex_lock(&cache_mu);
        const char *cached = errstr_cache[code];
        pthread_mutex_unlock(&cache_mu);
        if (cached != NULL) {
            *pStr = cached;
            return CUDA_SUCCESS;
        }
    }
    char text[256] = {0};
    struct fx_rq_id rq = {code, 0};
    uint32_t got = 0;
    CUresult rc = fxc_connect() == CUDA_SUCCESS
                      ? fxc_call(FX_ROP_GET_ERROR_STRING, &rq, sizeof(rq), NULL, 0, text,
                                 sizeof(text) - 1, &got)
                      : CUDA_ERROR_NOT_INITIALIZED;
    if (rc != CUDA_SUCCESS || got == 0)
        return cuGetErrorName(error, pStr);
    text[got] = '\0';
    char *copy = strdup(text);
    if (copy == NULL || code >= 1024)
        return cuGetErrorName(error, pStr); /* never cached: the name, which is static */
    pthread_mutex_lock(&cache_mu);
    if (errstr_cache[code] == NULL)
        errstr_cache[code] = copy;
    else
        free(copy);
    *pStr = errstr_cache[code];
    pthread_mutex_unlock(&cache_mu);
    return CUDA_SUCCESS;
}

/* ---- devices ------------------------------------------------------------------------------ */

FXC_EXPORT CUresult cuDeviceGetCount(int *count) {
    CUresult rc = fxc_ready_out(count);
    if (rc != CUDA_SUCCESS)
        return rc;
    *count = fxc_device_count;
    return CUDA_SUCCESS;
}

FXC_EXPORT CUresult cuDeviceGet(CUdevice *device, int ordinal) {
    CUresult rc = fxc_ready_out(device);
    if (rc != CUDA_SUCCESS)
        return rc;
    if (!dev_ok(ordinal))
        return CUDA_ERROR_INVALID_DEVICE;
    *device = ordinal;
    return CUDA_SUCCESS;
}

static CUresult dev_call(uint16_t op, CUdevice dev, int arg, void *out, uint32_t cap,
                         uint32_t *got) {
    CUresult rc = fxc_ready();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (!dev_ok(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    struct fx_rq_dev rq = {dev, arg};
    return fxc_call(op, &rq, sizeof(rq), NULL, 0, out, cap, got);
}

FXC_EXPORT CUresult cuDeviceGetName(char *name, int len, CUdevice dev) {
    if (name == NULL || len <= 0)
        return CUDA_ERROR_INVALID_VALUE;
    if (!dev_ok(dev))
        return fxc_ready() != CUDA_SUCCESS ? fxc_ready() : CUDA_ERROR_INVALID_DEVICE;
    pthread_mutex_lock(&cache_mu);
    char *cached = name_cache[dev];
    pthread_mutex_unlock(&cache_mu);
    if (cached == NULL) {
        char text[256] = {0};
        uint32_t got = 0;
        CUresult rc = dev_call(FX_ROP_DEVICE_GET_NAME, dev, 0, text, sizeof(text) - 1, &got);
        if (rc != CUDA_SUCCESS)
            return rc;
        text[got] = '\0';
        pthread_mutex_lock(&cache_mu);
        if (name_cache[dev] == NULL)
            name_cache[dev] = strdup(text);
        cached = name_cache[dev];
        pthread_mutex_unlock(&cache_mu);
        if (cached == NULL)
            return CUDA_ERROR_OUT_OF_MEMORY;
    }
    strncpy(name, cached, (size_t)len - 1);
    name[len - 1] = '\0';
    return CUDA_SUCCESS;
}

static CUresult get_uuid(CUuuid *uuid, CUdevice dev) {
    if (uuid == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    if (dev_ok(dev) && uuid_known[dev]) {
        *uuid = uuid_cache[dev];
        return CUDA_SUCCESS;
    }
    CUuuid u;
    uint32_t got = 0;
    CUresult rc = dev_call(FX_ROP_DEVICE_GET_UUID, dev, 0, &u, sizeof(u), &got);
    if (rc == CUDA_SUCCESS && got != sizeof(u))
        rc = CUDA_ERROR_UNKNOWN;
    if (rc == CUDA_SUCCESS) {
        uuid_cache[dev] = u;
        uuid_known[dev] = 1;
        *uuid = u;
    }
    return rc;
}

FXC_EXPORT CUresult cuDeviceGetUuid(CUuuid *uuid, CUdevice dev) {
    return get_uuid(uuid, dev);
}

FXC_EXPORT CUresult cuDeviceGetUuid_v2(CUuuid *uuid, CUdevice dev) {
    return get_uuid(uuid, dev);
}

FXC_EXPORT CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice dev) {
    uint64_t v = 0;
    if (bytes == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = dev_call(FX_ROP_DEVICE_TOTAL_MEM, dev, 0, &v, sizeof(v), NULL);
    if (rc == CUDA_SUCCESS)
        *bytes = (size_t)v;
    return rc;
}

FXC_EXPORT CUresult cuDeviceGetAttribute(int *pi, CUdevice_attribute attrib, CUdevice dev) {
    if (pi == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    int cacheable = dev_ok(dev) && attrib >= 0 && attrib < ATTR_MAX;
    if (cacheable && attr_known[dev][attrib]) {
        *pi = attr_cache[dev][attrib];
        return CUDA_SUCCESS;
    }
    int32_t v = 0;
    CUresult rc = dev_call(FX_ROP_DEVICE_GET_ATTRIBUTE, dev, attrib, &v, sizeof(v), NULL);
    if (rc == CUDA_SUCCESS) {
        *pi = v;
        if (cacheable) {
            attr_cache[dev][attrib] = v;
            attr_known[dev][attrib] = 1;
        }
    }
    return rc;
}

FXC_EXPORT CUresult cuDeviceGetPCIBusId(char *pciBusId, int len, CUdevice dev) {
    char text[64] = {0};
    uint32_t got = 0;
    if (pciBusId == NULL || len <= 0)
        return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = dev_call(FX_ROP_DEVICE_GET_PCI_BUS_ID, dev, 0, text, sizeof(text) - 1, &got);
    if (rc == CUDA_SUCCESS) {
        text[got] = '\0';
        strncpy(pciBusId, text, (size_t)len - 1);
        pciBusId[len - 1] = '\0';
    }
    return rc;
}
