/* backend_acl.c - the Ascend ACL backend: lazy initialization of the shim for a process that
 * uses libascendcl.so, and the table of operations the vendor-free core uses (core/backend.h):
 * devices keyed by a stable id, events for timing work, capture checks, error codes.
 *
 * Device ids. An NPU has no UUID that ACL reports; what is stable on a node is its physical
 * device id (the N of /dev/davinciN), the same in every container and for every
 * ASCEND_RT_VISIBLE_DEVICES. A program's device ordinal is a "user" id; ACL maps it to a
 * logical id (ASCEND_RT_VISIBLE_DEVICES) and that to the physical one (containers). The node's
 * account of an NPU is keyed by 16 bytes: the NPU tag (core/util.h, shown as "NPU-...") and the
 * physical id, so two programs that see one NPU under different ordinals share one account.
 * Where the runtime lacks the mapping functions (older CANN), ASCEND_RT_VISIBLE_DEVICES is
 * parsed here as the runtime does and the logical id taken as physical (true outside
 * containers). Must never be included in, or called by, core/ except through the table.
 */
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

#include "acl_shim.h"
#include "log.h"
#include "util.h"

/* ---- devices ------------------------------------------------------------------------------ */

/* The logical id of user ordinal `user`, -1 when it has none. */
static int32_t fx_acl_logical(int32_t user, int count)
{
    int32_t logical = -1;
    if (fx_acl.aclrtGetLogicDevIdByUserDevId)
        return fx_acl.aclrtGetLogicDevIdByUserDevId(user, &logical) == ACL_SUCCESS ? logical
                                                                                     : -1;
    /* the runtime's own rule: the list of ids, in order; it ends at the first bad entry */
    const char *list = getenv("ASCEND_RT_VISIBLE_DEVICES");
    if (!list) return user < count ? user : -1;
    for (const char *p = list; *p;) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 0 || v > 65535 || (*end && *end != ',')) return -1;
        if (user-- == 0) return (int32_t)v;
        p = *end ? end + 1 : end;
    }
    return -1;
}

static int32_t fx_acl_physical(int32_t logical)
{
    int32_t phys = -1;
    if (!fx_acl.aclrtGetPhyDevIdByLogicDevId) return logical;
    return fx_acl.aclrtGetPhyDevIdByLogicDevId(logical, &phys) == ACL_SUCCESS ? phys : -1;
}

void fx_acl_npu_id(int32_t physical, uint8_t out[16]);
void fx_acl_npu_id(int32_t physical, uint8_t out[16])
{
    memset(out, 0, 16);
    out[0] = FX_NPU_TAG0;
    out[1] = FX_NPU_TAG1;
    out[2] = FX_NPU_TAG2;
    out[6] = 0x40; /* laid out as a version-4 UUID, so tools that parse UUIDs accept it */
    out[8] = 0x80;
    out[12] = (uint8_t)((uint32_t)physical >> 24);
    out[13] = (uint8_t)((uint32_t)physical >> 16);
    out[14] = (uint8_t)((uint32_t)physical >> 8);
    out[15] = (uint8_t)physical;
}

static int fx_acl_devices(uint8_t (*uuid)[16], int max)
{
    uint32_t count = 0;
    if (!fx_acl.aclrtGetDeviceCount || fx_acl.aclrtGetDeviceCount(&count) != ACL_SUCCESS)
        return -1; /* aclInit not called yet */
    if ((int)count > max) {
        FX_WARN("%u NPUs visible; flexai accounts the first %d", count, max);
        count = (uint32_t)max;
    }
    for (int i = 0; i < (int)count; i++) {
        int32_t logical = fx_acl_logical(i, (int)count);
        int32_t phys = logical < 0 ? -1 : fx_acl_physical(logical);
        if (phys < 0) return -1;
        fx_acl_npu_id(phys, uuid[i]);
    }
    return (int)count;
}

static int fx_acl_current_device(void)
{
    int32_t d = -1;
    if (!fx_acl.aclrtGetDevice || fx_acl.aclrtGetDevice(&d) != ACL_SUCCESS) return -1;
    return d;
}

/* ---- events and capture ------------------------------------------------------------------- */

/* The gate's "context" of a launch is the calling thread's current context (the device's
 * default one or an explicit one): the gate's events are made there, and the context's teardown
 * (acl_hook_ctx.c) ends them. A runtime that cannot say is taken to have one context per
 * device, named by ordinal + 1 (0 would read as none). */
static fx_ctx_t fx_acl_queue_context(fx_queue_t q, unsigned flags)
{
    (void)q;
    (void)flags;
    uint64_t owner = fx_acl_owner_current();
    if (owner) return (fx_ctx_t)(uintptr_t)owner;
    int d = fx_acl_current_device();
    return d < 0 ? NULL : (fx_ctx_t)(uintptr_t)(d + 1);
}

static int fx_acl_event_create(fx_event_t *ev, fx_ctx_t ctx)
{
    aclrtEvent e = NULL;
    (void)ctx; /* created on the current device, the launch's (see fx_acl_queue_context) */
    if (!fx_acl.aclrtCreateEvent || fx_acl.aclrtCreateEvent(&e) != ACL_SUCCESS) return -1;
    *ev = e;
    return 0;
}

