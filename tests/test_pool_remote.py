"""Remote slices through the pool, on the real Ray cluster (tests/support/raycluster.py): a GPU job
submitted with ``--remote-ok`` on n2 (no GPU) runs on n2 itself, an unmodified cuda.bindings
program whose driver calls go to a ``flexai remoted`` the GPU node's agent started, inside a
slice with the requested quota there; the GPU node's view holds the booking while it runs and
drops it when it ends. Without ``--remote-ok`` the same job is shipped to the GPU node (today's
behaviour). The pool's token is in every node's pool directory, 0600, and never shown.

No verdict depends on speed: every wait has a generous bound.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("ray")
pytest.importorskip("cuda.bindings")

from support import raycluster  # noqa: E402

GiB = 2**30

PROGRAM = textwrap.dedent('''
    """A cuda.bindings program: quota, an allocation past it, one within; then it waits for a
    file (so the test can look at the pool while it runs) and prints one JSON line."""
    import json, os, sys, time
    from cuda.bindings import driver as cu

    def ok(result):
        err, *values = result
        assert int(err) == 0, err
        return values[0] if len(values) == 1 else values

    assert int(cu.cuInit(0)[0]) == 0
    dev = ok(cu.cuDeviceGet(0))
    ctx = ok(cu.cuDevicePrimaryCtxRetain(dev))
    assert int(cu.cuCtxSetCurrent(ctx)[0]) == 0
    free, total = ok(cu.cuMemGetInfo())
    over = int(cu.cuMemAlloc(int(sys.argv[2]))[0])
    err, ptr = cu.cuMemAlloc(int(sys.argv[3]))
    print("allocated", flush=True)
    deadline = time.time() + 90
    while not os.path.exists(sys.argv[1]) and time.time() < deadline:
        time.sleep(0.05)
    print(json.dumps({"free": int(free), "total": int(total), "over": over, "within": int(err),
                      "state_dir": os.environ.get("FLEXAI_STATE_DIR"),
                      "remote": os.environ.get("FLEXAI_REMOTE"),
                      "preload": os.environ.get("LD_PRELOAD", "")}), flush=True)
''')


@pytest.fixture(scope="module")
def cluster(request) -> raycluster.RayCluster:
    return raycluster.shared(request, raycluster.start_default)


@pytest.fixture
def api(cluster, monkeypatch, request):
    """flexai.pool in this process, as a client of the cluster."""
    return raycluster.connect(cluster, monkeypatch, request)


wait_for = raycluster.wait_for


def _job_with(api, word: str):
    return next((j for j in api.jobs() if word in " ".join(j["argv"])), None)


def _slices_of(api, node: str, gpu: int) -> list[dict]:
    nodes = {n["name"]: n for n in api.status()["nodes"]}
    g = next(g for g in nodes[node]["gpus"] if g["index"] == gpu)
    return g["slices"]


def _agent(name: str):
    import ray

    return ray.get_actor(f"flexai-agent-{name}", namespace="flexai")


def _try_resize(node: str, name: str, compute: int) -> bool:
    import ray

    try:
        ray.get(_agent(node).resize.remote(name, compute=compute), timeout=30)
        return True
    except ray.exceptions.RayTaskError as exc:
        if "not attached" in str(exc) or "no slice" in str(exc).lower():
            return False
        raise


def test_remote_ok_job_runs_on_the_gpu_less_node_in_a_remote_slice(cluster, api, tmp_path):
    import ray

    prog = tmp_path / "prog.py"
    prog.write_text(PROGRAM)
    go = tmp_path / "go"
    proc = cluster.popen("n2", "submit", "--remote-ok", "--gpu-memory", "1GiB",
                         "--gpu-compute", "20", "--", sys.executable, str(prog), str(go),
                         str(2 * GiB), str(GiB // 2), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        job = wait_for(lambda: (j := _job_with(api, str(go))) and j["state"] not in
                       ("queued", "starting") and j, 90, "the job to start")
        assert job["state"] == "running", job
        assert job["node"] == "n2"  # it runs on the GPU-less node that submitted it
        remote = job["remote"]
        assert remote["node"] in ("n0", "n1", "n3") and remote["address"]
        # the GPU node's view holds the booking (its agent's and the head's)
        name = f"remote-{job['id']}"
        view = ray.get(_agent(remote["node"]).report.remote(), timeout=30)["view"]
        gpu = next(g for g in view["gpus"] if g["index"] == remote["gpu"])
        held = [s for s in gpu["slices"] if s["job"] == name]
        assert held and held[0]["memory"] == GiB and held[0]["compute"] == 20, gpu
        assert gpu["memory_free"] <= gpu["memory_total"] - GiB
        booked = ray.get(_agent(remote["node"]).remote_bookings.remote(), timeout=30)
        assert [b["slice"] for b in booked] == [name]
        # the policy's Shrink reaches the remote slice (once its session has attached)
        wait_for(lambda: _try_resize(remote["node"], name, 10), 30, "the slice to resize")
        booked = ray.get(_agent(remote["node"]).remote_bookings.remote(), timeout=30)
        assert booked[0]["compute"] == 10
        view = ray.get(_agent(remote["node"]).report.remote(), timeout=30)["view"]
        gpu = next(g for g in view["gpus"] if g["index"] == remote["gpu"])
        assert [s["compute"] for s in gpu["slices"] if s["job"] == name] == [10]
        wait_for(lambda: any(s["job"] in (name, job["id"]) and s["memory"] == GiB
                             for s in _slices_of(api, remote["node"], remote["gpu"])),
                 30, "the head's view of the GPU node to show the booking")
    finally:
        go.write_text("go")
        out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, (out, err)
    seen = json.loads(out.strip().splitlines()[-1])
    assert seen["total"] == GiB and seen["free"] <= GiB  # the remote slice's quota
    assert seen["over"] == 2  # CUDA_ERROR_OUT_OF_MEMORY past the quota, on this node
    assert seen["within"] == 0
    assert seen["state_dir"] == cluster.nodes["n2"].env["FLEXAI_STATE_DIR"]
    assert seen["remote"] == remote["address"]
    assert "libflexai" not in seen["preload"]  # the quota is enforced on the GPU node
    # once the job ended, the booking is gone from the GPU node's view
    wait_for(lambda: not ray.get(_agent(remote["node"]).remote_bookings.remote(), timeout=30),
             30, "the agent to release the booking")
    wait_for(lambda: not any(s["job"] in (name, job["id"])
                             for s in _slices_of(api, remote["node"], remote["gpu"])),
             30, "the head's view to drop the remote slice")
    final = api.Job(job["id"]).status()
    assert final["state"] == "exited" and final["returncode"] == 0


def test_without_remote_ok_a_gpu_job_from_a_gpu_less_node_runs_on_the_gpu_node(cluster):
    """Today's behaviour, kept: the job is shipped to the GPU node the policy chose."""
    proc = cluster.flexai("n2", "submit", "--gpu-memory", "1GiB", "--", sys.executable, "-c",
                          "import os; print(os.environ['FLEXAI_STATE_DIR'])", timeout=120)
    assert proc.returncode == 0, proc.stderr
    gpu_nodes = {cluster.nodes[n].env["FLEXAI_STATE_DIR"] for n in ("n0", "n1", "n3")}
    assert proc.stdout.strip() in gpu_nodes


def test_the_pool_token_is_in_every_pool_directory_0600_and_never_shown(cluster):
    from flexai.pool.remote import token_path

    paths = [token_path(cluster.nodes[n].env) for n in ("n0", "n1", "n2")]
    tokens = set()
    for p in paths:
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600, p
        tokens.add(p.read_text().strip())
    assert len(tokens) == 1 and len(next(iter(tokens))) >= 32
    token = tokens.pop()
    shown = cluster.flexai_many([("n2", "pool", "status", "--json"), ("n2", "jobs", "--json")])
    for p in shown:
        assert p.returncode == 0, p.stderr
        assert token not in p.stdout + p.stderr
