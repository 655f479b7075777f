"""Cost of the shim on the driver's hot paths: alloc/free pairs and kernel launches, native
against LD_PRELOAD=libflexai.so (no quota, and with a memory quota).

    python benchmarks/overhead.py [--sim] [--repeat 5] [--out results/overhead.json]

On a machine with an NVIDIA driver it measures the real GPU; with --sim (or without a GPU) it
measures the shim's added cost over the bundled simulated device, and says so in the output.
Targets (issue: foundation): at most 0.2 us added per launch and 1 us per allocation.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flexai import sim

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from _jobs import clean_env, flexai_env  # noqa: E402


def build(out_dir: Path) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        sys.exit("overhead.py: a C compiler (cc) is needed")
    exe = out_dir / "driver_bench"
    subprocess.run([cc, "-O2", str(HERE / "driver_bench.c"), "-o", str(exe), "-ldl"], check=True)
    return exe


def variants(state_dir: str, simulated: bool) -> dict[str, dict[str, str]]:
    base = clean_env()
    if simulated:
        base = sim.sim_env(base, kernel_us=0, devices=2)
    base = {**base, "CUDA_VISIBLE_DEVICES": "0"}
    shim = flexai_env(base, Path(state_dir), None)  # a private slice per process
    return {
        "native": base,
        "flexai": shim,
        "flexai_memory_quota": flexai_env(base, Path(state_dir), "bench", gpu_memory="8GiB"),
        # unscheduled on device 0 while a capped slice launches on device 1 (its lease is
        # written on every launch: the unscheduled path must not feel it)
        "flexai_neighbour_scheduled": {**shim, "BENCH_NEIGHBOUR": "1"},
    }


@contextlib.contextmanager
def neighbour(env: dict[str, str], state_dir: str, exe: Path):
    """A capped slice saturating device 1 for as long as the block runs."""
    nenv = flexai_env({**env, "CUDA_VISIBLE_DEVICES": "1"}, Path(state_dir), "neighbour",
                      gpu_compute="30")
    proc = subprocess.Popen([str(exe), "saturate", "100", "600"], env=nenv,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)  # it holds leases by now
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sim", action="store_true", help="use the simulated device")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--pairs", type=int, default=20000)
    ap.add_argument("--launches", type=int, default=50000)
    ap.add_argument("--out", type=Path, default=None, help="write the JSON here too")
    args = ap.parse_args(argv)
    simulated = args.sim or not sim.real_gpu_present()
    with tempfile.TemporaryDirectory() as tmp:
        exe = build(Path(tmp))
        runs: dict[str, list[dict]] = {}
        envs = variants(str(Path(tmp) / "state"), simulated)
        # interleave variants so drift (clocks, other load) hits all of them alike
        for _ in range(args.repeat):
            for name, env in envs.items():
                cmd = [str(exe), "overhead", str(args.pairs), str(args.launches)]
                around = (neighbour(envs["native"], str(Path(tmp) / "state"), exe)
                          if env.get("BENCH_NEIGHBOUR") else contextlib.nullcontext())
                with around:
                    out = subprocess.run(cmd, env=env, capture_output=True, text=True,
                                         check=True).stdout
                runs.setdefault(name, []).append(json.loads(out))
    result = {
        "device": "simulated (flexai fake driver, no GPU)" if simulated else "real GPU",
        "host": platform.node(),
        "repeat": args.repeat,
        "median": {name: {k: statistics.median(r[k] for r in rs)
                          for k in ("alloc_free_ns", "launch_ns", "launch_sync_ns")}
                   for name, rs in runs.items()},
    }
    nat = result["median"]["native"]
    result["added_ns"] = {name: {k: round(v - nat[k], 1) for k, v in med.items()}
                          for name, med in result["median"].items() if name != "native"}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
