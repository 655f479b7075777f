/* ledger.c - vendor-free memory accounting on the shared region: devices, slices, processes.
 *
 * Check and reserve happen in one critical section (fx_charge), before the driver is asked, so
 * racing processes can never overshoot a quota together; the driver's failure is undone with
 * fx_uncharge. Nothing here knows about CUDA.
 */
#include <errno.h>
#include <stddef.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "shm.h"
#include "util.h"

int fx_slice_has_process(const struct fx_region *r, uint32_t slice)
{
    for (uint32_t p = 0; p < FX_MAX_PROCS; p++)
        if (r->procs[p].in_use && r->procs[p].slice == slice) return 1;
    return 0;
}

/* Whether anything still refers to device d: a slice's limit, share or usage, a process's
 * usage, a lease. A device nothing refers to may be forgotten when the table is full (bogus
 * UUIDs must not fill it for ever). */
static int fx_dev_referenced(const struct fx_region *r, uint32_t d)
{
    for (uint32_t s = 0; s < FX_MAX_SLICES; s++) {
        const struct fx_slice *sl = &r->slices[s];
        if (sl->in_use && (sl->mem_limit[d] || sl->mem_used[d] || sl->compute[d]))
            return 1;
    }
    for (uint32_t p = 0; p < FX_MAX_PROCS; p++)
        if (r->procs[p].in_use && r->procs[p].mem_used[d]) return 1;
    return r->devs[d].lease_pid != 0;
}

/* Expire one slice that no process uses (made by a resize, or left behind), to make room. */
static uint32_t fx_slice_expire_one(struct fx_region *r)
{
    for (uint32_t s = 0; s < FX_MAX_SLICES; s++) {
        if (!r->slices[s].in_use || fx_slice_has_process(r, s)) continue;
        FX_INFO("slice table full: expiring slice '%.*s', which has no process",
                FLEXAI_NAME_MAX - 1, r->slices[s].name);
        r->slices[s].in_use = 0;
        fx_slice_seal(r, s);
        r->generation++;
        return s;
    }
    return FX_NONE;
}

uint32_t fx_dev_id(struct fx_region *r, const uint8_t uuid[16])
{
    uint32_t free_id = FX_NONE;
    for (uint32_t d = 0; d < FLEXAI_MAX_DEVICES; d++) {
        if (r->devs[d].in_use) {
            if (memcmp(r->devs[d].uuid, uuid, 16) == 0) return d;
        } else if (free_id == FX_NONE) {
            free_id = d;
        }
    }
    /* full: forget a device nothing refers to, after expiring slices without processes */
    for (int round = 0; free_id == FX_NONE && round < 2; round++) {
        if (round == 1)
            while (fx_slice_expire_one(r) != FX_NONE) continue;
        for (uint32_t d = 0; d < FLEXAI_MAX_DEVICES && free_id == FX_NONE; d++)
            if (!fx_dev_referenced(r, d)) free_id = d;
    }
    if (free_id != FX_NONE) {
        memset(&r->devs[free_id], 0, sizeof r->devs[free_id]);
        memcpy(r->devs[free_id].uuid, uuid, 16);
        r->devs[free_id].lease_slice = FX_NONE;
        r->devs[free_id].in_use = 1;
        for (uint32_t s = 0; s < FX_MAX_SLICES; s++) { /* nothing of the old device remains */
            struct fx_slice *sl = &r->slices[s];
            if (sl->burst[free_id]) {
                int intact = fx_slice_intact(r, s);
                sl->burst[free_id] = 0;
                if (intact) fx_slice_seal(r, s); /* never seal what was damaged */
            }
            sl->tokens_ns[free_id] = 0;
            sl->refill_ns[free_id] = sl->vtime_ns[free_id] = sl->active_ns[free_id] = 0;
            sl->gpu_ns[free_id] = sl->throttled_ns[free_id] = 0;
        }
        r->generation++;
    }
    return free_id;
}

int fx_slice_allows(const struct fx_region *r, uint32_t s, uint32_t uid)
{
    return uid == 0 || (s < FX_MAX_SLICES && r->slices[s].owner_uid == uid);
}

uint32_t fx_slice_get(struct fx_region *r, const char *name, int32_t pid, uint32_t uid)
{
    char own[FLEXAI_NAME_MAX];
    uint32_t free_id = FX_NONE;
    if (!name || !*name) {
        snprintf(own, sizeof own, "pid-%d", (int)pid);
        name = own;
    }
    for (uint32_t s = 0; s < FX_MAX_SLICES; s++) {
        struct fx_slice *sl = &r->slices[s];
        if (sl->in_use) {
            if (strncmp(sl->name, name, FLEXAI_NAME_MAX) == 0) return s;
        } else if (free_id == FX_NONE) {
            free_id = s;
        }
    }
    if (free_id == FX_NONE) free_id = fx_slice_expire_one(r);
    if (free_id == FX_NONE) return FX_NONE;
    struct fx_slice *sl = &r->slices[free_id];
    memset(sl, 0, sizeof *sl);
    snprintf(sl->name, sizeof sl->name, "%s", name);
    sl->priority = FLEXAI_PRIORITY_NORMAL;
    sl->owner_uid = uid;
    sl->private_to_pid = (name == own) ? (uint32_t)pid : 0;
    sl->in_use = 1;
    fx_slice_seal(r, free_id);
    fx_usage_seal(r, free_id);
    r->generation++;
    return free_id;
}

uint32_t fx_proc_add(struct fx_region *r, uint32_t slice, int32_t pid, uint64_t start_time)
{
    for (uint32_t p = 0; p < FX_MAX_PROCS; p++) {
        struct fx_proc *pr = &r->procs[p];
        if (pr->in_use) continue;
        memset(pr, 0, sizeof *pr);
        pr->pid = pid;
        pr->slice = slice;
        pr->start_time = start_time;
        fx_proc_seal(r, p);
        __atomic_store_n(&pr->in_use, 1, __ATOMIC_RELEASE); /* last: see fx_repair */
        r->generation++;
        return p;
    }
    return FX_NONE;
}