static void fx_acl_event_destroy(fx_event_t ev)
{
    if (fx_acl.aclrtDestroyEvent) fx_acl.aclrtDestroyEvent(ev);
}

static int fx_acl_event_record(fx_event_t ev, fx_queue_t q, unsigned flags, fx_ctx_t ctx)
{
    (void)flags;
    (void)ctx;
    return fx_acl.aclrtRecordEvent && fx_acl.aclrtRecordEvent(ev, q) == ACL_SUCCESS ? 0 : -1;
}

static enum fx_event_state fx_acl_event_query(fx_event_t ev)
{
    aclrtEventRecordedStatus st = ACL_EVENT_RECORDED_STATUS_NOT_READY;
    if (!fx_acl.aclrtQueryEventStatus || fx_acl.aclrtQueryEventStatus(ev, &st) != ACL_SUCCESS)
        return FX_EV_ERROR;
    return st == ACL_EVENT_RECORDED_STATUS_COMPLETE ? FX_EV_DONE : FX_EV_PENDING;
}

static int fx_acl_event_elapsed_ns(fx_event_t start, fx_event_t end, uint64_t *ns)
{
    float ms = 0;
    if (!fx_acl.aclrtEventElapsedTime ||
        fx_acl.aclrtEventElapsedTime(&ms, start, end) != ACL_SUCCESS || ms < 0)
        return -1;
    *ns = (uint64_t)((double)ms * 1e6);
    return 0;
}

/* A stream captured into a model (aclmdlRICaptureBegin, torch_npu's NPU graphs) runs its work
 * later: no mark may go there. Runtimes without capture answer "not capturing". */
static int fx_acl_queue_capturing(fx_queue_t q, unsigned flags)
{
    aclmdlRICaptureStatus st = ACL_MODEL_RI_CAPTURE_STATUS_NONE;
    aclmdlRI model = NULL;
    (void)flags;
    if (!fx_acl.aclmdlRICaptureGetInfo || fx_acl.aclmdlRICaptureGetInfo(q, &st, &model) != 0)
        return 0;
    return st != ACL_MODEL_RI_CAPTURE_STATUS_NONE;
}

/* ---- errors ------------------------------------------------------------------------------- */

aclError fx_acl_error(int32_t status)
{
    switch (status) {
    case FLEXAI_OK: return ACL_SUCCESS;
    case FLEXAI_E_QUOTA: return ACL_ERROR_RT_MEMORY_ALLOCATION;
    case FLEXAI_E_BAD_VALUE: return ACL_ERROR_INVALID_PARAM;
    case FLEXAI_E_DRIVER: return ACL_ERROR_RT_NO_DEVICE;
    default: return ACL_ERROR_FAILURE; /* unusable state, node full, system */
    }
}

static int fx_acl_error_code(int32_t status)
{
    return fx_acl_error(status);
}

static const struct fx_backend fx_acl_backend = {
    .name = "acl",
    .visible_env = "ASCEND_RT_VISIBLE_DEVICES",
    .devices = fx_acl_devices,
    .current_device = fx_acl_current_device,
    .event_create = fx_acl_event_create,
    .event_destroy = fx_acl_event_destroy,
    .event_record = fx_acl_event_record,
    .event_query = fx_acl_event_query,
    .event_elapsed_ns = fx_acl_event_elapsed_ns,
    .queue_capturing = fx_acl_queue_capturing,
    .queue_context = fx_acl_queue_context,
    .error_code = fx_acl_error_code,
};

/* ---- initialization ----------------------------------------------------------------------- */

static int fx_acl_refused;

static void fx_acl_init_once(void)
{
    fx_dlsym_bootstrap();
    if (!fx_backend) fx_process_configure(); /* else another backend read it already */
    /* RTLD_LOCAL: the real runtime's symbols must not enter the global scope ahead of ours. */
    void *acl = dlopen(fx_self.cfg.libacl, RTLD_NOW | RTLD_LOCAL);
    if (!acl) FX_WARN("cannot load the Ascend runtime %s: %s", fx_self.cfg.libacl, dlerror());
    void *opapi = dlopen(fx_self.cfg.libopapi, RTLD_NOW | RTLD_LOCAL);
    if (!opapi) FX_DEBUG("cannot load the operator library %s: %s", fx_self.cfg.libopapi,
                         dlerror());
    fx_acl_hooks_resolve(acl, opapi);
    /* NPUs share time, never run two slices' work at once: no spatial mode */
    fx_acl_refused = fx_process_start(&fx_acl_backend, 0) != 0;
}

static struct fx_once fx_acl_once = FX_ONCE_INIT(fx_acl_init_once);

int fx_acl_init(void)
{
    if (fx_once_run(&fx_acl_once) != 0) return -1; /* the runtime called back while loading */
    return fx_self.broken || fx_acl_refused ? -1 : 0;
}

aclError fx_acl_unusable(void)
{
    if (fx_self.broken) return fx_acl_error(fx_self.broken_status);
    return fx_acl_refused ? ACL_ERROR_FAILURE : ACL_ERROR_UNINITIALIZE;
}
