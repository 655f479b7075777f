/* dlsym_order.c - the real-dlsym lookup of csrc/interpose/dlsym.c and the exported entry of
 * dlsym_entry.S, linked into this program with glibc's dlvsym behind a stub that can refuse
 * version names (dlsym.c is compiled with -Ddlvsym=fx_test_dlvsym; nothing else changes).
 *
 *   dlsym_order pass             every version answers as glibc does
 *   dlsym_order deny:V1,V2,...   the listed versions answer NULL (deny:GLIBC_2.34 is a glibc
 *                                before 2.34, whose only dlsym is the old libdl version)
 *   dlsym_order deny-once        each version answers NULL the first time it is asked (the
 *                                known names fail, the walk over libc's versions must find it)
 *   dlsym_order deny-all         no version answers: the stand-in must, never address 0
 *
 * Prints one JSON line per dlvsym asked, then a "result" line. Exit status 0 unless a check
 * that needs no outside knowledge fails (then 1, with the reason on stderr).
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "interpose.h"

__thread int fx_in_init __attribute__((tls_model("initial-exec")));

/* No hooked names here: only the real-dlsym path is under test. */
const struct fx_hook *fx_hook_find(const char *name)
{
    (void)name;
    return NULL;
}

void *fx_test_dlvsym(void *handle, const char *name, const char *version);

static const char *fx_mode = "pass";
static char fx_asked[8192]; /* ",V1,V2," : versions asked so far (deny-once) */
static const char *fx_winner = "";

static int fx_listed(const char *list, const char *version)
{
    size_t n = strlen(version);
    for (const char *p = list; (p = strstr(p, version)) != NULL; p += n)
        if ((p == list || p[-1] == ',') && (p[n] == ',' || p[n] == '\0')) return 1;
    return 0;
}

void *fx_test_dlvsym(void *handle, const char *name, const char *version)
{
    int deny = 0;
    if (strcmp(fx_mode, "deny-all") == 0) {
        deny = 1;
    } else if (strncmp(fx_mode, "deny:", 5) == 0) {
        deny = fx_listed(fx_mode + 5, version);
    } else if (strcmp(fx_mode, "deny-once") == 0) {
        deny = !fx_listed(fx_asked, version);
        if (deny && strlen(fx_asked) + strlen(version) + 2 < sizeof fx_asked) {
            strcat(fx_asked, ",");
            strcat(fx_asked, version);
        }
    }
    void *p = deny ? NULL : dlvsym(handle, name, version);
    if (p) fx_winner = version;
    printf("{\"op\": \"dlvsym\", \"version\": \"%s\", \"denied\": %d, \"found\": %d}\n", version,
           deny, p != NULL);
    return p;
}

int main(int argc, char **argv)
{
    if (argc > 1) fx_mode = argv[1];
    setvbuf(stdout, NULL, _IOLBF, 0);
    /* Through the exported entry (dlsym_entry.S), as any program's dlsym would go. */
    void *first = dlsym(RTLD_DEFAULT, "getpid");
    void *again = dlsym(RTLD_DEFAULT, "getpid");
    void *next = dlsym(RTLD_NEXT, "getpid");
    void *missing = dlsym(RTLD_DEFAULT, "fx_no_such_symbol");
    void *getpid_addr = (void *)&getpid;
    printf("{\"op\": \"result\", \"winner\": \"%s\", \"real_set\": %d, \"getpid\": %d, "
           "\"again\": %d, \"next\": %d, \"missing_null\": %d, \"pid_ok\": %d}\n",
           fx_winner, fx_real_dlsym != NULL, first == getpid_addr, again == getpid_addr,
           next == getpid_addr, missing == NULL, first ? ((pid_t(*)(void))first)() == getpid()
                                                           : 0);
    if (!fx_real_dlsym) {
        fprintf(stderr, "fx_real_dlsym is NULL after a dlsym\n");
        return 1;
    }
    return 0;
}
