/* session.c - the remote session worker: `flexai-remote-session FD` serves one authenticated
 * client on socket FD (handed over by `flexai remoted`), one frame at a time, in order, then
 * frees everything the session held and exits when the client says goodbye, disconnects or dies.
 *
 * Frames are read through one buffer; a frame's payload is read whole into a second buffer that
 * grows to the largest payload seen (bounded by FX_R_MAX_PAYLOAD), except a MEM_HTOD's bytes,
 * which its handler takes from the socket piece by piece. Handlers live in ops_*.c; this file
 * checks every header first (length, op, flags against the op's mode) and ends the session on
 * anything malformed, with an ERROR frame saying why. It must never answer a batched request,
 * never let one session's failure reach another (it is its own process), and never exit with
 * device memory of the session still allocated through the shim (teardown destroys contexts).
 */
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "session.h"
#include "wire.h"

#define INBUF ((size_t)64 << 10)
#define OUTCAP 4096u

struct fxs_driver fxs_cu;
int fxs_primary_retains[FX_R_MAX_DEVICES];

static int sock = -1;
static uint8_t inbuf[INBUF];
static size_t in_off, in_len;
static uint8_t *payload;
static size_t payload_cap;
static uint32_t deferred;      /* first error of batched requests since the last reply */
static uint32_t cur_ctx = UINT32_MAX; /* id of the context current on the driver; MAX: unknown */

/* ---- driver ------------------------------------------------------------------------------- */

int fxs_driver_load(void) {
    const char *path = getenv("FLEXAI_LIBCUDA");
    void *h = dlopen(path && *path ? path : "libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) {
        fprintf(stderr, "flexai-remote-session: cannot open the driver: %s\n", dlerror());
        return -1;
    }
    /* Through dlsym on the handle: the preloaded libflexai.so hands out its wrappers. */
#define FXS_LOAD(name) fxs_cu.name = (__typeof__(&name))dlsym(h, #name);
    FXS_DRIVER(FXS_LOAD)
#undef FXS_LOAD
    return 0;
}

/* ---- handles ------------------------------------------------------------------------------ */

static struct {
    void **h;
    uint32_t cap;
} tables[FXS_KINDS];

void *fxs_get(enum fxs_kind kind, uint32_t id) {
    return id < tables[kind].cap ? tables[kind].h[id] : NULL;
}

int fxs_put(enum fxs_kind kind, uint32_t id, void *h) {
    int primary = kind == FXS_CTX && id >= 1 && id <= FX_R_MAX_DEVICES;
    if (id >= FX_R_MAX_IDS || (id < FX_R_FIRST_ID && !primary))
        return -1;
    if (id >= tables[kind].cap) {
        uint32_t cap = tables[kind].cap ? tables[kind].cap : 64;
        while (cap <= id)
            cap *= 2;
        void **t = realloc(tables[kind].h, cap * sizeof(void *));
        if (t == NULL)
            return -1;
        memset(t + tables[kind].cap, 0, (cap - tables[kind].cap) * sizeof(void *));
        tables[kind].h = t;
        tables[kind].cap = cap;
    }
    if (tables[kind].h[id] != NULL && !primary)
        return -1;
    tables[kind].h[id] = h;
    return 0;
}

void fxs_del(enum fxs_kind kind, uint32_t id) {
    if (id < tables[kind].cap) {
        if (kind == FXS_FUNC || kind == FXS_KERNEL)
            free(tables[kind].h[id]);
        tables[kind].h[id] = NULL;
    }
}

uint32_t fxs_find(enum fxs_kind kind, const void *h) {
    for (uint32_t i = 1; h != NULL && i < tables[kind].cap; i++)
        if (tables[kind].h[i] == h)
            return i;
    return 0;
}

int fxs_stream(uint32_t id, CUstream *out) {
    if (id == FX_R_STREAM_NULL || id == FX_R_STREAM_LEGACY || id == FX_R_STREAM_PER_THREAD) {
        *out = (CUstream)(uintptr_t)id; /* NULL, CU_STREAM_LEGACY, CU_STREAM_PER_THREAD */
        return 0;
    }
    *out = fxs_get(FXS_STREAM, id);
    return *out != NULL ? 0 : -1;
}

void fxs_ctx_unknown(void) {
    cur_ctx = UINT32_MAX;
}

/* The context the client had current when it sent the frame; NULL for an unknown id, so the
 * driver answers CUDA_ERROR_INVALID_CONTEXT where one is needed. */
static void enter_ctx(uint32_t id) {
    if (id == cur_ctx)
        return;
    FXS_CALL(cuCtxSetCurrent, (CUcontext)fxs_get(FXS_CTX, id));
    cur_ctx = id;
}

/* ---- I/O ---------------------------------------------------------------------------------- */

static int send_iov(struct iovec *iov, int n) {
    return fx_r_send_iov(sock, iov, n);
}

static int send_frame(uint16_t op, uint16_t flags, uint32_t a, uint32_t b, const void *p,
                      uint32_t n) {
    struct fx_r_header h = {n, op, flags, a, b};
    struct iovec iov[2] = {{&h, sizeof(h)}, {(void *)p, n}};
    return send_iov(iov, n ? 2 : 1);
}

int fxs_send_data(const void *p, uint32_t n) {
    return send_frame(FX_RMSG_DATA, 0, 0, 0, p, n);
}

