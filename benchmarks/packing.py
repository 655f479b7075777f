"""Packing: N small jobs on one GPU, each in its own flexai slice, against one job alone (one
job per card), plain co-location and MPS without flexai.

    python benchmarks/packing.py [--n 1,2,4,8] [--jobs resnet18:1,resnet18:8,transformer:16]
                                 [--modes colocated,mps,flexai,flexai-burst,flexai-mps]
                                 [--seconds 8] [--out benchmarks/results/packing.json]

Each flexai slice gets 1/N of the GPU's memory and a 1/N compute share: a hard cap (`flexai`),
a guarantee that may burst to 100% (`flexai-burst`), or the same under a running MPS daemon
(`flexai-mps`, spatial sharing). Reports aggregate throughput, each job's, the slowest job
relative to the mean, and the speedup over the job alone; JSON and a PNG. Needs a GPU.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from _jobs import clean_env, flexai_env, gpu_memory_bytes, mps_daemon, mps_env, run_together  # noqa: E402,E501

MPS_MODES = ("mps", "flexai-mps")


def job_env(mode: str, i: int, n: int, tmp: Path, total_mem: int) -> dict[str, str]:
    base = clean_env()
    if mode in MPS_MODES:
        base.update(mps_env(tmp / "mps"))
    if not mode.startswith("flexai"):
        return base
    share = max(1, 100 // n)
    extra = {"gpu_memory": total_mem // n, "gpu_compute": share,
             "sharing": "spatial" if mode == "flexai-mps" else "time"}
    if mode in ("flexai-burst", "flexai-mps"):
        extra["gpu_compute_burst"] = 100
    return flexai_env(base, tmp / "state", f"pack-{n}-{i}", **extra)


def measure(kind: str, batch: int, n: int, mode: str, args, tmp: Path, total: int) -> dict:
    cmd = [sys.executable, str(HERE / "pack_worker.py"), kind, str(batch), str(args.seconds)]
    jobs = [(cmd, job_env(mode, i, n, tmp, total)) for i in range(n)]
    rates = [r["items_per_s"] for r in run_together(jobs, timeout=args.seconds * 4 + 600)]
    mean = statistics.mean(rates)
    return {"aggregate": sum(rates), "per_job": rates, "slowest_vs_mean": min(rates) / mean}


def plot(res: dict, path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    jobs = list(res["jobs"])
    fig, axes = plt.subplots(1, len(jobs), figsize=(5.5 * len(jobs), 4.2), squeeze=False)
    for ax, job in zip(axes[0], jobs):
        alone = res["jobs"][job]["alone"]
        for mode, by_n in res["jobs"][job]["modes"].items():
            ns = sorted(int(k) for k in by_n)
            ax.plot(ns, [by_n[str(k)]["aggregate"] / alone for k in ns], marker="o", label=mode)
        ax.set(title=job, xlabel="jobs on one GPU", ylabel="aggregate throughput / one job alone")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", default="1,2,4,8")
    ap.add_argument("--jobs", default="resnet18:1,resnet18:8,transformer:16")
    ap.add_argument("--modes", default="colocated,mps,flexai,flexai-burst,flexai-mps")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "packing.json")
    args = ap.parse_args(argv)
    ns = [int(x) for x in args.n.split(",")]
    modes = args.modes.split(",")
    total = gpu_memory_bytes()
    res: dict = {"jobs": {}, "seconds": args.seconds}
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        for spec in args.jobs.split(","):
            kind, batch = spec.split(":")
            entry = res["jobs"][spec] = {"modes": {m: {} for m in modes}}
            alone = measure(kind, int(batch), 1, "colocated", args, tmp, total)
            entry["alone"] = alone["aggregate"]
            plain = [m for m in modes if m not in MPS_MODES]
            for group in (plain, [m for m in modes if m in MPS_MODES]):
                if not group:
                    continue
                with (mps_daemon(tmp / "mps") if group[0] in MPS_MODES else _nothing()):
                    for mode in group:
                        for n in ns:
                            r = measure(kind, int(batch), n, mode, args, tmp, total)
                            r["speedup"] = r["aggregate"] / entry["alone"]
                            entry["modes"][mode][str(n)] = r
                            print(f"{spec} {mode} N={n}: {r['speedup']:.2f}x, slowest/mean "
                                  f"{r['slowest_vs_mean']:.2f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    drew = plot(res, args.out.with_suffix(".png"))
    print(f"wrote {args.out}" + (" and a PNG" if drew else ""))
    return 0


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


if __name__ == "__main__":
    raise SystemExit(main())
