"""Client process of ``flexai demo``: grab device memory through the CUDA driver API.

Runs standalone (no flexai import), usually under ``flexai run``. It loads ``libcuda.so.1`` with
ctypes (dlopen + dlsym, which the preloaded shim intercepts), creates the primary context of
device 0 and reads cuMemGetInfo, then says so (a JSON line with "phase": "context") and waits
for a line on stdin. Then it allocates fixed-size chunks until the driver answers
CUDA_ERROR_OUT_OF_MEMORY or the safety cap is reached, prints its report (a JSON line with
"phase": "ready"), waits for another line on stdin, frees everything and exits 0. A failure
before the allocation loop is reported in the "ready" line's "error" and exits 1.

With --compute US it instead keeps the GPU busy for --seconds with kernels that each last US
microseconds (a spin on the GPU's clock; the simulated device runs "sleep_us" for that long) and
reports the fraction of the wall time its kernels occupied ("fraction").
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
import time
from typing import Any

CUDA_SUCCESS = 0
CUDA_ERROR_OUT_OF_MEMORY = 2


class DriverError(Exception):
    """A driver call failed before the allocation loop."""


def _check(name: str, rc: int) -> None:
    if rc != CUDA_SUCCESS:
        raise DriverError(f"{name} failed with CUresult {rc}")


def _open_context(cuda: Any) -> None:
    dev = ctypes.c_int(0)
    ctx = ctypes.c_void_p()
    _check("cuInit", cuda.cuInit(0))
    _check("cuDeviceGet", cuda.cuDeviceGet(ctypes.byref(dev), 0))
    _check("cuDevicePrimaryCtxRetain", cuda.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev))
    _check("cuCtxSetCurrent", cuda.cuCtxSetCurrent(ctx))


def _mem_info(cuda: Any) -> dict[str, int]:
    free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
    _check("cuMemGetInfo_v2", cuda.cuMemGetInfo_v2(ctypes.byref(free), ctypes.byref(total)))
    return {"total": total.value, "free": free.value}


def _grab(cuda: Any, chunk: int, cap: int) -> dict[str, Any]:
    """Allocate `chunk` bytes at a time until out of memory or `cap` bytes are held."""
    cuda.cuMemAlloc_v2.argtypes = [ctypes.POINTER(ctypes.c_uint64), ctypes.c_size_t]
    ptrs: list[int] = []
    rc = CUDA_SUCCESS
    while (len(ptrs) + 1) * chunk <= cap:
        ptr = ctypes.c_uint64(0)
        rc = cuda.cuMemAlloc_v2(ctypes.byref(ptr), chunk)
        if rc != CUDA_SUCCESS:
            break
        ptrs.append(ptr.value)
        time.sleep(0.02)  # let the slice's other processes take turns, as real jobs would
    return {"ptrs": ptrs, "allocated": len(ptrs) * chunk, "oom": rc == CUDA_ERROR_OUT_OF_MEMORY,
            "last_error": rc}


def _free(cuda: Any, ptrs: list[int]) -> None:
    cuda.cuMemFree_v2.argtypes = [ctypes.c_uint64]
    for ptr in ptrs:
        cuda.cuMemFree_v2(ptr)
    cuda.cuDevicePrimaryCtxRelease_v2(0)


# One block per SM spinning on %globaltimer for the parameter's microseconds.
SPIN_PTX = b"""
.version 7.0
.target sm_70
.address_size 64
.visible .entry sleep_us(.param .u32 us)
{
 .reg .u64 %t0, %t1, %lim;
 .reg .u32 %u;
 .reg .pred %p;
 ld.param.u32 %u, [us];
 cvt.u64.u32 %lim, %u;
 mul.lo.u64 %lim, %lim, 1000;
 mov.u64 %t0, %globaltimer;
LOOP:
 mov.u64 %t1, %globaltimer;
 sub.u64 %t1, %t1, %t0;
 setp.lt.u64 %p, %t1, %lim;
 @%p bra LOOP;
 ret;
}
"""


def _spin_kernel(cuda: Any) -> tuple[Any, int]:
    """Load the spin kernel; return it and the number of blocks that fill the device."""
    module, fn, sms = ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_int(1)
    _check("cuModuleLoadData", cuda.cuModuleLoadData(ctypes.byref(module), SPIN_PTX))
    _check("cuModuleGetFunction",
           cuda.cuModuleGetFunction(ctypes.byref(fn), module, b"sleep_us"))
    cuda.cuDeviceGetAttribute(ctypes.byref(sms), 16, 0)  # MULTIPROCESSOR_COUNT of device 0
    return fn, max(1, sms.value)


def _saturate(cuda: Any, fn: Any, blocks: int, us: int, seconds: float) -> dict[str, Any]:
    """Launch US-us kernels back to back for `seconds`; report the busy fraction."""
    arg = ctypes.c_uint32(us)
    params = (ctypes.c_void_p * 1)(ctypes.cast(ctypes.pointer(arg), ctypes.c_void_p))
    launches, start = 0, time.monotonic()
    while time.monotonic() - start < seconds:
        _check("cuLaunchKernel", cuda.cuLaunchKernel(fn, blocks, 1, 1, 32, 1, 1, 0, None,
                                                     params, None))
        launches += 1
    _check("cuCtxSynchronize", cuda.cuCtxSynchronize())
    wall = time.monotonic() - start
    return {"kernels": launches, "kernel_us": us, "fraction": launches * us / 1e6 / wall}


def _say(report: dict[str, Any], phase: str) -> None:
    print(json.dumps({**report, "phase": phase}), flush=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--chunk", type=int, default=256 << 20, help="bytes per allocation")
    parser.add_argument("--cap", type=int, default=16 << 30, help="stop after this many bytes")
    parser.add_argument("--compute", type=int, metavar="US",
                        help="instead of memory: keep the GPU busy with US-microsecond kernels")
    parser.add_argument("--seconds", type=float, default=2.0, help="how long, with --compute")
    args = parser.parse_args(argv)
    if args.compute:
        return _compute_main(args)
    report: dict[str, Any] = {"pid": os.getpid(), "chunk": args.chunk}
    ptrs: list[int] = []
    cuda = None
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
        _open_context(cuda)
        report.update(_mem_info(cuda))
        _say(report, "context")
        sys.stdin.readline()  # start together with the others, once every context exists
        grabbed = _grab(cuda, args.chunk, args.cap)
        ptrs = grabbed.pop("ptrs")
        report.update(grabbed)
    except (OSError, DriverError) as exc:
        report["error"] = str(exc)
    _say(report, "ready")
    sys.stdin.readline()  # hold the memory until the demo has looked at the node
    if cuda is not None and ptrs:
        _free(cuda, ptrs)
    return 1 if "error" in report else 0


def _compute_main(args: argparse.Namespace) -> int:
    report: dict[str, Any] = {"pid": os.getpid()}
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
        _open_context(cuda)
        fn, blocks = _spin_kernel(cuda)
        _say(report, "context")
        sys.stdin.readline()  # start together with the other slices
        report.update(_saturate(cuda, fn, blocks, args.compute, args.seconds))
    except (OSError, DriverError) as exc:
        report["error"] = str(exc)
    _say(report, "ready")
    sys.stdin.readline()
    return 1 if "error" in report else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
