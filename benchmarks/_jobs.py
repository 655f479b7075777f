"""Start benchmark jobs together: each job prints "ready" when warmed up and waits for a line on
stdin (BENCH_BARRIER=1), so that concurrent jobs measure the same period; then each prints one
JSON line."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path


def run_together(jobs: list[tuple[list[str], dict[str, str]]], timeout: float) -> list[dict]:
    """Run (command, environment) jobs concurrently, released together; return their JSON."""
    procs = []
    for cmd, env in jobs:
        procs.append(subprocess.Popen(cmd, env={**env, "BENCH_BARRIER": "1"},
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    try:
        for p in procs:
            line = p.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"job failed to start: {line!r} {p.stderr.read()[-2000:]}")
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        out = []
        for p in procs:
            stdout, stderr = p.communicate(timeout=timeout)
            if p.returncode != 0:
                raise RuntimeError(f"job exited {p.returncode}: {stderr[-2000:]}")
            out.append(json.loads(stdout.strip().splitlines()[-1]))
        return out
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def clean_env() -> dict[str, str]:
    """This environment without flexai's or MPS's variables and without LD_PRELOAD."""
    from flexai.node.launch import without_flexai

    return {k: v for k, v in without_flexai(os.environ).items() if not k.startswith("CUDA_MPS_")}


def mps_env(mps_dir: Path) -> dict[str, str]:
    return {"CUDA_MPS_PIPE_DIRECTORY": str(mps_dir / "pipe"),
            "CUDA_MPS_LOG_DIRECTORY": str(mps_dir / "log")}


@contextlib.contextmanager
def mps_daemon(mps_dir: Path):
    """An MPS control daemon for the duration of the block, in its own pipe directory."""
    env = {**clean_env(), **mps_env(mps_dir)}
    for d in ("pipe", "log"):
        (mps_dir / d).mkdir(parents=True, exist_ok=True)
    if not shutil.which("nvidia-cuda-mps-control"):
        raise RuntimeError("nvidia-cuda-mps-control not found: MPS runs need the NVIDIA driver")
    subprocess.run(["nvidia-cuda-mps-control", "-d"], env=env, check=True)
    try:
        yield
    finally:
        subprocess.run(["nvidia-cuda-mps-control"], input="quit\n", env=env, text=True)


def flexai_env(base: dict[str, str], state_dir: Path, slice_name: str | None,
               **variables: object) -> dict[str, str]:
    """`base` plus libflexai.so preloaded in slice `slice_name` (None: a private slice per
    process). Keyword arguments are contract variables by key, e.g. gpu_memory="4GiB" ->
    FLEXAI_GPU_MEMORY=4GiB; the keys come from libflexai's table (flexai.spec.variables())."""
    from flexai.node.launch import slice_env
    from flexai.spec import env_of

    return slice_env(base, env_of(state_dir=state_dir, slice=slice_name, **variables))


def gpu_memory_bytes() -> int:
    """Total memory of GPU 0 from nvidia-smi (the parent never initializes CUDA itself)."""
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits",
                          "-i", "0"], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0]) << 20
