/* shm.c - create, map, check and lock the node's shared region (layout in shm.h). */
#include "shm.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"

_Static_assert(sizeof(pthread_mutex_t) <= sizeof(((struct fx_region *)0)->lock),
               "pthread_mutex_t does not fit the region's lock field");
_Static_assert(offsetof(struct fx_region, lock) % 16 == 0, "lock must be aligned");

static int fx_flock(int fd, int op)
{
    int rc;
    do {
        rc = flock(fd, op);
    } while (rc != 0 && errno == EINTR);
    return rc;
}

static int fx_init_region(struct fx_region *r, flexai_error *err)
{
    pthread_mutexattr_t a;
    pthread_mutex_t *m = (pthread_mutex_t *)(void *)r->lock;
    if (pthread_mutexattr_init(&a) != 0) return fx_fail(err, FLEXAI_E_SYSTEM,
                                                        "state: cannot create lock");
    int rc = pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    if (rc == 0) rc = pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    if (rc == 0) rc = pthread_mutex_init(m, &a);
    pthread_mutexattr_destroy(&a);
    if (rc != 0) return fx_fail(err, FLEXAI_E_SYSTEM,
                                "state: cannot create robust lock: %s", strerror(rc));
    r->version = FX_LAYOUT_VERSION;
    r->size = sizeof *r;
    /* magic last: a creator that dies before this line leaves an invalid region, which the
     * next opener (serialized by the lock file, and alone on the file) initializes again. */
    __atomic_store_n(&r->magic, FX_MAGIC, __ATOMIC_RELEASE);
    return 0;
}

/* Whether the mapped file holds a region of this layout; fills err otherwise. */
static int fx_region_valid(const struct fx_region *r, const char *path, flexai_error *err)
{
    uint64_t magic = __atomic_load_n(&r->magic, __ATOMIC_ACQUIRE);
    if (magic != FX_MAGIC)
        return fx_fail(err, FLEXAI_E_STATE,
                       "state file %s is not a flexai state file (bad magic)", path);
    if (r->version != FX_LAYOUT_VERSION || r->size != sizeof *r)
        return fx_fail(err, FLEXAI_E_STATE,
                       "state file %s has layout version %u; this libflexai expects %u: "
                       "stop the processes using it or set another FLEXAI_STATE_DIR", path,
                       r->version, FX_LAYOUT_VERSION);
    return 0;
}

/* Every attached process holds a shared flock on the state file for as long as it is attached,
 * so a newcomer that can take it exclusively knows nobody uses the file: it may then replace a
 * file it cannot use (another layout version, a crashed creator, junk). Newcomers serialize on
 * a separate lock file, which is only held for the few system calls of attaching. */
