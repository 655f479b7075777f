"""Preemption and cancellation reach remote jobs, on a real Ray cluster of its own
(tests/support/raycluster.py): g0, the head, with one simulated 4 GiB GPU, and c0 with no GPU.

A low-priority ``flexai submit --remote-ok`` job from c0 runs on c0 with its slice booked on
g0's GPU (3 GiB of its 4). A high-priority job on g0 that only fits once it goes must evict it
*where it runs*: c0's agent sends SIGTERM (the victim ignores it), the grace, SIGKILL; the head
releases the booking on g0 as when a remote job ends; the victim's ``flexai submit`` and
``flexai jobs`` say "evicted by job-N (high priority)"; the high job starts. A cancel of a remote
job stops it on its node too. Without Ray, the head's preemption round is checked to address
a remote victim by either of its names (the head's ``job-N``, the GPU node's
``remote-job-N``), to stop it on its origin and to resize it on its GPU node.

This module never connects the test process to its cluster (it may share the process with the
session's cluster of the other pool tests): it looks through ``flexai`` commands. No verdict
depends on speed: every wait has a generous bound.
"""
from __future__ import annotations

import json
import queue
import subprocess
import sys
import textwrap
import threading
import time

import pytest

pytest.importorskip("ray")
pytest.importorskip("cuda.bindings")

from support import raycluster  # noqa: E402
from support.fake_pool import FakeNode  # noqa: E402

GiB = 2**30

#: The victim: a cuda.bindings program in a remote slice that allocates within its quota, says
#: so, ignores SIGTERM (only the grace's SIGKILL ends it) and gives up after a bound.
VICTIM = textwrap.dedent('''
    import signal, sys, time
    from cuda.bindings import driver as cu

    signal.signal(signal.SIGTERM, lambda *_: print("got-TERM", flush=True))
    assert int(cu.cuInit(0)[0]) == 0
    err, dev = cu.cuDeviceGet(0)
    err, ctx = cu.cuDevicePrimaryCtxRetain(dev)
    assert int(cu.cuCtxSetCurrent(ctx)[0]) == 0
    err, ptr = cu.cuMemAlloc(int(sys.argv[1]))
    print("started", int(err), flush=True)
    deadline = time.time() + 240
    while time.time() < deadline:
        time.sleep(0.2)
    sys.exit(3)
''')


@pytest.fixture(scope="module")
def cluster():
    from flexai.pool.member import _free_ports

    c = raycluster.RayCluster()
    try:
        c.up("g0", port=_free_ports(1)[0], gpus=1, memory="4GiB", model="Sim T4")
        c.join("c0", gpus=0, memory=None)
        yield c
    finally:
        c.stop()


