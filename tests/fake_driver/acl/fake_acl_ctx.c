/*
 * fake_acl_ctx.c - devices and contexts of the stand-in libascendcl.so (see
 * fake_acl_internal.h): aclInit, ASCEND_RT_VISIBLE_DEVICES, aclrtSetDevice / aclrtResetDevice
 * (/Force), and contexts, as the public documentation describes them:
 *
 *   - aclrtSetDevice makes the thread use the device's default context, created by the process's
 *     first aclrtSetDevice of that device; each call adds one to the device's reference count,
 *     each aclrtResetDevice takes one off, and the reset that brings it to zero releases the
 *     device's resources: the default context with its streams and "device memory" (a context
 *     "manages the lifetime of its objects (streams, events, device memory)", CANN application
 *     development guide, "Concepts"). A reset with nothing left to reset fails.
 *     aclrtResetDeviceForce releases them whatever the count.
 *   - aclrtCreateContext makes an explicit context on a device and makes it the thread's;
 *     aclrtDestroyContext releases it with its streams and the memory allocated in it (it
 *     refuses a default context); aclrtSetCurrentContext / aclrtGetCurrentContext switch and
 *     read the thread's context, whose device is the thread's current device.
 *
 * Released contexts are kept (marked dead), so a thread still naming one sees no device rather
 * than freed memory. Must never be mistaken for the real runtime.
 */
#include <stdlib.h>

#include "fake_acl_internal.h"
#include "util.h"

static int inited;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER; /* guards the contexts below */
static _Thread_local struct fake_ctx *current;        /* this thread's context */
static struct fake_ctx *defaults[FAKE_MAX_DEVICES];    /* live default contexts, by ordinal */
static int set_count[FAKE_MAX_DEVICES];                /* aclrtSetDevice minus resets */

/* ---- devices ------------------------------------------------------------------------------ */

static int vis_n = -1;
static int vis_order[FAKE_MAX_DEVICES];
static pthread_once_t vis_once = PTHREAD_ONCE_INIT;

/* The runtime's list: device ids in order; a bad, unknown or repeated entry ends it (the rule
 * the shim's own parser applies to CUDA_VISIBLE_DEVICES, csrc/core/util.c). */
static void vis_load(void)
{
    const struct fake_config *cfg = fake_config_get();
    const char *names[FAKE_MAX_DEVICES];
    if (!cfg) {
        vis_n = 0;
        return;
    }
    for (int i = 0; i < cfg->ndevices; i++) names[i] = cfg->dev[i].uuid_str;
    vis_n = fx_visible_parse(getenv("ASCEND_RT_VISIBLE_DEVICES"), names, cfg->ndevices,
                             vis_order, FAKE_MAX_DEVICES);
}

int fake_acl_count(void)
{
    pthread_once(&vis_once, vis_load);
    return vis_n;
}

int fake_acl_physical(int ordinal)
{
    return ordinal >= 0 && ordinal < fake_acl_count() ? vis_order[ordinal] : -1;
}

int fake_acl_ready(void)
{
    return __atomic_load_n(&inited, __ATOMIC_ACQUIRE);
}

struct fake_ctx *fake_acl_current_ctx(void)
{
    struct fake_ctx *c = current;
    return c && __atomic_load_n(&c->alive, __ATOMIC_ACQUIRE) ? c : NULL;
}

int fake_acl_current(void)
{
    struct fake_ctx *c = fake_acl_current_ctx();
    return c ? c->ordinal : -1;
}

#define NEED_INIT()                                                                            \
    do {                                                                                       \
        if (!fake_acl_ready()) return ACL_ERROR_UNINITIALIZE;                                  \
    } while (0)

FAKE_ACL_EXPORT aclError aclInit(const char *configPath)
{
    (void)configPath;
    if (!fake_config_get()) return ACL_ERROR_INVALID_PARAM; /* FLEXAI_SIM_* invalid: said why */
    if (__atomic_exchange_n(&inited, 1, __ATOMIC_ACQ_REL)) return ACL_ERROR_REPEAT_INITIALIZE;
    return ACL_SUCCESS;
}

FAKE_ACL_EXPORT aclError aclFinalize(void)
{
    return __atomic_exchange_n(&inited, 0, __ATOMIC_ACQ_REL) ? ACL_SUCCESS
                                                             : ACL_ERROR_UNINITIALIZE;
}

FAKE_ACL_EXPORT aclError aclrtGetDeviceCount(uint32_t *count)
{
    NEED_INIT();
    if (!count) return ACL_ERROR_INVALID_PARAM;
    *count = (uint32_t)fake_acl_count();
    return ACL_SUCCESS;
}

/* ---- contexts ----------------------------------------------------------------------------- */

static struct fake_ctx *ctx_new(int ordinal, int is_default)
{
    struct fake_ctx *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->ordinal = ordinal;
    c->is_default = is_default;
    c->alive = 1;
    return c;
}

/* Everything the context holds goes, after its work is done; the handle stays (dead). */
static void ctx_release(struct fake_ctx *c)
{
    fake_acl_exec_release(c);
    fake_acl_mem_release(c);
    __atomic_store_n(&c->alive, 0, __ATOMIC_RELEASE);
}

