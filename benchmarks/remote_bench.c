/* remote_bench.c - the measuring client of benchmarks/remote.py: driver-API latency, launch rate
 * and copy bandwidth through whatever libcuda.so.1 the loader finds (the simulated device under
 * libflexai.so, or flexai's remote client), and the same shapes over a bare TCP socket as the
 * baseline. Prints one JSON object. It must never judge its numbers (remote.py does).
 *
 *   remote_bench rtt N                 N synchronous calls (cuStreamQuery on an idle stream):
 *                                      p50/p99/mean in us
 *   remote_bench launch N MODE         N empty kernels (sleep_us 0); MODE batched: launches then
 *                                      one synchronize; unbatched: a cuStreamQuery after each
 *                                      launch (forces every launch out alone): launches/s
 *   remote_bench bw SIZE REPEAT        host-to-device and device-to-host copies of SIZE bytes:
 *                                      GB/s each way (best of REPEAT)
 *   remote_bench tcp-serve PORT        echo server for the two below (one client, then exits)
 *   remote_bench tcp-rtt PORT N        16-byte ping-pong: p50/p99/mean in us
 *   remote_bench tcp-bw PORT SIZE REPEAT   SIZE bytes up (1-byte answer) and down (after a
 *                                      1-byte request): GB/s each way (best of REPEAT)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "../csrc/cuda/cuda_api.h"

#define FUNCS(X)                                                                               \
    X(cuInit) X(cuDeviceGet) X(cuDevicePrimaryCtxRetain) X(cuCtxSetCurrent) X(cuMemAlloc_v2)   \
    X(cuMemcpyHtoD_v2) X(cuMemcpyDtoH_v2) X(cuStreamQuery) X(cuCtxSynchronize)                 \
    X(cuModuleLoadData) X(cuModuleGetFunction) X(cuLaunchKernel)
#define FIELD(name) __typeof__(&name) name;
static struct { FUNCS(FIELD) } cu;

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e6 + (double)t.tv_nsec / 1e3;
}

static void die(const char *what, int rc) {
    fprintf(stderr, "remote_bench: %s failed (%d)\n", what, rc);
    exit(1);
}
#define CK(call)                                                                               \
    do {                                                                                       \
        CUresult rc_ = (call);                                                                 \
        if (rc_ != CUDA_SUCCESS)                                                               \
            die(#call, (int)rc_);                                                              \
    } while (0)

static void setup(void) {
    void *h = dlopen("libcuda.so.1", RTLD_NOW);
    if (h == NULL) {
        fprintf(stderr, "remote_bench: %s\n", dlerror());
        exit(1);
    }
#define LOAD(name)                                                                             \
    if ((cu.name = (__typeof__(&name))dlsym(h, #name)) == NULL)                                \
        die("dlsym " #name, 0);
    FUNCS(LOAD)
    CUdevice dev;
    CUcontext ctx;
    CK(cu.cuInit(0));
    CK(cu.cuDeviceGet(&dev, 0));
    CK(cu.cuDevicePrimaryCtxRetain(&ctx, dev));
    CK(cu.cuCtxSetCurrent(ctx));
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void latency_report(double *v, int n) {
    double sum = 0;
    for (int i = 0; i < n; i++)
        sum += v[i];
    qsort(v, (size_t)n, sizeof(double), cmp);
    printf("{\"n\": %d, \"p50_us\": %.2f, \"p99_us\": %.2f, \"mean_us\": %.2f}\n", n,
           v[n / 2], v[(int)(n * 0.99)], sum / n);
}

static void rtt(int n) {
    setup();
    double *v = malloc(sizeof(double) * (size_t)n);
    for (int i = 0; i < n + 100; i++) {
        double t0 = now_us();
        CK(cu.cuStreamQuery(NULL));
        if (i >= 100)
            v[i - 100] = now_us() - t0;
    }
    latency_report(v, n);
}

static void launch(int n, int batched) {
    setup();
    CUmodule m;
    CUfunction f;
    CK(cu.cuModuleLoadData(&m, ".version 8.0\n.target sm_80\n"));
    CK(cu.cuModuleGetFunction(&f, m, "sleep_us"));
    uint32_t us = 0;
    void *args[] = {&us};
    CK(cu.cuCtxSynchronize());
    double t0 = now_us();
    for (int i = 0; i < n; i++) {
        CK(cu.cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, NULL, args, NULL));
        if (!batched) {
            CUresult rc = cu.cuStreamQuery(NULL);
            if (rc != CUDA_SUCCESS && rc != CUDA_ERROR_NOT_READY)
                die("cuStreamQuery", (int)rc);
        }
    }
    CK(cu.cuCtxSynchronize());
    double s = (now_us() - t0) / 1e6;
    printf("{\"n\": %d, \"seconds\": %.4f, \"launches_per_s\": %.0f}\n", n, s, n / s);
}

static void bw(size_t size, int repeat) {
    setup();
    char *host = malloc(size);
    memset(host, 1, size);
    CUdeviceptr d;
    CK(cu.cuMemAlloc_v2(&d, size));
    double best_h2d = 1e30, best_d2h = 1e30;
    for (int r = 0; r < repeat; r++) {
        double t0 = now_us();
        CK(cu.cuMemcpyHtoD_v2(d, host, size));
        double t1 = now_us();
        CK(cu.cuMemcpyDtoH_v2(host, d, size));
        double t2 = now_us();
        if (t1 - t0 < best_h2d)
            best_h2d = t1 - t0;
        if (t2 - t1 < best_d2h)
            best_d2h = t2 - t1;
    }
    printf("{\"bytes\": %zu, \"h2d_gbps\": %.3f, \"d2h_gbps\": %.3f}\n", size,
           (double)size / best_h2d / 1e3, (double)size / best_d2h / 1e3);
}

/* ---- bare TCP ---------------------------------------------------------------------------- */

