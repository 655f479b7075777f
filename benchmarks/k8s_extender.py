"""Latency of flexai's scheduler extender at 1,000 nodes x 8 GPUs with 1,000 pending pods
(issue 13; targets: filter <= 10 ms p99, bind <= 5 ms p99).

    python benchmarks/k8s_extender.py [--nodes 1000] [--pods 1000] [--binders 16]
        [--api-latency 0] [--full-mode 100] [--churn 0] [--policy flexai]
        [--out benchmarks/results]

Three processes, as on a cluster: a fake API server (tests/support/fake_apiserver.py) holding
the nodes, with the device plugin's ``flexai.io/gpus`` annotation, and the pending pods; the
real extender (``flexai k8s extender --kube-api ...``) in node-cache mode; and this process
playing kube-scheduler: one scheduling loop that calls ``filter`` (all node names) and
``prioritize`` for each pod in turn, and hands each bind to a pool of ``--binders`` threads in
a process of their own (the scheduler binds asynchronously), so binds run while the next pods
are filtered, the situation in which HAMi's extender convoys. Each call is timed round trip,
over kept-alive connections. ``--api-latency`` delays every API server answer (a loaded
control plane): binds must then cost about two API round trips each, not queue behind each
other (each bind is one API write: the Binding carrying the pod's annotation). ``--full-mode
N`` also times N filters that carry full Node objects (no node cache). ``--churn S`` changes a
node every S seconds (a GPU's health) and runs the extender with ``--resync 1``, so that its
state is rebuilt while the pods are scheduled.

Beside the round trips, the extender's own time per answer (``GET /stats``: JSON in,
decision, JSON out, including the API call of a bind) in wall time and in the CPU time of the
thread that answered: on a loaded machine the wall times include waiting for a CPU, the CPU
times do not, so they say what the extender costs wherever it runs. The load average before
and after the run is recorded with the numbers.

Pods (seeded): 60% slices (10-50% compute, 2-16 GiB), 30% whole cards, 10% gangs of 2, 4 or
8 cards. Writes k8s_extender-TAG.json to --out and prints a table.
"""
from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import random
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests" / "support"))

GiB = 1 << 30


def node_names(n: int) -> list[str]:
    return [f"node-{i:04d}" for i in range(n)]


def gpus_annotation(i: int, sick: int = -1) -> str:
    """Node ``i``'s ``flexai.io/gpus`` annotation (GPU ``sick`` reported unhealthy)."""
    from flexai.k8s.resources import NodeGpu, encode_node_gpus

    model, mem = ("H100", 80 * GiB) if i % 3 else ("A100", 40 * GiB)
    return encode_node_gpus([NodeGpu(g, f"GPU-{i:08d}-0000-4000-8000-{g:012d}", model, mem,
                                     g != sick) for g in range(8)])


def churn(api_port: int, every: float, stop: threading.Event, nodes: int, seed: int) -> int:
    """Every ``every`` seconds one node's GPU 7 turns unhealthy or healthy again (a device
    plugin's report), so that the extender's resyncs rebuild its state during the run."""
    rng, sick, changes = random.Random(seed), {}, 0
    conn = http.client.HTTPConnection("127.0.0.1", api_port, timeout=30)
    while not stop.wait(every):
        i = rng.randrange(nodes)
        sick[i] = not sick.get(i, False)
        body = json.dumps({"metadata": {"annotations": {
            "flexai.io/gpus": gpus_annotation(i, 7 if sick[i] else -1)}}})
        conn.request("PATCH", f"/api/v1/nodes/{node_names(nodes)[i]}", body,
                     {"Content-Type": "application/merge-patch+json"})
        conn.getresponse().read()
        changes += 1
    return changes


