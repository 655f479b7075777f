/* api.c - the public control and statistics API (include/flexai.h) over the shared region. */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "shm.h"
#include "timeshare.h"
#include "util.h"

struct flexai_node {
    struct fx_shm shm;
};

int flexai_node_open(const char *state_dir, flexai_node **out, flexai_error *err)
{
    if (!out) return fx_fail(err, FLEXAI_E_BAD_VALUE, "flexai_node_open: missing output");
    *out = NULL;
    if (!state_dir || !*state_dir) state_dir = getenv("FLEXAI_STATE_DIR");
    if (!state_dir || !*state_dir) state_dir = "/dev/shm/flexai";
    if (state_dir[0] != '/')
        return fx_fail(err, FLEXAI_E_BAD_VALUE,
                       "FLEXAI_STATE_DIR: '%s' is not an absolute path (expected e.g. "
                       "FLEXAI_STATE_DIR=/dev/shm/flexai)", state_dir);
    if (strlen(state_dir) >= FLEXAI_PATH_MAX)
        return fx_fail(err, FLEXAI_E_BAD_VALUE,
                       "FLEXAI_STATE_DIR: path longer than %d bytes", FLEXAI_PATH_MAX - 1);
    flexai_node *n = calloc(1, sizeof *n);
    if (!n) return fx_fail(err, FLEXAI_E_SYSTEM, "flexai_node_open: out of memory");
    if (fx_shm_open(&n->shm, state_dir, err) != 0) {
        free(n);
        return -1;
    }
    *out = n;
    return 0;
}

void flexai_node_close(flexai_node *node)
{
    if (!node) return;
    fx_shm_close(&node->shm);
    free(node);
}

int flexai_node_sweep(flexai_node *node, flexai_error *err)
{
    if (!node) return fx_fail(err, FLEXAI_E_BAD_VALUE, "flexai_node_sweep: no node");
    int n = fx_sweep(&node->shm);
    return n < 0 ? fx_fail(err, FLEXAI_E_STATE, "sweep: cannot lock the node's state") : n;
}

int flexai_node_devices(flexai_node *node, flexai_device_info *out, size_t cap, flexai_error *err)
{
    if (!node) return fx_fail(err, FLEXAI_E_BAD_VALUE, "flexai_node_devices: no node");
    struct fx_region *r = node->shm.r;
    int n = 0;
    if (fx_shm_lock(&node->shm, err) != 0) return -1;
    for (uint32_t d = 0; d < FLEXAI_MAX_DEVICES; d++) {
        if (!r->devs[d].in_use) continue;
        if (out && (size_t)n < cap) {
            memset(&out[n], 0, sizeof out[n]);
            out[n].id = d;
            fx_uuid_format(r->devs[d].uuid, out[n].uuid);
        }
        n++;
    }
    fx_shm_unlock(&node->shm);
    return n;
}

static uint32_t fx_count_procs(const struct fx_region *r, uint32_t slice)
{
    uint32_t n = 0;
    for (uint32_t p = 0; p < FX_MAX_PROCS; p++)
        if (r->procs[p].in_use && r->procs[p].slice == slice) n++;
    return n;
}

/* A slice's name as the caller may print it: anyone can write the state file, so whatever is
 * not a slice-name character (an escape sequence, a control byte) becomes '?'. */
static void fx_copy_name(char *dst, const char *src)
{
    size_t i = 0;
    for (; i < FLEXAI_NAME_MAX - 1 && src[i]; i++) {
        unsigned char c = (unsigned char)src[i];
        dst[i] = (char)(isalnum(c) || c == '-' || c == '_' || c == '.' ? c : '?');
    }
    dst[i] = '\0';
}

/* A slice the caller may see: its own, or any for root. */
static int fx_slice_visible(const struct fx_region *r, uint32_t s)
{
    return r->slices[s].in_use && fx_slice_allows(r, s, (uint32_t)geteuid());
}

