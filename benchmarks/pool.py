"""The pool's costs on this machine, through a real two-node pool (flexai pool up/join on the
simulated device, as tests/support/raycluster.py makes it):

    python benchmarks/pool.py [--jobs 200] [--serial 40] [--window 10] [--out FILE]

- submissions per second: ``flexai.pool.submit`` calls from one connected client, back to back
  (each returns when the head has queued the job), and the jobs completed per second;
- submit-to-start latency p50/p99: from the client's submit call to the head's start of the job
  (one clock: one machine), for jobs submitted one at a time (the pool idle) and for the burst;
- ``flexai submit -- true`` end to end from a shell (a new Ray driver each time);
- the agent's CPU per second (utime + stime of the agent actor's process, from /proc) on an
  idle node, and on a busy one (16 running jobs and a short job starting every 0.5 s), and the
  head's.

Prints a table and writes JSON (default benchmarks/results/pool-sim.json). This script must
never leave a node running: the cluster is torn down even when a step fails.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "tests"))

from support import raycluster  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (not its children), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def cpu_rate(pids: dict[str, int], seconds: float) -> dict[str, float]:
    """CPU seconds per second of each process over ``seconds``."""
    before = {k: cpu_seconds(p) for k, p in pids.items()}
    t0 = time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - t0
    return {k: (cpu_seconds(p) - before[k]) / wall for k, p in pids.items()}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=200, help="jobs in the burst")
    p.add_argument("--serial", type=int, default=40, help="jobs submitted one at a time")
    p.add_argument("--window", type=float, default=10.0, help="seconds per CPU measurement")
    p.add_argument("--out", type=Path, default=HERE / "results" / "pool-sim.json")
    args = p.parse_args(argv)

    load = os.getloadavg()[0]
    cluster = raycluster.RayCluster()
    try:
        t0 = time.monotonic()
        cluster.up("n0", port=raycluster_port(), gpus=1, memory="80GiB", model="Sim H100")
        cluster.join("n1", gpus=2, memory="80GiB", model="Sim H100")
        started = time.monotonic() - t0
        result = run(cluster, args)
        result["pool_start_s"] = round(started, 1)
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()  # before the pool goes: a driver without its pool ends its process
        cluster.stop()
    result["machine"] = {"cpus": os.cpu_count(), "load_before": load}
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


def raycluster_port() -> int:
    from flexai.pool.member import _free_ports

    return _free_ports(1)[0]


def run(cluster: raycluster.RayCluster, args: argparse.Namespace) -> dict:
    import ray

    import flexai.pool

    os.environ["FLEXAI_STATE_DIR"] = cluster.nodes["n0"].env["FLEXAI_STATE_DIR"]  # origin n0
    flexai.pool.connect(cluster.address)
    agents = {name: ray.get(ray.get_actor(f"flexai-agent-{name}", namespace="flexai")
                            .exec_env.remote([]))["pid"] for name in ("n0", "n1")}
    head_pid = ray.get(ray.get_actor("flexai-head", namespace="flexai").ping.remote())["pid"]
    out: dict = {}

    time.sleep(2)  # let the start-up settle
    idle = cpu_rate({**agents, "head": head_pid}, args.window)
    out["cpu_idle"] = {k: round(v, 4) for k, v in idle.items()}

    # one at a time: the pool is idle when each job arrives
    serial = []
    for _ in range(args.serial):
        t = time.time()
        job = flexai.pool.submit(["true"], gpu_memory="256MiB", gpu_compute=1)
        record = job.wait(timeout=60)
        serial.append(record["started_at"] - t)
    out["serial"] = {"jobs": args.serial, "p50_ms": round(1000 * pct(serial, 50), 1),
                     "p99_ms": round(1000 * pct(serial, 99), 1)}

    # a burst: back-to-back submissions
    sent, jobs = [], []
    t_burst = time.monotonic()
    for _ in range(args.jobs):
        sent.append(time.time())
        jobs.append(flexai.pool.submit(["true"], gpu_memory="256MiB", gpu_compute=1))
    submit_s = time.monotonic() - t_burst
    records = [j.wait(timeout=300) for j in jobs]
    done_s = time.monotonic() - t_burst
    lat = [r["started_at"] - s for r, s in zip(records, sent)]
    out["burst"] = {"jobs": args.jobs, "submissions_per_s": round(args.jobs / submit_s, 1),
                    "completed_per_s": round(args.jobs / done_s, 1),
                    "p50_ms": round(1000 * pct(lat, 50), 1),
                    "p99_ms": round(1000 * pct(lat, 99), 1),
                    "failed": sum(r["state"] != "exited" for r in records)}

    # the command line: a new driver per submission
    cli = []
    for _ in range(3):
        t = time.monotonic()
        proc = cluster.flexai("n0", "submit", "--gpu-memory", "256MiB", "--gpu-compute", "1",
                              "--", "true")
        assert proc.returncode == 0, proc.stderr
        cli.append(time.monotonic() - t)
    out["cli_submit_s"] = {"median": round(statistics.median(cli), 2), "runs": len(cli)}

    # a busy node: 16 running jobs on n1 and a short job every 0.5 s
    long_jobs = [flexai.pool.submit(["sleep", "600"], gpu_memory="1GiB", gpu_compute=5,
                                    gpu_model="Sim H100") for _ in range(16)]
    for j in long_jobs:
        while j.status()["state"] in ("queued", "starting"):
            time.sleep(0.1)
    nodes = {j.status()["node"] for j in long_jobs}
    stop = time.monotonic() + args.window
    before = {k: cpu_seconds(p) for k, p in {**agents, "head": head_pid}.items()}
    t = time.monotonic()
    short = []
    while time.monotonic() < stop:
        short.append(flexai.pool.submit(["true"], gpu_memory="256MiB", gpu_compute=1))
        time.sleep(0.5)
    wall = time.monotonic() - t
    busy = {k: (cpu_seconds(p) - before[k]) / wall
            for k, p in {**agents, "head": head_pid}.items()}
    for j in long_jobs:
        j.cancel()
    for j in long_jobs + short:
        j.wait(timeout=60)
    out["cpu_busy"] = {k: round(v, 4) for k, v in busy.items()}
    out["busy_nodes"] = sorted(nodes)
    return out


def print_table(r: dict) -> None:
    rows = [
        ("pool start (head + 1 member)", f"{r['pool_start_s']} s"),
        ("submissions/s (API, one client)", f"{r['burst']['submissions_per_s']}"),
        ("jobs completed/s (burst of %d)" % r["burst"]["jobs"], f"{r['burst']['completed_per_s']}"),
        ("submit->start p50 / p99, one at a time",
         f"{r['serial']['p50_ms']} / {r['serial']['p99_ms']} ms"),
        ("submit->start p50 / p99, burst", f"{r['burst']['p50_ms']} / {r['burst']['p99_ms']} ms"),
        ("flexai submit -- true (CLI, end to end)", f"{r['cli_submit_s']['median']} s"),
    ]
    for state in ("idle", "busy"):
        for k, v in r[f"cpu_{state}"].items():
            what = "head actor" if k == "head" else f"agent {k}"
            rows.append((f"{what} CPU, {state} node", f"{100 * v:.2f} % of a core"))
    width = max(len(a) for a, _ in rows)
    print(f"{'measure'.ljust(width)}  value")
    for a, b in rows:
        print(f"{a.ljust(width)}  {b}")


if __name__ == "__main__":
    sys.exit(main())
