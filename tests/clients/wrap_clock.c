/* wrap_clock.c - a second preload library that counts the clock reads libflexai.so makes.
 *
 * It wraps clock_gettime, finds the real one with dlsym(RTLD_NEXT), and counts the calls whose
 * caller lies in libflexai.so (the simulated driver reads clocks too; those are not counted).
 * At exit it writes the count to stderr as {"op":"clock_reads","n":N}, so a test can divide it
 * by the launches its client reports. A test tool only: it must not change what it wraps.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static unsigned long flexai_reads;

static int from_flexai(const void *caller)
{
    Dl_info info;
    return dladdr(caller, &info) && info.dli_fname && strstr(info.dli_fname, "libflexai.so");
}

int clock_gettime(clockid_t id, struct timespec *t)
{
    static int (*real)(clockid_t, struct timespec *);
    if (!real) real = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
    if (from_flexai(__builtin_return_address(0)))
        __atomic_add_fetch(&flexai_reads, 1, __ATOMIC_RELAXED);
    return real(id, t);
}

__attribute__((destructor)) static void report(void)
{
    fprintf(stderr, "{\"op\":\"clock_reads\",\"n\":%lu}\n",
            __atomic_load_n(&flexai_reads, __ATOMIC_RELAXED));
}
