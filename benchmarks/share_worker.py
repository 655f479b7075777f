"""One GPU job for compute_share.py, on PyTorch: runs a workload for a number of seconds and
prints its rate as JSON. With BENCH_BARRIER set it prints "ready" after warming up and waits
for a line on stdin, so that several jobs measure the same period.

    python share_worker.py gemm|gemm_halfms|membw|tiny SECONDS
    python share_worker.py probe SECONDS          (p50/p99 of a small job's step, in ms)
"""
from __future__ import annotations

import json
import os
import sys
import time

import torch


def workload(name: str):
    dev = "cuda"
    if name in ("gemm", "gemm_halfms"):
        n = 4096 if name == "gemm" else 5120  # 5120^3 bf16 ~ 0.4-0.5 ms on an H100
        a = torch.randn(n, n, dtype=torch.bfloat16, device=dev)
        b = torch.randn(n, n, dtype=torch.bfloat16, device=dev)
        return (lambda: torch.matmul(a, b)), 2.0 * n ** 3, "FLOP/s"
    if name == "membw":
        x = torch.empty(1 << 28, dtype=torch.float32, device=dev)  # 1 GiB, read and written
        return (lambda: x.mul_(1.0)), 2.0 * x.numel() * 4, "B/s"
    if name == "tiny":
        x = torch.zeros(256, device=dev)
        return (lambda: x.add_(1.0)), 1.0, "kernels/s"
    raise SystemExit(f"share_worker: unknown workload {name!r}")


def barrier() -> None:
    if os.environ.get("BENCH_BARRIER"):
        print("ready", flush=True)
        sys.stdin.readline()


def run_probe(seconds: float) -> dict:
    a = torch.randn(256, 256, device="cuda")
    for _ in range(20):
        a @ a
    torch.cuda.synchronize()
    barrier()
    steps, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        a @ a
        torch.cuda.synchronize()
        steps.append((time.perf_counter() - t) * 1e3)
        while time.perf_counter() < t + 0.005:
            pass
    steps.sort()
    return {"steps": len(steps), "p50_ms": steps[len(steps) // 2],
            "p99_ms": steps[len(steps) * 99 // 100]}


def run_rate(name: str, seconds: float) -> dict:
    step, work, unit = workload(name)
    for _ in range(10):
        step()
    torch.cuda.synchronize()
    barrier()
    start = time.perf_counter()
    n = 0
    while time.perf_counter() - start < seconds:
        step()
        n += 1
    torch.cuda.synchronize()
    wall = time.perf_counter() - start
    return {"workload": name, "rate": n * work / wall, "unit": unit, "wall_s": wall}


def main() -> None:
    name, seconds = sys.argv[1], float(sys.argv[2])
    out = run_probe(seconds) if name == "probe" else run_rate(name, seconds)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
