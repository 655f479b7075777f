"""The pool from a program: :func:`submit` returns a :class:`Job` handle (status, logs, wait,
cancel, stream); :func:`status`, :func:`jobs`, :func:`cancel`; :func:`connect` finds the
pool (``address``, else this machine's node record) or, with ``start=True``, starts the
embedded local pool.

Clients talk to the head actor for the job table and to the job's node agent for its output.
Every call to an actor is bounded (:data:`CALL_TIMEOUT`): a pool that stops answering raises
``PoolError``, it never hangs. This module must never print and never exec a job itself.
"""
from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import IO, Any, Callable

from .._ffi import BadValueError, parse_size
from .member import HEAD_ACTOR, NAMESPACE, PoolError, agent_actor_name, pool_dir, read_record

#: The longest one call to the head or an agent may take (seconds).
CALL_TIMEOUT = 15.0
#: States after which a job never changes.
FINAL = ("exited", "killed", "failed", "cancelled", "evicted", "lost")


class JobLostError(PoolError):
    """The node running the job stopped answering (agent killed, node removed)."""


def _ray() -> Any:
    try:
        import ray
    except ImportError:  # pragma: no cover - ray is a dependency of the pool extra
        raise PoolError("the pool needs Ray: pip install 'flexai[pool]'") from None
    return ray


def connect(address: str | None = None, *, start: bool = False,
            env: Mapping[str, str] | None = None) -> str:
    """Connect this process to the pool; return its address.

    Parameters
    ----------
    address : str, optional
        ``HOST:PORT`` of the pool; default: this machine's node (``flexai pool up|join``).
    start : bool
        With no pool on this machine, start the embedded one (a local head and agent on
        loopback, kept in the pool directory until ``flexai pool down``).

    Raises
    ------
    PoolError
        No pool, and ``start`` is False.
    """
    from .lifecycle import connect_ray, up

    ray = _ray()
    if ray.is_initialized():
        return ray.get_runtime_context().gcs_address
    if address is None:
        record = read_record(env)
        if record is not None and record.alive():
            address = record.address
        elif start:
            d = pool_dir(env) / "ray"  # Ray's socket paths must stay short
            address = up(embedded=True, port=_free_port(), node_ip="127.0.0.1", env=env,
                         temp_dir=str(d) if len(str(d)) <= 40 else None).address
        else:
            raise PoolError(f"no pool runs on this machine ({pool_dir(env)}); start one with "
                            "`flexai pool up`, or give its address (e.g. --address "
                            "10.0.0.5:6379)")
    connect_ray(address)
    return address


def _free_port() -> int:
    from .member import _free_ports

    return _free_ports(1)[0]


def _head() -> Any:
    ray = _ray()
    try:
        return ray.get_actor(HEAD_ACTOR, namespace=NAMESPACE)
    except ValueError:
        raise PoolError("this Ray cluster has no flexai pool head (start one with "
                        "`flexai pool up`)") from None


def _call(ref: Any, timeout: float = CALL_TIMEOUT) -> Any:
    ray = _ray()
    try:
        return ray.get(ref, timeout=timeout)
    except ray.exceptions.GetTimeoutError:
        raise PoolError(f"the pool did not answer within {timeout:.0f} s") from None
    except ray.exceptions.RayActorError as exc:
        raise PoolError(f"the pool's actor died: {type(exc).__name__}") from None


def _size(option: str, value: int | str | None) -> int:
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise BadValueError(f"{option} {value}: not a size (e.g. {option} 8GiB)")
        return value
    try:
        return parse_size(str(value))
    except BadValueError as exc:
        raise BadValueError(f"{option} {value!r}: {exc}") from None


