/* ledger.c - vendor-free memory accounting on the shared region: devices, slices, processes.
 *
 * Check and reserve happen in one critical section (fx_charge), before the driver is asked, so
 * racing processes can never overshoot a quota together; the driver's failure is undone with
 * fx_uncharge. Nothing here knows about CUDA.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "shm.h"

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
    if (free_id != FX_NONE) {
        memcpy(r->devs[free_id].uuid, uuid, 16);
        r->devs[free_id].in_use = 1;
        r->generation++;
    }
    return free_id;
}

uint32_t fx_slice_get(struct fx_region *r, const char *name, int32_t pid)
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
    if (free_id == FX_NONE) return FX_NONE;
    struct fx_slice *sl = &r->slices[free_id];
    memset(sl, 0, sizeof *sl);
    snprintf(sl->name, sizeof sl->name, "%s", name);
    sl->priority = FLEXAI_PRIORITY_NORMAL;
    sl->private_to_pid = (name == own) ? (uint32_t)pid : 0;
    sl->in_use = 1;
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
        __atomic_store_n(&pr->in_use, 1, __ATOMIC_RELEASE); /* last: see fx_repair */
        r->generation++;
        return p;
    }
    return FX_NONE;
}

int fx_charge(struct fx_region *r, uint32_t proc, uint32_t dev, uint64_t bytes)
{
    struct fx_proc *pr = &r->procs[proc];
    struct fx_slice *sl = &r->slices[pr->slice];
    uint64_t used = sl->mem_used[dev];
    uint64_t limit = sl->mem_limit[dev];
    if (bytes > UINT64_MAX - used) return -1;
    if (limit != 0 && used + bytes > limit) return -1;
    /* process first: if we die between the two stores, fx_repair rebuilds the slice sum */
    pr->mem_used[dev] += bytes;
    sl->mem_used[dev] = used + bytes;
    return 0;
}

void fx_uncharge(struct fx_region *r, uint32_t proc, uint32_t dev, uint64_t bytes)
{
    struct fx_proc *pr = &r->procs[proc];
    struct fx_slice *sl = &r->slices[pr->slice];
    uint64_t give = bytes;
    if (give > pr->mem_used[dev]) {
        FX_WARN("uncharge of %llu bytes exceeds the %llu charged to this process on device %u",
                (unsigned long long)bytes, (unsigned long long)pr->mem_used[dev], dev);
        give = pr->mem_used[dev];
    }
    pr->mem_used[dev] -= give;
    sl->mem_used[dev] = sl->mem_used[dev] >= give ? sl->mem_used[dev] - give : 0;
}

static int fx_slice_has_procs(const struct fx_region *r, uint32_t slice)
{
    for (uint32_t p = 0; p < FX_MAX_PROCS; p++)
        if (r->procs[p].in_use && r->procs[p].slice == slice) return 1;
    return 0;
}

void fx_proc_remove(struct fx_region *r, uint32_t proc)
{
    struct fx_proc *pr = &r->procs[proc];
    uint32_t slice = pr->slice;
    if (!pr->in_use) return;
    for (uint32_t d = 0; d < FLEXAI_MAX_DEVICES; d++)
        if (pr->mem_used[d]) fx_uncharge(r, proc, d, pr->mem_used[d]);
    __atomic_store_n(&pr->in_use, 0, __ATOMIC_RELEASE);
    /* A slice lives while it has processes; its limits come back with the next process. */
    if (slice < FX_MAX_SLICES && !fx_slice_has_procs(r, slice)) r->slices[slice].in_use = 0;
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

/* Exited, killed, a zombie, or the pid now belongs to another process. */
static int fx_proc_dead(int32_t pid, uint64_t start_time)
{
    if (pid <= 0) return 1;
    if (kill(pid, 0) != 0 && errno == ESRCH) return 1;
    uint64_t now = fx_pid_start_time(pid);
    if (now == 0) return 1;
    return start_time != 0 && now != start_time;
}

int fx_sweep(struct fx_region *r)
{
    int reclaimed = 0;
    for (uint32_t p = 0; p < FX_MAX_PROCS; p++) {
        struct fx_proc *pr = &r->procs[p];
        /* Unlocked peek; the decision is re-checked under the lock below. */
        if (!__atomic_load_n(&pr->in_use, __ATOMIC_ACQUIRE)) continue;
        int32_t pid = pr->pid;
        uint64_t st = pr->start_time;
        if (!fx_proc_dead(pid, st)) continue;
        if (fx_shm_lock(r) != 0) return -1;
        if (pr->in_use && pr->pid == pid && pr->start_time == st) {
            FX_INFO("reclaiming exited process %d", (int)pid);
            fx_proc_remove(r, p);
            reclaimed++;
        }
        fx_shm_unlock(r);
    }
    return reclaimed;
}
