/* wrap_getpid.c - a second preload library in the style of allocator hooks and profilers: it
 * wraps a libc function and finds the real one with dlsym(RTLD_NEXT). If flexai's dlsym hook
 * answered RTLD_NEXT relative to itself, this would find its own getpid and recurse forever. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <sys/types.h>
#include <unistd.h>

pid_t getpid(void)
{
    static pid_t (*real)(void);
    if (!real) real = (pid_t(*)(void))dlsym(RTLD_NEXT, "getpid");
    if (!real || real == getpid) return -1; /* found itself: the bug this test catches */
    return real();
}
