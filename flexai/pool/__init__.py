"""The accelerator pool on Ray: ``flexai pool up|join|down|status``, ``flexai submit``, and the
same from Python.

    import flexai.pool
    job = flexai.pool.submit(["python", "train.py"], gpu_memory="8GiB", gpu_compute=30)
    job.status(); job.wait(timeout=600); job.logs(); job.cancel()
    flexai.pool.status()   # plain data: nodes, GPUs, free memory and compute, slices, queue
    flexai.pool.jobs(); flexai.pool.cancel("job-3")

Modules: ``placement`` (the policy's interface; a first-fit until flexai.policy is installed),
``member`` (this machine's node: pool directory, ``ray start``), ``lifecycle`` (up, join,
down), ``head`` and ``agent_actor`` (the Ray actors), ``client`` (submit, Job, status),
``overview`` (the status dict). Importing this package imports no Ray: names are resolved on
first use. This package must never print and never stop a Ray process it did not start.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "submit": "client",
    "status": "client",
    "jobs": "client",
    "cancel": "client",
    "connect": "client",
    "Job": "client",
    "JobLostError": "client",
    "PoolError": "member",
    "up": "lifecycle",
    "join": "lifecycle",
    "down": "lifecycle",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'flexai.pool' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
