/* shm.h - the node's shared region: one file in FLEXAI_STATE_DIR, mapped by every process.
 *
 * Versioned fixed-width layout (tests/test_layout.py checks offsets and sizes through
 * flexai_layout_*). One robust process-shared mutex guards all of it: a holder killed at any
 * point hands the next locker EOWNERDEAD, and that locker rebuilds the derived fields (each
 * slice's usage is the sum of its processes' usage) before going on. The critical sections are a
 * few dozen instructions with no system calls, so one lock costs less than finer ones would.
 */
#ifndef FX_SHM_H
#define FX_SHM_H

#include <stdint.h>

#include "flexai.h"

#define FX_MAGIC 0x314d48534941584eULL /* "NXAISHM1" read as little-endian bytes */
#define FX_LAYOUT_VERSION 5u /* 3: slices record their owner; 4: devices on two lines;
                                * 5: slices count their throttled time */
#define FX_MAX_SLICES 128
#define FX_MAX_PROCS 1024
#define FX_NONE 0xffffffffu

/* Two cache lines: the first is read by every launch of every process (fx_needs_gate) and
 * written rarely; the second, the lease, is written by its holder on every launch. Apart, the
 * holder's writes never slow the others' launches (false sharing). */
struct fx_dev {
    uint8_t uuid[16];
    uint32_t in_use;
    uint32_t pad;
    uint64_t sched_until_ns;  /* a scheduled slice was active: everyone schedules until then */
    uint64_t high_until_ns;   /* a high-priority slice wanted the device until about then */
    uint64_t pad1[3];
    /* time-share lease (timeshare.c): the process whose slice alone may submit work now */
    int32_t lease_pid;
    uint32_t lease_slice;
    uint64_t lease_start_ns;  /* CLOCK_MONOTONIC */
    uint64_t lease_until_ns;  /* end of the quantum */
    uint64_t lease_touch_ns;  /* holder's last launch; a silent holder loses the lease */
    uint64_t lease_busy_ns;   /* when the holder expects the work it submitted to be done */
    uint64_t pad2[3];
};

/* A slice's settings (from name to burst, and owner_uid) are sealed: `sealed` is a hash of them
 * written by every change (fx_slice_seal) and checked before they are relied on
 * (fx_slice_intact), so damaged bytes fail closed instead of lifting a limit. Keep the settings
 * in the first part of the struct, contiguous. */
struct fx_slice {
    char name[FLEXAI_NAME_MAX];
    uint32_t in_use;
    int32_t priority;
    uint32_t private_to_pid; /* nonzero: a process's own unnamed slice, freed with it */
    uint32_t pad;
    uint64_t mem_limit[FLEXAI_MAX_DEVICES]; /* by node device id; 0 = no limit */
    uint64_t mem_used[FLEXAI_MAX_DEVICES];  /* derived: sum of its processes' mem_used */
    /* compute (timeshare.c), by node device id */
    uint32_t compute[FLEXAI_MAX_DEVICES];   /* share in percent; 0 = none (treated as 100) */
    uint32_t burst[FLEXAI_MAX_DEVICES];     /* 0: share is a hard cap; else the cap, >= share */
    int64_t tokens_ns[FLEXAI_MAX_DEVICES];  /* GPU time the cap still allows; may go negative */
    uint64_t refill_ns[FLEXAI_MAX_DEVICES]; /* last refill of tokens_ns */
    uint64_t vtime_ns[FLEXAI_MAX_DEVICES];  /* GPU time used / share: fair-share clock */
    uint64_t active_ns[FLEXAI_MAX_DEVICES]; /* last time it wanted to submit work */
    uint64_t gpu_ns[FLEXAI_MAX_DEVICES];    /* GPU time used in all (statistics) */
    uint64_t throttled_ns[FLEXAI_MAX_DEVICES]; /* time its launches were held back by the
                                                * scheduler (statistics; added without the
                                                * lock, atomically) */
    uint32_t owner_uid;                     /* the user who created it: only they (and root)
                                               may join or change it */
    uint32_t pad2;
    uint64_t sealed;                        /* hash of the settings (see above) */
    uint64_t usage_sealed;                  /* hash of mem_used */
    uint64_t reserved[5];
};

struct fx_proc {
    int32_t pid;
    uint32_t slice;
    uint64_t start_time; /* /proc/<pid>/stat field 22: tells a reused pid apart */
    uint64_t mem_used[FLEXAI_MAX_DEVICES];
    uint32_t in_use;
    uint32_t sealed;     /* hash of pid, slice, start_time and mem_used */
};

