"""flexai.node.metrics: what a scrape reports about slices running on the simulated device, the
pool's counters, and a real Prometheus server scraping it and answering a query.

The metrics server runs in a child process in the simulated device's environment (NVML answers
there); the slices' processes are test clients that allocate memory and wait on stdin.
"""
from __future__ import annotations

import os
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from support import prometheus
from support.prometheus import Agent, MetricsServer, Prometheus
from support.waiting_client import finish, start_client

from conftest import loads_library_in_process
from flexai import sim
from flexai.node.launch import without_flexai
from flexai.node.metrics import MetricsCollector, PoolCounters, serve

GiB = 1 << 30
MiB = 1 << 20
UUID0 = "GPU-f1e5a100-0000-4000-8000-000000000000"  # the simulated device's first UUID


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Metric samples by name: [(labels, value)]."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def value(found: dict, name: str, **labels: str) -> float:
    """The one sample of ``name`` whose labels include ``labels``."""
    hits = [v for ls, v in found.get(name, []) if all(ls.get(k) == x for k, x in labels.items())]
    assert len(hits) == 1, f"{name}{labels}: {hits} in {found.get(name)}"
    return hits[0]


def server_env(state_dir) -> dict[str, str]:
    """The metrics server's environment: the simulated device (as the clients see it) and the
    node's state directory, nothing preloaded but a sanitizer's runtime."""
    env = sim.sim_env(without_flexai(os.environ, keep=("FLEXAI_LIB_DIR",)), memory="16GiB")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env["FLEXAI_STATE_DIR"] = str(state_dir)
    first = os.environ.get("FLEXAI_TEST_PRELOAD_FIRST")
    if first:
        env["LD_PRELOAD"] = first
    return env


@pytest.fixture
def two_slices(clients, state_dir):
    """job-a (high, 4 GiB, 30%) holding 1.25 GiB; job-b (low, 2 GiB) holding 512 MiB."""
    a = start_client(clients, state_dir, "alloc", "1GiB", "alloc", "256MiB", FLEXAI_SLICE="job-a",
                     FLEXAI_GPU_MEMORY="4GiB", FLEXAI_PRIORITY="high", FLEXAI_GPU_COMPUTE="30")
    try:
        b = start_client(clients, state_dir, "alloc", "512MiB", FLEXAI_SLICE="job-b",
                         FLEXAI_GPU_MEMORY="2GiB", FLEXAI_PRIORITY="low")
    except BaseException:
        finish(a)
        raise
    yield a, b
    finish(a)
    finish(b)


def test_a_scrape_reports_each_slice(two_slices, state_dir) -> None:
    with MetricsServer(server_env(state_dir)) as server:
        found = samples(server.scrape())
    assert value(found, "flexai_node_up") == 1 and value(found, "flexai_nvml_up") == 1
    a = dict(slice="job-a", gpu=UUID0, priority="high")
    b = dict(slice="job-b", gpu=UUID0, priority="low")
    assert value(found, "flexai_slice_memory_used_bytes", **a) == GiB + 256 * MiB
    assert value(found, "flexai_slice_memory_limit_bytes", **a) == 4 * GiB
    assert value(found, "flexai_slice_compute_percent", **a) == 30
    assert value(found, "flexai_slice_compute_burst_percent", **a) == 0
    assert value(found, "flexai_slice_memory_used_bytes", **b) == 512 * MiB
    assert value(found, "flexai_slice_memory_limit_bytes", **b) == 2 * GiB
    assert value(found, "flexai_slice_compute_percent", **b) == 0
    assert value(found, "flexai_slice_gpu_seconds_total", **a) >= 0
    assert value(found, "flexai_slice_processes", slice="job-a") == 1
    assert {ls["priority"]: v for ls, v in found["flexai_slices"]} == {
        "high": 1, "normal": 0, "low": 1}
    model = found["flexai_gpu_memory_total_bytes"][0][0]["model"]
    assert model, "NVML names the device"
    gpu = dict(gpu=UUID0, model=model)
    assert value(found, "flexai_gpu_memory_total_bytes", **gpu) == 16 * GiB
    assert value(found, "flexai_gpu_memory_granted_bytes", **gpu) == 6 * GiB
    assert value(found, "flexai_gpu_compute_granted_percent", **gpu) == 30
    # NVML counts what every process on the node holds: the two slices' allocations
    assert value(found, "flexai_gpu_memory_used_bytes", **gpu) == GiB + 768 * MiB
    assert "process_cpu_seconds_total" in found  # the serving process's own cost


