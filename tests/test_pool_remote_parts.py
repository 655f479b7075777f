"""The parts of the pool's remote slices that need no cluster: the token file (0600, atomic),
the environment of a job on a remote slice, bookings counted in a GPU node's view, and the
head's release of a booking and its handling of a GPU node that goes away (with fake nodes).
The whole path on a real Ray cluster is tests/test_pool_remote.py.
"""
from __future__ import annotations

import os
import stat
import threading
from types import SimpleNamespace

import pytest

from flexai.agent.remoted import RemoteSlices, remote_job_env, slice_name
from flexai.agent.view import gpu_views
from flexai.node.snapshot import NodeSnapshot
from flexai.pool import remote as pool_remote
from flexai.remote.client import client_dir

GiB = 2**30


def test_token_is_written_0600_and_read_back(tmp_path):
    env = {"FLEXAI_STATE_DIR": str(tmp_path / "state")}
    assert pool_remote.read_token(env) == ""
    pool_remote.new_token(env)
    first = pool_remote.read_token(env)
    path = pool_remote.token_path(env)
    assert len(first) == 64 and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    pool_remote.new_token(env)  # a new pool, a new token
    assert pool_remote.read_token(env) not in ("", first)
    pool_remote.write_token("shared-secret", env)
    assert pool_remote.read_token(env) == "shared-secret"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir() if p.name.startswith("remote-token")] == [
        "remote-token"]  # no temporary file left behind


def test_remote_job_env_points_the_client_library_at_the_server_with_the_quota():
    node = {"PATH": "/bin", "LD_PRELOAD": "/x/libflexai.so", "FLEXAI_GPU_MEMORY": "9GiB",
            "FLEXAI_STATE_DIR": "/s", "LD_LIBRARY_PATH": "/opt/lib"}
    env = remote_job_env(node, "10.0.0.7:7470", "tok", "job-5", memory=GiB, compute=20,
                         priority="best-effort", extra={"SEED": "1"})
    assert env["FLEXAI_REMOTE"] == "10.0.0.7:7470" and env["FLEXAI_REMOTE_TOKEN"] == "tok"
    assert env["LD_LIBRARY_PATH"].split(":")[0] == str(client_dir())
    assert "LD_PRELOAD" not in env  # the quota is enforced on the GPU node
    assert env["FLEXAI_GPU_MEMORY"] == str(GiB) and env["FLEXAI_GPU_COMPUTE"] == "20"
    assert env["FLEXAI_SLICE"] == "job-5" and env["FLEXAI_PRIORITY"] == "low"
    assert env["SEED"] == "1" and env["FLEXAI_STATE_DIR"] == "/s"
    with pytest.raises(Exception, match="HOST:PORT"):
        remote_job_env(node, "no-port", "tok", "job-5", memory=GiB, compute=0,
                       priority="normal")


def test_bookings_hold_capacity_in_the_gpu_nodes_view_until_released(tmp_path):
    gpus = [SimpleNamespace(index=i, uuid=f"GPU-{i}", model="Sim", memory_total=16 * GiB)
            for i in range(2)]
    slices = RemoteSlices({}, gpus, tmp_path)
    slices.book("job-3", 1, 4 * GiB, 30, "high", 30)
    snap = NodeSnapshot("/x", (), ())
    view = gpu_views(gpus, snap, list(slices.bookings.values()))
    assert view[0]["memory_free"] == 16 * GiB and view[0]["slices"] == []
    assert view[1]["memory_free"] == 12 * GiB and view[1]["compute_free"] == 70
    assert view[1]["slices"][0]["job"] == slice_name("job-3") == "remote-job-3"
    assert slices.release("job-3") and not slices.release("job-3")
    assert gpu_views(gpus, snap, list(slices.bookings.values()))[1]["memory_free"] == 16 * GiB
    with pytest.raises(Exception, match="no GPU 7"):
        slices.book("job-4", 7, GiB, 10, "normal", 10)


class _Handle:
    def __init__(self, calls: list) -> None:
        self.calls = calls

    def __getattr__(self, method: str):
        return SimpleNamespace(remote=lambda *a, **k: self.calls.append((method, a)))


class _Head(pool_remote.RemotePlacement):
    def __init__(self) -> None:
        self.calls: list = []
        self._lock = threading.RLock()
        self._stats = {"lost": 0}
        gpu = {"index": 0, "memory_total": 16 * GiB, "memory_free": 12 * GiB,
               "compute_free": 80, "slices": [{"job": "remote-job-1", "memory": 4 * GiB,
                                               "compute": 20}]}
        self._nodes = {n: SimpleNamespace(name=n, alive=True, handle=_Handle(self.calls),
                                          view={"gpus": [gpu] if n == "g" else []},
                                          last_start=0.0) for n in ("g", "c")}
        self._jobs = {"job-1": {"id": "job-1", "state": "running", "node": "c", "origin": "c",
                                "remote_ok": True, "cancel": False, "reason": "",
                                "remote": {"node": "g", "gpu": 0, "released": False}}}

    def _finish(self, job, state, rc, ended=None):
        job["state"] = state
        self._release_remote(job)


def test_release_frees_the_head_view_at_once_and_tells_the_agent_once():
    head = _Head()
    job = head._jobs["job-1"]
    head._finish(job, "exited", 0)
    gpu = head._nodes["g"].view["gpus"][0]
    assert gpu["memory_free"] == 16 * GiB and gpu["compute_free"] == 100 and not gpu["slices"]
    head._release_remote(job)
    assert head.calls == [("remote_release", ("job-1",))]


def test_a_lost_gpu_node_loses_and_stops_the_jobs_on_its_remote_slices():
    head = _Head()
    head._lose_remote_jobs("g", "node g stopped answering")
    job = head._jobs["job-1"]
    assert job["state"] == "lost" and "remote slice is gone" in job["reason"]
    assert head.calls == [("stop", ("job-1", 5.0, job["reason"]))]  # on c; g is not told


def test_goes_remote_only_for_a_remote_ok_job_of_a_gpu_less_origin():
    head = _Head()
    place = SimpleNamespace(node="g", gpus=(0,))
    job = {"remote_ok": True, "origin": "c"}
    assert head._goes_remote(job, place)
    assert not head._goes_remote({**job, "remote_ok": False}, place)
    assert not head._goes_remote(job, SimpleNamespace(node="g", gpus=(0, 1)))
    assert not head._goes_remote({**job, "origin": None}, place)
    head._nodes["c"].view = {"gpus": [{"index": 0}]}  # an origin with a GPU runs it there
    assert not head._goes_remote(job, place)
