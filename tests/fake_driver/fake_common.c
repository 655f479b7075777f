/*
 * fake_common.c - what the fake libcuda and libnvidia-ml share: configuration, UUIDs, the
 * simulated node's shared files and its device memory.
 *
 * Each library links its own copy, so each parses the environment once on its own. The result
 * depends only on the environment, so both agree on device count, memory size and UUIDs; the
 * device memory lives in a shared file, so both (and every other process) agree on it too.
 *
 * Variables: FLEXAI_SIM_DEVICES (1..16, default 1), FLEXAI_SIM_MEMORY (per device, default
 * 16GiB; the shim's units: "16G" is 16 * 10^9 bytes, "16GiB" 16 * 2^30), FLEXAI_SIM_UUIDS (one
 * GPU-... per device), FLEXAI_SIM_KERNEL_US (duration of kernels not named sleep_us*, default
 * 10), FLEXAI_SIM_MPS (1: kernels of different processes overlap), FLEXAI_SIM_NAME (the model
 * name of every device, printable ASCII, at most 63 characters; default "flexai simulated GPU").
 * FLEXAI_SIM_STATE_DIR: where the machine's shared files live (the device timeline, the memory);
 * by default in the flexai node's state directory, see state_path().
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fake.h"
#include "util.h"

#define DEFAULT_MEMORY ((size_t)16 << 30)

_Static_assert(SIZE_MAX >= UINT64_MAX, "a size parsed as uint64_t fits a size_t");

static struct fake_config config;
static int config_ok;
static pthread_once_t config_once = PTHREAD_ONCE_INIT;

static int hex_value(char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int fake_uuid_parse(const char *s, unsigned char out[16]) {
    /* Positions of the dashes after "GPU-": 8-4-4-4-12. */
    static const int dash_at[] = {8, 13, 18, 23};
    unsigned char bytes[16];
    int nbytes = 0, high = -1, dash = 0;

    if (s == NULL || strncmp(s, "GPU-", 4) != 0 || strlen(s) != FAKE_UUID_STRLEN)
        return -1;
    for (int i = 0; i < FAKE_UUID_STRLEN - 4; i++) {
        char c = s[4 + i];
        if (dash < 4 && i == dash_at[dash]) {
            if (c != '-')
                return -1;
            dash++;
            continue;
        }
        int v = hex_value(c);
        if (v < 0)
            return -1;
        if (high < 0) {
            high = v;
        } else {
            bytes[nbytes++] = (unsigned char)(high << 4 | v);
            high = -1;
        }
    }
    memcpy(out, bytes, sizeof(bytes));
    return 0;
}

/* GPU-f1e5a100-0000-4000-8000-00000000000N: recognisable in logs, valid version-4 layout, and
 * the same for a given physical index in every process. */
static void default_uuid(int index, unsigned char u[16]) {
    static const unsigned char base[16] = {0xf1, 0xe5, 0xa1, 0x00, 0x00, 0x00, 0x40, 0x00,
                                           0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00};
    memcpy(u, base, sizeof(base));
    u[15] = (unsigned char)index;
}

static int config_fail(const char *var, const char *value, const char *why) {
    /* stderr only: the fake runs inside the host program and must not touch its stdout. */
    fprintf(stderr, "flexai fake driver: %s=\"%s\" %s\n", var, value, why);
    return -1;
}

static int parse_devices(void) {
    const char *s = getenv("FLEXAI_SIM_DEVICES");
    char *end;

    config.ndevices = 1;
    if (s == NULL)
        return 0;
    errno = 0;
    long n = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || n < 1 || n > FAKE_MAX_DEVICES)
        return config_fail("FLEXAI_SIM_DEVICES", s, "is not a device count 1..16 (e.g. 2)");
    config.ndevices = (int)n;
    return 0;
}

/* The shim's size parser, so that "16G" means 16 * 10^9 bytes here as it does there. */
static int parse_memory(void) {
    const char *s = getenv("FLEXAI_SIM_MEMORY");
    flexai_error err;
    uint64_t bytes;

    config.memory = DEFAULT_MEMORY;
    if (s == NULL)
        return 0;
    if (fx_parse_size_n(s, strlen(s), &bytes, 0, "FLEXAI_SIM_MEMORY", "16GiB", &err) != 0) {
        fprintf(stderr, "flexai fake driver: %s\n", err.message);
        return -1;
    }
    config.memory = (size_t)bytes;
    return 0;
}

