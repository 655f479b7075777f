"""The node agent (``flexai agent``; in a pool, one Ray actor per node): reports the node's GPUs
(NVML), slices (the shared state, through the C API) and jobs, starts jobs in slices, stops
them and reports their exit. Plain Python: no Ray import here (the pool wraps it).

API (every method returns plain picklable data)::

    from flexai.agent import NodeAgent
    agent = NodeAgent(name=None, state_dir=None, env=None, log_dir=None)
    agent.info()      -> {name, hostname, version, devices: [{index, uuid, model,
                          memory_total}], cpus, host_memory, state_dir, log_dir, pid,
                          nvml_error}
    agent.view()      -> dict shaped as flexai.policy.NodeView (same field names):
                         {name, gpus: [{index, model, memory_total, memory_free, compute_free,
                          slices: [{job, priority, memory, compute, guarantee}]}],
                          cpu_milli_free, host_memory_free}
                         granted = each slice's memory limit (its use where it has none) and
                         compute share, plus jobs started here whose processes have not
                         attached yet (counted with what they asked for).
    agent.start(job_id, argv, *, memory=0, compute=0, priority="normal", gpus=(), burst=0,
                env=None, cwd=None, guarantee=None) -> pid
                         memory: bytes (or "8GiB") per GPU; gpus: NVML indices; priority:
                         high|normal|low|best-effort (best-effort runs at the library's low);
                         the job id is the slice name (letters, digits, - _ ., 1..63).
    agent.poll()      -> [{job_id, pid, state: running|exited|killed, returncode, started_at,
                          ended_at, reason, gpus, memory, compute, burst, priority, argv}]
    agent.read_logs(job_id, stream="stdout", offset=0, limit=65536)
                      -> (bytes, next_offset, finished)
    agent.stop(job_id, grace_s=5.0, reason="", wait=True)
                         SIGTERM the group, grace, SIGKILL; wait=False returns at once and
                         the first call after the grace sends the SIGKILL (no thread)
    agent.resize(job_id, compute=None, memory=None, burst=None) -> the job's poll() dict
    agent.heartbeat() -> {name, time, load, running, jobs, uptime}
    agent.snapshot()  -> flexai.node.NodeSnapshot (the node's state now)
    agent.close()     stops every job it started; idempotent

Errors are flexai's: ``BadValueError`` (a ValueError; bad job id, GPU index, size, priority),
``NotFoundError`` (a LookupError; unknown job). A job's leftover processes are killed when its
first process exits. NVML is read in the agent's own process: on the simulated device the
process must start with ``flexai.sim.sim_env(...)`` (LD_LIBRARY_PATH is read at start).

This package must never import Ray or load libflexai.so through LD_PRELOAD into itself.
"""
from __future__ import annotations

from .agent import BEST_EFFORT, NodeAgent
from .devices import Gpu, read_gpus

__all__ = ["BEST_EFFORT", "Gpu", "NodeAgent", "read_gpus"]
