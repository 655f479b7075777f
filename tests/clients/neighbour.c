/* neighbour.c - another program on the node, for tests/test_shared_node.py: a tool that reads or
 * changes the node's state through libflexai's public API (as `flexai ps` and `flexai resize`
 * do), and a hostile neighbour that maps the state file itself and holds its locks (stopped,
 * exiting after unmapping, keeping a flock). Runs a list of operations given on the command line
 * and prints one JSON line per operation, like client.c.
 *
 *   --lib PATH          libflexai.so to load (first argument; required for the API operations)
 *   open DIR            flexai_node_open                    {"rc","code","msg"}
 *   sweep               flexai_node_sweep                   {"rc" = processes reclaimed}
 *   slices              flexai_node_slices                  {"rc","names","nprocs"}
 *   usage               flexai_node_usage                   {"rc","rows": [[slice,dev,pid,limit,used]]}
 *   devices             flexai_node_devices                 {"rc","uuids"}
 *   layout NAME         flexai_layout_value (offsets and sizes of the state's layout)
 *   setmem S UUID BYTES flexai_node_set_memory_limit        {"rc","code","msg"}
 *   setcompute S UUID PERCENT BURST                         {"rc","code","msg"}
 *   map DIR             map DIR/state read-write, no checks, holding a shared flock on it as
 *                       an attached process does (a neighbour with write access)
 *   lock                pthread_mutex_lock on the mapped region's lock
 *   unmap               munmap the region (a lock held stays held: nobody can mark it)
 *   poke OFFSET VALUE   write a 32-bit VALUE (decimal or 0x...) at OFFSET of the mapping
 *   flock FILE          take an exclusive flock on FILE and keep it
 *   stop                raise(SIGSTOP)
 *   wait                print, then wait for a line on stdin
 *   sleep MS
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "../../include/flexai.h"

#define API(X)                                                                                 \
    X(node_open, flexai_node_open)                                                             \
    X(node_sweep, flexai_node_sweep)                                                           \
    X(node_slices, flexai_node_slices)                                                         \
    X(node_usage, flexai_node_usage)                                                           \
    X(node_devices, flexai_node_devices)                                                       \
    X(set_memory_limit, flexai_node_set_memory_limit)                                          \
    X(set_compute, flexai_node_set_compute)

/* flexai_layout_value is exported for tests but not declared in the public header. */
typedef long fx_layout_value_fn(const char *name);

#define FIELD(field, name) __typeof__(&name) field;
static struct {
    fx_layout_value_fn *layout_value;
    API(FIELD)
} fx;

static flexai_node *node;
static unsigned char *region;
static size_t region_size;

/* A message or name as a JSON string: control characters and bytes beyond ASCII escaped (a
 * damaged state holds any bytes), never raw. */
static void put_string(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') printf("\\%c", c);
        else if (c < 0x20 || c >= 0x7f) printf("\\u%04x", c); /* bytes, not UTF-8 */
        else putchar(c);
    }
    putchar('"');
}

static void report_err(const char *op, int rc, const flexai_error *err)
{
    printf("{\"op\":\"%s\",\"rc\":%d,\"code\":%d,\"msg\":", op, rc, rc < 0 ? err->code : 0);
    put_string(rc < 0 ? err->message : "");
    printf("}\n");
}

static int load(const char *path)
{
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "neighbour: %s\n", dlerror());
        return -1;
    }
#define RESOLVE(field, name)                                                                   \
    do {                                                                                       \
        void *sym = dlsym(h, #name);                                                           \
        memcpy(&fx.field, &sym, sizeof sym);                                                   \
    } while (0);
    API(RESOLVE)
    void *lv = dlsym(h, "flexai_layout_value");
    memcpy(&fx.layout_value, &lv, sizeof lv);
    return 0;
}

static long layout(const char *name)
{
    return fx.layout_value ? fx.layout_value(name) : -1;
}

#define NEED(n)                                                                                \
    do {                                                                                       \
        if (i + (n) >= argc) {                                                                 \
            fprintf(stderr, "neighbour: %s needs %d argument(s)\n", op, n);                    \
            return 2;                                                                          \
        }                                                                                      \
    } while (0)
#define ARG(k) argv[i + (k)]