def request_spec(argv: Sequence[str], *, gpu_memory: int | str | None = None,
                 gpu_compute: int | None = None, priority: str = "normal",
                 gpu_model: str | Sequence[str] | None = None, gpus: int | None = None,
                 local_only: bool = False, env: Mapping[str, str] | None = None,
                 cwd: str | None = None, remote_ok: bool = False) -> dict[str, Any]:
    """The job spec the head takes, with the values checked that need no pool (sizes,
    compute, priority); raises BadValueError with an example."""
    from .placement import PRIORITIES

    if not argv:
        raise BadValueError("missing the command (e.g. flexai submit --gpu-memory 8GiB -- "
                            "python train.py)")
    from ..spec import variable

    memory = _size(variable("gpu_memory").option or "gpu_memory", gpu_memory)
    if gpu_compute is not None and (isinstance(gpu_compute, bool) or
                                    not isinstance(gpu_compute, int) or
                                    not 1 <= gpu_compute <= 100):
        raise BadValueError(f"--gpu-compute {gpu_compute!r}: a percent of one GPU, 1..100 "
                            "(e.g. --gpu-compute 30)")
    if priority not in PRIORITIES:
        raise BadValueError(f"--priority {priority!r}: one of {', '.join(PRIORITIES)} "
                            "(e.g. --priority high)")
    models = [gpu_model] if isinstance(gpu_model, str) else list(gpu_model or [])
    if gpus is None:
        gpus = 1 if (memory or gpu_compute) else 0
    return {"argv": [str(a) for a in argv], "memory": memory, "compute": gpu_compute or 0,
            "gpus": gpus, "priority": priority, "models": models or None,
            "where": "local-only" if local_only else "prefer-local",
            "origin": _origin(), "env": dict(env or {}), "cwd": cwd,
            "remote_ok": bool(remote_ok)}


def _origin() -> str | None:
    record = read_record()
    return record.name if record is not None and record.alive() else None


def submit(argv: Sequence[str], *, gpu_memory: int | str | None = None,
           gpu_compute: int | None = None, priority: str = "normal",
           gpu_model: str | Sequence[str] | None = None, gpus: int | None = None,
           local_only: bool = False, env: Mapping[str, str] | None = None,
           cwd: str | None = None, address: str | None = None, start: bool = True,
           remote_ok: bool = False) -> Job:
    """Submit ``argv`` to run in a slice on the node the policy chooses.

    Parameters
    ----------
    argv : sequence of str
        The command, e.g. ``["python", "train.py"]``.
    gpu_memory : int or str
        Memory quota (bytes or a size such as ``"8GiB"``); 0/None: none booked.
    gpu_compute : int
        Compute share in percent (1..100); default 100 when the job has a GPU.
    priority : str
        ``high``, ``normal``, ``low`` or ``best-effort``.
    gpu_model : str or list of str
        GPU models the job accepts (as ``flexai pool status`` shows them).
    gpus : int
        0: CPU only; 1: a slice of one GPU (the default with memory or compute); more: whole
        GPUs on one node.
    local_only : bool
        Run on this machine's node only (wait rather than go remote).
    env, cwd
        Added environment and working directory of the job on its node.
    address, start
        See :func:`connect`; by default the embedded pool starts when none runs.
    remote_ok : bool
        On a node without a GPU: run the job here, its CUDA driver calls going to a remote
        slice on the GPU node the policy chose (flexai.pool.remote). Without it such a job
        is started on the GPU node itself.

    Returns
    -------
    Job

    Raises
    ------
    BadValueError
        A malformed size, unknown GPU model, memory larger than any GPU, ...
    PoolError
        The pool cannot be reached.
    """
    spec = request_spec(argv, gpu_memory=gpu_memory, gpu_compute=gpu_compute,
                        priority=priority, gpu_model=gpu_model, gpus=gpus,
                        local_only=local_only, env=env, cwd=cwd, remote_ok=remote_ok)
    connect(address, start=start)
    head = _head()
    answer = _call(head.submit.remote(spec))
    if not answer["ok"]:
        raise (BadValueError if answer.get("bad_value") else PoolError)(answer["error"])
    return Job(answer["job"], head)