class _Run:
    """A ``flexai`` command run in the background whose lines can be awaited (bounded)."""

    def __init__(self, cluster, node: str, *args: str) -> None:
        self.proc = cluster.popen(node, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
        self.lines: queue.Queue = queue.Queue()
        self.out: list[str] = []
        self.err: list[str] = []
        self._threads = [threading.Thread(target=self._read, args=(s, b, q), daemon=True)
                         for s, b, q in ((self.proc.stdout, self.out, self.lines),
                                         (self.proc.stderr, self.err, None))]
        for t in self._threads:
            t.start()

    @staticmethod
    def _read(stream, into: list[str], lines: queue.Queue | None) -> None:
        for line in stream:
            into.append(line)
            if lines is not None:
                lines.put(line)

    def line(self, timeout: float) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line in {timeout} s: {''.join(self.err)}") from None

    def finish(self, timeout: float) -> tuple[int | None, str, str]:
        """Wait up to ``timeout`` s for the end; kill it past that (returncode None)."""
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = None
        self.kill()
        for t in self._threads:
            t.join(timeout=10)
        return rc, "".join(self.out), "".join(self.err)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def _status(cluster) -> dict:
    proc = cluster.flexai("c0", "pool", "status", "--json", timeout=60, check=True)
    return json.loads(proc.stdout)


def _held_on_g0(status: dict, job_id: str) -> list[dict]:
    """What job ``job_id`` holds on g0: its slices in the head's view of g0 (the booking) and
    its remoted session's slice with processes."""
    names = (job_id, f"remote-{job_id}")
    g0 = next(n for n in status["nodes"] if n["name"] == "g0")
    held = [s for g in g0["gpus"] for s in g["slices"] if s["job"] in names]
    return held + [s for s in status["slices"] if s["name"] in names and s["nprocs"] > 0]


def _wait_for(predicate, timeout: float, what: str):
    """raycluster.wait_for, looking every 0.5 s (each look is a `flexai` process)."""
    return raycluster.wait_for(predicate, timeout, what, every=0.5)


def _start_victim(cluster, tmp_path, priority: str = "low", memory: str = "3GiB",
                  compute: str = "50", allocate: int = 2 * GiB) -> tuple[_Run, dict]:
    """Submit VICTIM from c0 with ``--remote-ok``; return it once it has allocated."""
    prog = tmp_path / "victim.py"
    prog.write_text(VICTIM)
    low = _Run(cluster, "c0", "submit", "--remote-ok", "--priority", priority, "--gpu-memory",
               memory, "--gpu-compute", compute, "--", sys.executable, str(prog), str(allocate))
    try:
        assert low.line(150) == "started 0\n"  # in its remote slice, 2 GiB allocated there
        status = _status(cluster)
    except BaseException:
        low.kill()
        raise
    victim = next(j for j in status["jobs"] if str(prog) in j["argv"])
    assert victim["state"] == "running" and victim["node"] == "c0", victim
    assert victim["remote"]["node"] == "g0", victim
    assert _held_on_g0(status, victim["id"]), status["nodes"]
    return low, victim


def _booking_gone(cluster, job_id: str) -> None:
    """The booking and the session are gone from g0, and stay gone over a few of the agent's
    reports (the head's view is the agent's again by then)."""
    _wait_for(lambda: not _held_on_g0(_status(cluster), job_id), 60,
              f"g0 to drop {job_id}'s remote slice")
    time.sleep(3)
    assert not _held_on_g0(_status(cluster), job_id)


def test_a_high_job_evicts_a_low_remote_job_where_it_runs(cluster, tmp_path):
    low, victim = _start_victim(cluster, tmp_path)
    high = None
    try:
        high = _Run(cluster, "g0", "submit", "--local-only", "--priority", "high",
                    "--gpu-memory", "3GiB", "--gpu-compute", "50", "--", "sh", "-c",
                    "echo high-ran")
        high_rc, high_out, high_err = high.finish(150)
        low_rc, low_out, low_err = low.finish(60)
    finally:
        for run in (low, high):
            if run is not None:
                run.kill()
    assert high_rc == 0 and high_out == "high-ran\n", (high_rc, high_err, low_err)
    # SIGTERM reached it on c0 (it said so), the grace ran out, SIGKILL ended it: 128 + 9
    assert "got-TERM" in low_out, (low_out, low_err)
    assert low_rc == 137, (low_rc, low_err)
    status = _status(cluster)
    jobs = {j["id"]: j for j in status["jobs"]}
    evicted = jobs[victim["id"]]
    winner = next(j for j in jobs.values() if j["argv"][-1] == "echo high-ran")
    assert f"{victim['id']} evicted: evicted by {winner['id']} (high priority) to make room" \
        in low_err, low_err
    assert evicted["state"] == "evicted" and evicted["reason"] == (
        f"evicted by {winner['id']} (high priority) to make room"), evicted
    assert winner["node"] == "g0" and winner["started_at"] >= evicted["ended_at"] - 0.5
    listing = cluster.flexai("c0", "jobs", timeout=60, check=True).stdout
    row = next(ln for ln in listing.splitlines() if ln.startswith(victim["id"] + " "))
    assert f"evicted by {winner['id']}" in row, listing
    _booking_gone(cluster, victim["id"])


def test_a_high_job_shrinks_a_best_effort_remote_job_on_its_gpu_node(cluster, tmp_path):
    """The policy's Shrink of a remote slice's burst reaches its remoted session on g0 (the
    booking and the view follow); the job keeps running."""
    low, victim = _start_victim(cluster, tmp_path, "best-effort", "1GiB", "80", GiB // 2)
    try:
        high = _Run(cluster, "g0", "submit", "--local-only", "--priority", "high",
                    "--gpu-memory", "1GiB", "--gpu-compute", "50", "--", "sh", "-c",
                    "echo high-ran")
        high_rc, high_out, high_err = high.finish(150)
        assert high_rc == 0 and high_out == "high-ran\n", (high_rc, high_err)
        status = _status(cluster)
        record = next(j for j in status["jobs"] if j["id"] == victim["id"])
        assert record["state"] == "running", record
        held = _held_on_g0(status, victim["id"])
        assert [s["compute"] for s in held if "job" in s] == [50], held  # its booking
        assert [s["compute"] for s in held if "name" in s] == [50], held  # its session
        cluster.flexai("c0", "cancel", victim["id"], timeout=60, check=True)
        low_rc, _, low_err = low.finish(60)
        assert low_rc == 137, (low_rc, low_err)
    finally:
        low.kill()


def test_a_cancelled_remote_job_stops_where_it_runs(cluster, tmp_path):
    low, victim = _start_victim(cluster, tmp_path)
    try:
        cancel = cluster.flexai("c0", "cancel", victim["id"], timeout=60)
        assert cancel.returncode == 0, cancel.stderr
        low_rc, low_out, low_err = low.finish(60)
    finally:
        low.kill()
    assert "got-TERM" in low_out and low_rc == 137, (low_rc, low_out, low_err)
    record = next(j for j in _status(cluster)["jobs"] if j["id"] == victim["id"])
    assert record["state"] == "cancelled", record
    _booking_gone(cluster, victim["id"])


# ---- the head's preemption round, without Ray ------------------------------------------------


def _head():
    """A ``PoolHead`` without its threads or Ray: nodes g0 (GPU) and c0 (origin), a remote job
    job-1 (low, its slice on g0) and a local job job-2 (low, on g0)."""
    import threading

    from flexai.node.metrics import PoolCounters
    from flexai.pool import placement as pl
    from flexai.pool.head import PoolHead

    head = PoolHead.__new__(PoolHead)
    head._lock = threading.RLock()
    head._changed = threading.Condition(head._lock)
    head._nodes = {n: FakeNode(n) for n in ("g0", "c0")}
    head._queue, head.counters = pl.Queue(), PoolCounters()
    head._stats = {"lost": 0, "started": 0}
    base = {"priority": "low", "state": "running", "cancel": False, "reason": ""}
    head._jobs = {
        "job-1": {**base, "id": "job-1", "node": "c0",
                  "remote": {"node": "g0", "gpu": 0, "address": "h:1", "released": False}},
        "job-2": {**base, "id": "job-2", "node": "g0", "remote": None},
        "job-3": {"id": "job-3", "priority": "high", "state": "queued"}}
    return head


def _plan(*actions):
    from flexai.pool import placement as pl

    return pl.Preempt(actions=actions, then=pl.Place("g0", (0,)))


@pytest.mark.parametrize("name", ["remote-job-1", "job-1"])
def test_the_head_evicts_a_remote_victim_on_its_origin(name):
    from flexai.pool import placement as pl

    head = _head()
    head._preempt(head._jobs["job-3"], _plan(pl.Evict("g0", name)))
    assert [c[:2] for c in head._nodes["c0"].calls] == [("stop", ("job-1", 5.0,
                                                                  "evicted by job-3"))]
    assert head._nodes["g0"].calls == []
    victim = head._jobs["job-1"]
    assert victim["cancel"] and victim["reason"] == "evicted by job-3 (high priority) to make room"


@pytest.mark.parametrize("name", ["remote-job-1", "job-1"])
def test_the_head_shrinks_a_remote_victim_on_its_gpu_node(name):
    from flexai.pool import placement as pl

    head = _head()
    head._preempt(head._jobs["job-3"], _plan(pl.Shrink("g0", 0, name, 20)))
    assert head._nodes["g0"].calls == [("resize", ("remote-job-1",), {"compute": 20})]
    assert head._nodes["c0"].calls == []


def test_the_head_still_evicts_a_local_victim_on_its_node():
    from flexai.pool import placement as pl

    head = _head()
    head._preempt(head._jobs["job-3"], _plan(pl.Evict("g0", "job-2")))
    assert [c[1][0] for c in head._nodes["g0"].calls] == ["job-2"]
    assert head._nodes["c0"].calls == []
