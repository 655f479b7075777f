"""Remote slices in the pool, the head's half, and the pool's shared secret.

``flexai submit --remote-ok`` on a node without a GPU: when the policy places such a job on
another node's GPU, the head (:class:`RemotePlacement`, a mixin of ``PoolHead``) books the
slice on that GPU node (its agent starts a ``flexai remoted`` for that GPU on demand and counts
the booking in its view), then starts the job on the *origin* node with flexai's client
``libcuda.so.1`` pointed at that server, and releases the booking when the job ends. Without
``--remote-ok`` nothing here runs: the job is shipped to the GPU node and runs there.

The token (``FLEXAI_REMOTE_TOKEN`` of every server and remote job) is made by ``flexai pool
up``, kept in the pool directory as ``remote-token`` (mode 0600), and handed to members at
``flexai pool join`` through the head. This module must never print or log the token, never
put it in a job's record, and never hold the head's lock during a call to an agent.
"""
from __future__ import annotations

import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..remote.wire import SLICE_PREFIX, slice_name
from .dispatch import FINAL
from .member import pool_dir

#: The token's file in the pool directory.
TOKEN_FILE = "remote-token"
#: The longest the head waits for a GPU node to start its server and book the slice.
BOOK_TIMEOUT = 45.0


def token_path(env: Mapping[str, str] | None = None) -> Path:
    """Where this node keeps the pool's remote-slice token."""
    return pool_dir(env) / TOKEN_FILE


def write_token(value: str, env: Mapping[str, str] | None = None) -> None:
    """Keep ``value`` as this node's token (created 0600, replaced atomically)."""
    path = token_path(env)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, value.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def new_token(env: Mapping[str, str] | None = None) -> None:
    """Make a fresh token for a new pool (``flexai pool up``)."""
    write_token(secrets.token_hex(32), env)


def read_token(env: Mapping[str, str] | None = None) -> str:
    """This node's token ("" when it has none: a pool made before remote slices)."""
    try:
        return token_path(env).read_text().strip()
    except OSError:
        return ""


class RemotePlacement:
    """The head's remote-slice placement (see the module's docstring). It shares the head's
    tables and lock, like ``flexai.pool.dispatch.Dispatcher``."""

    _lock: Any
    _jobs: dict[str, dict[str, Any]]
    _nodes: dict[str, Any]
    _stats: dict[str, int]
    _changed: Any
    counters: Any
    # and the head's _finish, the dispatcher's _dequeue and _reserve (not restated here: this
    # class comes first in PoolHead's bases)

    def remote_token(self) -> str:
        """The pool's token, for a node joining it (``flexai pool join``)."""
        return read_token()

    def _goes_remote(self, job: dict[str, Any], place: Any) -> bool:
        """Whether ``place`` is a remote slice for ``job``: it asked for one (``remote_ok``),
        it wants one GPU, and its origin is a live member without a GPU."""
        if not job.get("remote_ok") or len(place.gpus) != 1 or job["origin"] in (None,
                                                                                 place.node):
            return False
        with self._lock:
            origin = self._nodes.get(job["origin"])
            return origin is not None and origin.alive and origin.view is not None \
                and not origin.view.get("gpus")

    def _start_remote(self, job: dict[str, Any], place: Any) -> None:
        """Book the slice on ``place``'s GPU, start the job on its origin pointed at it."""
        import ray

        from .dispatch import CALL_TIMEOUT, _cause

        gpu = int(place.gpus[0])
        with self._lock:
            target, origin = self._nodes.get(place.node), self._nodes.get(job["origin"])
            if target is None or not target.alive or origin is None or not origin.alive:
                return
            self._dequeue(job["id"])
            job["state"], job["node"], job["gpus"] = "starting", origin.name, []
            job["remote"] = {"node": place.node, "gpu": gpu, "address": None,
                             "released": False}
            target.last_start = time.monotonic()
            self._reserve(target, job, place.gpus)
        step = f"booking a slice on {place.node}"
        try:
            address = ray.get(target.handle.remote_book.remote(
                job["id"], gpu, job["memory"], job["compute"], job["priority"]),
                timeout=BOOK_TIMEOUT)
            with self._lock:
                job["remote"]["address"] = address
            step = f"starting on {origin.name}"
            pid = ray.get(origin.handle.start_remote.remote(
                job["id"], job["argv"], address, memory=job["memory"], compute=job["compute"],
                priority=job["priority"], env=job["env"], cwd=job["cwd"]),
                timeout=CALL_TIMEOUT)
        except Exception as exc:
            with self._lock:
                job["reason"] = f"remote slice: {step} failed: {_cause(exc)}"
                self._finish(job, "failed", None)  # releases the booking
            return
        self._started(job, pid, origin, target)

    def _remote_victim(self, name: str, node: str) -> tuple[dict[str, Any], str] | None:
        """The job whose remote slice on ``node`` a preemption plan calls ``name`` (the GPU
        node's view names it ``remote-<job>``, the head's own count ``<job>`` until the next
        report) and the slice's name there, or None for a local job. Lock held."""
        job = self._jobs.get(name)
        if job is None and name.startswith(SLICE_PREFIX):
            job = self._jobs.get(name[len(SLICE_PREFIX):])
        remote = job.get("remote") if job is not None else None
        if not remote or remote["node"] != node:
            return None
        return job, slice_name(job["id"])

    def _lose_remote_jobs(self, name: str, reason: str) -> None:
        """Node ``name`` is gone (lock held): the jobs whose remote slice was there are lost,
        and stopped on their own nodes (their CUDA calls could only fail from now on)."""
        for job in self._jobs.values():
            remote = job.get("remote")
            if not remote or remote["node"] != name or job["state"] in FINAL:
                continue
            remote["released"] = True  # with the node
            job["cancel"], job["reason"] = True, f"its remote slice is gone: {reason}"
            self._stats["lost"] += 1
            self._finish(job, "lost", None)
            origin = self._nodes.get(job["node"])
            if origin is not None and origin.alive:
                origin.handle.stop.remote(job["id"], 5.0, job["reason"])

    def _release_remote(self, job: dict[str, Any]) -> None:
        """Drop a finished job's booking on its GPU node (once; never waits for the agent)."""
        remote = job.get("remote")
        if not remote or remote["released"]:
            return
        remote["released"] = True
        node = self._nodes.get(remote["node"])
        if node is None or not node.alive:
            return
        node.last_start = time.monotonic()  # a report begun before now may still show it
        if node.view is not None:  # count it free at once, like _reserve counts it held
            for g in node.view["gpus"]:
                if g["index"] == remote["gpu"]:
                    held = [s for s in g["slices"] if s["job"] in (job["id"],
                                                                   "remote-" + job["id"])]
                    for s in held:
                        g["memory_free"] = min(g["memory_total"],
                                               g["memory_free"] + s["memory"])
                        g["compute_free"] = min(100, g["compute_free"] + s["compute"])
                    g["slices"] = [s for s in g["slices"] if s not in held]
        node.handle.remote_release.remote(job["id"])
