"""The agent's jobs: processes it started, each in a process group of its own, with stdout and
stderr in files; reaping without blocking, stopping (SIGTERM, grace, SIGKILL to the group) and
reading the logs from an offset.

No thread is started here: a job's exit is noticed by :meth:`JobTable.reap`, which the agent
calls from every method (``poll``, ``view``, ``heartbeat``, ...), so an exited job stays a
zombie only until the agent's next call. When a job's first process exits, what it left
running in its group is killed (the zombie leader keeps the group's id from being reused until
then): a job's slice is free once the job has ended.

This module must never choose a slice's values or build its environment (the agent does,
through flexai.node.launch and flexai.spec), and never print.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._ffi import BadValueError, NotFoundError

#: The streams a job's output is kept in.
STREAMS = ("stdout", "stderr")


@dataclass
class Job:
    """One job the agent started (mutable: the table fills in its end)."""

    job_id: str
    argv: tuple[str, ...]
    proc: subprocess.Popen[bytes]
    gpus: tuple[int, ...]
    uuids: tuple[str, ...]
    memory: int
    compute: int
    burst: int
    guarantee: int
    priority: str
    logs: dict[str, Path]
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    returncode: int | None = None
    reason: str = ""
    stopping: bool = False
    kill_at: float | None = None  # time.monotonic() when a stop's grace ends (SIGKILL then)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.returncode is None

    @property
    def state(self) -> str:
        """``running``, ``exited`` (ended on its own) or ``killed`` (stopped by the agent, or
        ended by a signal)."""
        if self.returncode is None:
            return "running"
        return "killed" if self.stopping or self.returncode < 0 else "exited"

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``poll()``."""
        return {"job_id": self.job_id, "pid": self.pid, "state": self.state,
                "returncode": self.returncode, "started_at": self.started_at,
                "ended_at": self.ended_at, "reason": self.reason, "gpus": list(self.gpus),
                "memory": self.memory, "compute": self.compute, "burst": self.burst,
                "priority": self.priority, "argv": list(self.argv)}


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class JobTable:
    """The jobs of one agent, safe to use from several threads (a lock guards the table; waits
    happen outside it)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    # ---- starting ---------------------------------------------------------------------------

    def start(self, job_id: str, argv: Sequence[str], env: Mapping[str, str], cwd: str | None,
              **values: Any) -> Job:
        """Start ``argv`` in a new session with ``env``; ``values`` fill the :class:`Job`.

        Raises
        ------
        BadValueError
            When a running job already has this id.
        FileNotFoundError, PermissionError, OSError
            When the command cannot be started.
        """
        with self._lock:
            self._reap_locked()
            old = self._jobs.get(job_id)
            if old is not None and old.running:
                raise BadValueError(f"start: job {job_id!r} is already running on this node "
                                    "(expected a new job id, e.g. job-43)")
            logs = {s: self.log_dir / f"{job_id}.{s}" for s in STREAMS}
            with open(logs["stdout"], "wb") as out, open(logs["stderr"], "wb") as err:
                proc = subprocess.Popen(list(argv), env=dict(env), cwd=cwd,
                                        stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                        start_new_session=True, close_fds=True)
            job = Job(job_id=job_id, argv=tuple(argv), proc=proc, logs=logs, **values)
            self._jobs[job_id] = job
            return job

    # ---- noticing exits ---------------------------------------------------------------------

    def _reap_one(self, job: Job) -> None:
        """Notice ``job``'s exit without blocking; kill what it left in its group first."""
        if not job.running:
            return
        try:
            exited = os.waitid(os.P_PID, job.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            exited = True  # reaped elsewhere (Popen.poll below knows)
        if exited is None:
            if job.kill_at is not None and time.monotonic() >= job.kill_at:
                job.kill_at = None  # a stop that did not wait: its grace is over
                _kill_group(job.pid, signal.SIGKILL)
            return
        _kill_group(job.pid, signal.SIGKILL)  # the leader is a zombie: the group id is ours
        rc = job.proc.poll()
        if rc is None:  # cannot happen after waitid said it exited; try again next call
            return
        job.returncode = rc
        job.ended_at = time.time()

    def _reap_locked(self) -> None:
        for job in self._jobs.values():
            self._reap_one(job)

    def reap(self) -> None:
        """Notice every job that has exited (never blocks)."""
        with self._lock:
            self._reap_locked()

    # ---- reading ----------------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        """The job ``job_id`` (its end noticed if it has ended).

        Raises
        ------
        NotFoundError
            When this agent started no such job.
        """
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                known = ", ".join(sorted(self._jobs)) or "none"
                raise NotFoundError(f"no job {job_id!r} on this node (jobs: {known})")
            self._reap_one(job)
            return job

    def jobs(self) -> list[Job]:
        """Every job, in start order, their ends noticed."""
        with self._lock:
            self._reap_locked()
            return list(self._jobs.values())

    def read_log(self, job_id: str, stream: str, offset: int,
                 limit: int) -> tuple[bytes, int, bool]:
        """Up to ``limit`` bytes of a job's stream from ``offset``; see ``NodeAgent.read_logs``."""
        if stream not in STREAMS:
            raise BadValueError(f"read_logs: stream {stream!r} is neither stdout nor stderr "
                                "(expected e.g. stdout)")
        if offset < 0 or limit < 1:
            raise BadValueError(f"read_logs: offset {offset} / limit {limit} out of range "
                                "(expected e.g. offset 0, limit 65536)")
        job = self.get(job_id)
        ended = not job.running  # before reading: what an ended job wrote is all there
        try:
            with open(job.logs[stream], "rb") as f:
                f.seek(offset)
                data = f.read(limit)
                size = os.fstat(f.fileno()).st_size
        except FileNotFoundError:
            data, size = b"", 0
        nxt = offset + len(data)
        return data, nxt, ended and nxt >= size

    # ---- stopping ---------------------------------------------------------------------------

    def signal_all(self, jobs: Sequence[Job], sig: int, reason: str | None = None) -> None:
        """Send ``sig`` to the groups of the jobs still running (marking them stopped)."""
        with self._lock:
            for job in jobs:
                self._reap_one(job)
                if job.running:
                    if reason is not None and not job.stopping:
                        job.stopping, job.reason = True, reason or "stopped"
                    _kill_group(job.pid, sig)

    def wait_all(self, jobs: Sequence[Job], timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the jobs to end; True when all have."""
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            with self._lock:
                for job in jobs:
                    self._reap_one(job)
                if not any(j.running for j in jobs):
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    def stop(self, jobs: Sequence[Job], grace_s: float, reason: str, wait: bool = True) -> None:
        """SIGTERM the jobs' groups, wait up to ``grace_s``, then SIGKILL what is left and wait
        for it (a process the kernel cannot kill at once is left to a later reap). Without
        ``wait``, return at once: the first reap after the grace sends the SIGKILL."""
        if not wait:
            with self._lock:
                for job in jobs:
                    if job.running and job.kill_at is None:
                        job.kill_at = time.monotonic() + max(0.0, grace_s)
        self.signal_all(jobs, signal.SIGTERM, reason)
        if not wait:
            return
        if not self.wait_all(jobs, grace_s):
            self.signal_all(jobs, signal.SIGKILL)
            self.wait_all(jobs, 5.0)
