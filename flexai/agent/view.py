"""The node as the scheduler sees it: :func:`gpu_views` turns NVML's GPUs, a snapshot of the
shared state and the agent's running jobs into the GPUs of flexai.policy's ``NodeView``, as
plain dicts (the pool rebuilds the dataclasses; the field names are the same).

Pure: it reads nothing and starts nothing, so it is tested on made-up snapshots. It must never
judge a job's values (the agent and the library did) and never import the policy or Ray.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from ..node.snapshot import NodeSnapshot
from .devices import Gpu


class JobLike(Protocol):
    """What the view needs of a job the agent started (``flexai.agent.jobs.Job``)."""

    job_id: str
    gpus: tuple[int, ...]
    priority: str
    memory: int
    compute: int
    guarantee: int


def _slice(job: str, priority: str, memory: int, compute: int,
           guarantee: int) -> dict[str, Any]:
    return {"job": job, "priority": priority, "memory": memory, "compute": compute,
            "guarantee": guarantee}


def gpu_views(gpus: Sequence[Gpu], snapshot: NodeSnapshot,
              running: Iterable[JobLike]) -> list[dict[str, Any]]:
    """The node's GPUs with what is free on each and the slices that hold it.

    Parameters
    ----------
    gpus : sequence of Gpu
        The node's GPUs (NVML), matched to the state's devices by UUID.
    snapshot : NodeSnapshot
        The node's slices and their limits and use.
    running : iterable of JobLike
        The agent's jobs that still run.

    Returns
    -------
    list of dict
        ``{index, model, memory_total, memory_free, compute_free, slices: [{job, priority,
        memory, compute, guarantee}]}`` per GPU. A slice holds its memory limit (what it uses
        where it has none) and its compute share. A job of the agent's holds at least what it
        asked for, from its start (before its processes attach), with its own priority
        (best-effort included) and guarantee. A slice none of whose processes lives, and that
        is no running job's, holds nothing.
    """
    jobs = {j.job_id: j for j in running}
    out = []
    for gpu in gpus:
        uuid = gpu.uuid.lower()
        held: dict[str, dict[str, Any]] = {}
        for s in snapshot.slices:
            job = jobs.get(s.name)
            if job is None and s.nprocs == 0:
                continue
            for d in s.devices:
                if d.device.lower() != uuid:
                    continue
                memory, compute = d.limit_bytes or d.used_bytes, d.compute
                if job is None:
                    held[s.name] = _slice(s.name, s.priority, memory, compute, compute)
                elif gpu.index in job.gpus:
                    held[s.name] = _slice(s.name, job.priority, max(memory, job.memory),
                                          max(compute, job.compute), job.guarantee)
        for job in jobs.values():  # started here, not attached yet
            if gpu.index in job.gpus and job.job_id not in held:
                held[job.job_id] = _slice(job.job_id, job.priority, job.memory, job.compute,
                                          job.guarantee)
        slices = list(held.values())
        out.append({
            "index": gpu.index, "model": gpu.model, "memory_total": gpu.memory_total,
            "memory_free": max(0, gpu.memory_total - sum(s["memory"] for s in slices)),
            "compute_free": max(0, 100 - sum(s["compute"] for s in slices)),
            "slices": slices})
    return out
