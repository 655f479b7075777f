""":class:`NodeAgent`: one node's agent. It reports the node (NVML's GPUs, the shared state's
slices, the jobs it started), starts jobs in slices, stops them and reports their exit; every
method returns plain picklable data, so the pool can wrap it in a Ray actor and ``flexai
agent`` can run it alone.

It must never import Ray, never load libflexai.so through ``LD_PRELOAD`` into its own process
(it is not a slice: it reads the state through the C API), never restate a ``FLEXAI_*`` name
(flexai.spec has them) and never print.
"""
from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .._ffi import LIB_DIR_VARIABLE, BadValueError, NotFoundError, parse_size
from ..node.launch import slice_env, without_flexai
from ..node.snapshot import NodeSnapshot
from ..node.state import Node, effective_state_dir
from ..sim import SIM_PREFIX
from ..spec import env_of, parse_config, variable, variables
from .devices import Gpu, read_gpus
from .jobs import JobTable
from .view import gpu_views

#: The priority below the library's lowest: a job that any other may take compute from. The
#: slice runs at the library's lowest priority.
BEST_EFFORT = "best-effort"


def _priorities() -> tuple[str, ...]:
    """Accepted priorities: the library's (``low``, ``normal``, ``high``) and best-effort."""
    return (*variable("priority").choices, BEST_EFFORT)


def _lowest_priority() -> str:
    """The library's lowest priority, which best-effort jobs run at."""
    choices = variable("priority").choices
    return "low" if "low" in choices else choices[0]