int flexai_node_slices(flexai_node *node, flexai_slice_info *out, size_t cap, flexai_error *err)
{
    if (!node) return fx_fail(err, FLEXAI_E_BAD_VALUE, "flexai_node_slices: no node");
    struct fx_region *r = node->shm.r;
    int n = 0;
    if (fx_shm_lock(&node->shm, err) != 0) return -1;
    for (uint32_t s = 0; s < FX_MAX_SLICES; s++) {
        const struct fx_slice *sl = &r->slices[s];
        if (!fx_slice_visible(r, s)) continue;
        if (out && (size_t)n < cap) {
            memset(&out[n], 0, sizeof out[n]);
            out[n].id = s;
            out[n].priority = sl->priority;
            out[n].nprocs = fx_count_procs(r, s);
            fx_copy_name(out[n].name, sl->name);
        }
        n++;
    }
    fx_shm_unlock(&node->shm);
    return n;
}

static void fx_put_row(flexai_usage_row *out, size_t cap, int *n, const struct fx_slice *sl,
                       uint32_t slice, uint32_t dev, int32_t pid, uint64_t used)
{
    if (out && (size_t)*n < cap) {
        flexai_usage_row *row = &out[*n];
        memset(row, 0, sizeof *row);
        row->slice_id = slice;
        row->device_id = dev;
        row->pid = pid;
        row->limit_bytes = sl->mem_limit[dev];
        row->used_bytes = used;
        row->compute = sl->compute[dev];
        row->burst = sl->burst[dev];
        row->gpu_ns = pid ? 0 : sl->gpu_ns[dev];
        row->throttled_ns = pid ? 0 : __atomic_load_n(&sl->throttled_ns[dev], __ATOMIC_RELAXED);
    }
    (*n)++;
}

int flexai_node_usage(flexai_node *node, flexai_usage_row *out, size_t cap, flexai_error *err)
{
    if (!node) return fx_fail(err, FLEXAI_E_BAD_VALUE, "flexai_node_usage: no node");
    struct fx_region *r = node->shm.r;
    int n = 0;
    if (fx_shm_lock(&node->shm, err) != 0) return -1;
    for (uint32_t s = 0; s < FX_MAX_SLICES; s++) {
        const struct fx_slice *sl = &r->slices[s];
        if (!fx_slice_visible(r, s)) continue;
        for (uint32_t d = 0; d < FLEXAI_MAX_DEVICES; d++) {
            if (!sl->mem_limit[d] && !sl->mem_used[d] && !sl->compute[d] && !sl->gpu_ns[d] &&
                !sl->throttled_ns[d])
                continue;
            fx_put_row(out, cap, &n, sl, s, d, 0, sl->mem_used[d]);
            for (uint32_t p = 0; p < FX_MAX_PROCS; p++) {
                const struct fx_proc *pr = &r->procs[p];
                if (pr->in_use && pr->slice == s)
                    fx_put_row(out, cap, &n, sl, s, d, pr->pid, pr->mem_used[d]);
            }
        }
    }
    fx_shm_unlock(&node->shm);
    return n;
}

/* Lock the region and find (or create) the slice and device a setter names. */
static int fx_setter_begin(flexai_node *node, const char *slice, const char *uuid, uint32_t *s,
                           uint32_t *d, flexai_error *err)
{
    uint8_t u[16];
    if (!node) return fx_fail(err, FLEXAI_E_BAD_VALUE, "flexai_node_set_*: no node");
    if (!slice || fx_slice_name_valid(slice, err) != 0) return -1;
    if (!uuid || fx_uuid_parse(uuid, u) != 0)
        return fx_fail(err, FLEXAI_E_BAD_VALUE, "device: '%s' is not a GPU UUID (expected e.g. "
                       "GPU-5ca1ab1e-0000-4000-8000-000000000000)", uuid ? uuid : "");
    struct fx_region *r = node->shm.r;
    if (fx_shm_lock(&node->shm, err) != 0) return -1;
    uint32_t uid = (uint32_t)geteuid();
    *d = fx_dev_id(r, u);
    *s = *d == FX_NONE ? FX_NONE : fx_slice_get(r, slice, 0, uid);
    if (*s == FX_NONE) {
        fx_shm_unlock(&node->shm);
        return fx_fail(err, FLEXAI_E_FULL, "the node's state is full (devices or slices)");
    }
    if (!fx_slice_intact(r, *s)) {
        fx_shm_unlock(&node->shm);
        return fx_fail(err, FLEXAI_E_STATE, "slice '%s': its settings in the node's state are "
                       "damaged; its processes fail closed until they exit", slice);
    }
    if (!fx_slice_allows(r, *s, uid)) {
        uint32_t owner = r->slices[*s].owner_uid;
        fx_shm_unlock(&node->shm);
        return fx_fail(err, FLEXAI_E_PERMISSION, "slice '%s' belongs to uid %u: only that user "
                       "or root may change it", slice, owner);
    }
    return 0;
}