static int tcp_connect(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (int i = 0; i < 200 && connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0; i++)
        usleep(10000);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
}

static void full(int fd, char *p, size_t n, int send_it) {
    while (n > 0) {
        ssize_t k = send_it ? send(fd, p, n, MSG_NOSIGNAL) : recv(fd, p, n, 0);
        if (k <= 0)
            die(send_it ? "send" : "recv", (int)k);
        p += k;
        n -= (size_t)k;
    }
}

/* Echo: a 24-byte header {u64 size, u64 repeat, u64 mode}; mode 0: ping-pong 16-byte messages;
 * mode 1: per repeat, receive size bytes and answer 1 byte (the shape of a synchronous
 * host-to-device copy), then receive 1 byte and answer size bytes (device-to-host). */
static void tcp_serve(int port) {
    int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(ls, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(ls, 1) != 0)
        die("bind", 0);
    int fd = accept(ls, NULL, NULL);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    uint64_t hdr[3];
    full(fd, (char *)hdr, sizeof(hdr), 0);
    char *buf = malloc(hdr[2] == 0 ? 16 : (size_t)hdr[0] + 16);
    for (uint64_t r = 0; r < hdr[1]; r++) {
        if (hdr[2] == 0) {
            full(fd, buf, 16, 0);
            full(fd, buf, 16, 1);
            continue;
        }
        full(fd, buf, (size_t)hdr[0], 0);
        full(fd, buf, 1, 1);
        full(fd, buf, 1, 0);
        full(fd, buf, (size_t)hdr[0], 1);
    }
    close(fd);
}

static void tcp_rtt(int port, int n) {
    int fd = tcp_connect(port);
    uint64_t hdr[3] = {16, (uint64_t)n + 100, 0};
    full(fd, (char *)hdr, sizeof(hdr), 1);
    char msg[16] = {0};
    double *v = malloc(sizeof(double) * (size_t)n);
    for (int i = 0; i < n + 100; i++) {
        double t0 = now_us();
        full(fd, msg, 16, 1);
        full(fd, msg, 16, 0);
        if (i >= 100)
            v[i - 100] = now_us() - t0;
    }
    latency_report(v, n);
}

static void tcp_bw(int port, size_t size, int repeat) {
    int fd = tcp_connect(port);
    uint64_t hdr[3] = {size, (uint64_t)repeat, 1};
    full(fd, (char *)hdr, sizeof(hdr), 1);
    char *buf = malloc(size);
    memset(buf, 1, size);
    double best_up = 1e30, best_down = 1e30;
    for (int r = 0; r < repeat; r++) {
        double t0 = now_us();
        full(fd, buf, size, 1);
        full(fd, buf, 1, 0);
        double t1 = now_us();
        full(fd, buf, 1, 1);
        full(fd, buf, size, 0);
        double t2 = now_us();
        if (t1 - t0 < best_up)
            best_up = t1 - t0;
        if (t2 - t1 < best_down)
            best_down = t2 - t1;
    }
    printf("{\"bytes\": %zu, \"up_gbps\": %.3f, \"down_gbps\": %.3f}\n", size,
           (double)size / best_up / 1e3, (double)size / best_down / 1e3);
}

int main(int argc, char **argv) {
    if (argc >= 3 && strcmp(argv[1], "rtt") == 0)
        rtt(atoi(argv[2]));
    else if (argc >= 4 && strcmp(argv[1], "launch") == 0)
        launch(atoi(argv[2]), strcmp(argv[3], "batched") == 0);
    else if (argc >= 4 && strcmp(argv[1], "bw") == 0)
        bw((size_t)strtoull(argv[2], NULL, 10), atoi(argv[3]));
    else if (argc >= 3 && strcmp(argv[1], "tcp-serve") == 0)
        tcp_serve(atoi(argv[2]));
    else if (argc >= 4 && strcmp(argv[1], "tcp-rtt") == 0)
        tcp_rtt(atoi(argv[2]), atoi(argv[3]));
    else if (argc >= 5 && strcmp(argv[1], "tcp-bw") == 0)
        tcp_bw(atoi(argv[2]), (size_t)strtoull(argv[3], NULL, 10), atoi(argv[4]));
    else {
        fprintf(stderr, "usage: see the comment at the top of remote_bench.c\n");
        return 2;
    }
    return 0;
}
