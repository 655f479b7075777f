"""Remote slices in the pool, the agent's half: on a GPU node, :class:`RemoteSlices` runs one
``flexai remoted`` per GPU (started on demand, listening on the node's address, pinned to that
GPU through ``CUDA_VISIBLE_DEVICES``) and keeps the *bookings* of the remote slices the head
placed there, which the node's view counts like jobs (so they hold capacity from the moment
they are placed); on a GPU-less node, :func:`start_remote_job` starts a job with flexai's client
``libcuda.so.1`` pointed at such a server (``flexai.remote.remote_env``).

The pool's shared secret (``FLEXAI_REMOTE_TOKEN``) is read from the pool directory
(``flexai.pool.remote.read_token``) and only ever put in the environment of the server and of
the job. This module must never import Ray, never print, never log the token, and never load
libflexai.so into the agent's own process.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._ffi import BadValueError
from ..node.launch import without_flexai
from ..remote.wire import RUN_DIR_VARIABLE, TOKEN_VARIABLE, slice_name
from ..spec import env_of, variable, variables

#: How long a new ``flexai remoted`` may take to listen (seconds; a busy 2-core machine).
START_TIMEOUT = 30.0


@dataclass
class Booking:
    """A remote slice booked on one GPU of this node (the shape ``gpu_views`` counts)."""

    job_id: str  # the slice's name on this node: "remote-<job>"
    gpus: tuple[int, ...]
    priority: str
    memory: int
    compute: int
    guarantee: int
    booked_at: float

    def to_dict(self) -> dict[str, Any]:
        return {"slice": self.job_id, "gpus": list(self.gpus), "priority": self.priority,
                "memory": self.memory, "compute": self.compute, "booked_at": self.booked_at}


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _format(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class RemoteSlices:
    """The remote-slice servers and bookings of one GPU node.

    Parameters
    ----------
    env : Mapping
        The node's environment (its simulated-device knobs, state directory, driver
        libraries); each server starts from it.
    gpus : sequence
        The node's GPUs (``flexai.agent.devices.Gpu``: ``index``, ``uuid``).
    log_dir : path
        Where the servers' logs and sessions files go.
    """

    def __init__(self, env: Mapping[str, str], gpus: Sequence[Any], log_dir: Path) -> None:
        self._env = dict(env)
        self._gpus = {g.index: g for g in gpus}
        self.log_dir = Path(log_dir)
        self._servers: dict[int, tuple[subprocess.Popen, str]] = {}
        self.bookings: dict[str, Booking] = {}
        self._lock = threading.Lock()  # one server start per GPU at a time

    def endpoint(self, gpu: int, host: str, token: str) -> str:
        """``HOST:PORT`` of the server of GPU ``gpu``, started now when none runs.

        Raises
        ------
        BadValueError
            No such GPU on this node, or the server did not come up (its log's last line).
        """
        if gpu not in self._gpus:
            raise BadValueError(f"remote slice: no GPU {gpu!r} on this node (expected e.g. 0)")
        with self._lock:
            return self._endpoint(gpu, host, token)

    def _endpoint(self, gpu: int, host: str, token: str) -> str:
        old = self._servers.get(gpu)
        if old is not None and old[0].poll() is None:
            return old[1]
        port = _free_port(host)
        address = _format(host, port)
        env = dict(self._env)
        env["CUDA_VISIBLE_DEVICES"] = self._gpus[gpu].uuid
        env[TOKEN_VARIABLE] = token
        env[RUN_DIR_VARIABLE] = str(self.log_dir / "remoted")
        log = self.log_dir / f"remoted-gpu{gpu}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "flexai", "remoted", "--listen",
                                     address], env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if "listening on" in log.read_text(errors="replace"):
                self._servers[gpu] = (proc, address)
                return address
            time.sleep(0.05)
        _stop(proc)
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        why = lines[-1][-200:] if lines else "no output"
        raise BadValueError(f"remote slice: flexai remoted for GPU {gpu} did not start: {why}")

    def book(self, job_id: str, gpu: int, memory: int, compute: int, priority: str,
             guarantee: int) -> Booking:
        """Book job ``job_id``'s remote slice on GPU ``gpu`` (counted in the node's view
        until :meth:`release`)."""
        if gpu not in self._gpus:
            raise BadValueError(f"remote slice: no GPU {gpu!r} on this node (expected e.g. 0)")
        b = Booking(slice_name(job_id), (gpu,), priority, int(memory), int(compute),
                    min(int(guarantee), int(compute)), time.time())
        self.bookings[b.job_id] = b
        return b

    def release(self, job_id: str) -> bool:
        """Drop job ``job_id``'s booking; True when there was one."""
        return self.bookings.pop(slice_name(job_id), None) is not None

    def resize(self, job_id: str, state_dir: str, **values: Any) -> dict[str, Any]:
        """Change a booked remote slice's compute share and/or memory quota
        (``flexai.node.control.resize`` on its GPU; the policy's ``Shrink``) and its booking.

        Raises
        ------
        NotFoundError
            No such booking, or its session has not attached yet (try again).
        """
        from .._ffi import NotFoundError
        from ..node.control import resize

        booking = self.bookings.get(slice_name(job_id))
        if booking is None:
            raise NotFoundError(f"resize: no remote slice {slice_name(job_id)!r} booked here")
        done = resize(booking.job_id, device=self._gpus[booking.gpus[0]].uuid,
                      state_dir=state_dir, **values)
        if done.memory is not None:
            booking.memory = done.memory
        if done.compute is not None:
            booking.compute = done.compute
            booking.guarantee = min(booking.guarantee, booking.compute)
        return booking.to_dict()

    def servers(self) -> dict[int, str]:
        """GPU index -> the address of its running server."""
        return {g: a for g, (p, a) in self._servers.items() if p.poll() is None}

    def close(self) -> None:
        """Stop every server (which ends their sessions) and forget the bookings."""
        for proc, _ in self._servers.values():
            _stop(proc)
        self._servers.clear()
        self.bookings.clear()


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, 9)
            except OSError:
                pass
            proc.wait(timeout=5)


