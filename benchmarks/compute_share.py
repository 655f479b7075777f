"""How close each mechanism gets to the compute share asked for, side by side in one run.

    python benchmarks/compute_share.py [--mechanisms flexai,mps] [--preload NAME=/path/lib.so]
                                       [--seconds 3] [--quick] [--out results/compute_share.json]

(a) one job alone capped at 10..90% (GEMM, memory-bound, tiny kernels): achieved fraction of the
    same job alone without limits; (b) two saturating jobs at 30/70, 50/50, 10/90: each one's
    fraction and the sum; (c) a high-priority small job's step time (p50/p99) while a
    low-priority job of ~0.5 ms kernels saturates the GPU; (d) flexai's cost at 100%.
Writes JSON and, where matplotlib is installed, a PNG beside it.

Mechanisms: `flexai` (libflexai.so, time-slicing), `flexai-mps` (libflexai.so with the MPS
daemon running: spatial sharing), `mps` (NVIDIA MPS thread percentage alone; the script starts
and stops the daemon), and any other preload library given by path, which gets the share in
--share-var (default CUDA_DEVICE_SM_LIMIT, HAMi's). On a machine without a GPU the simulated
device is used (driver backend, flexai only) and the output says so.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import flexai
from flexai import sim

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from _jobs import clean_env, flexai_env, mps_daemon, mps_env, run_together  # noqa: E402

SHARES = [10, 20, 30, 40, 50, 60, 70, 80, 90]
PAIRS = [(30, 70), (50, 50), (10, 90)]


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path):
        self.args = args
        self.tmp = tmp
        self.sim = args.sim
        self.backend = "driver" if self.sim else args.backend
        self.exe = tmp / "driver_bench"
        cc = shutil.which("cc") or shutil.which("gcc")
        subprocess.run([cc, "-O2", str(HERE / "driver_bench.c"), "-o", str(self.exe), "-ldl"],
                       check=True)
        self.mps_dir = tmp / "mps"
        self.counter = 0

    # ---- jobs ---------------------------------------------------------------------------
    def workloads(self) -> list[str]:
        return ["spin500", "spin20"] if self.backend == "driver" else ["gemm", "membw", "tiny"]

    def saturator(self) -> str:
        return "spin500" if self.backend == "driver" else "gemm_halfms"

    def command(self, workload: str) -> list[str]:
        s = str(self.args.seconds)
        if self.backend == "driver":
            if workload == "probe":
                return [str(self.exe), "probe", "100", "5", s]
            return [str(self.exe), "saturate", workload.removeprefix("spin"), s]
        return [sys.executable, str(HERE / "share_worker.py"), workload, s]

    def env(self, mech: str, share: int | None, priority: str | None = None) -> dict[str, str]:
        env = clean_env()
        if self.sim:
            env = sim.sim_env(env, state_dir=self.tmp / "sim",
                              mps=1 if mech == "flexai-mps" else None)
        if mech in ("flexai", "flexai-nolimit", "flexai-mps"):
            self.counter += 1
            if mech == "flexai-mps":
                env.update(mps_env(self.mps_dir))
            limited = share is not None and mech != "flexai-nolimit"
            env = flexai_env(env, self.tmp / "state", f"bench-{self.counter}",
                             sharing="spatial" if mech == "flexai-mps" else "time",
                             gpu_compute=share if limited else None, priority=priority or None)
        elif mech == "mps":
            env.update(mps_env(self.mps_dir))
            if share is not None:
                env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = str(share)
        elif mech.startswith("preload:"):
            name = mech.split(":", 1)[1]
            env["LD_PRELOAD"] = self.args.preload[name]
            if share is not None:
                env[self.args.share_var] = str(share)
        return env

    def run_together(self, jobs: list[tuple[str, str, int | None, str | None]]) -> list[dict]:
        """Start jobs (mechanism, workload, share, priority), release them together, collect."""
        return run_together([(self.command(w), self.env(m, s, p)) for m, w, s, p in jobs],
                            timeout=self.args.seconds * 10 + 120)

    def rate(self, mech: str, workload: str, share: int | None) -> float:
        return self.run_together([(mech, workload, share, None)])[0]["rate"]

def error_stats(points: list[tuple[float, float]]) -> dict[str, float]:
    errs = [abs(achieved - asked) * 100 for asked, achieved in points]
    return {"mae_points": round(statistics.mean(errs), 2), "max_points": round(max(errs), 2)}


def baseline(b: Bench) -> dict:
    """Native figures every mechanism is compared with (no MPS daemon running)."""
    res: dict = {"a": {}, "b": {}, "c": {}, "d": {}, "native": {}}
    for w in b.workloads():
        res["native"][w] = statistics.median(b.rate("native", w, None) for _ in range(2))
    sat = b.workloads()[0]
    r = b.run_together([("native", sat, None, None), ("native", sat, None, None)])
    res["b"]["native (no quota)"] = {"-": {"first": r[0]["rate"] / res["native"][sat],
                                           "second": r[1]["rate"] / res["native"][sat]}}
    res["c"]["alone"] = b.run_together([("native", "probe", None, None)])[0]
    res["c"]["native (no priority)"] = b.run_together(
        [("native", b.saturator(), None, None), ("native", "probe", None, None)])[1]
    return res


def experiments(b: Bench, mechs: list[str], res: dict) -> None:
    """Run (a)-(d) for `mechs`, adding to `res`."""
    shares = [10, 30, 50, 70, 90] if b.args.quick else SHARES
    for mech in mechs:
        res["a"][mech] = {w: {s: b.rate(mech, w, s) / res["native"][w] for s in shares}
                          for w in b.workloads()}
        sat = b.workloads()[0]
        res["b"][mech] = {}
        for x, y in PAIRS:
            r = b.run_together([(mech, sat, x, None), (mech, sat, y, None)])
            fx, fy = (r[0]["rate"] / res["native"][sat], r[1]["rate"] / res["native"][sat])
            res["b"][mech][f"{x}/{y}"] = {"first": fx, "second": fy, "sum": fx + fy}
    for mech in mechs:
        if mech in ("flexai", "flexai-mps"):
            res["c"][mech] = b.run_together([(mech, b.saturator(), None, "low"),
                                             (mech, "probe", None, "high")])[1]
        elif mech == "mps":
            res["c"][mech] = b.run_together([("mps", b.saturator(), None, None),
                                             ("mps", "probe", None, None)])[1]
    if "flexai" in mechs:
        res["d"] = {w: {"share_100": b.rate("flexai", w, 100) / res["native"][w],
                        "no_limit": b.rate("flexai-nolimit", w, None) / res["native"][w]}
                    for w in b.workloads()}
    res.setdefault("summary", {})
    for mech in mechs:
        pts = [(s / 100, f) for w in res["a"][mech].values() for s, f in w.items()]
        for pair, v in res["b"][mech].items():
            x, y = (int(p) / 100 for p in pair.split("/"))
            pts += [(x, v["first"]), (y, v["second"])]
        sums = [v["sum"] for v in res["b"][mech].values()]
        res["summary"][mech] = {**error_stats(pts), "min_pair_sum": round(min(sums), 3)}


def plot(res: dict, path: Path, title: str) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    mechs = list(res["a"])
    workloads = list(res["native"])
    fig, axes = plt.subplots(1, len(workloads) + 1, figsize=(5 * (len(workloads) + 1), 4.2))
    for ax, w in zip(axes, workloads):
        ax.plot([0, 100], [0, 100], color="grey", lw=1, ls="--", label="asked")
        for mech in mechs:
            xs = sorted(res["a"][mech][w])
            ax.plot(xs, [100 * res["a"][mech][w][x] for x in xs], marker="o", label=mech)
        ax.set(title=f"(a) {w} alone", xlabel="share asked (%)", ylabel="achieved (% of native)",
               xlim=(0, 100), ylim=(0, 105))
        ax.legend()
    ax = axes[-1]
    labels, width = list(PAIRS), 0.8 / max(1, len(mechs))
    for i, mech in enumerate(mechs):
        for j, (x, y) in enumerate(labels):
            v = res["b"][mech][f"{x}/{y}"]
            ax.bar(j + i * width, 100 * v["first"], width, color=f"C{i}")
            ax.bar(j + i * width, 100 * v["second"], width, bottom=100 * v["first"], color=f"C{i}",
                   alpha=0.5, label=mech if j == 0 else None)
    ax.set_xticks([j + width * (len(mechs) - 1) / 2 for j in range(len(labels))],
                  [f"{x}/{y}" for x, y in labels])
    ax.set(title="(b) two jobs: each share (stacked)", ylabel="% of native", ylim=(0, 110))
    ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mechanisms", default="flexai,flexai-mps,mps")
    ap.add_argument("--preload", action="append", default=[], metavar="NAME=PATH")
    ap.add_argument("--share-var", default="CUDA_DEVICE_SM_LIMIT")
    ap.add_argument("--backend", choices=["torch", "driver"], default="torch")
    ap.add_argument("--sim", action="store_true", help="use the simulated device")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--quick", action="store_true", help="shares 10,30,50,70,90 only")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "compute_share.json")
    args = ap.parse_args(argv)
    args.preload = dict(p.split("=", 1) for p in args.preload)
    if not flexai.real_gpu_present():
        args.sim = True
    mechs = [m for m in args.mechanisms.split(",") if m]
    mechs += [f"preload:{name}" for name in args.preload]
    if args.sim:  # the simulated device has no MPS daemon; it can overlap kernels for flexai-mps
        mechs = [m for m in mechs if m in ("flexai", "flexai-mps")]
    with tempfile.TemporaryDirectory() as tmp:
        b = Bench(args, Path(tmp))
        res = baseline(b)
        experiments(b, [m for m in mechs if m not in ("mps", "flexai-mps")], res)
        with_mps = [m for m in mechs if m in ("mps", "flexai-mps")]
        if with_mps:
            with (mps_daemon(b.mps_dir) if not args.sim else contextlib.nullcontext()):
                experiments(b, with_mps, res)
    device = ("simulated (flexai fake driver, no GPU)" if args.sim else "real GPU") + \
        f", backend {b.backend}, {args.seconds}s per run"
    res["device"] = device
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    png = args.out.with_suffix(".png")
    drew = plot(res, png, f"flexai compute shares - {device}")
    print(json.dumps({"device": device, "summary": res["summary"], "c": res["c"], "d": res["d"]},
                     indent=2))
    print(f"wrote {args.out}" + (f" and {png}" if drew else " (no matplotlib: no PNG)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