/* n bytes from the socket, through the input buffer; large reads go straight to dst. */
int fxs_read_payload(void *dst, size_t n) {
    char *d = dst;
    while (n > 0) {
        if (in_off < in_len) {
            size_t k = in_len - in_off < n ? in_len - in_off : n;
            memcpy(d, inbuf + in_off, k);
            in_off += k;
            d += k;
            n -= k;
            continue;
        }
        ssize_t r = n >= INBUF ? recv(sock, d, n, 0) : recv(sock, inbuf, INBUF, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        if (n >= INBUF) {
            d += r;
            n -= (size_t)r;
        } else {
            in_off = 0;
            in_len = (size_t)r;
        }
    }
    return 0;
}

void fxs_reply(struct fxs_out *out, const void *p, uint32_t n) {
    if (n > out->cap - out->len)
        n = out->cap - out->len;
    memcpy(out->p + out->len, p, n);
    out->len += n;
}

/* ---- dispatch ----------------------------------------------------------------------------- */

static const struct {
    fxs_handler fn;
    int mode;
} ops[] = {
#define FX_RWIRE(op, mode) {fxs_op_##op, FX_RMODE_##mode},
#include "api.def"
#undef FX_RWIRE
};
#define NOPS ((int)(sizeof(ops) / sizeof(ops[0])))

static void refuse(const char *why) {
    send_frame(FX_RMSG_ERROR, 0, 0, 0, why, (uint32_t)strlen(why));
}

/* One frame: 1 served, 0 goodbye or the client is gone, -1 a protocol violation. */
static int serve_one(void) {
    static uint8_t outbuf[OUTCAP];
    struct fx_r_header h;
    if (fxs_read_payload(&h, sizeof(h)) != 0)
        return 0;
    if (h.op == FX_RMSG_BYE && h.len == 0)
        return 0;
    int idx = (int)h.op - FX_ROP_FIRST;
    if (h.len > FX_R_MAX_PAYLOAD || idx < 0 || idx >= NOPS || (h.flags & ~FX_RF_BATCH) != 0) {
        refuse(h.len > FX_R_MAX_PAYLOAD ? "frame too long" : "unknown operation or flags");
        return -1;
    }
    int batch = (h.flags & FX_RF_BATCH) != 0;
    if (batch != (ops[idx].mode == FX_RMODE_BATCH) && h.op != FX_ROP_MEM_HTOD) {
        refuse("batched flag does not match the operation");
        return -1;
    }
    uint32_t take = h.len, more = 0;
    if (h.op == FX_ROP_MEM_HTOD && h.len >= sizeof(struct fx_rq_mem)) {
        take = sizeof(struct fx_rq_mem); /* the bytes stay on the socket for the handler */
        more = h.len - take;
    }
    if ((size_t)take + 1 > payload_cap) {
        uint8_t *p = realloc(payload, (size_t)take + 1);
        if (p == NULL) {
            refuse("out of memory");
            return -1;
        }
        payload = p;
        payload_cap = (size_t)take + 1;
    }
    if (fxs_read_payload(payload, take) != 0)
        return 0;
    payload[take] = 0; /* images and names always end, whatever the client sent */
    enter_ctx(h.a);
    struct fxs_out out = {outbuf, 0, OUTCAP};
    CUresult rc = ops[idx].fn(payload, take, more, &out);
    if (rc == FXS_CLOSE) {
        refuse("malformed request");
        return -1;
    }
    if (batch) {
        if (rc != CUDA_SUCCESS && deferred == 0)
            deferred = (uint32_t)rc;
        return 1;
    }
    if (rc != CUDA_SUCCESS)
        out.len = 0;
    uint32_t d = deferred;
    deferred = 0;
    return send_frame(h.op, FX_RF_REPLY, (uint32_t)rc, d, out.p, out.len) == 0 ? 1 : 0;
}

/* Everything the session made goes: created contexts (with their streams, events, modules and
 * memory), then the primary contexts it retained. */
static void teardown(void) {
    for (uint32_t id = FX_R_FIRST_ID; id < tables[FXS_CTX].cap; id++)
        if (tables[FXS_CTX].h[id] != NULL)
            FXS_CALL(cuCtxDestroy_v2, (CUcontext)tables[FXS_CTX].h[id]);
    for (int d = 0; d < (int)FX_R_MAX_DEVICES; d++)
        if (fxs_primary_retains[d] > 0)
            FXS_CALL(cuDevicePrimaryCtxReset_v2, d);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: flexai-remote-session FD (started by `flexai remoted`)\n");
        return 2;
    }
    char *end;
    long fd = strtol(argv[1], &end, 10);
    if (*end != '\0' || fd < 0 || fd > 65535) {
        fprintf(stderr, "flexai-remote-session: bad socket number %s\n", argv[1]);
        return 2;
    }
    sock = (int)fd;
    signal(SIGPIPE, SIG_IGN);
    int one = 1, idle = 10, intvl = 5, cnt = 3;
    unsigned user_timeout = 30000;
    setsockopt(sock, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    setsockopt(sock, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
    setsockopt(sock, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
    setsockopt(sock, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
    setsockopt(sock, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
    setsockopt(sock, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout, sizeof(user_timeout));
    if (fxs_driver_load() != 0) {
        refuse("the server cannot open its CUDA driver");
        return 1;
    }
    int r;
    while ((r = serve_one()) == 1) {
    }
    teardown();
    close(sock);
    return r < 0 ? 3 : 0;
}
