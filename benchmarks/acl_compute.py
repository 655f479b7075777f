"""Compute shares on Ascend NPUs through flexai's ACL backend, with exact figures (the tests in
tests/test_acl_compute.py only check bounds that hold on a busy machine).

    python benchmarks/acl_compute.py [--seconds 3] [--reps 3] [--out results/acl_compute-sim.json]

(a) two saturating jobs at 30/70 and 50/50: each one's fraction of the NPU's time and its error
    in points against the share, also against what the same job reaches alone uncapped (a job
    that waits for a CPU on a busy machine launches less: the load average is recorded), and how
    the NPU time the two used was split between them;
(b) a high-priority job's step (one 100 us aclnn operator and a synchronize) p50/p99 alone and
    while a low-priority job saturates the NPU with 500 us work;
    (c) resize: a job capped at 10% is resized to 90% while it runs; the delay until its work runs
    above the old cap, from 20 ms phases (an upper bound: a phase counts from its start).
Runs the ACL test client (tests/clients/acl_client.c) under libflexai.so. Where no Ascend
runtime answers, the stand-in (lib/sim/libascendcl.so) is used and the output says so; on a real
Ascend machine the same script runs against CANN's libascendcl.so, but the client's "kernel"
work is the stand-in's sleep_us kernel: use its "op"/"aclnn" kinds there (docs/ascend.md).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import flexai
from flexai import sim
from flexai.node.launch import without_flexai

HERE = Path(__file__).parent
CLIENT = HERE.parent / "tests" / "clients" / "acl_client.c"


def build(tmp: Path) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    exe = tmp / "acl_client"
    subprocess.run([cc, "-O2", str(CLIENT), "-o", str(exe), "-ldl", f"-L{sim.sim_dir()}",
                    "-l:libascendcl.so", "-l:libopapi.so"], check=True)
    return exe


def env_for(state: Path, slice_name: str, **extra: str) -> dict[str, str]:
    env = sim.sim_env(without_flexai(os.environ), kernel_us=500, state_dir=state / "sim")
    env.update(LD_PRELOAD=str(flexai.lib_dir() / "libflexai.so"), FLEXAI_STATE_DIR=str(state),
               FLEXAI_SLICE=slice_name, FLEXAI_CONTEXT_MEMORY="0", **extra)
    return env


def run(exe: Path, env: dict[str, str], *ops: str, via: str = "link") -> subprocess.Popen:
    return subprocess.Popen([str(exe), "--via", via, "init", "dev", "0", *ops], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def lines(proc: subprocess.Popen, timeout: float = 120) -> list[dict]:
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(err[-2000:])
    return [json.loads(x) for x in out.splitlines() if x.startswith("{")]


def op(found: list[dict], name: str) -> dict:
    return next(x for x in found if x["op"] == name)


def fresh_state(tmp: Path, tag: str) -> Path:
    d = tmp / f"state-{tag}-{time.monotonic_ns()}"
    (d / "sim").mkdir(parents=True)
    return d


def alone(exe: Path, tmp: Path, seconds: float, kind: str, via: str) -> float:
    """The fraction one uncapped job of `kind` reaches alone: on a busy machine a job that waits
    for a CPU launches less, so shares are also reported against this."""
    state = fresh_state(tmp, "alone")
    return op(lines(run(exe, env_for(state, "alone"), "saturate", kind, "500",
                        str(int(seconds * 1000)), via=via)), "saturate")["fraction"]


def pairs(exe: Path, tmp: Path, seconds: float, reps: int) -> list[dict]:
    """Job a: sleep_us kernels by direct calls; job b: aclnn operators found through dlsym."""
    out = []
    for a_share, b_share in [(30, 70), (50, 50)]:
        for rep in range(reps):
            base = [alone(exe, tmp, 1.0, "kernel", "link"), alone(exe, tmp, 1.0, "aclnn", "dlsym")]
            state = fresh_state(tmp, "pair")
            ms = str(int(seconds * 1000))
            a = run(exe, env_for(state, "a", FLEXAI_GPU_COMPUTE=str(a_share)),
                    "saturate", "kernel", "500", ms)
            b = run(exe, env_for(state, "b", FLEXAI_GPU_COMPUTE=str(b_share)),
                    "saturate", "aclnn", "500", ms, via="dlsym")
            f = [op(lines(a), "saturate")["fraction"], op(lines(b), "saturate")["fraction"]]
            rel = [round(x / y, 4) for x, y in zip(f, base)]
            out.append({"shares": [a_share, b_share], "rep": rep, "fractions": f,
                        "alone": base, "of_alone": rel,
                        "error_points": [round(100 * x - s, 2)
                                         for x, s in zip(f, (a_share, b_share))],
                        "error_points_of_alone": [round(100 * x - s, 2)
                                                  for x, s in zip(rel, (a_share, b_share))],
                        # how the NPU time the two used was split, against the shares
                        "split_error_points": [round(100 * x / sum(f) - s, 2)
                                               for x, s in zip(f, (a_share, b_share))]})
    return out


def priority(exe: Path, tmp: Path, samples: int) -> dict:
    state = fresh_state(tmp, "prio")
    alone = op(lines(run(exe, env_for(state, "high", FLEXAI_PRIORITY="high"), "latency", "aclnn",
                         "100", str(samples), "2000", via="dlsym")), "latency")
    low = run(exe, env_for(state, "low", FLEXAI_PRIORITY="low"), "saturate", "kernel", "500",
              str(int(samples * 2.5 + 1500)))
    time.sleep(0.5)
    high = op(lines(run(exe, env_for(state, "high", FLEXAI_PRIORITY="high"), "latency",
                        "aclnn", "100", str(samples), "2000", via="dlsym")), "latency")
    lo = op(lines(low), "saturate")
    return {"alone_p50_us": alone["p50_us"], "alone_p99_us": alone["p99_us"],
            "beside_low_p50_us": high["p50_us"], "beside_low_p99_us": high["p99_us"],
            "low_fraction": lo["fraction"], "low_work_us": 500}


def resize(exe: Path, tmp: Path, reps: int) -> list[float]:
    delays = []
    for _ in range(reps):
        state = fresh_state(tmp, "resize")
        proc = run(exe, env_for(state, "fast", FLEXAI_GPU_COMPUTE="10"), "phases", "kernel",
                   "200", "20", "75")
        time.sleep(0.6)
        flexai.resize("fast", compute=90, state_dir=str(state))
        at = time.monotonic()
        phases = [p for p in lines(proc) if p["op"] == "phase"]
        later = [p for p in phases if p["start_s"] >= at and p["fraction"] > 0.5]
        delays.append(round((later[0]["start_s"] + 0.020 - at) * 1000, 1) if later else -1.0)
    return delays


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--out", default=str(HERE / "results" / "acl_compute-sim.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        exe = build(tmp)
        result = {
            "runtime": "stand-in libascendcl.so (tests/fake_driver/acl)",
            "cpus": os.cpu_count(),
            "pairs": pairs(exe, tmp, args.seconds, args.reps),
            "priority": priority(exe, tmp, args.samples),
            "resize_delay_ms": resize(exe, tmp, args.reps),
        }
    for key in ("error_points", "error_points_of_alone", "split_error_points"):
        errs = [abs(e) for p in result["pairs"] for e in p[key]]
        result[f"pairs_max_{key}"] = max(errs)
        result[f"pairs_mean_{key}"] = round(statistics.mean(errs), 2)
    result["load_average"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
