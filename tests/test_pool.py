"""The pool on a real Ray cluster of several nodes on this machine (tests/support/raycluster.py),
through the real command line and Python API: membership and status, placement on the node the
policy chose, output and exit status streamed back, a job that does not fit waits and starts
when capacity frees, cancel (``flexai cancel`` and Ctrl-C), bad input (exit 2, one line),
and an agent killed or a node removed noticed within 10 s with its jobs reported lost.

Nodes (raycluster.start_default): n0 the head (1 simulated GPU, 16 GiB, "Sim T4"), n1 (2 GPUs,
40 GiB, "Sim A100"), n2 (no GPU), n3 (1 GPU, 8 GiB, "Sim L4", taken away by the loss tests). No
verdict depends on speed: waits have generous bounds, and the 10 s of the issue is measured,
not slept.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

pytest.importorskip("ray")

from support import raycluster  # noqa: E402

from flexai.pool import placement  # noqa: E402

#: The cluster's layout, for other modules that share the session's cluster (test_top).
_start = raycluster.start_default


@pytest.fixture(scope="session")
def cluster(request) -> raycluster.RayCluster:
    return raycluster.shared(request, raycluster.start_default)


@pytest.fixture
def api(cluster, monkeypatch, request):
    """flexai.pool in this process, as a client on n0 (its origin)."""
    return raycluster.connect(cluster, monkeypatch, request)


wait_for = raycluster.wait_for


def one_line_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("flexai: "), lines
    for w in words:
        assert w in lines[0], (w, lines[0])


# ---- membership ------------------------------------------------------------------------------

def test_status_lists_every_node_with_its_gpus_and_top_draws_it(cluster):
    as_json, text, top = cluster.flexai_many([("n0", "pool", "status", "--json"),
                                              ("n2", "pool", "status"),
                                              ("n2", "top", "--pool", "--once")])
    assert as_json.returncode == text.returncode == top.returncode == 0, (
        as_json.stderr, text.stderr, top.stderr)
    status = json.loads(as_json.stdout)
    nodes = {n["name"]: n for n in status["nodes"]}
    assert set(nodes) >= {"n0", "n1", "n2"}
    assert [g["model"] for g in nodes["n0"]["gpus"]] == ["Sim T4"]
    assert [g["memory_total"] for g in nodes["n1"]["gpus"]] == [40 * 2**30] * 2
    assert nodes["n2"]["gpus"] == [] and nodes["n2"]["alive"]
    assert all(g["compute_free"] == 100 for g in nodes["n1"]["gpus"])
    assert "Sim A100" in text.stdout and "(no GPU)" in text.stdout
    assert "queue: 0 waiting" in text.stdout
    for word in ("n0", "n1", "Sim A100", "Sim T4"):
        assert word in top.stdout, top.stdout


def test_nodes_declare_flexai_resources_and_labels_to_ray(cluster, api):
    import ray

    by_name = {(n["Labels"] or {}).get("flexai.io/node"): n for n in ray.nodes() if n["Alive"]}
    n1 = by_name["n1"]
    assert n1["Resources"]["GPU"] == 2
    assert n1["Resources"]["flexai_gpu_memory_mib"] == 2 * 40 * 1024
    assert n1["Resources"]["flexai_gpu_model:Sim-A100"] == 2
    assert n1["Labels"]["flexai.io/gpu-model"] == "Sim-A100"
    assert "GPU" not in by_name["n2"]["Resources"] or by_name["n2"]["Resources"]["GPU"] == 0


def test_agent_actor_runs_with_its_nodes_environment(cluster, api):
    """Ray starts each agent's worker with its node's settings (read from /proc/self/environ,
    what the process was exec'd with)."""
    import ray

    for name in ("n0", "n1"):
        agent = ray.get_actor(f"flexai-agent-{name}", namespace="flexai")
        got = ray.get(agent.exec_env.remote(["FLEXAI_STATE_DIR", "LD_LIBRARY_PATH",
                                             "FLEXAI_SIM_MEMORY", "LD_PRELOAD"]), timeout=30)
        env = cluster.nodes[name].env
        assert got["env"]["FLEXAI_STATE_DIR"] == env["FLEXAI_STATE_DIR"]
        assert got["env"]["FLEXAI_SIM_MEMORY"] == env["FLEXAI_SIM_MEMORY"]
        assert env["LD_LIBRARY_PATH"] in (got["env"]["LD_LIBRARY_PATH"] or "")
        assert "libflexai" not in (got["env"]["LD_PRELOAD"] or "")  # the agent is no slice


# ---- submission ------------------------------------------------------------------------------

def test_submit_runs_on_the_node_the_policy_chose_and_streams_back(cluster, api):
    status = api.status()
    request = placement.Request(memory=24 * 2**30, compute=30, origin="n0")
    chosen = placement.decide(request, placement.view_from_dict(
        [{"name": n["name"], "gpus": n["gpus"]} for n in status["nodes"] if n["alive"]]))
    assert isinstance(chosen, placement.Place) and chosen.node == "n1"  # n0's card is 16 GiB
    proc = cluster.flexai("n0", "submit", "--gpu-memory", "24GiB", "--gpu-compute", "30", "--",
                          "sh", "-c", 'echo "slice=$FLEXAI_SLICE state=$FLEXAI_STATE_DIR"; '
                          'echo to-stderr >&2; exit 7')
    assert proc.returncode == 7, proc.stderr
    assert "to-stderr" in proc.stderr
    line = proc.stdout.strip().splitlines()[-1]
    job = line.split()[0].split("=")[1]
    assert f"state={cluster.nodes['n1'].env['FLEXAI_STATE_DIR']}" in line  # ran on n1
    record = next(j for j in api.jobs() if j["id"] == job)
    assert record["node"] == chosen.node and record["gpus"] == list(chosen.gpus)
    assert record["state"] == "exited" and record["returncode"] == 7


def test_small_job_stays_local_and_gpu_model_selects_the_node(cluster, api):
    local = api.submit(["true"], gpu_memory="1GiB", gpu_compute=10)
    by_model = api.submit(["true"], gpu_memory="1GiB", gpu_compute=10, gpu_model="Sim A100")
    cpu = api.submit(["true"], local_only=False, gpus=0)
    assert local.wait(timeout=60)["node"] == "n0"
    assert by_model.wait(timeout=60)["node"] == "n1"
    assert cpu.wait(timeout=60)["state"] == "exited"


def test_job_that_does_not_fit_waits_and_starts_when_capacity_frees(cluster, api):
    first = api.submit(["sleep", "3"], gpu_memory="12GiB", gpu_compute=50, local_only=True)
    second = api.submit(["sh", "-c", "echo second"], gpu_memory="12GiB", gpu_compute=50,
                        local_only=True)
    wait_for(lambda: first.status()["state"] == "running", 60, "the first job to run")
    record = wait_for(lambda: (r := second.status())["state"] == "queued"
                      and r["wait_reason"] and r, 30, "the second job to wait with a reason")
    assert "no GPU" in record["wait_reason"]
    queue = api.status()["queue"]
    assert [q["job"] for q in queue] == [second.id]
    done_first = first.wait(timeout=60)
    done_second = second.wait(timeout=60)
    assert done_second["state"] == "exited" and done_second["node"] == "n0"
    assert done_second["started_at"] >= done_first["ended_at"] - 0.5
    assert second.logs() == b"second\n"


def test_cancel_a_running_and_a_queued_job(cluster, api):
    running = api.submit(["sleep", "60"], gpu_memory="10GiB", local_only=True, gpu_compute=60)
    queued = api.submit(["sleep", "60"], gpu_memory="10GiB", local_only=True, gpu_compute=60)
    record = wait_for(lambda: (r := running.status())["state"] == "running" and r, 60, "running")
    proc = cluster.flexai("n2", "cancel", running.id, queued.id)
    assert proc.returncode == 0, proc.stderr
    assert queued.wait(timeout=30)["state"] == "cancelled"
    assert running.wait(timeout=30)["state"] == "cancelled"
    assert not _alive(record["pid"])
    bad = cluster.flexai("n0", "cancel", "job-999999")
    one_line_error(bad, "job-999999")


def test_ctrl_c_cancels_the_job_on_its_node(cluster, api):
    proc = cluster.popen("n0", "submit", "--gpu-memory", "20GiB", "--", "sh", "-c",
                         "echo started; exec sleep 60", stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "started\n"  # it runs (on n1: 20 GiB)
        job = next(j for j in reversed(api.jobs()) if j["argv"][-1].endswith("sleep 60")
                   and j["state"] == "running")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    final = api.Job(job["id"]).wait(timeout=30)
    assert final["state"] == "cancelled" and final["node"] == "n1"
    assert not _alive(job["pid"])


def test_bad_input_is_one_line_and_exit_2(cluster):
    model, too_big, malformed, priority = cluster.flexai_many([
        ("n0", "submit", "--gpu-model", "H100", "--gpu-memory", "1GiB", "--", "true"),
        ("n0", "submit", "--gpu-memory", "100GiB", "--", "true"),
        ("n0", "submit", "--gpu-memory", "8 gigs", "--", "true"),
        ("n0", "submit", "--priority", "urgent", "--gpu-memory", "1GiB", "--", "true")])
    results = {"model": model, "too big": too_big, "malformed": malformed,
               "priority": priority}
    one_line_error(results["model"], "H100", "Sim A100")
    one_line_error(results["too big"], "100GiB", "40GiB")
    one_line_error(results["malformed"], "8 gigs", "e.g.")
    one_line_error(results["priority"], "urgent", "high")


# ---- joining errors ----------------------------------------------------------------------------

def test_join_wrong_address_version_mismatch_and_port_in_use(cluster, api, tmp_path):
    from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_put

    from flexai.pool.member import KV_KEY, _free_ports

    env = cluster.node_env("x", gpus=0)
    nowhere = f"127.0.0.1:{_free_ports(1)[0]}"
    wrong, in_use = cluster.flexai_many([
        ("n0", "pool", "join", nowhere, "--name", "x"),
        ("n0", "pool", "up", "--name", "x", "--port", cluster.address.rsplit(":", 1)[1])],
        env=env, timeout=60)
    one_line_error(wrong, nowhere, "e.g.")
    one_line_error(in_use, "in use", "--port")
    facts = _internal_kv_get(KV_KEY, namespace="flexai")
    try:
        changed = {**json.loads(facts), "flexai_version": "0.0.1-other"}
        _internal_kv_put(KV_KEY, json.dumps(changed).encode(), overwrite=True,
                         namespace="flexai")
        mismatch = cluster.flexai("n0", "pool", "join", cluster.address, "--name", "x",
                                  env=env, timeout=60)
    finally:
        _internal_kv_put(KV_KEY, facts, overwrite=True, namespace="flexai")
    one_line_error(mismatch, "version mismatch", "0.0.1-other")


# ---- losing nodes ------------------------------------------------------------------------------

def test_agent_killed_then_node_removed_are_noticed_and_jobs_lost(cluster, api):
    import ray

    # 1. the agent's process is killed: its jobs are lost within 10 s, a waiting client ends
    follower = cluster.popen("n0", "submit", "--gpu-model", "Sim L4", "--gpu-memory", "1GiB",
                             "--", "sh", "-c", "echo up; exec sleep 120",
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pids = []
    try:
        assert follower.stdout.readline() == "up\n"
        job = next(j for j in reversed(api.jobs()) if j["node"] == "n3"
                   and j["state"] == "running")
        pids.append(job["pid"])
        agent = ray.get_actor("flexai-agent-n3", namespace="flexai")
        agent_pid = ray.get(agent.exec_env.remote([]), timeout=30)["pid"]
        os.kill(agent_pid, signal.SIGKILL)
        killed = time.monotonic()
        final = api.Job(job["id"]).wait(timeout=30)
        noticed = time.monotonic() - killed
        assert final["state"] == "lost" and "n3" in final["reason"], final
        assert noticed < 10, noticed
        _, err = follower.communicate(timeout=60)
        assert follower.returncode == 1 and "lost" in err, err
    finally:
        if follower.poll() is None:
            follower.kill()
    nodes = {n["name"]: n for n in api.status()["nodes"]}
    assert nodes["n3"]["state"] == "lost"

    # 2. join again: the agent is back; then the whole node goes away
    cluster.flexai("n3", "pool", "join", cluster.address, "--name", "n3", check=True)
    wait_for(lambda: {n["name"]: n for n in api.status()["nodes"]}["n3"]["alive"], 30,
             "n3 to be alive again")
    job2 = api.submit(["sleep", "120"], gpu_model="Sim L4", gpu_memory="1GiB")
    running = wait_for(lambda: (r := job2.status())["state"] == "running" and r, 60, "running")
    pids.append(running["pid"])
    cluster.remove("n3")
    removed = time.monotonic()
    final = job2.wait(timeout=30)
    assert final["state"] == "lost", final
    assert time.monotonic() - removed < 10
    assert not {n["name"]: n for n in api.status()["nodes"]}["n3"]["alive"]
    for pid in pids:  # the node's machine "went away": its orphans are ours to reap
        _kill(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _kill(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


# ---- metrics, top, the embedded pool -----------------------------------------------------------

def _scrape(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def test_agent_metrics_and_pool_counters_are_served(cluster, api):
    job = api.submit(["true"], gpu_memory="1GiB", gpu_compute=5, gpu_model="Sim A100")
    assert job.wait(timeout=60)["state"] == "exited"
    status = api.status()
    n1 = next(n for n in status["nodes"] if n["name"] == "n1")
    node_text = _scrape(n1["metrics_port"])
    assert 'flexai_gpu_memory_total_bytes{' in node_text and 'model="Sim A100"' in node_text
    pool_text = _scrape(status["pool"]["metrics_port"])
    placed = [ln for ln in pool_text.splitlines()
              if ln.startswith('flexai_pool_placements_total{outcome="placed"}')]
    assert placed and float(placed[0].split()[-1]) >= 1
    assert "flexai_pool_queue_length" in pool_text


def test_local_only_on_a_node_without_gpu_is_bad_input(cluster):
    proc, cpu = cluster.flexai_many([
        ("n2", "submit", "--local-only", "--gpu-memory", "1GiB", "--", "true"),
        ("n2", "submit", "--local-only", "--", "sh", "-c", "echo cpu-only")])
    one_line_error(proc, "n2 has no GPU")
    assert cpu.returncode == 0 and cpu.stdout == "cpu-only\n", cpu.stderr


def test_submit_without_a_pool_starts_the_embedded_one(cluster):
    """The submit was started with the cluster (raycluster.start_default), on machine "e"
    that has no pool."""
    alone = cluster.others[0]
    proc = cluster.background["embedded"]
    out, err = proc.communicate(timeout=raycluster.START_TIMEOUT)
    alone.track("e")
    assert proc.returncode == 0 and out == "embedded\n", err
    assert "started a local pool" in err and "flexai pool down" in err
    record = alone.nodes["e"].read_record()
    assert record["embedded"] and record["role"] == "head"
    again = alone.flexai("e", "submit", "--", "true")  # the same pool, no new start
    assert again.returncode == 0 and "started" not in again.stderr, again.stderr
    down = alone.flexai("e", "pool", "down", check=True)
    assert "down" in down.stdout
    assert not (alone.nodes["e"].pool_dir / "node.json").exists()
    assert not _alive(record["pid"])
