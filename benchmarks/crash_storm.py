"""Crash storm: SIGKILLs at random moments of processes that allocate and free in one slice, then
what the node's accounting says (docs/security.md quotes the figures).

    python benchmarks/crash_storm.py [--kills 2500] [--workers 8] [--quota 1GiB]
                                     [--paths alloc,managed,async,pool,vmm] [--out FILE]

Each worker (tests/clients/storm.c) allocates 2..96 MiB at a time on the given paths, holds up
to 6 allocations, frees at random, and keeps in a shared slot what it holds and its longest
call; together the workers ask for about twice the quota, so the quota is the limit most of the
time. The storm kills a random worker after a random 0..10 ms and starts a new one in its
place, until --kills. A sampler sums what the live workers hold (each slot says at most what
its worker holds, so a sum above the quota is a real overshoot). At the end every worker is
killed, the node is swept, and what the slice still has charged is the leak.

Runs on the simulated device unless a GPU answers (then on the GPU, with the real driver).
Prints one JSON object: kills, leaked bytes, most bytes over the quota, longest call (ms),
calls, refusals, errors (calls that failed for any reason but the quota: must be 0).
"""
from __future__ import annotations

import argparse
import json
import mmap
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from flexai import sim
from flexai.node.launch import without_flexai
from flexai.node.state import Node
from flexai.spec import parse_size

HERE = Path(__file__).parent
CLIENTS = HERE.parent / "tests" / "clients"
SLOT = 64  # bytes per worker slot (struct slot in storm.c)
FIELDS = ("held", "max_call_ns", "calls", "refused", "errors", "ready")


def build(out_dir: Path) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        sys.exit("crash_storm.py: a C compiler (cc) is needed")
    exe = out_dir / "storm"
    subprocess.run([cc, "-O2", "-Wall", str(CLIENTS / "storm.c"), "-o", str(exe), "-ldl"],
                   check=True)
    return exe


def _env(state_dir: Path, quota: str, simulated: bool) -> dict[str, str]:
    from flexai import library_path

    env = without_flexai(os.environ, keep=("FLEXAI_LIB_DIR",))
    if simulated:
        env = sim.sim_env(env, memory="16GiB")
    env.update(LD_PRELOAD=str(library_path()), FLEXAI_STATE_DIR=str(state_dir),
               FLEXAI_GPU_MEMORY=quota, FLEXAI_SLICE="storm", FLEXAI_CONTEXT_MEMORY="0")
    return env


def storm(kills: int, workers: int, quota: str, paths: list[str], seed: int = 1,
          max_delay_ms: float = 10.0) -> dict:
    """Run the storm; return its figures."""
    simulated = not sim.real_gpu_present()
    limit = parse_size(quota)
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        exe = build(tmp_path)
        state = tmp_path / "state"
        env = _env(state, quota, simulated)
        slots_file = tmp_path / "slots"
        slots_file.write_bytes(bytes(SLOT * workers))
        f = open(slots_file, "r+b")
        slots = mmap.mmap(f.fileno(), SLOT * workers)

        def read(i: int) -> dict[str, int]:
            raw = slots[i * SLOT:(i + 1) * SLOT]
            return {k: int.from_bytes(raw[8 * n:8 * n + 8], "little")
                    for n, k in enumerate(FIELDS)}

        def spawn(i: int) -> subprocess.Popen:
            slots[i * SLOT:(i + 1) * SLOT] = bytes(SLOT)
            return subprocess.Popen([str(exe), str(slots_file), str(i), str(rng.randrange(1 << 30)),
                                     *paths], env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE)

        totals = dict(calls=0, refused=0, errors=0, max_call_ns=0)
        lock = threading.Lock()   # a kill, its reaping and the slot's reset are one step
        over = {"max": 0, "samples": 0, "torn": 0}
        stop = threading.Event()

        def sample() -> None:
            # Two copies of all the slots, back to back: when they are equal, no worker wrote
            # its slot in between (every change of `held` comes with a change of `calls`), so
            # the copy is what all the workers held at one moment.
            while not stop.is_set():
                with lock:
                    first, second = slots[:], slots[:]
                if first != second:
                    over["torn"] += 1
                    continue
                held = sum(int.from_bytes(first[i * SLOT:i * SLOT + 8], "little")
                           for i in range(workers))
                over["max"] = max(over["max"], held - limit)
                over["samples"] += 1
                time.sleep(0.0005)

        def retire(i: int, proc: subprocess.Popen) -> None:
            proc.kill()
            proc.wait()
            slot = read(i)
            slots[i * SLOT:(i + 1) * SLOT] = bytes(SLOT)  # the dead hold nothing
            for k in ("calls", "refused", "errors"):
                totals[k] += slot[k]
            totals["max_call_ns"] = max(totals["max_call_ns"], slot["max_call_ns"])
            if proc.returncode not in (-signal.SIGKILL, 0):  # it failed before the kill
                totals["errors"] += 1
                err = proc.stderr.read().decode(errors="replace")[-500:]
                print(f"crash_storm: worker exited {proc.returncode}: {err}", file=sys.stderr)

        procs = [spawn(i) for i in range(workers)]
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.monotonic()
        try:
            for _ in range(kills):
                i = rng.randrange(workers)
                time.sleep(rng.uniform(0, max_delay_ms) / 1000)
                with lock:
                    retire(i, procs[i])
                    procs[i] = spawn(i)
        finally:
            with lock:
                for i, p in enumerate(procs):
                    retire(i, p)
            stop.set()
            sampler.join()
        seconds = time.monotonic() - start
        with Node(state) as node:
            node.sweep()
            leaked = sum(r.used_bytes for r in node.usage() if r.pid == 0)
            left = [r for r in node.usage() if r.pid != 0]
        slots.close()
        f.close()
    return {
        "device": "simulated (flexai fake driver, no GPU)" if simulated else "real GPU",
        "workers": workers, "paths": paths, "quota_bytes": limit, "kills": kills,
        "seconds": round(seconds, 1),
        "leaked_bytes": leaked, "processes_left": len(left),
        "max_over_quota_bytes": max(over["max"], 0), "samples": over["samples"],
        "longest_call_ms": round(totals["max_call_ns"] / 1e6, 2),
        "calls": totals["calls"], "refused": totals["refused"], "errors": totals["errors"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=2500)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--quota", default="1GiB")
    ap.add_argument("--paths", default="alloc,managed,async,pool,vmm")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, help="write the JSON here too")
    args = ap.parse_args(argv)
    result = storm(args.kills, args.workers, args.quota, args.paths.split(","), args.seed)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    ok = (result["leaked_bytes"] == 0 and result["max_over_quota_bytes"] == 0
          and result["longest_call_ms"] < 1000 and result["errors"] == 0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
