"""The pool's pure parts without Ray: admission (what can never run is refused with one line),
the pool view built from the agents' dicts, placement and queueing through flexai.policy, and
the head's dispatch of a preemption plan with fake agents (who gets stopped, why, and what the
counters say).
"""
from __future__ import annotations

import threading

import pytest
from support.fake_pool import FakeNode

from flexai.node.metrics import PoolCounters
from flexai.pool import dispatch
from flexai.pool import placement as pl
from flexai.pool.admit import admit

GiB = 2**30


def gpu(index=0, model="Sim T4", total=16, free=16, compute=100, slices=()):
    return {"index": index, "model": model, "memory_total": total * GiB,
            "memory_free": free * GiB, "compute_free": compute, "slices": list(slices)}


VIEWS = {
    "n0": {"name": "n0", "gpus": [gpu()]},
    "n1": {"name": "n1", "gpus": [gpu(0, "Sim A100", 40, 40), gpu(1, "Sim A100", 40, 40)]},
    "n2": {"name": "n2", "gpus": []},
}


def test_admit_refuses_what_can_never_run():
    with pytest.raises(ValueError, match="H100.*Sim A100"):
        admit({"memory": GiB, "models": ["H100"]}, VIEWS, set(VIEWS))
    with pytest.raises(ValueError, match="more than any GPU.*40GiB"):
        admit({"memory": 41 * GiB}, VIEWS, set(VIEWS))
    with pytest.raises(ValueError, match="n2 has no GPU"):
        admit({"memory": GiB, "origin": "n2", "where": "local-only"}, VIEWS, set(VIEWS))
    with pytest.raises(ValueError, match="more than any GPU in node n0"):
        admit({"memory": 20 * GiB, "origin": "n0", "where": "local-only"}, VIEWS, set(VIEWS))
    with pytest.raises(ValueError, match="not a member"):
        admit({"memory": GiB, "where": "local-only"}, VIEWS, set(VIEWS))
    with pytest.raises(ValueError, match="--gpus 4"):
        admit({"gpus": 4}, VIEWS, set(VIEWS))


def test_admit_fills_in_compute_models_and_origin():
    r = admit({"memory": GiB, "models": ["Sim-A100"], "origin": "elsewhere"}, VIEWS, set(VIEWS))
    assert r.compute == 100 and r.models == frozenset({"Sim A100"}) and r.origin is None
    assert admit({}, VIEWS, set(VIEWS)).gpus == 0  # neither memory nor compute: CPU only
    assert admit({"gpus": 2}, VIEWS, set(VIEWS)).compute == 100


def test_view_from_dict_clamps_what_an_agent_overstates():
    v = pl.view_from_dict([{"name": "n0", "gpus": [
        {**gpu(free=-3), "compute_free": 130, "model": "",
         "slices": [{"job": "j", "priority": "odd", "memory": GiB, "compute": 120,
                     "guarantee": 150}]}]}])
    g = v.nodes[0].gpus[0]
    assert g.memory_free == 0 and g.compute_free == 100 and g.model == "unknown"
    s = g.slices[0]
    assert s.priority == "normal" and s.compute == 100 and s.guarantee == 100


def test_placement_prefers_the_origin_then_first_fit_and_waits():
    view = pl.view_from_dict(VIEWS.values())
    assert pl.decide(pl.Request(memory=GiB, compute=10, origin="n0"), view).node == "n0"
    big = pl.decide(pl.Request(memory=30 * GiB, compute=10, origin="n0"), view)
    assert isinstance(big, pl.Place) and big.node == "n1" and big.remote
    full = pl.view_from_dict([{"name": "n0", "gpus": [gpu(free=2)]}])
    assert isinstance(pl.decide(pl.Request(memory=4 * GiB, compute=10), full), pl.Wait)


def test_queue_orders_by_priority_then_age():
    q = pl.Queue()
    q.push("low-old", pl.Request(memory=0, compute=1, priority="low"), 0.0)
    q.push("high-new", pl.Request(memory=0, compute=1, priority="high"), 10.0)
    q.push("normal", pl.Request(memory=0, compute=1, priority="normal"), 5.0)
    assert [k for k, _ in q.ordered(11.0)] == ["high-new", "normal", "low-old"]
    assert "normal" in q
    q.remove("normal")
    assert "normal" not in q


class _Head(dispatch.Dispatcher):
    def __init__(self):
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._nodes = {"n0": FakeNode("n0")}
        self._jobs = {}
        self._queue = pl.Queue()
        self._stats = {"lost": 0, "started": 0}
        self.counters = PoolCounters()

    def _finish(self, job, state, rc, ended=None):
        job["state"] = state


def test_a_preemption_plan_evicts_and_shrinks_and_says_why():
    head = _Head()
    head._jobs["job-1"] = {"id": "job-1", "state": "running", "reason": "", "cancel": False}
    job = {"id": "job-2", "priority": "high"}
    plan = pl.Preempt(actions=(pl.Shrink("n0", 0, "job-3", 20), pl.Evict("n0", "job-1")),
                      then=pl.Place("n0", (0,), False))
    head._preempt(job, plan)
    head._preempt(job, plan)  # the victims are still leaving: nothing more
    calls = head._nodes["n0"].handle.calls
    assert [c[0] for c in calls] == ["resize", "stop"]
    assert calls[0][2] == {"compute": 20}
    assert calls[1][1][0] == "job-1" and "job-2" in calls[1][1][2]
    victim = head._jobs["job-1"]
    assert victim["cancel"] and victim["reason"].startswith("evicted by job-2 (high")
    counted = head.counters.values()
    assert counted["evictions"] == 1 and counted["preemptions"] == 2
    assert counted["placements"]["preempted"] == 1


def test_ray_s_cluster_messages_never_reach_the_job_s_stdout(capsys):
    # Ray's driver prints "node ... marked dead" to stdout, where `flexai submit` streams the
    # job's output (seen under load: a job's "cpu-only" line followed by Ray's warning)
    from ray._private import worker

    from flexai.pool.lifecycle import _ray_messages_to_stderr

    original = worker.print_to_stdstream
    try:
        _ray_messages_to_stderr()
        _ray_messages_to_stderr()  # once only
        worker.print_to_stdstream({"lines": ["node x marked dead"], "pid": "raylet",
                                   "is_err": False}, ignore_prefix=False)
        out, err = capsys.readouterr()
        assert out == "" and "node x marked dead" in err
    finally:
        worker.print_to_stdstream = original