/* FLEXAI_SIM_KERNEL_US: microseconds, 0 .. 1 hour. */
static int parse_kernel_us(void) {
    const char *s = getenv("FLEXAI_SIM_KERNEL_US");
    char *end;

    config.kernel_us = 10;
    if (s == NULL)
        return 0;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < 0 || v > 3600L * 1000 * 1000)
        return config_fail("FLEXAI_SIM_KERNEL_US", s,
                           "is not a duration in microseconds (e.g. 10)");
    config.kernel_us = (unsigned)v;
    return 0;
}

static int parse_mps(void) {
    const char *s = getenv("FLEXAI_SIM_MPS");

    config.mps = 0;
    if (s == NULL || strcmp(s, "") == 0 || strcmp(s, "0") == 0)
        return 0;
    if (strcmp(s, "1") != 0)
        return config_fail("FLEXAI_SIM_MPS", s, "must be 0 or 1");
    config.mps = 1;
    return 0;
}

/* FLEXAI_SIM_NAME: the model name (cuDeviceGetName, nvmlDeviceGetName), so that the nodes of a
 * simulated pool can have different GPU models. */
static int parse_name(void) {
    const char *s = getenv("FLEXAI_SIM_NAME");
    size_t len;

    snprintf(config.name, sizeof config.name, "%s", FAKE_DEVICE_NAME);
    if (s == NULL)
        return 0;
    len = strlen(s);
    if (len == 0 || len > FAKE_NAME_MAX)
        return config_fail("FLEXAI_SIM_NAME", s, "must hold 1..63 characters (e.g. H100-80GB)");
    for (size_t k = 0; k < len; k++)
        if (s[k] < 0x20 || s[k] > 0x7e)
            return config_fail("FLEXAI_SIM_NAME", s,
                               "must be printable ASCII (e.g. H100-80GB)");
    memcpy(config.name, s, len + 1);
    return 0;
}

static int parse_uuids(void) {
    const char *s = getenv("FLEXAI_SIM_UUIDS");
    int n = 0;

    if (s == NULL) {
        for (int i = 0; i < config.ndevices; i++)
            default_uuid(i, config.dev[i].uuid);
    } else {
        const char *p = s;
        for (;;) {
            const char *comma = strchr(p, ',');
            size_t len = comma ? (size_t)(comma - p) : strlen(p);
            char entry[FAKE_UUID_STRLEN + 1];
            if (n == config.ndevices || len != FAKE_UUID_STRLEN)
                return config_fail("FLEXAI_SIM_UUIDS", s,
                                   "needs one GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx per device");
            memcpy(entry, p, len);
            entry[len] = '\0';
            if (fake_uuid_parse(entry, config.dev[n].uuid) != 0)
                return config_fail("FLEXAI_SIM_UUIDS", s, "holds a malformed UUID");
            n++;
            if (comma == NULL)
                break;
            p = comma + 1;
        }
        if (n != config.ndevices)
            return config_fail("FLEXAI_SIM_UUIDS", s, "must list exactly FLEXAI_SIM_DEVICES UUIDs");
    }
    for (int i = 0; i < config.ndevices; i++) {
        for (int j = 0; j < i; j++)
            if (memcmp(config.dev[i].uuid, config.dev[j].uuid, 16) == 0)
                return config_fail("FLEXAI_SIM_UUIDS", s ? s : "", "lists a UUID twice");
        fx_uuid_format(config.dev[i].uuid, config.dev[i].uuid_str);
    }
    return 0;
}

static void config_load(void) {
    /* UUIDs depend on the device count, so the order matters. */
    config_ok = parse_devices() == 0 && parse_memory() == 0 && parse_uuids() == 0 &&
                parse_kernel_us() == 0 && parse_mps() == 0 && parse_name() == 0;
}

const struct fake_config *fake_config_get(void) {
    pthread_once(&config_once, config_load);
    return config_ok ? &config : NULL;
}

/* ---- the node's shared files ----------------------------------------------------------- */

void fake_robust_init(pthread_mutex_t *m) {
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    pthread_mutex_init(m, &a);
    pthread_mutexattr_destroy(&a);
}

void fake_robust_lock(pthread_mutex_t *m) {
    int r = pthread_mutex_lock(m);
    if (r == EOWNERDEAD)
        pthread_mutex_consistent(m);
    else if (r == ENOTRECOVERABLE) {
        fake_robust_init(m); /* cannot happen (we always mark it consistent); never wedge */
        pthread_mutex_lock(m);
    }
}

