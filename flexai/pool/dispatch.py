"""The head's placement half (:class:`Dispatcher`, a mixin of ``PoolHead``): walk the queue,
ask ``flexai.pool.placement.decide`` for each waiting job, start it through its node's agent,
count the job in the node's view until the agent's own view shows it, and carry out the
preemption plans the policy makes (shrink through resize, evict through stop; a remote slice's
job is stopped on its origin and resized on its GPU node, see flexai.pool.remote).

It shares the head's tables and lock (``_lock``, ``_jobs``, ``_nodes``, ``_queue``,
``counters``, ``_stats``, ``_changed``, ``_finish``). This module must never print, never talk
to clients, and never hold the lock during a call to an agent.
"""
from __future__ import annotations

import time
from typing import Any

from . import placement as pl

#: The longest the head waits for one agent call.
CALL_TIMEOUT = 10.0
#: A job that preempted others waits this long for them to leave before it may preempt again.
PREEMPT_AGAIN = 15.0
#: Job states after which nothing changes.
FINAL = ("exited", "killed", "failed", "cancelled", "evicted", "lost")


class Dispatcher:
    """Placement for the head (see the module's docstring)."""

    _lock: Any
    _jobs: dict[str, dict[str, Any]]
    _nodes: dict[str, Any]
    _queue: Any
    _stats: dict[str, int]
    _changed: Any
    counters: Any

    def _finish(self, job: dict[str, Any], state: str, rc: int | None,
                ended: float | None = None) -> None:
        raise NotImplementedError

    def _pool_view(self) -> Any:
        with self._lock:
            views = [n.view for n in self._nodes.values() if n.alive and n.view is not None]
        return pl.view_from_dict(views)

    def _place(self) -> None:
        with self._lock:
            order = self._queue.ordered(time.time())
        if not order:
            self._count_queue()
            return
        view = self._pool_view()
        now = time.time()
        block_below = len(pl.PRIORITIES)  # the queue's rule (flexai.policy.queue): effective
        for job_id, request in order:     # ranks >= this wait behind one that cannot start
            with self._lock:
                job = self._jobs.get(job_id)
                if job is None or job["state"] != "queued":
                    self._dequeue(job_id)
                    continue
                rank = self._queue.effective_rank(job_id, now)
                starving = now - self._queue.since(job_id) >= self._queue.aging
            if rank >= block_below:
                with self._lock:
                    if not job["wait_reason"]:
                        self.counters.count_placement("queued")
                        job["wait_reason"] = "behind a waiting job of higher priority"
                continue
            decision = pl.decide(request, view)
            if isinstance(decision, pl.Wait) and getattr(decision, "never", False):
                with self._lock:  # the policy says it would not fit even an idle pool
                    self._dequeue(job_id)
                    job["reason"] = f"can never run in this pool: {decision.reason}"
                    self._finish(job, "failed", None)
                continue
            if isinstance(decision, pl.Wait):
                with self._lock:
                    if not job["wait_reason"]:
                        self.counters.count_placement("queued")
                    job["wait_reason"] = decision.reason
                block_below = min(block_below, rank if starving else rank + 1)
                continue
            if isinstance(decision, pl.Preempt):
                self._preempt(job, decision)
                # it starts on a later tick, when the view shows the room; until then the
                # room is its own: the jobs behind it are planned as if it had started
                try:
                    view = pl.apply_decision(view, request, decision, job_id)
                except ValueError:  # the view moved under the plan: replan on the next tick
                    pass
                continue
            self._start(job, decision)
            try:  # (the node's view has it too, see _reserve; this keeps the plans above)
                view = pl.apply_decision(view, request, decision, job_id)
            except ValueError:
                view = self._pool_view()
        self._count_queue()

    def _start(self, job: dict[str, Any], place: Any) -> None:
        import ray

        if self._goes_remote(job, place):  # a GPU-less origin's --remote-ok job
            self._start_remote(job, place)  # (flexai.pool.remote)
            return
        with self._lock:
            node = self._nodes.get(place.node)
            if node is None or not node.alive:
                return
            self._dequeue(job["id"])
            job["state"], job["node"], job["gpus"] = "starting", place.node, list(place.gpus)
            node.last_start = time.monotonic()
            self._reserve(node, job, place.gpus)
        try:
            pid = ray.get(node.handle.start.remote(
                job["id"], job["argv"], memory=job["memory"], compute=job["compute"],
                priority=job["priority"], gpus=list(place.gpus), env=job["env"],
                cwd=job["cwd"]), timeout=CALL_TIMEOUT)
        except Exception as exc:  # a bad command, or the agent is gone
            with self._lock:
                job["reason"] = f"could not start on {place.node}: {_cause(exc)}"
                self._finish(job, "failed", None)
            return
        self._started(job, pid, node)

    def _started(self, job: dict[str, Any], pid: int, node: Any, *others: Any) -> None:
        """Count ``job`` running as ``pid`` on ``node`` (``others``: nodes it also uses, a
        remote slice's GPU node), and stop it there if it was cancelled meanwhile."""
        with self._lock:
            now = time.monotonic()
            for n in (node, *others):
                n.last_start = now  # reports begun before now may not show it
            job["state"], job["pid"], job["started_at"] = "running", pid, time.time()
            self._stats["started"] += 1
            self.counters.count_placement("placed")
            self._changed.notify_all()
            cancel = job["cancel"]
        if cancel:
            node.handle.stop.remote(job["id"], 5.0, job["reason"] or "cancelled")

    def _reserve(self, node: Any, job: dict[str, Any], gpus: Any) -> None:
        """Count a job just placed in the node's view until the agent's own view has it."""
        if node.view is None:
            return
        for g in node.view["gpus"]:
            if g["index"] in gpus:
                g["memory_free"] = max(0, g["memory_free"] - job["memory"])
                g["compute_free"] = max(0, g["compute_free"] - job["compute"])
                g["slices"] = list(g["slices"]) + [{
                    "job": job["id"], "priority": job["priority"], "memory": job["memory"],
                    "compute": job["compute"], "guarantee": job["compute"]}]

    def _preempt(self, job: dict[str, Any], plan: Any) -> None:
        with self._lock:
            if time.monotonic() - job.get("preempting", -PREEMPT_AGAIN) < PREEMPT_AGAIN:
                return  # its victims are still leaving
            job["preempting"] = time.monotonic()
            self.counters.count_placement("preempted")
        for action in plan.actions:
            node = self._nodes.get(action.node)
            if node is None or not node.alive:
                continue
            self.counters.count_preemption()
            with self._lock:  # a remote slice's job runs on its origin (flexai.pool.remote)
                far, name = self._remote_victim(action.job, action.node) or (None, action.job)
            if isinstance(action, pl.Evict):
                self.counters.count_eviction()
                with self._lock:
                    victim = self._jobs.get(action.job) if far is None else far
                    if victim is not None and victim["state"] not in FINAL:
                        victim["cancel"] = True
                        victim["reason"] = (f"evicted by {job['id']} ({job['priority']} "
                                            "priority) to make room")
                    if far is not None:  # stopped there, it ends as any job (and _finish
                        node = self._nodes.get(far["node"])  # releases its booking)
                if node is not None and node.alive:
                    node.handle.stop.remote(action.job if far is None else far["id"], 5.0,
                                            f"evicted by {job['id']}")
            else:  # a remote job's compute is enforced by its slice on the GPU node
                node.handle.resize.remote(name, compute=action.compute)

    def _remote_victim(self, name: str, node: str) -> tuple[dict[str, Any], str] | None:
        """The job whose remote slice on ``node`` the policy calls ``name`` and that slice's
        name there, or None (a local job). ``flexai.pool.remote.RemotePlacement`` answers for
        the head; lock held."""
        return None

    def _dequeue(self, job_id: str) -> None:
        if job_id in self._queue:
            self._queue.remove(job_id)

    def _count_queue(self) -> None:
        with self._lock:
            waiting: dict[str, int] = {p: 0 for p in pl.PRIORITIES}
            for j in self._jobs.values():
                if j["state"] == "queued":
                    waiting[j["priority"]] = waiting.get(j["priority"], 0) + 1
        self.counters.set_queue(waiting)


def _cause(exc: BaseException) -> str:
    """The one-line reason of a failed agent call (the agent's own error where there is
    one)."""
    cause = getattr(exc, "cause", None)
    text = str(cause if cause is not None else exc).strip().splitlines()
    return (text[-1] if text else type(exc).__name__)[:300]