int main(int argc, char **argv)
{
    int i = 1;
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc > 2 && strcmp(argv[1], "--lib") == 0) {
        if (load(argv[2]) != 0) return 3;
        i = 3;
    }
    for (; i < argc; i++) {
        const char *op = argv[i];
        flexai_error err = {0, ""};
        int rc;
        if (strcmp(op, "open") == 0) {
            NEED(1);
            rc = fx.node_open ? fx.node_open(ARG(1), &node, &err) : -1;
            report_err(op, rc, &err);
            i += 1;
        } else if (strcmp(op, "sweep") == 0) {
            rc = node ? fx.node_sweep(node, &err) : -1;
            report_err(op, rc, &err);
        } else if (strcmp(op, "slices") == 0) {
            flexai_slice_info s[256];
            rc = node ? fx.node_slices(node, s, 256, &err) : -1;
            printf("{\"op\":\"slices\",\"rc\":%d,\"names\":[", rc);
            for (int k = 0; k < rc && k < 256; k++) {
                if (k) putchar(',');
                put_string(s[k].name);
            }
            printf("],\"nprocs\":[");
            for (int k = 0; k < rc && k < 256; k++) printf("%s%u", k ? "," : "", s[k].nprocs);
            printf("]}\n");
        } else if (strcmp(op, "usage") == 0) {
            static flexai_usage_row rows[4096];
            rc = node ? fx.node_usage(node, rows, 4096, &err) : -1;
            printf("{\"op\":\"usage\",\"rc\":%d,\"rows\":[", rc);
            for (int k = 0; k < rc && k < 4096; k++)
                printf("%s[%u,%u,%d,%llu,%llu]", k ? "," : "", rows[k].slice_id,
                       rows[k].device_id, rows[k].pid, (unsigned long long)rows[k].limit_bytes,
                       (unsigned long long)rows[k].used_bytes);
            printf("]}\n");
        } else if (strcmp(op, "devices") == 0) {
            flexai_device_info d[FLEXAI_MAX_DEVICES];
            rc = node ? fx.node_devices(node, d, FLEXAI_MAX_DEVICES, &err) : -1;
            printf("{\"op\":\"devices\",\"rc\":%d,\"uuids\":[", rc);
            for (int k = 0; k < rc && k < FLEXAI_MAX_DEVICES; k++) {
                if (k) putchar(',');
                put_string(d[k].uuid);
            }
            printf("]}\n");
        } else if (strcmp(op, "setmem") == 0) {
            NEED(3);
            rc = node ? fx.set_memory_limit(node, ARG(1), ARG(2), strtoull(ARG(3), NULL, 0),
                                            &err)
                      : -1;
            report_err(op, rc, &err);
            i += 3;
        } else if (strcmp(op, "setcompute") == 0) {
            NEED(4);
            rc = node ? fx.set_compute(node, ARG(1), ARG(2), (uint32_t)atoi(ARG(3)),
                                       (uint32_t)atoi(ARG(4)), &err)
                      : -1;
            report_err(op, rc, &err);
            i += 4;
        } else if (strcmp(op, "layout") == 0) {
            NEED(1);
            printf("{\"op\":\"layout\",\"name\":");
            put_string(ARG(1));
            printf(",\"value\":%ld}\n", layout(ARG(1)));
            i += 1;
        } else if (strcmp(op, "map") == 0) {
            NEED(1);
            char path[4096];
            long size = layout("fx_region");
            snprintf(path, sizeof path, "%s/state", ARG(1));
            int fd = open(path, O_RDWR | O_CLOEXEC);
            void *m = fd < 0 || size <= 0 ? MAP_FAILED
                                          : mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE,
                                                 MAP_SHARED, fd, 0);
            rc = m == MAP_FAILED ? errno : 0;
            /* attached as flexai's own processes are: a shared flock on the state file, kept */
            if (rc == 0 && flock(fd, LOCK_SH | LOCK_NB) != 0) rc = errno;
            if (fd >= 0 && rc != 0) close(fd);
            if (rc == 0) region = m, region_size = (size_t)size;
            printf("{\"op\":\"map\",\"rc\":%d}\n", rc);
            i += 1;
        } else if (strcmp(op, "lock") == 0) {
            long off = layout("fx_region.lock");
            rc = region && off > 0 ? pthread_mutex_lock((pthread_mutex_t *)(void *)(region + off))
                                   : -1;
            printf("{\"op\":\"lock\",\"rc\":%d,\"tid\":%d}\n", rc, (int)syscall(SYS_gettid));
        } else if (strcmp(op, "unmap") == 0) {
            rc = region ? munmap(region, region_size) : -1;
            region = NULL;
            printf("{\"op\":\"unmap\",\"rc\":%d}\n", rc);
        } else if (strcmp(op, "poke") == 0) {
            NEED(2);
            unsigned long off = strtoul(ARG(1), NULL, 0);
            uint32_t v = (uint32_t)strtoul(ARG(2), NULL, 0);
            rc = region && off + sizeof v <= region_size ? 0 : -1;
            if (rc == 0) memcpy(region + off, &v, sizeof v);
            printf("{\"op\":\"poke\",\"rc\":%d}\n", rc);
            i += 2;
        } else if (strcmp(op, "flock") == 0) {
            NEED(1);
            int fd = open(ARG(1), O_RDONLY | O_CLOEXEC);
            rc = fd < 0 ? errno : flock(fd, LOCK_EX) == 0 ? 0 : errno;
            printf("{\"op\":\"flock\",\"rc\":%d}\n", rc); /* the fd stays open: the lock stays */
            i += 1;
        } else if (strcmp(op, "stop") == 0) {
            printf("{\"op\":\"stop\",\"rc\":0}\n");
            raise(SIGSTOP);
        } else if (strcmp(op, "wait") == 0) {
            char line[16];
            printf("{\"op\":\"wait\",\"rc\":0}\n");
            if (!fgets(line, sizeof line, stdin)) { /* EOF: go on */ }
        } else if (strcmp(op, "sleep") == 0) {
            NEED(1);
            usleep((useconds_t)atoi(ARG(1)) * 1000u);
            i += 1;
        } else {
            fprintf(stderr, "neighbour: unknown operation %s\n", op);
            return 2;
        }
    }
    return 0;
}
