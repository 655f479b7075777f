"""Client process of ``flexai demo``: grab device memory through the CUDA driver API.

Runs standalone (no flexai import), usually under ``flexai run``. It loads ``libcuda.so.1`` with
ctypes (dlopen + dlsym, which the preloaded shim intercepts), creates the primary context of
device 0 and reads cuMemGetInfo, then says so (a JSON line with "phase": "context") and waits
for a line on stdin. Then it allocates fixed-size chunks until the driver answers
CUDA_ERROR_OUT_OF_MEMORY or the safety cap is reached, prints its report (a JSON line with
"phase": "ready"), waits for another line on stdin, frees everything and exits 0. A failure
before the allocation loop is reported in the "ready" line's "error" and exits 1.
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


def _say(report: dict[str, Any], phase: str) -> None:
    print(json.dumps({**report, "phase": phase}), flush=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--chunk", type=int, default=256 << 20, help="bytes per allocation")
    parser.add_argument("--cap", type=int, default=16 << 30, help="stop after this many bytes")
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