FAKE_ACL_EXPORT aclError aclrtSetDevice(int32_t deviceId)
{
    NEED_INIT();
    if (fake_acl_physical(deviceId) < 0) return ACL_ERROR_RT_INVALID_DEVICEID;
    pthread_mutex_lock(&mu);
    if (!defaults[deviceId]) defaults[deviceId] = ctx_new(deviceId, 1);
    struct fake_ctx *c = defaults[deviceId];
    if (c) set_count[deviceId]++;
    pthread_mutex_unlock(&mu);
    if (!c) return ACL_ERROR_BAD_ALLOC;
    current = c;
    return ACL_SUCCESS;
}

FAKE_ACL_EXPORT aclError aclrtGetDevice(int32_t *deviceId)
{
    NEED_INIT();
    if (!deviceId) return ACL_ERROR_INVALID_PARAM;
    int d = fake_acl_current();
    if (d < 0) return ACL_ERROR_RT_CONTEXT_NULL;
    *deviceId = d;
    return ACL_SUCCESS;
}

/* One reset (force: all of them); the last one releases the default context. */
static aclError reset(int32_t deviceId, int force)
{
    NEED_INIT();
    if (fake_acl_physical(deviceId) < 0) return ACL_ERROR_RT_INVALID_DEVICEID;
    pthread_mutex_lock(&mu);
    struct fake_ctx *gone = NULL;
    aclError rc = set_count[deviceId] > 0 ? ACL_SUCCESS : ACL_ERROR_RT_INVALID_DEVICEID;
    if (rc == ACL_SUCCESS && (force || --set_count[deviceId] == 0)) {
        set_count[deviceId] = 0;
        gone = defaults[deviceId];
        defaults[deviceId] = NULL;
    }
    pthread_mutex_unlock(&mu);
    if (gone) ctx_release(gone);
    return rc;
}

FAKE_ACL_EXPORT aclError aclrtResetDevice(int32_t deviceId)
{
    return reset(deviceId, 0);
}

FAKE_ACL_EXPORT aclError aclrtResetDeviceForce(int32_t deviceId)
{
    return reset(deviceId, 1);
}

FAKE_ACL_EXPORT aclError aclrtCreateContext(aclrtContext *context, int32_t deviceId)
{
    NEED_INIT();
    if (!context) return ACL_ERROR_INVALID_PARAM;
    if (fake_acl_physical(deviceId) < 0) return ACL_ERROR_RT_INVALID_DEVICEID;
    struct fake_ctx *c = ctx_new(deviceId, 0);
    if (!c) return ACL_ERROR_BAD_ALLOC;
    current = c;
    *context = c;
    return ACL_SUCCESS;
}

FAKE_ACL_EXPORT aclError aclrtDestroyContext(aclrtContext context)
{
    struct fake_ctx *c = context;
    NEED_INIT();
    if (!c || c->is_default || !__atomic_load_n(&c->alive, __ATOMIC_ACQUIRE))
        return ACL_ERROR_INVALID_PARAM; /* only explicitly created, live contexts */
    ctx_release(c);
    if (current == c) current = NULL;
    return ACL_SUCCESS;
}

FAKE_ACL_EXPORT aclError aclrtSetCurrentContext(aclrtContext context)
{
    struct fake_ctx *c = context;
    NEED_INIT();
    if (!c || !__atomic_load_n(&c->alive, __ATOMIC_ACQUIRE)) return ACL_ERROR_INVALID_PARAM;
    current = c;
    return ACL_SUCCESS;
}

FAKE_ACL_EXPORT aclError aclrtGetCurrentContext(aclrtContext *context)
{
    NEED_INIT();
    if (!context) return ACL_ERROR_INVALID_PARAM;
    struct fake_ctx *c = fake_acl_current_ctx();
    if (!c) return ACL_ERROR_RT_CONTEXT_NULL;
    *context = c;
    return ACL_SUCCESS;
}

/* ---- device ids --------------------------------------------------------------------------- */

/* User ordinal -> logical id (the index in ASCEND_RT_VISIBLE_DEVICES' numbering) -> physical
 * id (the same here: the stand-in runs outside containers). */
FAKE_ACL_EXPORT aclError aclrtGetLogicDevIdByUserDevId(const int32_t userDevid,
                                                       int32_t *const logicDevId)
{
    NEED_INIT();
    int p = fake_acl_physical(userDevid);
    if (!logicDevId) return ACL_ERROR_INVALID_PARAM;
    if (p < 0) return ACL_ERROR_RT_INVALID_DEVICEID;
    *logicDevId = p;
    return ACL_SUCCESS;
}

FAKE_ACL_EXPORT aclError aclrtGetPhyDevIdByLogicDevId(const int32_t logicDevId,
                                                      int32_t *const phyDevId)
{
    NEED_INIT();
    const struct fake_config *cfg = fake_config_get();
    if (!phyDevId) return ACL_ERROR_INVALID_PARAM;
    if (!cfg || logicDevId < 0 || logicDevId >= cfg->ndevices) return ACL_ERROR_RT_INVALID_DEVICEID;
    *phyDevId = logicDevId;
    return ACL_SUCCESS;
}
