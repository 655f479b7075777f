/* hook_launch.c - every way work reaches a GPU (kernels, cooperative kernels, graphs) passes the
 * compute gate (core/gate.c). Wrappers only: which stream, which default-stream variant. */
#include "gate.h"
#include "shim.h"

#define FX_PTSZ 1u /* the entry point's per-thread default stream variant (backend_cuda.c) */

/* One wrapper per entry point; `stream` and `ptsz` say where the work goes. */
#define FX_LAUNCH_AS(kind, fn, stream, ptsz, call_args)                                         \
    FX_ENTER(fn);                                                                              \
    int32_t st_;                                                                               \
    struct fx_gate *gate_ = fx_gate_enter((stream), (ptsz) ? FX_PTSZ : 0u, &st_);              \
    if (st_ != FLEXAI_OK) return fx_cuda_error(st_);                                           \
    CUresult rc = fx_cu.fn call_args;                                                          \
    fx_gate_leave(gate_, rc == CUDA_SUCCESS, (stream), (ptsz) ? FX_PTSZ : 0u, (kind));         \
    return rc
#define FX_LAUNCH(fn, stream, ptsz, call_args) \
    FX_LAUNCH_AS(FX_WORK_KERNEL, fn, stream, ptsz, call_args)

FX_EXPORT CUresult cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                                  unsigned int bx, unsigned int by, unsigned int bz,
                                  unsigned int shmem, CUstream s, void **params, void **extra)
{
    FX_LAUNCH(cuLaunchKernel, s, 0, (f, gx, gy, gz, bx, by, bz, shmem, s, params, extra));
}

FX_EXPORT CUresult cuLaunchKernel_ptsz(CUfunction f, unsigned int gx, unsigned int gy,
                                       unsigned int gz, unsigned int bx, unsigned int by,
                                       unsigned int bz, unsigned int shmem, CUstream s,
                                       void **params, void **extra)
{
    FX_LAUNCH(cuLaunchKernel_ptsz, s, 1, (f, gx, gy, gz, bx, by, bz, shmem, s, params, extra));
}

FX_EXPORT CUresult cuLaunchKernelEx(const CUlaunchConfig *config, CUfunction f, void **params,
                                    void **extra)
{
    FX_LAUNCH(cuLaunchKernelEx, config ? config->hStream : NULL, 0, (config, f, params, extra));
}

FX_EXPORT CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig *config, CUfunction f,
                                         void **params, void **extra)
{
    FX_LAUNCH(cuLaunchKernelEx_ptsz, config ? config->hStream : NULL, 1,
              (config, f, params, extra));
}

FX_EXPORT CUresult cuLaunchCooperativeKernel(CUfunction f, unsigned int gx, unsigned int gy,
                                             unsigned int gz, unsigned int bx, unsigned int by,
                                             unsigned int bz, unsigned int shmem, CUstream s,
                                             void **params)
{
    FX_LAUNCH(cuLaunchCooperativeKernel, s, 0, (f, gx, gy, gz, bx, by, bz, shmem, s, params));
}

FX_EXPORT CUresult cuLaunchCooperativeKernel_ptsz(CUfunction f, unsigned int gx, unsigned int gy,
                                                  unsigned int gz, unsigned int bx,
                                                  unsigned int by, unsigned int bz,
                                                  unsigned int shmem, CUstream s, void **params)
{
    FX_LAUNCH(cuLaunchCooperativeKernel_ptsz, s, 1,
              (f, gx, gy, gz, bx, by, bz, shmem, s, params));
}

FX_EXPORT CUresult cuGraphLaunch(CUgraphExec g, CUstream s)
{
    FX_LAUNCH_AS(FX_WORK_GRAPH, cuGraphLaunch, s, 0, (g, s));
}

FX_EXPORT CUresult cuGraphLaunch_ptsz(CUgraphExec g, CUstream s)
{
    FX_LAUNCH_AS(FX_WORK_GRAPH, cuGraphLaunch_ptsz, s, 1, (g, s));
}
