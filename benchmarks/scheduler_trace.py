"""Replay a GPU-sharing cluster trace under every flexai.policy policy, side by side (issue 10).

    python benchmarks/scheduler_trace.py --nodes openb_node_list_gpu_node.csv \\
        --pods openb_pod_list_default.csv [--variants] [--policies first-fit,fgd,...] \\
        [--seed 42] [--repeats 1] [--paper analysis_allo_discrete.csv] [--out benchmarks/results]
    python benchmarks/scheduler_trace.py [--synthetic] [--scale 200] [--mix multigpu] \\
        [--variants] [--quick]

The trace is Alibaba's cluster-trace-gpu-v2023 (openb_*.csv; research use only, so it is never
in this repository: give its paths), or, without paths, a seeded synthetic trace with the same
columns (benchmarks/gpu_trace.py). --variants runs, one after the other, the default pod list,
the GPU-sharing variant and the multi-GPU variant: openb_pod_list_gpushare100.csv and
openb_pod_list_multigpu50.csv from the --pods file's folder when they are there, else synthetic
pods of the same kind (gpu_trace.MIXES) on the same nodes. Per trace, three replays:

1. Packing, as the FGD paper (Weng et al., ATC'23) does it: the trace's nodes; its pods in a
   seeded random order, then pods drawn again from the trace until the GPUs asked for reach
   1.3x the cluster's; pods never leave; a pod that does not fit is dropped. Reported: the
   share of GPU capacity allocated when the first pod fails to fit and at the end, and the GPUs
   left unallocated at the end (capacity minus allocated GPU shares, in GPUs: the paper's
   measure), plus a plot of unallocated GPUs against the arrived workload, and the CPU time
   per decision at the trace's size.
2. Latency: microseconds per placement decision (policy.choose) on a 1,000-node x 8-GPU pool,
   three ways (sched_replay.latency_replay): the wall-clock time of each decision (what a
   caller waits, on a loaded machine including other processes' turns), the least of
   --latency-repeats timings of the same decision on the same state (robust to contention),
   and the thread's CPU time. The machine's load average is recorded with them.
3. Time-based, with priorities from qos (LS high, Burstable normal, BE low): pods arrive and
   leave at their times, wait in the policy's queue, and may evict lower priorities
   (benchmarks/sched_timed.py). Reported: high-priority wait p99 and evictions. Synthetic
   times (offered load --timed-load x capacity, pods of the trace's kind) when it has none.

--paper takes the FGD paper's published results (analysis_allo_discrete.csv of its simulator,
benchmarks/fgd_paper.py) and adds their averages for the same pod list under the table.

Writes scheduler_trace-TAG.json, .md (the table) and .png per trace to --out, and with
--variants scheduler_trace-TAG-variants.md (every table; TAG the first trace's); prints the
tables. --quick finishes in about a minute on a 2-core machine (a 60-node synthetic trace, 300
decisions for latency, a short timed replay).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import fgd_paper  # noqa: E402
import gpu_trace  # noqa: E402
import sched_replay as rp  # noqa: E402

EXAMPLE = ("python benchmarks/scheduler_trace.py --nodes /tmp/openb/openb_node_list_gpu_node.csv "
           "--pods /tmp/openb/openb_pod_list_default.csv")


def _fail(msg: str) -> int:
    print(f"scheduler_trace: {msg} (e.g. {EXAMPLE})", file=sys.stderr)
    return 2


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, fmt: str = "{:.0f}") -> str:
    return "-" if x is None else fmt.format(x)


def machine() -> dict:
    """The CPUs and the load average now (1, 5, 15 minutes)."""
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {"cpus": os.cpu_count(), "load_avg_1_5_15": load, "at": time.strftime("%H:%M:%S")}


def traces(args) -> list[tuple[str, str, list, list, bool]]:
    """[(variant, tag, nodes, pods, from a file)]: the trace(s) the arguments name."""
    kinds = list(gpu_trace.MIXES) if args.variants else [args.mix]
    nodes = (gpu_trace.read_nodes(args.nodes) if args.nodes
             else gpu_trace.synthetic_nodes(args.scale, seed=args.seed))
    gpus = sum(n.gpus for n in nodes)
    out = []
    for kind in kinds:
        path = None
        if args.pods:
            path = Path(args.pods) if (kind == "default" or not args.variants) else \
                Path(args.pods).parent / gpu_trace.VARIANT_FILES[kind]
        real = path is not None and (path.exists() or not args.variants)
        if real:
            pods = gpu_trace.read_pods(path)
            tag = "openb-" + path.stem.replace("openb_pod_list_", "")
        else:
            pods = gpu_trace.synthetic_pods(max(50, int(gpus * 1.4)), seed=args.seed,
                                            mix=gpu_trace.MIXES[kind])
            base = "openb-nodes-synthetic" if args.nodes else f"synthetic-{args.scale}"
            tag = base if kind == "default" else f"{base}-{kind}"
        out.append((kind, tag + ("-quick" if args.quick else ""), nodes, pods, real))
    return out


def run_packing(nodes, pods, policies, seed, repeats, inflation) -> dict:
    cap = sum(n.gpus for n in nodes)
    out: dict = {}
    for name in policies:
        runs = []
        for k in range(repeats):
            order = rp.workload(pods, cap, seed + k, inflation)
            t0 = time.perf_counter()
            r = rp.packing_replay(nodes, order, name, pods, seed=seed + k)
            runs.append((r, time.perf_counter() - t0))
        first = [r.at_first_fail() for r, _ in runs if r.at_first_fail() is not None]
        cpu_us = [x for r, _ in runs for x in r.cpu_us]
        xs, ys = runs[0][0].curve(upto=inflation)
        curves = [r.curve(upto=inflation)[1] for r, _ in runs]
        n = min(len(c) for c in curves)
        out[name] = {
            "allocated_at_first_failure": sum(first) / len(first) if first else None,
            "allocated_at_end": sum(r.final_share() for r, _ in runs) / repeats,
            "unallocated_gpus_at_end": sum(r.unallocated_gpus() for r, _ in runs) / repeats,
            "pods_arrived": sum(len(r.arrived) for r, _ in runs) / repeats,
            "pods_failed": sum(r.failed for r, _ in runs) / repeats,
            "gpu_pods_failed": sum(r.failed_gpu_pods for r, _ in runs) / repeats,
            "pods_never_fit_empty_cluster": sum(r.never_fit for r, _ in runs) / repeats,
            "decision_us_p50": rp.percentile([x for r, _ in runs for x in r.latency_us], 50),
            "decision_us_p99": rp.percentile([x for r, _ in runs for x in r.latency_us], 99),
            "decision_cpu_us_p50": rp.percentile(cpu_us, 50),
            "decision_cpu_us_p99": rp.percentile(cpu_us, 99),
            "seconds": sum(s for _, s in runs),
            "seeds": [seed + k for k in range(repeats)],
            "curve_arrived": xs[:n],
            "curve_unallocated_gpus": [sum(c[i] for c in curves) / repeats for i in range(n)],
        }
    return out


def run_latency(policies, n_nodes, decisions, seed, mix, repeats) -> dict:
    nodes = gpu_trace.synthetic_nodes(n_nodes, seed=seed, uniform=(8, "G2"))
    pods = gpu_trace.synthetic_pods(decisions, seed=seed, models=("G2",), spec_share=0.0,
                                    mix=mix)
    out = {}
    before = machine()
    for name in policies:
        lat = rp.latency_replay(nodes, pods, name, decisions, repeats=repeats)
        out[name] = lat.summary()
    return {"nodes": n_nodes, "gpus_per_node": 8, "repeats": repeats, "machine_before": before,
            "machine_after": machine(), "policies": out}


def peak_gpus(pods) -> float:
    """The most GPUs the pods ask for at once, by their creation and deletion times."""
    events = sorted([(p.creation, p.gpu_request) for p in pods if p.deletion is not None] +
                    [(p.deletion, -p.gpu_request) for p in pods if p.deletion is not None],
                    key=lambda e: (e[0], e[1]))  # a departure frees before an arrival takes
    now = peak = 0.0
    for _, d in events:
        now += d
        peak = max(peak, now)
    return peak


def run_timed(nodes, pods, policies, seed, load_x, count, mix, real: bool,
              n_nodes: int | None) -> dict:
    """The time-based replay on the first `n_nodes` nodes: with the trace's times when it has
    them (and `n_nodes` None: the fewest first nodes whose GPUs are at least the trace's peak
    demand / `load_x`), else synthetic times at an offered load of `load_x` (100 nodes)."""
    import sched_timed
    timed = real and any(p.creation is not None and p.deletion is not None for p in pods)
    if timed:
        peak = peak_gpus([p for p in pods if p.creation is not None])
        if n_nodes is None:
            n_nodes, cap = len(nodes), 0
            for i, n in enumerate(nodes):
                cap += n.gpus
                if cap >= peak / load_x:
                    n_nodes = i + 1
                    break
        nodes = nodes[:max(1, n_nodes)]
        source = (f"trace times on the first {len(nodes)} nodes ({sum(n.gpus for n in nodes)} "
                  f"GPUs; the trace asks for at most {peak:.0f} GPUs at once)")
    else:
        nodes = nodes[:max(1, n_nodes or 100)]
        cap = sum(n.gpus for n in nodes)
        probe = gpu_trace.synthetic_pods(2000, seed=seed, mix=mix)
        mean_gpu = sum(p.gpu_request for p in probe) / len(probe)
        life = 3600.0
        gap = life * mean_gpu / (load_x * cap)
        pods = gpu_trace.synthetic_pods(count, seed=seed + 1, mean_gap_s=gap, mean_life_s=life,
                                        mix=mix)
        source = (f"synthetic times on the first {len(nodes)} nodes ({cap} GPUs), offered "
                  f"load {load_x}x capacity, {count} pods")
    out = {"source": source, "policies": {}}
    for name in policies:
        t0 = time.perf_counter()
        r = sched_timed.timed_replay(nodes, pods, name, seed=seed)
        out["policies"][name] = dict(r.summary(), seconds=time.perf_counter() - t0)
    return out


def _load(m: dict | None) -> str:
    la = (m or {}).get("load_avg_1_5_15")
    return "?" if not la else "/".join(f"{x:.1f}" for x in la)


def table(tag: str, res: dict) -> str:
    lat_all = res["latency"]
    lines = [f"Trace {tag}: {res['trace']['nodes']} nodes, {res['trace']['gpus']} GPUs, "
             f"{res['trace']['pods']} pods; arrivals to {res['inflation']}x capacity, "
             f"seeds {res['seeds']}. Latency on {lat_all['nodes']} nodes x 8 GPUs, "
             f"{lat_all['repeats']} timings of each decision. Priorities: "
             f"{res.get('timed', {}).get('source', 'not run')}. Machine: "
             f"{res['machine_start']['cpus']} CPUs, load average (1/5/15 min) "
             f"{_load(res['machine_start'])} at the start, {_load(lat_all['machine_before'])} "
             f"when timing decisions, {_load(res.get('machine_end'))} at the end.", "",
             "| policy | allocated at first failure | allocated at end | GPUs unallocated "
             "at end | decision p50 / p99 (us), 1000x8: wall | least of "
             f"{lat_all['repeats']} | CPU | CPU p99 (us) at trace size "
             "| high-prio wait p99 (s) | evictions |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, p in res["packing"].items():
        lat = lat_all["policies"].get(name, {})
        tm = res.get("timed", {}).get("policies", {}).get(name, {})

        def pair(key):
            return f"{_num(lat.get(key + '_p50_us'))} / {_num(lat.get(key + '_p99_us'))}"
        lines.append(
            f"| {name} | {_pct(p['allocated_at_first_failure'])} | "
            f"{_pct(p['allocated_at_end'])} | {_num(p['unallocated_gpus_at_end'], '{:.1f}')} | "
            f"{pair('wall')} | {pair('min')} | {pair('cpu')} | "
            f"{_num(p.get('decision_cpu_us_p99'))} | "
            f"{_num(tm.get('wait_high_p99_s'))} | {_num(tm.get('evictions'))} |")
    for name, p in res.get("paper", {}).items():
        lines.append(f"| paper's {name} (published, {p['seeds']} seeds) | - | "
                     f"{_pct(p['allocated_at_end'])} | "
                     f"{_num(p['unallocated_gpus_at_end'], '{:.1f}')} | - | - | - | - | - | - |")
    return "\n".join(lines) + "\n"


def plot(tag: str, res: dict, path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    finals = []
    for name, p in res["packing"].items():
        xs = [100 * x for x in p["curve_arrived"]]
        for ax in axes:
            ax.plot(xs, p["curve_unallocated_gpus"], label=name, linewidth=1.4)
        finals.append(p["unallocated_gpus_at_end"])
    cap = res["trace"]["gpus"]
    axes[0].set_title(f"{tag}: unallocated GPUs ({cap} GPUs)")
    axes[1].set_title("the same, from 80% arrived")
    axes[1].set_xlim(80, 100 * res["inflation"])
    axes[1].set_ylim(0, max(finals + [1]) * 3)
    for ax in axes:
        ax.set_xlabel("arrived workload (% of GPU capacity)")
        ax.set_ylabel("GPUs unallocated")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def run_one(args, kind: str, tag: str, nodes: list, pods: list, real: bool,
            policies: list) -> dict:
    res: dict = {"variant": kind, "trace": gpu_trace.summary(nodes, pods),
                 "inflation": args.inflation, "seeds": [args.seed + k for k in range(args.repeats)],
                 "machine_start": machine()}
    t0 = time.perf_counter()
    res["packing"] = run_packing(nodes, pods, policies, args.seed, args.repeats, args.inflation)
    res["latency"] = run_latency(policies, args.latency_nodes, args.latency_decisions, args.seed,
                                 gpu_trace.MIXES[kind], args.latency_repeats)
    if not args.no_timed:
        res["timed"] = run_timed(nodes, pods, policies, args.seed, args.timed_load, args.timed_pods,
                                 gpu_trace.MIXES[kind], real,
                                 30 if args.quick else args.timed_nodes)
    if args.paper and real:
        workload = "openb_pod_list_" + tag.removeprefix("openb-").removesuffix("-quick")
        res["paper"] = fgd_paper.read_results(args.paper, workload,
                                              round(100 * args.inflation))
    res["seconds"] = time.perf_counter() - t0
    res["machine_end"] = machine()
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", help="openb_node_list_*.csv")
    ap.add_argument("--pods", help="openb_pod_list_*.csv")
    ap.add_argument("--synthetic", action="store_true", help="a synthetic trace (the default)")
    ap.add_argument("--scale", type=int, default=200, help="synthetic nodes (default 200)")
    ap.add_argument("--mix", default="default", choices=list(gpu_trace.MIXES),
                    help="the kind of synthetic pods (default: like the openb default list)")
    ap.add_argument("--variants", action="store_true",
                    help="run the default, GPU-sharing and multi-GPU traces one after another")
    ap.add_argument("--policies", default="", help="comma-separated (default: all POLICIES)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--repeats", type=int, default=1, help="packing replays (seeds) per policy")
    ap.add_argument("--inflation", type=float, default=1.3)
    ap.add_argument("--latency-nodes", type=int, default=1000)
    ap.add_argument("--latency-decisions", type=int, default=3000)
    ap.add_argument("--latency-repeats", type=int, default=3,
                    help="timings of each decision; the least is reported beside the first")
    ap.add_argument("--timed-load", type=float, default=1.3,
                    help="offered load of the synthetic timed replay, x capacity")
    ap.add_argument("--timed-pods", type=int, default=3000)
    ap.add_argument("--timed-nodes", type=int, default=None,
                    help="the timed replay runs on the first N nodes (default: 100 with "
                    "synthetic times; with the trace's times, the fewest whose GPUs are the "
                    "trace's peak demand / --timed-load)")
    ap.add_argument("--no-timed", action="store_true", help="skip the priority replay")
    ap.add_argument("--quick", action="store_true", help="small sizes, a few minutes")
    ap.add_argument("--paper", help="the FGD paper's published results "
                    "(analysis_allo_discrete.csv of its simulator) to set beside ours")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    if bool(args.nodes) != bool(args.pods):
        return _fail("--nodes and --pods go together")
    if args.synthetic and args.nodes:
        return _fail("--synthetic takes no --nodes/--pods")
    if args.quick:
        args.scale = min(args.scale, 60)
        args.latency_decisions = min(args.latency_decisions, 300)
        args.timed_pods = min(args.timed_pods, 400)
    if args.scale < 1 or args.repeats < 1 or args.inflation < 1 or args.latency_repeats < 1:
        return _fail("--scale, --repeats and --latency-repeats must be >= 1 and --inflation >= 1")
    from flexai.policy import POLICIES
    policies = [p for p in args.policies.split(",") if p] or list(POLICIES)
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        return _fail(f"unknown policy {unknown[0]!r}; one of {', '.join(POLICIES)}")
    try:
        runs = traces(args)
        if args.paper:  # a bad file is an error now, not after the replays
            fgd_paper.read_results(args.paper, "", round(100 * args.inflation))
    except ValueError as e:
        return _fail(str(e))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    texts = []
    for kind, tag, nodes, pods, real in runs:
        res = run_one(args, kind, tag, nodes, pods, real, policies)
        text = table(tag, res)
        texts.append(text)
        (out / f"scheduler_trace-{tag}.md").write_text(text)
        (out / f"scheduler_trace-{tag}.json").write_text(json.dumps(res, indent=1) + "\n")
        drew = plot(tag, res, out / f"scheduler_trace-{tag}.png")
        print(text, flush=True)
        print(f"wrote {out}/scheduler_trace-{tag}.json, .md" + (
            ", .png" if drew else " (no matplotlib: no PNG)"), flush=True)
    if args.variants:
        name = f"scheduler_trace-{runs[0][1]}-variants.md"
        (out / name).write_text("\n".join(texts))
        print(f"wrote {out}/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
