/* conn.c - the remote client's one connection to `flexai remoted`: connect, authenticate
 * (HMAC over nonces: the token never crosses the wire), queue batched requests, send a request
 * with the queue in one write, read replies, and give up cleanly when the server goes.
 *
 * One mutex serializes the connection: a request and its reply are one critical section, so
 * threads never read each other's replies, and the queue keeps program order across threads.
 * It must never block forever on a dead peer (TCP keepalive and TCP_USER_TIMEOUT bound it),
 * never raise SIGPIPE in the host program (MSG_NOSIGNAL), and never retry a lost session: after
 * a loss every call returns FX_R_LOST_ERROR (the program's device state is gone with the worker).
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "client.h"
#include "wire.h"

#define QUEUE_CAP ((size_t)256 << 10) /* batched requests wait here; full: sent at once */
#define CONNECT_TIMEOUT_MS 10000
#define HANDSHAKE_TIMEOUT_S 10

int fxc_log_level = FXC_LOG_WARN;
int fxc_driver_version, fxc_device_count, fxc_initialized;

static struct {
    pthread_mutex_t mu;
    int fd;
    int tried;      /* fxc_connect ran (state is its outcome) */
    CUresult state; /* CUDA_SUCCESS while connected */
    uint8_t *q;     /* queued batched frames */
    size_t qlen;
    uint32_t seq;
    CUresult pending; /* first deferred error not reported yet */
} C = {PTHREAD_MUTEX_INITIALIZER, -1, 0, CUDA_SUCCESS, NULL, 0, 0, CUDA_SUCCESS};

void fxc_log(int level, const char *fmt, ...) {
    char line[512];
    if (level > fxc_log_level)
        return;
    static const char *names[] = {"error", "warn", "info", "debug"};
    int n = snprintf(line, sizeof(line), "flexai-remote[%d]: %s: ", (int)getpid(), names[level]);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof(line) - 2)
        len = sizeof(line) - 2;
    line[len++] = '\n';
    ssize_t w = write(2, line, len); /* one write: lines of threads never interleave */
    (void)w;
}

/* ---- raw I/O ------------------------------------------------------------------------------ */

static int send_all(int fd, struct iovec *iov, int n) {
    return fx_r_send_iov(fd, iov, n);
}