int flexai_node_set_memory_limit(flexai_node *node, const char *slice, const char *uuid,
                                 uint64_t bytes, flexai_error *err)
{
    uint32_t s = FX_NONE, d = FX_NONE;
    if (fx_setter_begin(node, slice, uuid, &s, &d, err) != 0) return -1;
    node->shm.r->slices[s].mem_limit[d] = bytes;
    fx_slice_seal(node->shm.r, s);
    node->shm.r->generation++;
    fx_shm_unlock(&node->shm);
    return 0;
}

int flexai_node_set_compute(flexai_node *node, const char *slice, const char *uuid,
                            uint32_t percent, uint32_t burst, flexai_error *err)
{
    uint32_t s = FX_NONE, d = FX_NONE;
    if (percent > 100)
        return fx_fail(err, FLEXAI_E_BAD_VALUE,
                       "compute: %u is outside 0..100 (expected e.g. 50)", percent);
    if (burst && (burst < percent || burst > 100))
        return fx_fail(err, FLEXAI_E_BAD_VALUE,
                       "burst: %u must lie between the share %u and 100 (expected e.g. "
                       "100)", burst, percent);
    if (fx_setter_begin(node, slice, uuid, &s, &d, err) != 0) return -1;
    fx_ts_set(node->shm.r, s, d, percent, burst);
    fx_shm_unlock(&node->shm);
    return 0;
}

/* ---- layout introspection for tests (not in the public header on purpose) --------------- */
#define FX_LAYOUT_ENTRY(type, field) {#type "." #field, offsetof(struct type, field)}
struct fx_layout_entry {
    const char *name;
    size_t value;
};
static const struct fx_layout_entry fx_layout[] = {
    {"fx_region", sizeof(struct fx_region)},
    {"fx_slice", sizeof(struct fx_slice)},
    {"fx_proc", sizeof(struct fx_proc)},
    {"fx_dev", sizeof(struct fx_dev)},
    {"version", FX_LAYOUT_VERSION},
    FX_LAYOUT_ENTRY(fx_region, lock),
    FX_LAYOUT_ENTRY(fx_region, devs),
    FX_LAYOUT_ENTRY(fx_region, slices),
    FX_LAYOUT_ENTRY(fx_region, procs),
    FX_LAYOUT_ENTRY(fx_slice, mem_limit),
    FX_LAYOUT_ENTRY(fx_slice, mem_used),
    FX_LAYOUT_ENTRY(fx_proc, mem_used),
    FX_LAYOUT_ENTRY(fx_dev, lease_pid),
    FX_LAYOUT_ENTRY(fx_dev, lease_until_ns),
    FX_LAYOUT_ENTRY(fx_dev, sched_until_ns),
    FX_LAYOUT_ENTRY(fx_slice, compute),
    FX_LAYOUT_ENTRY(fx_slice, tokens_ns),
    FX_LAYOUT_ENTRY(fx_slice, gpu_ns),
    FX_LAYOUT_ENTRY(fx_slice, throttled_ns),
};

/* Size or offset named "struct.field" (or a struct name), -1 when unknown. */
__attribute__((visibility("default"))) long flexai_layout_value(const char *name);
long flexai_layout_value(const char *name)
{
    for (size_t i = 0; i < sizeof fx_layout / sizeof fx_layout[0]; i++)
        if (strcmp(fx_layout[i].name, name) == 0) return (long)fx_layout[i].value;
    return -1;
}