def pods(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        r = rng.random()
        if r < 0.6:
            limits = {"flexai.io/gpu": "1",
                      "flexai.io/gpu-compute": str(rng.choice([10, 20, 30, 50])),
                      "flexai.io/gpu-memory": str(rng.choice([2048, 4096, 8192, 16384]))}
        elif r < 0.9:
            limits = {"flexai.io/gpu": "1"}
        else:
            limits = {"flexai.io/gpu": str(rng.choice([2, 4, 8]))}
        out.append({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": f"pod-{i:05d}", "namespace": "bench",
                                 "uid": f"00000000-0000-0000-0000-{i:012d}",
                                 "labels": {"app": "bench"}},
                    "spec": {"schedulerName": "flexai-scheduler", "priority": 0,
                             "containers": [{"name": "main", "image": "busybox",
                                             "resources": {"limits": limits,
                                                           "requests": dict(limits)}}]},
                    "status": {"phase": "Pending"}})
    return out


def full_node(name: str, i: int) -> dict:
    """A Node object as kube-scheduler sends it in full mode (realistic size)."""
    return {"metadata": {"name": name, "uid": f"uid-{name}", "resourceVersion": str(1000 + i),
                         "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                    "kubernetes.io/arch": "amd64",
                                    "node.kubernetes.io/instance-type": "gpu-8x",
                                    "flexai.io/gpu-node": "true"},
                         "annotations": {"flexai.io/gpus": gpus_annotation(i),
                                         "node.alpha.kubernetes.io/ttl": "0"}},
            "spec": {"podCIDR": f"10.{i // 256}.{i % 256}.0/24"},
            "status": {"capacity": {"cpu": "128", "memory": "1056Gi", "pods": "110",
                                    "flexai.io/gpu": "80"},
                       "allocatable": {"cpu": "127", "memory": "1050Gi", "pods": "110",
                                       "flexai.io/gpu": "80"},
                       "conditions": [{"type": t, "status": "False" if t != "Ready" else "True",
                                       "reason": "KubeletReady"} for t in
                                      ("MemoryPressure", "DiskPressure", "PIDPressure",
                                       "Ready")],
                       "nodeInfo": {"kubeletVersion": "v1.31.0",
                                    "containerRuntimeVersion": "containerd://1.7.20"}}}


def serve_api(args) -> int:
    """The fake API server process: nodes and pods, then serve until killed."""
    from fake_apiserver import FakeApiServer

    srv = FakeApiServer(latency=args.api_latency)
    for i, name in enumerate(node_names(args.nodes)):
        srv.add_node(name, {"flexai.io/gpus": gpus_annotation(i)})
    for p in pods(args.pods, args.seed):
        srv.add_pod(p)
    print(srv.server_address[1], flush=True)
    srv.serve_forever(poll_interval=0.5)
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Conn:
    """A kept-alive connection of the scheduler to the extender (one per thread)."""

    def __init__(self, port: int) -> None:
        self.c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def post(self, verb: str, body: bytes) -> tuple[float, object]:
        t = time.perf_counter()
        self.c.request("POST", f"/{verb}", body, {"Content-Type": "application/json"})
        r = self.c.getresponse()
        data = r.read()
        dt = time.perf_counter() - t
        if r.status != 200:
            raise RuntimeError(f"{verb}: HTTP {r.status}: {data[:200]!r}")
        return dt, json.loads(data)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))] * 1000 if xs else 0.0


def wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s")


def binders(port: int, jobs, results, threads: int) -> None:
    """The scheduler's asynchronous binds: ``threads`` at a time, each on its own kept-alive
    connection; sends back (latencies, bound, failed) when told None."""
    local = threading.local()
    lock = threading.Lock()
    lat: list[float] = []
    count = {"bound": 0, "failed": 0}

    def bind(body: bytes) -> None:
        c = getattr(local, "c", None) or Conn(port)
        local.c = c
        dt, res = c.post("bind", body)
        with lock:
            lat.append(dt)
            count["bound" if not res["Error"] else "failed"] += 1

    with ThreadPoolExecutor(threads) as pool:
        while True:
            body = jobs.get()
            if body is None:
                break
            pool.submit(bind, body)
    results.put((lat, count["bound"], count["failed"]))