struct fx_region {
    uint64_t magic;
    uint32_t version;
    uint32_t pad0;
    uint64_t size;        /* sizeof(struct fx_region) of the writer */
    uint64_t generation;  /* bumped whenever slices, limits or processes change */
    uint8_t lock[64];     /* pthread_mutex_t, robust and process-shared */
    uint8_t pad1[32];     /* devs start on a cache line */
    struct fx_dev devs[FLEXAI_MAX_DEVICES];
    struct fx_slice slices[FX_MAX_SLICES];
    struct fx_proc procs[FX_MAX_PROCS];
};

/* A process's attachment to the region. */
struct fx_shm {
    struct fx_region *r;
    int fd;    /* the state file (its shared flock says "in use") */
    int dirfd; /* the state directory, for repairs */
    uint64_t size_checked_ns; /* when the file's size was last seen intact (CLOCK_MONOTONIC) */
};

#define FX_LOCK_WAIT_NS (2000000000ULL) /* longest wait for a lock before failing closed */
#define FX_LOCK_POLL_NS (1000000ULL)    /* poll period of a bounded flock */
#define FX_SIZE_CHECK_NS (5000000ULL)   /* the file's size is re-checked this often at most */

/* Map (creating or initializing when needed) "<dir>/state". Refuses a directory or file that
 * another user could have planted (links, foreign owner, others-writable without sticky bit). */
int fx_shm_open(struct fx_shm *s, const char *dir, flexai_error *err);
void fx_shm_close(struct fx_shm *s);

/* Take / release the region lock. Waits at most FX_LOCK_WAIT_NS (then fails closed with a
 * clear error), repairs the region if the last holder died, re-creates a lock left held by a
 * thread that is gone or overwritten, and refuses a file that was truncated or overwritten. */
int fx_shm_lock(struct fx_shm *s, flexai_error *err);
void fx_shm_unlock(struct fx_shm *s);

/* ---- ledger operations; all but fx_sweep expect the lock held ---------------------------- */

/* Node device id of `uuid`, adding it if new; FX_NONE when the table is full. */
uint32_t fx_dev_id(struct fx_region *r, const uint8_t uuid[16]);

/* Find or create the slice `name` (empty name: a private slice for pid) for user `uid`.
 * FX_NONE when the table is full even after expiring slices without processes. */
uint32_t fx_slice_get(struct fx_region *r, const char *name, int32_t pid, uint32_t uid);

/* Seal slice s's settings after a change; whether they are as last sealed. Lock held. */
void fx_slice_seal(struct fx_region *r, uint32_t s);
int fx_slice_intact(const struct fx_region *r, uint32_t s);

/* Seal slice s's usage (mem_used) after a change; whether it is as sealed. Lock held. */
void fx_usage_seal(struct fx_region *r, uint32_t s);
int fx_usage_intact(const struct fx_region *r, uint32_t s);

/* Seal process slot p (pid, slice, start time, usage); whether it is as sealed. Lock held. */
void fx_proc_seal(struct fx_region *r, uint32_t p);
int fx_proc_intact(const struct fx_region *r, uint32_t p);

/* Whether some live process is in slice `s`. */
int fx_slice_has_process(const struct fx_region *r, uint32_t s);

/* Whether user `uid` may join or change slice `s` (its creator, or root). */
int fx_slice_allows(const struct fx_region *r, uint32_t s, uint32_t uid);

/* Register a process in a slice; returns its slot or FX_NONE when the table is full. */
uint32_t fx_proc_add(struct fx_region *r, uint32_t slice, int32_t pid, uint64_t start_time);

/* Reserve `bytes` on device `dev` for process slot `proc` against its slice's limit.
 * Returns 0, -1 (and changes nothing) when the slice would exceed its limit, or -2 when the
 * process's or the slice's usage records are damaged (changes nothing). */
int fx_charge(struct fx_region *r, uint32_t proc, uint32_t dev, uint64_t bytes);

/* Give back what fx_charge reserved; never underflows (a mismatch is clamped and logged);
 * damaged records are left as they are (never re-sealed). */
void fx_uncharge(struct fx_region *r, uint32_t proc, uint32_t dev, uint64_t bytes);

/* Remove a process slot, returning its usage to its slice (and freeing a private slice). */
void fx_proc_remove(struct fx_region *r, uint32_t proc);

/* Reclaim every process that has exited. Takes the lock itself; reads /proc outside of it.
 * A process that may exist but cannot be inspected (hidepid, another user) is kept.
 * Returns the number of processes reclaimed or -1. */
int fx_sweep(struct fx_shm *s);

/* Start time of pid from /proc, 0 when the process does not exist. */
uint64_t fx_pid_start_time(int32_t pid);

#endif
