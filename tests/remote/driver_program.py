"""An ordinary cuda.bindings (cuda-python) driver-API program, used unmodified by the remote-slice
tests: it loads whatever ``libcuda.so.1`` the dynamic loader finds (flexai's remote client under
``flexai run --remote``) and prints one JSON line with what it saw.

    python driver_program.py tour               device queries, contexts, memory, copies,
                                                streams, events, a "sleep_us" kernel launch
    python driver_program.py roundtrip BYTES    random bytes host -> device -> device -> host
    python driver_program.py alloc BYTES        one allocation: its result code
    python driver_program.py hold BYTES         allocate, print, then wait on stdin (killable)
    python driver_program.py stream BYTES       host-to-device copies in a loop (killable)
    python driver_program.py calls SECONDS      synchronous calls until one fails
    python driver_program.py echo               one 1 MiB round trip per line read on stdin

It must never need a GPU's real code: the only kernel is the simulated device's "sleep_us".
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np
from cuda.bindings import driver as cu

OK = cu.CUresult.CUDA_SUCCESS


def check(result):
    """The values of a cuda.bindings call, or SystemExit naming the error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != OK:
        raise SystemExit(f"CUDA error {err!r}")
    return values[0] if len(values) == 1 else values


def code(result) -> int:
    err = result[0] if isinstance(result, tuple) else result
    return int(err)


def setup():
    check(cu.cuInit(0))
    dev = check(cu.cuDeviceGet(0))
    ctx = check(cu.cuDevicePrimaryCtxRetain(dev))
    check(cu.cuCtxSetCurrent(ctx))
    return dev, ctx