def test_usage_follows_the_processes(clients, state_dir) -> None:
    proc = start_client(clients, state_dir, "alloc", "768MiB", FLEXAI_SLICE="job-c",
                        FLEXAI_GPU_MEMORY="1GiB")
    with MetricsServer(server_env(state_dir)) as server:
        try:
            before = samples(server.scrape())
        finally:
            finish(proc)
        after = samples(server.scrape())  # each scrape reads the node anew (and sweeps)
    labels = dict(slice="job-c", gpu=UUID0, priority="normal")
    assert value(before, "flexai_slice_memory_used_bytes", **labels) == 768 * MiB
    used_after = [v for ls, v in after.get("flexai_slice_memory_used_bytes", [])
                  if ls["slice"] == "job-c"]
    assert used_after in ([], [0.0]), used_after


def test_a_capped_slice_asking_more_has_throttled_time(clients, state_dir) -> None:
    """A client asking 40% of the device under a 10% cap is held back by the gate: its slice's
    throttled time is in the scrape (and an uncapped light one has next to none)."""
    capped = start_client(clients, state_dir, "module", "duty", "500", "40", "1000",
                          FLEXAI_SLICE="capped", FLEXAI_GPU_COMPUTE="10")
    try:
        with MetricsServer(server_env(state_dir)) as server:
            found = samples(server.scrape())
    finally:
        finish(capped)
    throttled = value(found, "flexai_slice_throttled_seconds_total", slice="capped", gpu=UUID0)
    assert 0.05 < throttled < 5.0, throttled  # it ran 1 s asking 4x its cap
    assert value(found, "flexai_slice_gpu_seconds_total", slice="capped", gpu=UUID0) > 0


@loads_library_in_process
def test_an_unreadable_node_is_reported_down(tmp_path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    registry = CollectorRegistry()
    registry.register(MetricsCollector(str(not_a_dir), nvml=False))
    found = samples(generate_latest(registry).decode())
    assert value(found, "flexai_node_up") == 0 and value(found, "flexai_nvml_up") == 0
    assert "flexai_slice_memory_used_bytes" not in found


def test_pool_counters_are_exported() -> None:
    counters = PoolCounters()
    collector = MetricsCollector(node=False)
    registry = CollectorRegistry()
    registry.register(collector)
    assert samples(generate_latest(registry).decode()) == {}  # nothing until the pool registers
    collector.pool = counters
    counters.set_queue({"high": 2, "normal": 1})
    counters.set_queue({"high": 0})
    for outcome in ("placed", "placed", "queued", "preempted"):
        counters.count_placement(outcome)
    counters.count_preemption()
    counters.count_eviction(2)
    found = samples(generate_latest(registry).decode())
    assert {ls["priority"]: v for ls, v in found["flexai_pool_queue_length"]} == {
        "high": 0, "normal": 1}
    assert {ls["outcome"]: v for ls, v in found["flexai_pool_placements_total"]} == {
        "placed": 2, "queued": 1, "preempted": 1}
    assert value(found, "flexai_pool_preemptions_total") == 1
    assert value(found, "flexai_pool_evictions_total") == 2
    with pytest.raises(ValueError, match="expected e.g. 'placed'"):
        counters.count_placement("lost")


def test_serve_answers_and_refuses_a_port_in_use() -> None:
    counters = PoolCounters()
    counters.count_eviction()
    server = serve(0, node=False, pool=counters)
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as r:
            text = r.read().decode()
        assert value(samples(text), "flexai_pool_evictions_total") == 1
        with pytest.raises(OSError):
            serve(server.server_port, node=False)
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(prometheus.binary() is None,
                    reason="prometheus is not installed (.ci/run installs it)")
def test_prometheus_scrapes_the_agents(clients, tmp_path) -> None:
    """Two nodes, each a `flexai agent` with its own simulated device and state directory, one
    slice on each; a real Prometheus scrapes both agents and answers queries about the slices."""
    nodes = {"node-a": ("job-p", "1536MiB", 1536 * MiB, "3GiB", "high", "flexai sim A"),
             "node-b": ("job-q", "256MiB", 256 * MiB, "1GiB", "low", "flexai sim B")}
    procs, agents = [], {}
    try:
        for node, (job, alloc, _, limit, priority, model) in nodes.items():
            state = tmp_path / node / "state"
            state.mkdir(parents=True)
            procs.append(start_client(clients, state, "alloc", alloc, FLEXAI_SLICE=job,
                                      FLEXAI_GPU_MEMORY=limit, FLEXAI_PRIORITY=priority))
            env = server_env(state)
            env["FLEXAI_SIM_NAME"] = model
            agents[node] = Agent(env, state, tmp_path / node / "logs", node)
        with Prometheus(tmp_path, [a.target for a in agents.values()]) as prom:
            result = prom.wait_for("flexai_slice_memory_used_bytes",
                                   lambda r: len(r) == 2, timeout=60)
            got = {(r["metric"]["instance"], r["metric"]["slice"]): float(r["value"][1])
                   for r in result}
            assert got == {(agents[n].target, job): used
                           for n, (job, _, used, *_) in nodes.items()}
            (p,) = prom.query('flexai_slice_memory_used_bytes{priority="high"}')
            assert p["metric"]["slice"] == "job-p" and p["metric"]["gpu"] == UUID0
            assert p["metric"]["model"] == "flexai sim A"
            (limit,) = prom.query('flexai_slice_memory_limit_bytes{slice="job-q"}')
            assert float(limit["value"][1]) == 1 * GiB
            by_model = prom.query("sum by (model) (flexai_gpu_memory_total_bytes)")
            assert {r["metric"]["model"]: float(r["value"][1]) for r in by_model} == {
                "flexai sim A": 16 * GiB, "flexai sim B": 16 * GiB}
            pid = prom.proc.pid
    finally:
        for a in agents.values():
            a.stop()
        for proc in procs:
            finish(proc)
    assert [a.proc.returncode for a in agents.values()] == [0, 0]  # SIGTERM: a clean exit
    assert prom.proc.returncode is not None and _zombie_or_gone(pid)


def _zombie_or_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1].startswith("Z")
    except FileNotFoundError:
        return True


