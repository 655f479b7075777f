"""The pool's head: :class:`PoolHead`, a detached Ray actor (``flexai-head``) on the head node
that keeps the job table and the queue, places jobs through ``flexai.pool.placement.decide``,
starts and stops them through the node agents, and watches the agents' heartbeats.

Two threads do everything that talks to the agents: the watch thread asks each agent for a
report every heartbeat (heartbeat, view, jobs), notes exits and declares lost the nodes that
stopped answering (within :data:`LOST_AFTER` seconds, their jobs reported lost); the placement
thread (``flexai.pool.dispatch``) places what waits as soon as something changes. Client calls
(submit, cancel, wait, status) only touch the tables under a lock and wake them. This module
must never print, never exec a job itself, and never block a client call on an agent for
longer than :data:`CALL_TIMEOUT`.
"""
from __future__ import annotations

import itertools
import os
import sys
import threading
import time
import traceback
from typing import Any

from . import placement as pl
from .admit import admit
from .dispatch import CALL_TIMEOUT, FINAL, Dispatcher
from .member import agent_actor_name
from .remote import RemotePlacement

#: Seconds between heartbeats.
HEARTBEAT = 1.0
#: A node that has not answered for this long is lost (its jobs too).
LOST_AFTER = 6.0


class _Node:
    """A member as the head sees it."""

    def __init__(self, name: str, handle: Any, info: dict[str, Any]) -> None:
        self.name, self.handle, self.info = name, handle, info
        self.view: dict[str, Any] | None = None
        self.state, self.reason = "alive", ""
        self.last_seen = time.monotonic()
        self.pending: Any = None
        self.pending_sent = 0.0
        self.last_start = 0.0
        self.heartbeat: dict[str, Any] = {}

    @property
    def alive(self) -> bool:
        return self.state == "alive"