def tour() -> dict:
    out: dict = {}
    check(cu.cuInit(0))
    out["driver_version"] = check(cu.cuDriverGetVersion())
    out["count"] = check(cu.cuDeviceGetCount())
    dev = check(cu.cuDeviceGet(0))
    out["name"] = check(cu.cuDeviceGetName(64, dev)).split(b"\0")[0].decode()
    out["uuid"] = bytes(check(cu.cuDeviceGetUuid(dev)).bytes).hex()
    out["total_mem"] = check(cu.cuDeviceTotalMem(dev))
    out["sm_count"] = check(cu.cuDeviceGetAttribute(
        cu.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev))
    ctx = check(cu.cuCtxCreate(None, 0, dev))
    out["ctx_device"] = int(check(cu.cuCtxGetDevice()))
    free, total = check(cu.cuMemGetInfo())
    out["mem_info"] = [free, total]
    n = 1 << 20
    a, b = check(cu.cuMemAlloc(n)), check(cu.cuMemAlloc(n))
    host = np.random.default_rng(1).integers(0, 256, n, dtype=np.uint8)
    check(cu.cuMemcpyHtoD(a, host.ctypes.data, n))
    check(cu.cuMemcpyDtoD(b, a, n))
    back = np.zeros(n, dtype=np.uint8)
    check(cu.cuMemcpyDtoH(back.ctypes.data, b, n))
    out["copy_ok"] = bool((back == host).all())
    check(cu.cuMemsetD32(b, 0x01020304, n // 4))
    check(cu.cuMemcpyDtoH(back.ctypes.data, b, 8))
    out["memset"] = back[:8].tolist()
    out["mem_type"] = int(check(cu.cuPointerGetAttribute(
        cu.CUpointer_attribute.CU_POINTER_ATTRIBUTE_MEMORY_TYPE, a)))
    stream = check(cu.cuStreamCreate(cu.CUstream_flags.CU_STREAM_NON_BLOCKING))
    start, end = check(cu.cuEventCreate(0)), check(cu.cuEventCreate(0))
    check(cu.cuMemcpyHtoDAsync(a, host.ctypes.data, n, stream))
    check(cu.cuMemsetD8Async(b, 7, n, stream))
    module = check(cu.cuModuleLoadData(b".version 8.0\n.target sm_80\n.address_size 64\n"))
    fn = check(cu.cuModuleGetFunction(module, b"sleep_us_kernel"))
    out["params"] = [list(check(cu.cuFuncGetParamInfo(fn, 0)))]
    out["max_threads"] = check(cu.cuFuncGetAttribute(
        cu.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK, fn))
    out["occupancy"] = check(cu.cuOccupancyMaxActiveBlocksPerMultiprocessor(fn, 256, 0))
    us = np.array([20000], dtype=np.uint32)
    args = np.array([us.ctypes.data], dtype=np.uint64)
    check(cu.cuEventRecord(start, stream))
    check(cu.cuLaunchKernel(fn, 1, 1, 1, 32, 1, 1, 0, stream, args.ctypes.data, 0))
    check(cu.cuEventRecord(end, stream))
    out["query_running"] = code(cu.cuStreamQuery(stream))
    check(cu.cuStreamSynchronize(stream))
    out["query_done"] = code(cu.cuEventQuery(end))
    out["elapsed_ms"] = check(cu.cuEventElapsedTime(start, end))
    check(cu.cuMemcpyDtoHAsync(back.ctypes.data, b, 4, stream))
    check(cu.cuStreamSynchronize(stream))
    out["memset_async"] = back[:4].tolist()
    out["error_name"] = check(cu.cuGetErrorName(cu.CUresult.CUDA_ERROR_OUT_OF_MEMORY)).decode()
    out["error_string"] = check(cu.cuGetErrorString(cu.CUresult.CUDA_ERROR_OUT_OF_MEMORY)).decode()
    out["bad_stream"] = code(cu.cuStreamSynchronize(cu.CUstream(0x1234)))
    for h in (start, end):
        check(cu.cuEventDestroy(h))
    check(cu.cuStreamDestroy(stream))
    check(cu.cuModuleUnload(module))
    check(cu.cuMemFree(a))
    check(cu.cuMemFree(b))
    check(cu.cuCtxSynchronize())
    check(cu.cuCtxDestroy(ctx))
    return out


def roundtrip(n: int) -> dict:
    setup()
    host = np.random.default_rng(12).integers(0, 1 << 63, n // 8, dtype=np.uint64)
    a, b = check(cu.cuMemAlloc(n)), check(cu.cuMemAlloc(n))
    t0 = time.perf_counter()
    check(cu.cuMemcpyHtoD(a, host.ctypes.data, n))
    check(cu.cuMemcpyDtoD(b, a, n))
    back = np.empty_like(host)
    check(cu.cuMemcpyDtoH(back.ctypes.data, b, n))
    seconds = time.perf_counter() - t0
    return {"bytes": n, "equal": bool(np.array_equal(host, back)), "seconds": seconds}


def main() -> None:
    mode, arg = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "0")
    if mode == "tour":
        print(json.dumps(tour()), flush=True)
    elif mode == "roundtrip":
        print(json.dumps(roundtrip(int(arg))), flush=True)
    elif mode == "alloc":
        setup()
        result = cu.cuMemAlloc(int(arg))
        print(json.dumps({"rc": code(result), "info": check(cu.cuMemGetInfo())}), flush=True)
    elif mode == "hold":
        setup()
        check(cu.cuMemAlloc(int(arg)))
        print(json.dumps({"held": int(arg), "info": check(cu.cuMemGetInfo())}), flush=True)
        sys.stdin.read()
    elif mode == "stream":
        setup()
        n = int(arg)
        buf = np.ones(n, dtype=np.uint8)
        d = check(cu.cuMemAlloc(n))
        print(json.dumps({"streaming": n}), flush=True)
        while True:
            check(cu.cuMemcpyHtoD(d, buf.ctypes.data, n))
    elif mode == "echo":
        setup()
        n = 1 << 20
        d = check(cu.cuMemAlloc(n))
        print(json.dumps({"ready": True}), flush=True)
        for i, _line in enumerate(sys.stdin):
            data = np.full(n, i % 251, dtype=np.uint8)
            back = np.zeros(n, dtype=np.uint8)
            rcs = [code(cu.cuMemcpyHtoD(d, data.ctypes.data, n)),
                   code(cu.cuMemcpyDtoH(back.ctypes.data, d, n))]
            print(json.dumps({"rcs": rcs, "equal": bool((back == data).all())}), flush=True)
    elif mode == "calls":
        setup()
        print(json.dumps({"calling": True}), flush=True)
        deadline = time.monotonic() + float(arg)
        while time.monotonic() < deadline:
            rc = code(cu.cuMemGetInfo())
            if rc != int(OK):
                print(json.dumps({"rc": rc, "then": code(cu.cuCtxSynchronize())}), flush=True)
                return
        print(json.dumps({"rc": 0}), flush=True)


if __name__ == "__main__":
    main()