static void header_write(void *region, size_t size, uint64_t magic) {
    struct fake_shared_header *h = region;
    h->size = size;
    __atomic_store_n(&h->magic, magic, __ATOMIC_RELEASE);
}

void *fake_state_private(size_t size, uint64_t magic, void (*init)(void *region)) {
    void *p = calloc(1, size);
    if (p != NULL) {
        init(p);
        header_write(p, size, magic);
    }
    return p;
}

/* mkdir that accepts an existing directory; 0 or -1. */
static int dir_ready(const char *dir) {
    struct stat st;
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return -1;
    return stat(dir, &st) == 0 && S_ISDIR(st.st_mode) ? 0 : -1;
}

/* Where the simulated machine keeps its shared files: FLEXAI_SIM_STATE_DIR when set; else, in
 * a flexai node's state directory (FLEXAI_STATE_DIR, absolute and existing), a folder of this
 * user's, so that every flexai node (each test makes its own) has a machine of its own and
 * concurrent test runs never share a device; else /dev/shm/flexai-sim-<uid>. */
static int state_path(const char *name, char *buf, size_t len) {
    const char *dir = getenv("FLEXAI_SIM_STATE_DIR");
    const char *node = getenv("FLEXAI_STATE_DIR");
    char def[PATH_MAX];
    int n;

    if (dir == NULL || *dir == '\0') {
        dir = def;
        n = -1;
        if (node != NULL && node[0] == '/')
            n = snprintf(def, sizeof(def), "%s/sim-%u", node, (unsigned)getuid());
        if (n < 0 || (size_t)n >= sizeof(def) || dir_ready(def) != 0)
            snprintf(def, sizeof(def), "/dev/shm/flexai-sim-%u", (unsigned)getuid());
    }
    if (dir_ready(dir) != 0)
        return -1;
    n = snprintf(buf, len, "%s/%s", dir, name);
    return n > 0 && (size_t)n < len ? 0 : -1;
}

void *fake_state_map(const char *name, size_t size, uint64_t magic, void (*init)(void *region)) {
    char path[PATH_MAX];
    void *region = NULL;
    struct stat st;

    if (state_path(name, path, sizeof(path)) != 0)
        return NULL;
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return NULL;
    if (flock(fd, LOCK_EX) == 0) {
        if (fstat(fd, &st) == 0 &&
            (st.st_size == (off_t)size || ftruncate(fd, (off_t)size) == 0)) {
            void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
            if (p != MAP_FAILED) {
                struct fake_shared_header *h = p;
                region = p;
                if (__atomic_load_n(&h->magic, __ATOMIC_ACQUIRE) != magic || h->size != size) {
                    memset(p, 0, size);
                    init(p);
                    header_write(p, size, magic);
                }
            }
        }
        flock(fd, LOCK_UN);
    }
    close(fd);
    return region;
}

/* ---- device memory of the node ---------------------------------------------------------- */

#define NODE_MEM_MAGIC 0x314d454d53584646ull /* "FFXSMEM1" */
#define NODE_MEM_PROCS 512

struct node_mem_proc {
    int32_t pid; /* 0: a free entry */
    int32_t reserved;
    uint64_t start; /* the pid's start time: a reused pid is another process */
    uint64_t bytes[FAKE_MAX_DEVICES];
};

struct node_mem {
    struct fake_shared_header header;
    pthread_mutex_t lock; /* guards every entry */
    struct node_mem_proc proc[NODE_MEM_PROCS];
};

static struct node_mem *node_mem;
static pthread_once_t node_mem_once = PTHREAD_ONCE_INIT;
/* This process's entry; looked up again when getpid() changes (in a forked child). Guarded by
 * the node lock. */
static int32_t self_pid;
static int self_entry = -1;

static void node_mem_init(void *region) {
    fake_robust_init(&((struct node_mem *)region)->lock);
}

static void node_mem_map(void) {
    node_mem = fake_state_map(FAKE_STATE_PREFIX "memory", sizeof(*node_mem), NODE_MEM_MAGIC,
                              node_mem_init);
    if (node_mem == NULL) {
        fprintf(stderr, "flexai fake driver: cannot use the memory state file "
                        "(FLEXAI_SIM_STATE_DIR); device memory is not shared between processes\n");
        node_mem = fake_state_private(sizeof(*node_mem), NODE_MEM_MAGIC, node_mem_init);
    }
}

