/*
 * fake_cuda_locals.h - the hidden fake_local_<name> aliases of the entry points that
 * fake_cuda.def assigns to one file. Included once, at the end of that file (an alias must be
 * defined where its target is), after `#define FAKE_IN_<file>(x) x` names the file:
 *
 *     #define FAKE_IN_mem(x) x
 *     #include "fake_cuda_locals.h"
 *
 * No include guard: each implementing file includes it exactly once. The _ptsz twins are not
 * here; fake_cuda.c generates them together with their aliases.
 */
#ifndef FAKE_IN_core
#define FAKE_IN_core(x)
#endif
#ifndef FAKE_IN_ctx
#define FAKE_IN_ctx(x)
#endif
#ifndef FAKE_IN_mem
#define FAKE_IN_mem(x)
#endif
#ifndef FAKE_IN_vmm
#define FAKE_IN_vmm(x)
#endif
#ifndef FAKE_IN_exec
#define FAKE_IN_exec(x)
#endif
#ifndef FAKE_IN_event
#define FAKE_IN_event(x)
#endif
#ifndef FAKE_IN_launch
#define FAKE_IN_launch(x)
#endif
#ifndef FAKE_IN_graph
#define FAKE_IN_graph(x)
#endif
#ifndef FAKE_IN_copy
#define FAKE_IN_copy(x)
#endif
#ifndef FAKE_IN_func
#define FAKE_IN_func(x)
#endif

#define FAKE_FN(file, name) FAKE_IN_##file(FAKE_DEFINE_LOCAL(name))
#define FAKE_VER(file, name, base, since) FAKE_IN_##file(FAKE_DEFINE_LOCAL(name))
#define FAKE_PTSZ(file, name, params, args)
#include "fake_cuda.def"
#undef FAKE_FN
#undef FAKE_VER
#undef FAKE_PTSZ