class PoolHead(RemotePlacement, Dispatcher):
    """The head actor (``ray.remote(PoolHead)``, threaded; every method returns plain data).

    Parameters
    ----------
    address : str
        The pool's address, shown by status.
    metrics_port : int, optional
        Serve the pool's counters (queue, placements, preemptions, evictions) as Prometheus
        metrics on this port.
    """

    def __init__(self, address: str, metrics_port: int | None = None,
                 metrics_addr: str = "127.0.0.1") -> None:
        from ..node.metrics import PoolCounters

        self.address = address
        self.counters = PoolCounters()
        self.server = None
        if metrics_port is not None:
            from ..node import metrics

            self.server = metrics.serve(metrics_port, metrics_addr, node=False, nvml=False,
                                        pool=self.counters)
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._nodes: dict[str, _Node] = {}
        self._jobs: dict[str, dict[str, Any]] = {}
        self._queue = pl.Queue()
        self._ids = itertools.count(1)
        self._stats = {"lost": 0, "started": 0}
        self._threads = [threading.Thread(target=self._loop, args=(f, w), daemon=True,
                                          name=f"flexai-head-{f.__name__.strip('_')}")
                         for f, w in ((self._watch, False), (self._place, True))]
        for t in self._threads:
            t.start()

    # ---- members ------------------------------------------------------------------------------

    def register(self, name: str, info: dict[str, Any]) -> None:
        """Add (or re-add) the node ``name``, whose agent actor is running."""
        import ray

        handle = ray.get_actor(agent_actor_name(name))
        node = _Node(name, handle, info)
        sent = time.monotonic()
        report = ray.get(handle.report.remote(), timeout=CALL_TIMEOUT)  # its view, at once
        with self._lock:
            self._nodes[name] = node
        self._apply_report(node, report, sent)
        self._wake.set()

    def leave(self, name: str) -> None:
        """The node ``name`` leaves the pool (``flexai pool down``): its jobs are lost."""
        with self._lock:
            node = self._nodes.pop(name, None)
            if node is not None:
                self._lose_jobs(name, f"node {name} left the pool")

    def metrics_port(self) -> int | None:
        """The port of the counters' metrics server, or None."""
        return None if self.server is None else self.server.server_port

    # ---- jobs ---------------------------------------------------------------------------------

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Queue a job. ``spec``: argv, memory, compute, gpus, priority, models, origin,
        where, env, cwd. Returns ``{"ok": True, "job": id}`` or ``{"ok": False, "error":
        one line, "bad_value": bool}``."""
        with self._lock:
            try:
                request = self._request(spec)
            except ValueError as exc:
                return {"ok": False, "error": str(exc), "bad_value": True}
            job_id = f"job-{next(self._ids)}"
            now = time.time()
            self._jobs[job_id] = {
                "id": job_id, "argv": list(spec["argv"]), "memory": request.memory,
                "compute": request.compute, "gpus_wanted": request.gpus,
                "priority": request.priority,
                "models": sorted(request.models) if request.models else None,
                "origin": request.origin, "where": request.where,
                "env": dict(spec.get("env") or {}), "cwd": spec.get("cwd"),
                "remote_ok": bool(spec.get("remote_ok")), "remote": None,
                "state": "queued", "node": None, "gpus": [], "pid": None, "returncode": None,
                "reason": "", "wait_reason": "", "submitted_at": now, "started_at": None,
                "ended_at": None, "cancel": False}
            self._queue.push(job_id, request, now)
            self._changed.notify_all()
        self._wake.set()
        return {"ok": True, "job": job_id}

    def _request(self, spec: dict[str, Any]) -> Any:
        views = {n.name: n.view for n in self._nodes.values() if n.alive and n.view is not None}
        return admit(spec, views, set(self._nodes))

    def cancel(self, job_id: str, reason: str = "cancelled") -> dict[str, Any]:
        """Cancel a queued or running job. Returns ``{"ok": bool, "error": ...}``."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return {"ok": False, "bad_value": True,
                        "error": f"no job {job_id!r} in the pool (see flexai jobs; e.g. job-1)"}
            if job["state"] in FINAL:
                return {"ok": True, "state": job["state"]}
            job["cancel"], job["reason"] = True, reason
            if job["state"] == "queued":
                self._dequeue(job_id)
                self._finish(job, "cancelled", None)
                return {"ok": True, "state": "cancelled"}
            node = self._nodes.get(job["node"]) if job["state"] == "running" else None
        if node is not None:  # (a job still starting is stopped by _start when it returns)
            node.handle.stop.remote(job_id, 5.0, reason)
        self._wake.set()
        return {"ok": True, "state": "cancelling"}

    def job(self, job_id: str) -> dict[str, Any] | None:
        """The job's record, or None."""
        with self._lock:
            job = self._jobs.get(job_id)
            return None if job is None else dict(job)

    def wait(self, job_id: str, state: str, timeout: float = 5.0) -> dict[str, Any] | None:
        """Block up to ``timeout`` seconds until the job's state is no longer ``state``;
        return its record (None for an unknown job)."""
        deadline = time.monotonic() + min(timeout, 30.0)
        with self._changed:
            while True:
                job = self._jobs.get(job_id)
                if job is None or job["state"] != state:
                    return None if job is None else dict(job)
                left = deadline - time.monotonic()
                if left <= 0:
                    return dict(job)
                self._changed.wait(left)

    def jobs(self) -> list[dict[str, Any]]:
        """Every job's record, oldest first."""
        with self._lock:
            return [dict(j) for j in self._jobs.values()]

    # ---- the loop -----------------------------------------------------------------------------

    def _loop(self, step: Any, on_wake: bool) -> None:
        """Run ``step`` every heartbeat (and, for placement, as soon as something changed)
        until shutdown; it must survive anything one step does."""
        while not self._stop.is_set():
            if on_wake:
                self._wake.wait(HEARTBEAT)
                self._wake.clear()
            try:
                step()
            except Exception:
                traceback.print_exc(file=sys.stderr)
            if not on_wake:
                self._stop.wait(HEARTBEAT / 2)

    def _watch(self) -> None:
        """One heartbeat: ask every live agent for a report, apply those that came, declare
        lost the nodes silent for :data:`LOST_AFTER` seconds (or whose agent died)."""
        import ray

        with self._lock:
            nodes = [n for n in self._nodes.values() if n.alive]
        for n in nodes:
            if n.pending is None:
                n.pending, n.pending_sent = n.handle.report.remote(), time.monotonic()
        pending = [n.pending for n in nodes if n.pending is not None]
        if pending:
            ray.wait(pending, num_returns=len(pending), timeout=HEARTBEAT / 2)
        for n in nodes:
            if n.pending is None:
                continue
            ready, _ = ray.wait([n.pending], timeout=0)
            if ready:
                ref, sent, n.pending = n.pending, n.pending_sent, None
                try:
                    self._apply_report(n, ray.get(ref), sent)
                except ray.exceptions.RayError as exc:
                    self._lose_node(n, f"node {n.name}'s agent died ({type(exc).__name__})")
            elif time.monotonic() - n.last_seen > LOST_AFTER:
                self._lose_node(n, f"node {n.name} stopped answering for {LOST_AFTER:.0f} s")

    def _apply_report(self, node: _Node, report: dict[str, Any], sent: float) -> None:
        with self._lock:
            node.last_seen = time.monotonic()
            node.heartbeat = report["heartbeat"]
            if sent >= node.last_start:  # else the view predates a start: keep ours
                node.view = report["view"]
            by_id = {j["job_id"]: j for j in report["jobs"]}
            for job in self._jobs.values():
                if job["node"] != node.name or job["state"] != "running":
                    continue
                seen = by_id.get(job["id"])
                if seen is None or seen["state"] == "running":
                    continue
                rc = seen["returncode"]
                if job["cancel"]:
                    state = "evicted" if job["reason"].startswith("evicted") else "cancelled"
                else:
                    state = "exited" if seen["state"] == "exited" else "killed"
                self._finish(job, state, rc, seen.get("ended_at"))

    def _finish(self, job: dict[str, Any], state: str, rc: int | None,
                ended: float | None = None) -> None:
        job["state"], job["returncode"] = state, rc
        job["ended_at"] = ended or time.time()
        self._release_remote(job)  # a remote slice's booking on its GPU node (flexai.pool.remote)
        self._changed.notify_all()
        self._wake.set()

    def _lose_node(self, node: _Node, reason: str) -> None:
        import ray

        with self._lock:
            if not node.alive:
                return
            node.state, node.reason, node.pending = "lost", reason, None
            self._lose_jobs(node.name, reason)
        try:
            ray.kill(node.handle, no_restart=True)
        except Exception:
            pass

    def _lose_jobs(self, name: str, reason: str) -> None:
        for job in self._jobs.values():
            if job["node"] == name and job["state"] not in FINAL:
                job["reason"] = reason
                self._stats["lost"] += 1
                self._finish(job, "lost", None)
        self._lose_remote_jobs(name, reason)  # jobs elsewhere on a remote slice there

    # ---- status -------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The pool as plain data (see ``flexai.pool.status``)."""
        import ray

        from .overview import build_status

        with self._lock:
            nodes = list(self._nodes.values())
        refs = {n.name: n.handle.status.remote() for n in nodes if n.alive}
        details: dict[str, Any] = {}
        for name, ref in refs.items():
            try:
                details[name] = ray.get(ref, timeout=3.0)
            except Exception:
                details[name] = None
        with self._lock:
            return build_status(self.address, nodes, details, list(self._jobs.values()),
                                self.counters.values(), self._stats, pl.POLICY,
                                self.metrics_port())

    def ping(self) -> dict[str, Any]:
        """Cheap liveness of the head."""
        with self._lock:
            return {"time": time.time(), "nodes": len(self._nodes), "jobs": len(self._jobs),
                    "pid": os.getpid()}

    def shutdown(self) -> None:
        """Stop the loop and the metrics server (before the actor is killed)."""
        self._stop.set()
        self._wake.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