def remote_job_env(node_env: Mapping[str, str], address: str, token: str, job_id: str, *,
                   memory: int, compute: int, priority: str,
                   extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a job on this (GPU-less) node whose CUDA driver calls run in the
    remote slice ``remote-<job_id>`` at ``address`` with the given quota.

    Raises
    ------
    BadValueError
        A bad address or value.
    """
    from ..remote.client import remote_env

    node_level = [v.name for v in variables() if not v.per_slice]
    base = without_flexai(node_env, keep=node_level)
    base.update(extra or {})
    levels = variable("priority").choices
    lib_priority = priority if priority in levels else ("low" if "low" in levels else levels[0])
    asked = env_of(slice=job_id, priority=lib_priority, gpu_memory=memory or None,
                   gpu_compute=compute or None)
    base[TOKEN_VARIABLE] = token
    return remote_env(base, address, asked)


def start_remote_job(agent: Any, job_id: str, argv: Sequence[str], address: str, token: str, *,
                     memory: int, compute: int, priority: str,
                     env: Mapping[str, str] | None = None, cwd: str | None = None) -> int:
    """Start ``argv`` on ``agent``'s node (a ``NodeAgent``) with its CUDA driver calls going to
    the remote slice at ``address``; the job is one of the agent's (poll, logs, stop) with no
    GPU of this node. Returns its pid.

    Raises
    ------
    BadValueError
        A bad value; FileNotFoundError/PermissionError: the command cannot be run.
    """
    if not argv:
        raise BadValueError("start: empty command (expected e.g. ['python', 'train.py'])")
    job_env = remote_job_env(agent._env, address, token, job_id, memory=memory,
                             compute=compute, priority=priority, extra=env)
    job = agent._jobs.start(job_id, argv, job_env, cwd, gpus=(), uuids=(), memory=memory,
                            compute=compute, burst=0, guarantee=compute, priority=priority)
    return job.pid