def _host_memory() -> tuple[int, int]:
    """(total, available) bytes of host memory from /proc/meminfo; (0, 0) where unreadable."""
    values: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                values[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return 0, 0
    return values.get("MemTotal", 0), values.get("MemAvailable", 0)


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class NodeAgent:
    """The agent of one node.

    Parameters
    ----------
    name : str, optional
        The node's name in the pool (default: the host name).
    state_dir : path, optional
        The node's flexai state directory (default: ``env``'s, else this process's
        ``FLEXAI_STATE_DIR``, else the library's default).
    env : Mapping, optional
        The environment jobs start from (default: this process's). Its per-slice ``FLEXAI_*``
        settings and ``LD_PRELOAD`` are dropped; node settings (driver libraries, simulated
        device knobs, context memory, log level) are kept.
    log_dir : path, optional
        Where jobs' stdout and stderr go (``<job>.stdout``, ``<job>.stderr``); default a
        temporary directory removed by :meth:`close`.

    Notes
    -----
    NVML is read in this process: on the simulated device, start the process with
    ``flexai.sim.sim_env`` (``LD_LIBRARY_PATH`` must be set before it starts).
    """

    def __init__(self, name: str | None = None, state_dir: str | os.PathLike[str] | None = None,
                 env: Mapping[str, str] | None = None,
                 log_dir: str | os.PathLike[str] | None = None) -> None:
        self._env = dict(os.environ if env is None else env)
        state_var = variable("state_dir").name
        self.state_dir = effective_state_dir(state_dir or self._env.get(state_var))
        self.name = name or socket.gethostname()
        self._own_log_dir = log_dir is None
        self.log_dir = Path(tempfile.mkdtemp(prefix="flexai-agent-") if log_dir is None
                            else log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._jobs = JobTable(self.log_dir)
        self._gpus, self._nvml_error = read_gpus()
        #: Slices held on this node's GPUs for jobs elsewhere (remote slices booked by the
        #: pool, flexai.agent.remoted): slice name -> a job-like record, counted by view().
        self.bookings: dict[str, Any] = {}
        self._node: Node | None = None
        self._node_lock = threading.Lock()
        self._started = time.time()
        self._closed = False

    # ---- the node ---------------------------------------------------------------------------

    @property
    def gpus(self) -> tuple[Gpu, ...]:
        """The node's GPUs (read once, at start)."""
        return self._gpus

    def info(self) -> dict[str, Any]:
        """The node's facts: ``{name, hostname, version, devices: [{index, uuid, model,
        memory_total}], cpus, host_memory, state_dir, log_dir, pid, nvml_error}``
        (``nvml_error`` is ``""``, or why NVML showed no GPU)."""
        from .. import __version__

        return {"name": self.name, "hostname": socket.gethostname(), "version": __version__,
                "devices": [g.to_dict() for g in self._gpus], "cpus": _cpus(),
                "host_memory": _host_memory()[0], "state_dir": self.state_dir,
                "log_dir": str(self.log_dir), "pid": os.getpid(),
                "nvml_error": self._nvml_error}

    def snapshot(self) -> NodeSnapshot:
        """The node's shared state now (exited processes swept first)."""
        with self._node_lock:
            if self._node is None:
                self._node = Node(self.state_dir)
            return NodeSnapshot.from_node(self._node, self.state_dir)

    def view(self) -> dict[str, Any]:
        """What the scheduler needs of this node, shaped as flexai.policy's ``NodeView``.

        Returns
        -------
        dict
            ``{name, gpus: [{index, model, memory_total, memory_free, compute_free,
            slices: [{job, priority, memory, compute, guarantee}]}], cpu_milli_free,
            host_memory_free}``. Granted memory on a GPU is each slice's limit (what it uses
            where it has none), granted compute its share; a job this agent started counts
            with what it asked for from the moment it starts, before its processes attach.
            A slice's ``job`` is its name (the job id for the agent's jobs); ``guarantee`` is
            the compute it may not be shrunk below (the share, 0 for best-effort jobs).
        """
        snap = self.snapshot()
        gpus = gpu_views(self._gpus, snap, [j for j in self._jobs.jobs() if j.running]
                         + list(self.bookings.values()))
        return {"name": self.name, "gpus": gpus, "cpu_milli_free": 1000 * _cpus(),
                "host_memory_free": _host_memory()[1]}

    def heartbeat(self) -> dict[str, Any]:
        """Cheap liveness: ``{name, time, load: (1, 5, 15 min), running, jobs, uptime}``; also
        notices jobs that have exited."""
        jobs = self._jobs.jobs()
        return {"name": self.name, "time": time.time(), "load": os.getloadavg(),
                "running": sum(j.running for j in jobs), "jobs": len(jobs),
                "uptime": time.time() - self._started}

    # ---- jobs -------------------------------------------------------------------------------

    def _job_env(self, job_id: str, uuids: Sequence[str], memory: int, compute: int,
                 burst: int, priority: str, extra: Mapping[str, str] | None) -> dict[str, str]:
        node_level = [v.name for v in variables() if not v.per_slice]
        keep = node_level + [LIB_DIR_VARIABLE] + [k for k in self._env
                                                  if k.startswith(SIM_PREFIX)]
        base = without_flexai(self._env, keep=keep)
        base.update(extra or {})
        base["CUDA_VISIBLE_DEVICES"] = ",".join(uuids)
        lib_priority = priority if priority != BEST_EFFORT else _lowest_priority()
        slice_vars = env_of(slice=job_id, priority=lib_priority, state_dir=self.state_dir,
                            gpu_memory=memory or None, gpu_compute=compute or None,
                            gpu_compute_burst=burst or None)
        return slice_env(base, slice_vars)

    def start(self, job_id: str, argv: Sequence[str], *, memory: int | str = 0,
              compute: int = 0, priority: str = "normal", gpus: Sequence[int] = (),
              burst: int = 0, env: Mapping[str, str] | None = None, cwd: str | None = None,
              guarantee: int | None = None) -> int:
        """Start ``argv`` in the slice ``job_id`` on the given GPUs; never waits for it.

        Parameters
        ----------
        job_id : str
            The job's id, also its slice's name: letters, digits, ``-``, ``_``, ``.``, 1..63
            characters, e.g. ``"job-42"``.
        argv : sequence of str
            The command, e.g. ``["python", "train.py"]``.
        memory : int or str
            Memory quota per GPU in bytes (or a size, ``"8GiB"``); 0: none.
        compute : int
            Compute share per GPU in percent, 1..100; 0: none.
        priority : str
            ``"high"``, ``"normal"``, ``"low"`` or ``"best-effort"``.
        gpus : sequence of int
            NVML indices of the GPUs (see :meth:`info`); empty: no GPU visible to the job.
        burst : int
            0: the share is a hard cap; ``compute..100``: a guarantee that may burst.
        env : Mapping, optional
            Variables added to the job's environment (the slice's own always win).
        cwd : str, optional
            The job's working directory.
        guarantee : int, optional
            Compute the job may not be shrunk below (default: its share; 0 for best-effort).

        Returns
        -------
        int
            The job's pid (also its process group id).

        Raises
        ------
        BadValueError
            A bad job id, GPU index, size, share or priority (the message shows an example);
            a job id that a running job or a live slice of the node already has.
        FileNotFoundError, PermissionError
            The command cannot be run.
        """
        self._check_open()
        if isinstance(memory, str):
            memory = parse_size(memory)
        if not isinstance(memory, int) or memory < 0:
            raise BadValueError(f"start: memory {memory!r} is not a size in bytes "
                                "(expected e.g. 8589934592 or '8GiB')")
        for label, value in (("compute", compute), ("burst", burst)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise BadValueError(f"start: {label} {value!r} is not a percent "
                                    "(expected e.g. 30)")
        if priority not in _priorities():
            raise BadValueError(f"start: priority {priority!r} is not one of "
                                f"{', '.join(_priorities())} (expected e.g. high)")
        if not argv:
            raise BadValueError("start: empty command (expected e.g. ['python', 'train.py'])")
        indices = self._check_gpus(gpus)
        if (memory or compute) and not indices:
            raise BadValueError("start: a memory quota or compute share needs a GPU "
                                "(expected e.g. gpus=[0])")
        uuids = [self._gpus[i].uuid for i in indices]
        env_vars = self._job_env(job_id, uuids, memory, compute, burst, priority, env)
        try:
            parse_config(env_vars)  # the library judges the job id, share and burst
        except BadValueError as exc:
            raise BadValueError(f"start: job {job_id!r}: {exc}", exc.code) from None
        live = self.snapshot().slice(job_id)
        if live is not None and live.nprocs > 0 and job_id not in {
                j.job_id for j in self._jobs.jobs() if j.running}:
            raise BadValueError(f"start: slice {job_id!r} is in use on this node by processes "
                                "the agent did not start (expected a new job id, e.g. job-43)")
        if guarantee is None:
            guarantee = 0 if priority == BEST_EFFORT else compute
        job = self._jobs.start(job_id, argv, env_vars, cwd, gpus=tuple(indices),
                               uuids=tuple(uuids), memory=memory, compute=compute, burst=burst,
                               guarantee=min(guarantee, compute), priority=priority)
        return job.pid

    def _check_gpus(self, gpus: Sequence[int]) -> list[int]:
        indices = list(gpus)
        n = len(self._gpus)
        for i in indices:
            if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < n:
                have = f"0..{n - 1}" if n else "none: this node has no GPU"
                raise BadValueError(f"start: no GPU {i!r} on node {self.name} (GPUs: {have}; "
                                    "expected e.g. gpus=[0])")
        if len(set(indices)) != len(indices):
            raise BadValueError(f"start: GPU listed twice in {indices} (expected e.g. [0, 1])")
        return indices

    def poll(self) -> list[dict[str, Any]]:
        """Every job: ``{job_id, pid, state: running|exited|killed, returncode, started_at,
        ended_at, reason, gpus, memory, compute, burst, priority, argv}`` (``reason``: what
        :meth:`stop` was given; ``returncode`` negative: the signal that ended it)."""
        return [j.to_dict() for j in self._jobs.jobs()]

    def read_logs(self, job_id: str, stream: str = "stdout", offset: int = 0,
                  limit: int = 65536) -> tuple[bytes, int, bool]:
        """Read a job's output from ``offset``.

        Returns
        -------
        (bytes, int, bool)
            Up to ``limit`` bytes, the offset to read from next, and whether that is all the
            job will ever write (it has ended and everything was read).

        Raises
        ------
        NotFoundError
            No such job. ``BadValueError``: a bad stream, offset or limit.
        """
        return self._jobs.read_log(job_id, stream, offset, limit)

    def stop(self, job_id: str, grace_s: float = 5.0, reason: str = "",
             wait: bool = True) -> None:
        """Stop a job: SIGTERM to its process group, up to ``grace_s`` seconds, then SIGKILL.
        ``reason`` (e.g. ``"cancelled"``, ``"evicted"``) is shown by :meth:`poll`. Stopping a
        job that has ended changes nothing.

        With ``wait=False`` it returns at once (a single-threaded Ray actor stays responsive):
        the first call of any method after the grace sends the SIGKILL.

        Raises
        ------
        NotFoundError
            No such job.
        """
        self._jobs.stop([self._jobs.get(job_id)], grace_s, reason or "stopped", wait)

    def resize(self, job_id: str, *, compute: int | None = None,
               memory: int | str | None = None, burst: int | None = None) -> dict[str, Any]:
        """Change a running job's compute share and/or memory quota on its GPUs (through
        flexai.node.control; processes apply it at their next launch or allocation).

        Returns
        -------
        dict
            The job as :meth:`poll` shows it, with the new values.

        Raises
        ------
        NotFoundError
            No such job, or its processes have not attached yet (try again).
        BadValueError
            A bad value.
        """
        from ..node.control import resize

        job = self._jobs.get(job_id)
        if not job.running:
            raise NotFoundError(f"resize: job {job_id!r} has ended")
        if not job.uuids:
            raise BadValueError(f"resize: job {job_id!r} has no GPU")
        for uuid in job.uuids:
            done = resize(job_id, memory=memory, compute=compute, burst=burst, device=uuid,
                          state_dir=self.state_dir)
        if done.memory is not None:
            job.memory = done.memory
        if done.compute is not None:
            job.compute = done.compute
            job.burst = done.burst or 0
            job.guarantee = min(job.guarantee, job.compute)
        return job.to_dict()

    # ---- the end ----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise NotFoundError(f"agent {self.name}: closed")

    def close(self, grace_s: float = 5.0) -> None:
        """Stop every job still running (SIGTERM, ``grace_s``, SIGKILL), let go of the node's
        state and remove the log directory when the agent made it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        running = [j for j in self._jobs.jobs() if j.running]
        if running:
            self._jobs.stop(running, grace_s, "agent closed")
        with self._node_lock:
            if self._node is not None:
                self._node.close()
                self._node = None
        if self._own_log_dir:
            shutil.rmtree(self.log_dir, ignore_errors=True)

    def __enter__(self) -> NodeAgent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