class Job:
    """A handle on a submitted job (``flexai.pool.submit`` returns one)."""

    def __init__(self, job_id: str, head: Any = None) -> None:
        self.id = job_id
        self._head = head if head is not None else _head()
        self._offsets = {"stdout": 0, "stderr": 0}
        self._record: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"Job({self.id!r}, state={self._record.get('state', '?')!r})"

    def status(self) -> dict[str, Any]:
        """The job's record: ``{id, state, node, gpus, pid, returncode, reason, priority,
        memory, compute, submitted_at, started_at, ended_at, wait_reason, argv, ...}``;
        state is one of queued, starting, running, exited, killed, failed, cancelled,
        evicted, lost."""
        record = _call(self._head.job.remote(self.id))
        if record is None:
            raise BadValueError(f"no job {self.id!r} in the pool (see flexai jobs)")
        self._record = record
        return record

    def cancel(self) -> None:
        """Cancel the job (queued: dropped; running: SIGTERM, grace, SIGKILL on its node)."""
        answer = _call(self._head.cancel.remote(self.id))
        if not answer["ok"]:
            raise BadValueError(answer["error"])

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """Wait until the job ends; return its final record.

        Raises
        ------
        TimeoutError
            Not ended within ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        record = self.status()
        while record["state"] not in FINAL:
            left = 5.0 if deadline is None else min(5.0, deadline - time.monotonic())
            if left <= 0:
                raise TimeoutError(f"{self.id} is still {record['state']} after {timeout} s")
            record = _call(self._head.wait.remote(self.id, record["state"], left),
                           timeout=left + CALL_TIMEOUT) or record
        self._record = record
        return record

    def logs(self, stream: str = "stdout") -> bytes:
        """Everything the job has written to ``stream`` so far (b"" before it starts)."""
        record = self.status()
        if not record["node"] or record["state"] in ("queued", "starting", "failed"):
            return b""
        agent = self._agent(record["node"])
        out, offset = b"", 0
        while True:
            data, offset, finished = _call(agent.read_logs.remote(self.id, stream, offset))
            out += data
            if not data or finished:
                return out

    def _agent(self, node: str) -> Any:
        ray = _ray()
        try:
            return ray.get_actor(agent_actor_name(node), namespace=NAMESPACE)
        except ValueError:
            raise JobLostError(f"{self.id}: node {node}'s agent is gone") from None

    def stream(self, stdout: IO[bytes], stderr: IO[bytes],
               on_state: Callable[[dict[str, Any]], None] | None = None,
               poll_s: float = 0.05) -> dict[str, Any]:
        """Copy the job's output to ``stdout``/``stderr`` as it comes, until it ends; return
        the final record. ``on_state`` is called with the record at each state change.

        Raises
        ------
        JobLostError
            The job's node stopped answering (the record says why).
        """
        record = self.status()
        seen = None
        while record["state"] in ("queued", "starting"):
            if on_state is not None and record["state"] != seen:
                on_state(record)
            seen = record["state"]
            record = _call(self._head.wait.remote(self.id, record["state"], 5.0)) or record
        if on_state is not None and record["state"] != seen:
            on_state(record)
        if record["state"] in ("failed", "cancelled", "lost") and not record["started_at"]:
            return record
        agent = self._agent(record["node"])
        finished = {"stdout": False, "stderr": False}
        sinks = {"stdout": stdout, "stderr": stderr}
        idle = poll_s
        while not all(finished.values()):
            got = False
            for name in ("stdout", "stderr"):
                if finished[name]:
                    continue
                try:
                    data, self._offsets[name], finished[name] = _call(
                        agent.read_logs.remote(self.id, name, self._offsets[name]), timeout=5)
                except PoolError:
                    record = self.wait(timeout=3 * CALL_TIMEOUT)
                    if record["state"] == "lost":
                        raise JobLostError(f"{self.id} lost: {record['reason']}") from None
                    return record
                if data:
                    got = True
                    sinks[name].write(data)
                    sinks[name].flush()
            idle = poll_s if got else min(0.25, idle * 1.5)
            if not got:
                time.sleep(idle)
        record = self.wait(timeout=3 * CALL_TIMEOUT)
        if on_state is not None:
            on_state(record)
        return record


def status(address: str | None = None) -> dict[str, Any]:
    """The pool as plain data (nodes with GPUs, free memory and compute, slices; the queue;
    jobs; counters): see flexai.pool.status for the shape.

    Raises
    ------
    PoolError
        No pool runs on this machine (no address given) or it does not answer.
    """
    connect(address)
    return _call(_head().status.remote())


def jobs(address: str | None = None) -> list[dict[str, Any]]:
    """Every job's record, oldest first (see :meth:`Job.status`)."""
    from .overview import public_job

    connect(address)
    return [public_job(j) for j in _call(_head().jobs.remote())]


def cancel(job_id: str, address: str | None = None) -> None:
    """Cancel ``job_id``; BadValueError for an unknown job."""
    connect(address)
    Job(job_id).cancel()


def this_node(env: Mapping[str, str] | None = None) -> str | None:
    """The name of this machine's pool node, or None."""
    record = read_record(env if env is not None else os.environ)
    return record.name if record is not None and record.alive() else None