def test_node_status_joins_nvml_and_the_state_by_uuid() -> None:
    """Plain data for `flexai top` and the pool: NVML's GPU and the state's slices on it are one
    GPU even when the UUIDs differ in case; a device NVML does not show is kept (index -1)."""
    from flexai.node import DeviceInfo, NodeSnapshot, SliceDevice, SliceUsage
    from flexai.node.metrics import Gpu, node_status

    other = "GPU-00000000-0000-4000-8000-00000000000b"
    snap = NodeSnapshot("/x", (DeviceInfo(0, UUID0), DeviceInfo(1, other)), (
        SliceUsage(1, "job-a", "high", 1, (SliceDevice(UUID0, 0, 4 * GiB, GiB, 30, 0, 2 * 10**9),)),
        SliceUsage(2, "job-b", "low", 1, (SliceDevice(UUID0, 0, 0, 512 * MiB, 20, 60, 0),
                                          SliceDevice(other, 1, 2 * GiB, 0, 0, 0, 0))),
        SliceUsage(3, "idle", "normal", 0, ())))
    status = node_status(snapshot=snap, name="n0",
                         gpus=[Gpu(0, UUID0.upper(), "Sim", 16 * GiB, 3 * GiB)])
    (node,) = status["nodes"]
    assert node["name"] == "n0" and [g["index"] for g in node["gpus"]] == [0, -1]
    g0, g1 = node["gpus"]
    assert (g0["model"], g0["memory_total"], g0["memory_used"]) == ("Sim", 16 * GiB, 3 * GiB)
    assert g0["memory_granted"] == 4 * GiB + 512 * MiB  # a limit, or the use where none
    assert g0["compute_granted"] == 50 and g0["busy_seconds"] == 2.0
    assert (g1["uuid"], g1["memory_granted"], g1["model"]) == (other, 2 * GiB, "")
    assert [(s["name"], s["gpu"], s["memory_used"]) for s in status["slices"]] == [
        ("job-a", UUID0, GiB), ("job-b", UUID0, 512 * MiB), ("job-b", other, 0),
        ("idle", "", 0)]
    assert [s["throttled_seconds"] for s in status["slices"]] == [0.0, 0.0, 0.0, 0.0]
    assert status["queue"] == []