def run(args) -> dict:
    env = dict(os.environ)
    load_before = os.getloadavg()
    api = subprocess.Popen([sys.executable, __file__, "--serve-api", "--nodes", str(args.nodes),
                            "--pods", str(args.pods), "--seed", str(args.seed),
                            "--api-latency", str(args.api_latency)],
                           stdout=subprocess.PIPE, text=True, env=env)
    ext = None
    try:
        api_port = int(api.stdout.readline())
        port = free_port()
        ext = subprocess.Popen([sys.executable, "-m", "flexai", "k8s", "extender", "--listen",
                                f"127.0.0.1:{port}", "--kube-api", f"http://127.0.0.1:{api_port}",
                                "--policy", args.policy,
                                "--resync", str(args.resync if args.churn else 3600),
                                "--log-level", "warning"], env=env, cwd="/")
        wait_port(port)
        names = node_names(args.nodes)
        # wait for the extender's first resync to know every node and build its state
        probe, deadline = Conn(port), time.monotonic() + 120
        while time.monotonic() < deadline:
            probe.c.request("GET", "/healthz")
            health = json.loads(probe.c.getresponse().read())
            if health.get("nodes") == args.nodes and health.get("ready"):
                break
            time.sleep(0.1)
        else:
            raise RuntimeError("the extender did not learn every node within 120 s")
        all_pods = pods(args.pods, args.seed)
        loop = Conn(port)
        lat = {"filter": [], "prioritize": [], "bind": []}
        outcome = {"bound": 0, "bind_failed": 0, "unschedulable": 0}
        # the binders live in a process of their own, so that their threads never hold the
        # scheduling loop's interpreter while it times a call (kube-scheduler has no GIL)
        ctx = multiprocessing.get_context("fork")
        jobs, results = ctx.Queue(), ctx.Queue()
        binder = ctx.Process(target=binders, args=(port, jobs, results, args.binders))
        binder.start()
        stop, churned = threading.Event(), []
        if args.churn:
            changer = threading.Thread(target=lambda: churned.append(churn(
                api_port, args.churn, stop, args.nodes, args.seed)), daemon=True)
            changer.start()
        t0 = time.perf_counter()
        for pod in all_pods:
            args_json = json.dumps({"Pod": pod, "Nodes": None, "NodeNames": names}).encode()
            dt, res = loop.post("filter", args_json)
            lat["filter"].append(dt)
            feasible = res["NodeNames"] or []
            if not feasible:
                outcome["unschedulable"] += 1
                continue
            body = json.dumps({"Pod": pod, "Nodes": None, "NodeNames": feasible}).encode()
            dt, scores = loop.post("prioritize", body)
            lat["prioritize"].append(dt)
            best = max(scores, key=lambda s: s["Score"])["Host"]
            m = pod["metadata"]
            jobs.put(json.dumps({"PodName": m["name"], "PodNamespace": m["namespace"],
                                 "PodUID": m["uid"], "Node": best}).encode())
        jobs.put(None)
        lat["bind"], bound, failed = results.get(timeout=600)
        if args.churn:
            stop.set()
            changer.join(timeout=30)
        binder.join(timeout=30)
        wall = time.perf_counter() - t0
        outcome["bound"], outcome["bind_failed"] = bound, failed

        probe.c.request("GET", "/stats")  # before the full-mode calls: node-cache mode only
        served = json.loads(probe.c.getresponse().read())
        probe.c.request("GET", "/stats/bind")
        bind_split = json.loads(probe.c.getresponse().read())
        full = []
        if args.full_mode:
            items = {"metadata": {}, "items": [full_node(n, i) for i, n in enumerate(names)]}
            extra = pods(args.full_mode, args.seed + 1)
            size = 0
            for p in extra:
                p["metadata"]["uid"] += "-full"
                body = json.dumps({"Pod": p, "Nodes": items, "NodeNames": None}).encode()
                size = len(body)
                dt, _ = loop.post("filter", body)
                full.append(dt)
        result = {
            "load_avg_before": [round(x, 2) for x in load_before],
            "load_avg_after": [round(x, 2) for x in os.getloadavg()],
            "cpus": os.cpu_count(), "nice": os.nice(0),
            "server_ms": served, "bind_split_ms": bind_split,
            "nodes": args.nodes, "gpus_per_node": 8, "pods": args.pods,
            "binders": args.binders, "api_latency_ms": args.api_latency * 1000,
            "policy": args.policy, "node_changes": churned[0] if churned else 0,
            "resync_s": args.resync if args.churn else 3600, "wall_s": wall,
            "pods_per_s": args.pods / wall, **outcome,
            **{f"{k}_ms": {"p50": pct(v, 50), "p99": pct(v, 99), "max": pct(v, 100),
                           "n": len(v)} for k, v in lat.items()},
        }
        if full:
            result["filter_full_mode_ms"] = {"p50": pct(full, 50), "p99": pct(full, 99),
                                             "max": pct(full, 100), "n": len(full),
                                             "request_bytes": size}
        return result
    finally:
        for p in (ext, api):
            if p is not None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--pods", type=int, default=1000)
    p.add_argument("--binders", type=int, default=16)
    p.add_argument("--api-latency", type=float, default=0.0, help="seconds per API answer")
    p.add_argument("--full-mode", type=int, default=100, help="filters timed in full mode")
    p.add_argument("--policy", default="flexai")
    p.add_argument("--churn", type=float, default=0.0, help="seconds between node changes "
                   "(a GPU turning unhealthy or healthy again); 0: none")
    p.add_argument("--resync", type=float, default=1.0, help="the extender's resync period "
                   "with --churn (without it 3600: no resync during the run)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--tag", default="")
    p.add_argument("--serve-api", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_api:
        return serve_api(args)
    res = run(args)
    tag = args.tag or (f"{args.nodes}n-{args.pods}p-lat{int(args.api_latency * 1000)}ms"
                       + (f"-churn{args.churn:g}s" if args.churn else ""))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"k8s_extender-{tag}.json").write_text(json.dumps(res, indent=2) + "\n")
    print(f"{args.nodes} nodes x 8 GPUs, {args.pods} pending pods, policy {args.policy}, "
          f"{args.binders} binders, API latency {args.api_latency * 1000:.0f} ms, "
          f"{res['node_changes']} node changes (resync every {res['resync_s']:g} s)")
    print(f"{'call':<22}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'n':>7}")
    for k in ("filter", "prioritize", "bind", "filter_full_mode"):
        if f"{k}_ms" in res:
            d = res[f"{k}_ms"]
            print(f"{k:<22}{d['p50']:>9.2f}{d['p99']:>9.2f}{d['max']:>9.2f}{d['n']:>7}")
    print("the extender's own time per answer (JSON in, decision, JSON out), wall | thread CPU:")
    for route, d in sorted(res["server_ms"].items()):
        print(f"  {route:<20}{d['p50']:>9.2f}{d['p99']:>9.2f}{d['max']:>9.2f}{d['n']:>7}"
              f"  |{d['cpu_p50']:>8.2f}{d['cpu_p99']:>8.2f}{d['cpu_max']:>8.2f}")
    for part, d in res["bind_split_ms"].items():
        print(f"  bind: {part:<14}{d['p50']:>9.2f}{d['p99']:>9.2f}{'':>9}{d['n']:>7}")
    print(f"bound {res['bound']}, bind failed {res['bind_failed']}, unschedulable "
          f"{res['unschedulable']}; {res['pods_per_s']:.0f} pods/s; load average "
          f"{res['load_avg_before']} before, {res['load_avg_after']} after, "
          f"{res['cpus']} CPUs, nice {res['nice']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