int fx_shm_open(struct fx_shm *s, const char *dir, flexai_error *err)
{
    char path[FLEXAI_PATH_MAX + 16], lock_path[FLEXAI_PATH_MAX + 16];
    struct stat st;
    void *map = MAP_FAILED;
    int fd = -1, lockfd = -1;

    s->r = NULL;
    s->fd = -1;
    if (mkdir(dir, 01777) == 0) {
        chmod(dir, 01777); /* every user's processes share one node state; umask must not win */
    } else if (errno != EEXIST) {
        return fx_fail(err, FLEXAI_E_STATE,
                       "FLEXAI_STATE_DIR %s: cannot create: %s", dir, strerror(errno));
    }
    snprintf(path, sizeof path, "%s/state", dir);
    snprintf(lock_path, sizeof lock_path, "%s/state.lock", dir);
    lockfd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (lockfd < 0) return fx_fail(err, FLEXAI_E_STATE,
                                   "state lock %s: %s", lock_path, strerror(errno));
    (void)fchmod(lockfd, 0666); /* best effort: only the creator may change the mode */
    if (fx_flock(lockfd, LOCK_EX) != 0) {
        fx_fail(err, FLEXAI_E_STATE, "state lock %s: flock: %s", lock_path, strerror(errno));
        goto fail;
    }
    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (fd < 0) {
        fx_fail(err, FLEXAI_E_STATE, "state file %s: %s", path, strerror(errno));
        goto fail;
    }
    (void)fchmod(fd, 0666);
    int alone = flock(fd, LOCK_EX | LOCK_NB) == 0;
    if (!alone && fx_flock(fd, LOCK_SH) != 0) {
        fx_fail(err, FLEXAI_E_STATE, "state file %s: flock: %s", path, strerror(errno));
        goto fail;
    }
    if (fstat(fd, &st) != 0) {
        fx_fail(err, FLEXAI_E_STATE, "state file %s: %s", path, strerror(errno));
        goto fail;
    }
    int fresh = st.st_size == 0;
    if ((size_t)st.st_size == sizeof(struct fx_region)) {
        map = mmap(NULL, sizeof(struct fx_region), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (map == MAP_FAILED) {
            fx_fail(err, FLEXAI_E_STATE, "state file %s: mmap: %s", path, strerror(errno));
            goto fail;
        }
        if (fx_region_valid(map, path, err) != 0) {
            if (!alone) goto fail; /* someone uses it: never pull it from under them */
            munmap(map, sizeof(struct fx_region));
            map = MAP_FAILED;
            fresh = 1;
        }
    } else if (!fresh && !alone) {
        fx_fail(err, FLEXAI_E_STATE,
                "state file %s has %lld bytes; this libflexai expects %zu (layout version "
                "%u): stop the processes using it or set another FLEXAI_STATE_DIR", path,
                (long long)st.st_size, sizeof(struct fx_region), FX_LAYOUT_VERSION);
        goto fail;
    } else {
        fresh = 1;
    }
    if (fresh) {
        if (st.st_size != 0) FX_WARN("state file %s was unusable and unused: replacing it", path);
        if (ftruncate(fd, 0) != 0 || ftruncate(fd, (off_t)sizeof(struct fx_region)) != 0) {
            fx_fail(err, FLEXAI_E_STATE,
                    "state file %s: cannot size it: %s", path, strerror(errno));
            goto fail;
        }
        map = mmap(NULL, sizeof(struct fx_region), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (map == MAP_FAILED) {
            fx_fail(err, FLEXAI_E_STATE, "state file %s: mmap: %s", path, strerror(errno));
            goto fail;
        }
        if (fx_init_region(map, err) != 0) goto fail;
    }
    if (alone && fx_flock(fd, LOCK_SH) != 0) { /* from exclusive to shared: we stay a user */
        fx_fail(err, FLEXAI_E_STATE, "state file %s: flock: %s", path, strerror(errno));
        goto fail;
    }
    close(lockfd);
    s->r = map;
    s->fd = fd;
    return 0;
fail:
    if (map != MAP_FAILED) munmap(map, sizeof(struct fx_region));
    if (fd >= 0) close(fd); /* also drops its flock */
    if (lockfd >= 0) close(lockfd);
    return -1;
}

void fx_shm_close(struct fx_shm *s)
{
    if (s->r) munmap(s->r, sizeof *s->r);
    if (s->fd >= 0) close(s->fd);
    s->r = NULL;
    s->fd = -1;
}

/* The last holder died inside a critical section. Everything that section may have left half
 * done is derived data or guarded by an in_use flag written last, so rebuilding the slices'
 * usage from their processes' usage restores every invariant. */
static void fx_repair(struct fx_region *r)
{
    for (uint32_t s = 0; s < FX_MAX_SLICES; s++)
        memset(r->slices[s].mem_used, 0, sizeof r->slices[s].mem_used);
    for (uint32_t p = 0; p < FX_MAX_PROCS; p++) {
        struct fx_proc *pr = &r->procs[p];
        if (!pr->in_use || pr->slice >= FX_MAX_SLICES) continue;
        for (int d = 0; d < FLEXAI_MAX_DEVICES; d++)
            r->slices[pr->slice].mem_used[d] += pr->mem_used[d];
    }
    r->generation++;
}

int fx_shm_lock(struct fx_region *r)
{
    pthread_mutex_t *m = (pthread_mutex_t *)(void *)r->lock;
    int rc = pthread_mutex_lock(m);
    if (rc == EOWNERDEAD) {
        fx_repair(r);
        pthread_mutex_consistent(m);
        FX_INFO("recovered the state lock from a process that died holding it");
        return 0;
    }
    if (rc != 0) {
        FX_ERROR("state lock: %s", strerror(rc));
        return -1;
    }
    return 0;
}

void fx_shm_unlock(struct fx_region *r)
{
    pthread_mutex_unlock((pthread_mutex_t *)(void *)r->lock);
}
