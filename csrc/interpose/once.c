/* once.c - recursion-safe lazy initialization (see interpose.h). */
#include "interpose.h"

__thread int fx_in_init __attribute__((tls_model("initial-exec")));

/* pthread_once runs its function in the calling thread, so the thread tells it which one. */
static __thread struct fx_once *fx_once_current;

static void fx_once_trampoline(void)
{
    struct fx_once *o = fx_once_current;
    fx_in_init = 1;
    o->fn();
    fx_in_init = 0;
    __atomic_store_n(&o->done, 1, __ATOMIC_RELEASE);
}

void fx_once_slow(struct fx_once *o);
void fx_once_slow(struct fx_once *o)
{
    fx_once_current = o;
    pthread_once(&o->once, fx_once_trampoline);
}