int fx_charge(struct fx_region *r, uint32_t proc, uint32_t dev, uint64_t bytes)
{
    struct fx_proc *pr = &r->procs[proc];
    if (pr->slice >= FX_MAX_SLICES || dev >= FLEXAI_MAX_DEVICES) return -2; /* never trusted */
    if (!fx_proc_intact(r, proc) || !fx_usage_intact(r, pr->slice)) return -2;
    struct fx_slice *sl = &r->slices[pr->slice];
    uint64_t used = sl->mem_used[dev];
    uint64_t limit = sl->mem_limit[dev];
    if (bytes > UINT64_MAX - used || bytes > UINT64_MAX - pr->mem_used[dev]) return -1;
    if (limit != 0 && used + bytes > limit) return -1;
    /* process first: if we die between the stores, fx_repair rebuilds the slice sum (and seals) */
    pr->mem_used[dev] += bytes;
    fx_proc_seal(r, proc);
    sl->mem_used[dev] = used + bytes;
    fx_usage_seal(r, pr->slice);
    return 0;
}

void fx_uncharge(struct fx_region *r, uint32_t proc, uint32_t dev, uint64_t bytes)
{
    struct fx_proc *pr = &r->procs[proc];
    if (pr->slice >= FX_MAX_SLICES || dev >= FLEXAI_MAX_DEVICES) return;
    if (!fx_proc_intact(r, proc) || !fx_usage_intact(r, pr->slice)) {
        FX_WARN("usage records of process %d are damaged: its charge stays", (int)pr->pid);
        return;
    }
    struct fx_slice *sl = &r->slices[pr->slice];
    uint64_t give = bytes;
    if (give > pr->mem_used[dev]) {
        FX_WARN("uncharge of %llu bytes exceeds the %llu charged to this process on device %u",
                (unsigned long long)bytes, (unsigned long long)pr->mem_used[dev], dev);
        give = pr->mem_used[dev];
    }
    pr->mem_used[dev] -= give;
    fx_proc_seal(r, proc);
    sl->mem_used[dev] = sl->mem_used[dev] >= give ? sl->mem_used[dev] - give : 0;
    fx_usage_seal(r, pr->slice);
}

void fx_proc_remove(struct fx_region *r, uint32_t proc)
{
    struct fx_proc *pr = &r->procs[proc];
    uint32_t slice = pr->slice;
    if (!pr->in_use) return;
    if (slice >= FX_MAX_SLICES) { /* a corrupt slot: drop it, it charged nothing we can find */
        __atomic_store_n(&pr->in_use, 0, __ATOMIC_RELEASE);
        r->generation++;
        return;
    }
    for (uint32_t d = 0; d < FLEXAI_MAX_DEVICES; d++)
        if (pr->mem_used[d]) fx_uncharge(r, proc, d, pr->mem_used[d]);
    __atomic_store_n(&pr->in_use, 0, __ATOMIC_RELEASE);
    /* A slice lives while it has processes; its limits come back with the next process. */
    if (!fx_slice_has_process(r, slice) && fx_slice_intact(r, slice)) {
        r->slices[slice].in_use = 0;
        fx_slice_seal(r, slice);
    }
    r->generation++;
}

uint64_t fx_pid_start_time(int32_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = '\0';
    /* The command name (field 2) may hold spaces and parentheses: count from the last ')'. */
    char *p = strrchr(buf, ')');
    if (!p) return 0;
    p++; /* now at " S ..." : field 3 is the state */
    if (p[0] != ' ' || p[1] == 'Z' || p[1] == 'X') return 0; /* a zombie holds no GPU memory */
    for (int field = 3; field < 22 && p; field++) p = strchr(p + 1, ' ');
    if (!p) return 0;
    return strtoull(p + 1, NULL, 10);
}

/* Exited, killed, a zombie, or the pid now belongs to another process. A pid that exists but
 * whose /proc entry this process cannot read (hidepid=2, another user) counts as alive:
 * kill(pid, 0) failing with EPERM means "exists, not yours". */
static int fx_proc_dead(int32_t pid, uint64_t start_time)
{
    if (pid <= 0) return 1;
    if (kill(pid, 0) != 0 && errno == ESRCH) return 1;
    char path[32];
    snprintf(path, sizeof path, "/proc/%d", (int)pid);
    if (access(path, F_OK) != 0) return 0; /* hidden from us: alive as far as we can tell */
    uint64_t now = fx_pid_start_time(pid);
    if (now == 0) return 1; /* visible, and a zombie or gone */
    return start_time != 0 && now != start_time;
}

int fx_sweep(struct fx_shm *sh)
{
    struct fx_region *r = sh->r;
    int reclaimed = 0;
    for (uint32_t p = 0; p < FX_MAX_PROCS; p++) {
        struct fx_proc *pr = &r->procs[p];
        /* Unlocked peek; the decision is re-checked under the lock below. */
        if (!__atomic_load_n(&pr->in_use, __ATOMIC_ACQUIRE)) continue;
        int32_t pid = pr->pid;
        uint64_t st = pr->start_time;
        if (!fx_proc_dead(pid, st)) continue;
        if (fx_shm_lock(sh, NULL) != 0) return -1;
        if (pr->in_use && pr->pid == pid && pr->start_time == st) {
            FX_INFO("reclaiming exited process %d", (int)pid);
            fx_proc_remove(r, p);
            reclaimed++;
        }
        fx_shm_unlock(sh);
    }
    return reclaimed;
}