static int recv_all(int fd, void *buf, size_t n) {
    char *p = buf;
    while (n > 0) {
        ssize_t r = recv(fd, p, n, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

static int discard(int fd, size_t n) {
    char sink[4096];
    while (n > 0) {
        size_t k = n < sizeof(sink) ? n : sizeof(sink);
        if (recv_all(fd, sink, k) != 0)
            return -1;
        n -= k;
    }
    return 0;
}

/* The server is gone (or spoke nonsense): every later call fails with FX_R_LOST_ERROR. */
static CUresult lost_locked(const char *why) {
    if (C.fd >= 0) {
        close(C.fd);
        C.fd = -1;
        fxc_log(FXC_LOG_ERROR, "connection to the server lost (%s); CUDA calls fail from now on",
                why);
    }
    C.state = (CUresult)FX_R_LOST_ERROR;
    C.qlen = 0;
    return C.state;
}

static int flush_locked(void) {
    if (C.qlen == 0)
        return 0;
    struct iovec iov = {C.q, C.qlen};
    C.qlen = 0;
    return send_all(C.fd, &iov, 1);
}

/* Queues one frame, or (too big for the queue) sends the queue and the frame now. */
static int frame_locked(uint16_t op, uint16_t flags, const void *req, uint32_t rlen,
                        const void *data, uint32_t dlen) {
    struct fx_r_header h = {rlen + dlen, op, flags, fxc_ctx_current(), ++C.seq};
    size_t need = sizeof(h) + rlen + dlen;
    if (C.qlen + need > QUEUE_CAP && flush_locked() != 0)
        return -1;
    if (need <= QUEUE_CAP) {
        memcpy(C.q + C.qlen, &h, sizeof(h));
        if (rlen)
            memcpy(C.q + C.qlen + sizeof(h), req, rlen);
        if (dlen)
            memcpy(C.q + C.qlen + sizeof(h) + rlen, data, dlen);
        C.qlen += need;
        return 0;
    }
    struct iovec iov[3] = {{&h, sizeof(h)}, {(void *)req, rlen}, {(void *)data, dlen}};
    return send_all(C.fd, iov, 3);
}

/* Reads reply headers until the one for op, taking DATA frames into dst (dtoh) on the way. */
static CUresult reply_locked(uint16_t op, void *out, uint32_t outcap, uint32_t *outlen,
                             char *dst, uint64_t expect) {
    struct fx_r_header h;
    uint64_t got = 0;
    for (;;) {
        if (recv_all(C.fd, &h, sizeof(h)) != 0)
            return lost_locked("closed by the server");
        if (h.len > FX_R_MAX_PAYLOAD)
            return lost_locked("oversized frame from the server");
        if (h.op == FX_RMSG_DATA && dst != NULL && h.len <= expect - got) {
            if (recv_all(C.fd, dst + got, h.len) != 0)
                return lost_locked("closed during a copy");
            got += h.len;
            continue;
        }
        if (h.op == FX_RMSG_ERROR) {
            char text[256] = {0};
            size_t k = h.len < sizeof(text) - 1 ? h.len : sizeof(text) - 1;
            if (recv_all(C.fd, text, k) == 0)
                fxc_log(FXC_LOG_ERROR, "server: %s", text);
            return lost_locked("the server ended the session");
        }
        if (h.op != op || !(h.flags & FX_RF_REPLY))
            return lost_locked("unexpected frame from the server");
        uint32_t k = h.len < outcap ? h.len : outcap;
        if ((k && recv_all(C.fd, out, k) != 0) || discard(C.fd, h.len - k) != 0)
            return lost_locked("closed by the server");
        if (outlen != NULL)
            *outlen = k;
        if (h.b != 0 && C.pending == CUDA_SUCCESS)
            C.pending = (CUresult)h.b;
        if (dst != NULL && h.a == CUDA_SUCCESS && got != expect)
            return lost_locked("short copy from the server");
        return (CUresult)h.a;
    }
}

static CUresult call_locked(uint16_t op, const void *req, uint32_t rlen, const void *data,
                            uint32_t dlen, void *out, uint32_t outcap, uint32_t *outlen,
                            void *dst, uint64_t expect) {
    if (C.state != CUDA_SUCCESS)
        return C.state;
    if (frame_locked(op, 0, req, rlen, data, dlen) != 0 || flush_locked() != 0)
        return lost_locked("send failed");
    return reply_locked(op, out, outcap, outlen, dst, expect);
}

CUresult fxc_call(uint16_t op, const void *req, uint32_t rlen, const void *data, uint32_t dlen,
                  void *out, uint32_t outcap, uint32_t *outlen) {
    pthread_mutex_lock(&C.mu);
    CUresult rc = call_locked(op, req, rlen, data, dlen, out, outcap, outlen, NULL, 0);
    pthread_mutex_unlock(&C.mu);
    return rc;
}

CUresult fxc_call_dtoh(const void *req, uint32_t rlen, void *dst, uint64_t n) {
    pthread_mutex_lock(&C.mu);
    CUresult rc = call_locked(FX_ROP_MEM_DTOH, req, rlen, NULL, 0, NULL, 0, NULL, dst, n);
    pthread_mutex_unlock(&C.mu);
    return rc;
}

CUresult fxc_batch(uint16_t op, const void *req, uint32_t rlen, const void *data, uint32_t dlen) {
    pthread_mutex_lock(&C.mu);
    CUresult rc = C.state;
    if (rc == CUDA_SUCCESS && frame_locked(op, FX_RF_BATCH, req, rlen, data, dlen) != 0)
        rc = lost_locked("send failed");
    pthread_mutex_unlock(&C.mu);
    return rc;
}

CUresult fxc_sync_result(CUresult rc) {
    pthread_mutex_lock(&C.mu);
    if (rc == CUDA_SUCCESS && C.pending != CUDA_SUCCESS) {
        rc = C.pending;
        C.pending = CUDA_SUCCESS;
    }
    pthread_mutex_unlock(&C.mu);
    return rc;
}

/* ---- connecting --------------------------------------------------------------------------- */

static int open_socket(const char *addr) {
    char host[256];
    const char *colon = strrchr(addr, ':');
    if (colon == NULL || colon == addr || (size_t)(colon - addr) >= sizeof(host)) {
        fxc_log(FXC_LOG_ERROR, "FLEXAI_REMOTE=%s: expected HOST:PORT, e.g. gpu-node-3:7470", addr);
        return -1;
    }
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = '\0';
    char *h = host;
    if (h[0] == '[' && h[strlen(h) - 1] == ']') { /* [::1]:7470 */
        h[strlen(h) - 1] = '\0';
        h++;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    int err = getaddrinfo(h, colon + 1, &hints, &res);
    if (err != 0) {
        fxc_log(FXC_LOG_ERROR, "FLEXAI_REMOTE=%s: %s", addr, gai_strerror(err));
        return -1;
    }
    int fd = -1;
    for (struct addrinfo *ai = res; ai != NULL && fd < 0; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
            continue;
        int rc = connect(fd, ai->ai_addr, ai->ai_addrlen);
        if (rc != 0 && errno == EINPROGRESS) {
            struct pollfd p = {fd, POLLOUT, 0};
            int soerr = 0;
            socklen_t sl = sizeof(soerr);
            rc = poll(&p, 1, CONNECT_TIMEOUT_MS) == 1 &&
                         getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) == 0 && soerr == 0
                     ? 0
                     : -1;
            if (soerr)
                errno = soerr;
        }
        if (rc != 0) {
            fxc_log(FXC_LOG_ERROR, "cannot connect to %s: %s", addr, strerror(errno));
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    if (fd < 0)
        return -1;
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    int one = 1, idle = 10, intvl = 5, cnt = 3;
    unsigned user_timeout = 30000; /* unacknowledged data: the peer is gone after 30 s */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
    setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout, sizeof(user_timeout));
    return fd;
}

static void set_timeout(int fd, int seconds) {
    struct timeval tv = {seconds, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

/* The slice the program asks for: the per-slice FLEXAI_* variables of its environment. */
static size_t slice_request(char *buf, size_t cap) {
    static const char *names[] = {"FLEXAI_GPU_MEMORY", "FLEXAI_GPU_COMPUTE",
                                  "FLEXAI_GPU_COMPUTE_BURST", "FLEXAI_SLICE", "FLEXAI_PRIORITY"};
    size_t n = 0;
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        const char *v = getenv(names[i]);
        if (v == NULL || *v == '\0')
            continue;
        int w = snprintf(buf + n, cap - n, "%s=%s\n", names[i], v);
        if (w < 0 || (size_t)w >= cap - n)
            break;
        n += (size_t)w;
    }
    return n;
}

static int handshake(int fd, const char *token) {
    uint8_t cn[FX_R_NONCE], sn[FX_R_NONCE], mac[FX_R_MAC], payload[FX_R_MAX_AUTH];
    struct fx_r_header h = {FX_R_NONCE, FX_RMSG_HELLO, 0, FX_R_VERSION, FX_R_MAGIC};
    if (getrandom(cn, sizeof(cn), 0) != (ssize_t)sizeof(cn))
        return -1;
    struct iovec hello[2] = {{&h, sizeof(h)}, {cn, sizeof(cn)}};
    if (send_all(fd, hello, 2) != 0 || recv_all(fd, &h, sizeof(h)) != 0)
        return -1;
    if (h.op != FX_RMSG_CHALLENGE || h.a != FX_R_VERSION || h.len != FX_R_NONCE) {
        fxc_log(FXC_LOG_ERROR, "the server does not speak protocol version %u (it answered "
                "op %u version %u)", FX_R_VERSION, h.op, h.a);
        return -1;
    }
    if (recv_all(fd, sn, sizeof(sn)) != 0)
        return -1;
    struct fxc_span cparts[3] = {
        {FX_R_CLIENT_LABEL, sizeof(FX_R_CLIENT_LABEL) - 1}, {sn, sizeof(sn)}, {cn, sizeof(cn)}};
    fxc_hmac_sha256(token, strlen(token), cparts, 3, payload);
    size_t len = FX_R_MAC + slice_request((char *)payload + FX_R_MAC, sizeof(payload) - FX_R_MAC);
    h = (struct fx_r_header){(uint32_t)len, FX_RMSG_AUTH, 0, 0, 0};
    struct iovec auth[2] = {{&h, sizeof(h)}, {payload, len}};
    if (send_all(fd, auth, 2) != 0 || recv_all(fd, &h, sizeof(h)) != 0 ||
        h.op != FX_RMSG_WELCOME || h.len > sizeof(payload) - 1 ||
        recv_all(fd, payload, h.len) != 0)
        return -1;
    payload[h.len] = '\0';
    if (h.a != 0) {
        fxc_log(FXC_LOG_ERROR, "the server refused the session: %s", (char *)payload);
        return -1;
    }
    struct fxc_span sparts[3] = {
        {FX_R_SERVER_LABEL, sizeof(FX_R_SERVER_LABEL) - 1}, {cn, sizeof(cn)}, {sn, sizeof(sn)}};
    fxc_hmac_sha256(token, strlen(token), sparts, 3, mac);
    uint8_t diff = 0;
    for (size_t i = 0; i < FX_R_MAC && h.len >= FX_R_MAC; i++)
        diff |= (uint8_t)(mac[i] ^ payload[i]);
    if (h.len < FX_R_MAC || diff != 0) {
        fxc_log(FXC_LOG_ERROR, "the server could not prove it holds FLEXAI_REMOTE_TOKEN");
        return -1;
    }
    fxc_log(FXC_LOG_INFO, "session %s", (char *)payload + FX_R_MAC);
    return 0;
}

static void at_exit_flush(void);

static void fork_prepare(void) {
    pthread_mutex_lock(&C.mu);
}
static void fork_parent(void) {
    pthread_mutex_unlock(&C.mu);
}
/* A forked child does not share its parent's session: it starts unconnected and uninitialized
 * (as CUDA in a forked child must be initialized again). */
static void fork_child(void) {
    if (C.fd >= 0)
        close(C.fd);
    C.fd = -1;
    C.tried = 0;
    C.state = CUDA_SUCCESS;
    C.qlen = 0;
    C.pending = CUDA_SUCCESS;
    fxc_initialized = 0;
    fxc_handles_reset();
    pthread_mutex_unlock(&C.mu);
}

CUresult fxc_connect(void) {
    pthread_mutex_lock(&C.mu);
    if (!C.tried) {
        static int once;
        if (!once) {
            once = 1;
            const char *lvl = getenv("FLEXAI_LOG");
            static const char *names[] = {"error", "warn", "info", "debug"};
            for (int i = 0; lvl != NULL && i < 4; i++)
                if (strcmp(lvl, names[i]) == 0)
                    fxc_log_level = i;
            pthread_atfork(fork_prepare, fork_parent, fork_child);
            atexit(at_exit_flush);
        }
        C.tried = 1;
        C.state = CUDA_ERROR_NO_DEVICE;
        const char *addr = getenv("FLEXAI_REMOTE"), *token = getenv("FLEXAI_REMOTE_TOKEN");
        if (addr == NULL || *addr == '\0')
            fxc_log(FXC_LOG_ERROR, "FLEXAI_REMOTE is not set (the server, e.g. "
                    "FLEXAI_REMOTE=gpu-node-3:7470; `flexai run --remote` sets it)");
        else if (token == NULL || *token == '\0')
            fxc_log(FXC_LOG_ERROR, "FLEXAI_REMOTE_TOKEN is not set (the secret shared with "
                    "the server)");
        else if (C.q == NULL && (C.q = malloc(QUEUE_CAP)) == NULL)
            fxc_log(FXC_LOG_ERROR, "out of memory");
        else if ((C.fd = open_socket(addr)) >= 0) {
            set_timeout(C.fd, HANDSHAKE_TIMEOUT_S);
            if (handshake(C.fd, token) == 0) {
                set_timeout(C.fd, 0);
                C.state = CUDA_SUCCESS;
            } else {
                fxc_log(FXC_LOG_ERROR, "handshake with %s failed", addr);
                close(C.fd);
                C.fd = -1;
            }
        }
    }
    CUresult rc = C.state;
    pthread_mutex_unlock(&C.mu);
    return rc;
}

/* Work the program queued and never waited for still runs: send it, then say goodbye. */
static void at_exit_flush(void) {
    pthread_mutex_lock(&C.mu);
    if (C.fd >= 0 && C.state == CUDA_SUCCESS) {
        struct fx_r_header h = {0, FX_RMSG_BYE, FX_RF_BATCH, 0, 0};
        if (flush_locked() == 0) {
            struct iovec iov = {&h, sizeof(h)};
            send_all(C.fd, &iov, 1);
        }
        shutdown(C.fd, SHUT_WR);
    }
    pthread_mutex_unlock(&C.mu);
}
