"""The node agent as a Ray actor: :class:`AgentActor` wraps :class:`flexai.agent.NodeAgent`
on its node (pinned there, detached, named ``flexai-agent-<node>``) and adds what the head
needs in one call (:meth:`AgentActor.report`) plus the node's metrics server.

The actor starts with the node's environment in Ray's ``runtime_env`` (state directory,
simulated-device knobs, ``LD_LIBRARY_PATH`` for NVML), which Ray applies when it execs the
worker. This module must never decide placement, never import the head, and never load
libflexai.so through ``LD_PRELOAD`` into the actor (the agent is not a slice).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any


class AgentActor:
    """One node's agent, for Ray (``ray.remote(AgentActor)``; methods return plain data).

    Parameters
    ----------
    name : str
        The node's name in the pool.
    metrics_port : int, optional
        Serve the node's Prometheus metrics on this port (0: a free one; None: none).
    metrics_addr : str
        The metrics server's address.
    """

    def __init__(self, name: str, metrics_port: int | None = None,
                 metrics_addr: str = "127.0.0.1") -> None:
        from ..agent import NodeAgent

        env = dict(os.environ)
        env.pop("CUDA_VISIBLE_DEVICES", None)  # Ray's choice for this actor, not for jobs
        self.agent = NodeAgent(name=name, env=env)
        self._remote: Any = None  # flexai.agent.remoted.RemoteSlices, made on first use
        self.server = None
        if metrics_port is not None:
            from ..node import metrics

            self.server = metrics.serve(metrics_port, metrics_addr,
                                        state_dir=self.agent.state_dir)

    def info(self) -> dict[str, Any]:
        """The agent's ``info()`` plus ``metrics_port`` (None without metrics)."""
        out = self.agent.info()
        out["metrics_port"] = None if self.server is None else self.server.server_port
        return out

    def report(self) -> dict[str, Any]:
        """What the head reads every heartbeat: ``{heartbeat, view, jobs}``."""
        return {"heartbeat": self.agent.heartbeat(), "view": self.agent.view(),
                "jobs": self.agent.poll()}

    def status(self) -> dict[str, Any]:
        """The node as ``flexai.node.metrics.node_status`` shows it (for ``flexai pool
        status`` and ``flexai top --pool``)."""
        from ..node.metrics import node_status

        return node_status(self.agent.state_dir, snapshot=self.agent.snapshot(),
                           gpus=None, name=self.agent.name)

    def start(self, job_id: str, argv: Sequence[str], **kwargs: Any) -> int:
        """``NodeAgent.start``; returns the pid."""
        return self.agent.start(job_id, argv, **kwargs)

    def stop(self, job_id: str, grace_s: float = 5.0, reason: str = "") -> None:
        """``NodeAgent.stop``."""
        self.agent.stop(job_id, grace_s=grace_s, reason=reason)

    def resize(self, job_id: str, **kwargs: Any) -> dict[str, Any]:
        """``NodeAgent.resize`` (a remote slice booked here: ``RemoteSlices.resize``)."""
        if self._remote is not None and job_id in self._remote.bookings:
            return self._remote.resize(job_id, self.agent.state_dir, **kwargs)
        return self.agent.resize(job_id, **kwargs)

    def read_logs(self, job_id: str, stream: str = "stdout", offset: int = 0,
                  limit: int = 65536) -> tuple[bytes, int, bool]:
        """``NodeAgent.read_logs``."""
        return self.agent.read_logs(job_id, stream, offset, limit)

    def poll(self) -> list[dict[str, Any]]:
        """``NodeAgent.poll``."""
        return self.agent.poll()

    def exec_env(self, names: Sequence[str]) -> dict[str, Any]:
        """The variables ``names`` as this process was started with them (``/proc/self/
        environ``, not ``os.environ``), and whether libflexai.so is mapped here."""
        with open("/proc/self/environ", "rb") as f:
            raw = f.read().split(b"\0")
        env = dict(x.decode(errors="replace").split("=", 1) for x in raw if b"=" in x)
        with open("/proc/self/maps") as f:
            mapped = "libflexai.so" in f.read()
        return {"env": {k: env.get(k) for k in names}, "libflexai_mapped": mapped,
                "pid": os.getpid()}

    # ---- remote slices (flexai.agent.remoted, flexai.pool.remote) ----------------------------

    def _slices(self) -> Any:
        from ..agent.remoted import RemoteSlices

        if self._remote is None:
            env = dict(os.environ)
            env.pop("CUDA_VISIBLE_DEVICES", None)
            self._remote = RemoteSlices(env, self.agent.gpus, self.agent.log_dir)
            self.agent.bookings = self._remote.bookings
        return self._remote

    def remote_book(self, job_id: str, gpu: int, memory: int, compute: int,
                    priority: str) -> str:
        """Book job ``job_id``'s remote slice on GPU ``gpu`` and return the ``HOST:PORT`` of
        that GPU's ``flexai remoted`` (started now, on this node's Ray address, if needed)."""
        import ray

        from .remote import read_token

        token = read_token()
        if not token:
            from .._ffi import BadValueError

            raise BadValueError(f"node {self.agent.name} has no remote-slice token (a pool "
                                "made before remote slices: `flexai pool down`, then up again)")
        slices = self._slices()
        address = slices.endpoint(gpu, ray.util.get_node_ip_address(), token)
        slices.book(job_id, gpu, memory, compute, priority,
                    0 if priority == "best-effort" else compute)
        return address

    def remote_release(self, job_id: str) -> bool:
        """Drop job ``job_id``'s remote-slice booking; True when there was one."""
        return self._remote is not None and self._remote.release(job_id)

    def remote_bookings(self) -> list[dict[str, Any]]:
        """The remote slices booked on this node."""
        return [] if self._remote is None else [b.to_dict()
                                                for b in self._remote.bookings.values()]

    def start_remote(self, job_id: str, argv: Sequence[str], address: str,
                     **kwargs: Any) -> int:
        """Start a job here whose CUDA calls go to the remote slice at ``address``
        (``flexai.agent.remoted.start_remote_job``); returns the pid."""
        from ..agent.remoted import start_remote_job
        from .remote import read_token

        return start_remote_job(self.agent, job_id, argv, address, read_token(), **kwargs)

    def close(self, grace_s: float = 5.0) -> None:
        """Stop every job this agent started and the metrics server."""
        if self._remote is not None:
            self._remote.close()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        self.agent.close(grace_s)