static struct node_mem *node_mem_lock(void) {
    pthread_once(&node_mem_once, node_mem_map);
    if (node_mem != NULL)
        fake_robust_lock(&node_mem->lock);
    return node_mem;
}

/* Field 22 of /proc/PID/stat; 0 when the process is gone or a zombie (which holds no device
 * memory). The command name (field 2) may hold spaces and parentheses: count from the last ')'. */
static uint64_t start_time(int32_t pid) {
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    if (p == NULL || p[1] != ' ' || p[2] == 'Z' || p[2] == 'X')
        return 0;
    p++;
    for (int field = 3; field < 22 && p != NULL; field++)
        p = strchr(p + 1, ' ');
    return p != NULL ? strtoull(p + 1, NULL, 10) : 0;
}

/* Exited, a zombie, or its pid now names another process. A pid whose /proc entry we cannot see
 * (hidepid) is alive as long as it exists. */
static int proc_dead(const struct node_mem_proc *e) {
    char path[32];
    if (kill(e->pid, 0) != 0 && errno == ESRCH)
        return 1;
    snprintf(path, sizeof(path), "/proc/%d", (int)e->pid);
    if (access(path, F_OK) != 0)
        return 0;
    return start_time(e->pid) != e->start;
}

/* Frees the entries of processes that are gone (the driver frees a dead process's memory).
 * Returns how many held memory. Lock held. */
static int sweep_locked(struct node_mem *m) {
    int freed = 0;
    for (int i = 0; i < NODE_MEM_PROCS; i++) {
        struct node_mem_proc *e = &m->proc[i];
        if (e->pid == 0 || e->pid == self_pid || !proc_dead(e))
            continue;
        for (int d = 0; d < FAKE_MAX_DEVICES; d++)
            freed |= e->bytes[d] != 0;
        memset(e, 0, sizeof(*e));
    }
    return freed;
}

/* This process's entry, taken on first use; -1 when the table is full. Lock held. */
static int self_locked(struct node_mem *m) {
    int32_t pid = (int32_t)getpid();
    if (self_pid == pid && self_entry >= 0)
        return self_entry;
    self_pid = pid;
    self_entry = -1;
    uint64_t start = start_time(pid);
    sweep_locked(m);
    for (int i = 0; i < NODE_MEM_PROCS && self_entry < 0; i++)
        if (m->proc[i].pid == pid && m->proc[i].start == start)
            self_entry = i; /* ours already: this library was loaded before */
    for (int i = 0; i < NODE_MEM_PROCS && self_entry < 0; i++) {
        struct node_mem_proc *e = &m->proc[i];
        if (e->pid == 0) {
            memset(e, 0, sizeof(*e));
            e->start = start;
            e->pid = pid;
            self_entry = i;
        }
    }
    return self_entry;
}

static uint64_t used_locked(const struct node_mem *m, int physical) {
    uint64_t used = 0;
    for (int i = 0; i < NODE_MEM_PROCS; i++)
        if (m->proc[i].pid != 0)
            used += m->proc[i].bytes[physical];
    return used;
}

int fake_node_mem_charge(int physical, size_t bytes, size_t total) {
    struct node_mem *m = node_mem_lock();
    int rc = -1;
    if (m == NULL)
        return -1;
    int self = self_locked(m);
    for (int pass = 0; self >= 0 && pass < 2 && rc != 0; pass++) {
        uint64_t used = used_locked(m, physical);
        if (used <= total && bytes <= total - used) {
            m->proc[self].bytes[physical] += bytes;
            rc = 0;
        } else if (pass == 0 && !sweep_locked(m)) {
            break; /* nobody gone: the device is full */
        }
    }
    pthread_mutex_unlock(&m->lock);
    return rc;
}

void fake_node_mem_uncharge(int physical, size_t bytes) {
    struct node_mem *m = node_mem_lock();
    if (m == NULL)
        return;
    int self = self_locked(m);
    if (self >= 0) {
        uint64_t *held = &m->proc[self].bytes[physical];
        *held = bytes > *held ? 0 : *held - bytes;
    }
    pthread_mutex_unlock(&m->lock);
}

size_t fake_node_mem_used(int physical) {
    struct node_mem *m = node_mem_lock();
    if (m == NULL)
        return 0;
    sweep_locked(m);
    uint64_t used = used_locked(m, physical);
    pthread_mutex_unlock(&m->lock);
    return (size_t)used;
}
