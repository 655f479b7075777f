"""Start, stop and query the node's NVIDIA MPS control daemon (``flexai mps``).

With MPS, kernels of different processes run on the GPU at the same time (spatial sharing)
instead of taking turns; flexai then measures each slice's own device time and keeps caps and
priorities without an exclusive lease (``FLEXAI_SHARING=auto`` notices the daemon by its pipe
directory). MPS runs one daemon per node and user; clients find it through
``CUDA_MPS_PIPE_DIRECTORY`` (default ``/tmp/nvidia-mps``).

This module only drives NVIDIA's control program; it must never touch flexai's shared state or
print (the ``flexai mps`` command in flexai/cli/mps.py does the talking).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .._ffi import DriverError

CONTROL = "nvidia-cuda-mps-control"
DEFAULT_PIPE_DIR = "/tmp/nvidia-mps"
DEFAULT_LOG_DIR = "/var/log/nvidia-mps"


class MpsError(DriverError, RuntimeError):
    """The MPS control daemon could not be started, stopped or asked (a driver error)."""


@dataclass(frozen=True)
class MpsStatus:
    """Whether a daemon answers in ``pipe_dir``, and the server processes it lists."""

    running: bool
    pipe_dir: str
    servers: tuple[str, ...] = ()


def pipe_dir(explicit: str | None = None) -> str:
    """The pipe directory clients use: ``explicit``, ``$CUDA_MPS_PIPE_DIRECTORY`` or the
    default."""
    return explicit or os.environ.get("CUDA_MPS_PIPE_DIRECTORY") or DEFAULT_PIPE_DIR


def _env(pipe: str, log: str | None) -> dict[str, str]:
    env = dict(os.environ, CUDA_MPS_PIPE_DIRECTORY=pipe)
    env["CUDA_MPS_LOG_DIRECTORY"] = log or os.environ.get("CUDA_MPS_LOG_DIRECTORY") or \
        DEFAULT_LOG_DIR
    return env


def _control() -> str:
    exe = shutil.which(CONTROL)
    if not exe:
        raise MpsError(f"{CONTROL} not found: MPS comes with the NVIDIA driver; install it or "
                       "put it on PATH")
    return exe


def _ask(pipe: str, command: str, log: str | None = None, timeout: float = 10) -> str:
    try:
        proc = subprocess.run([_control()], input=command + "\n", env=_env(pipe, log),
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise MpsError(f"{CONTROL} did not answer '{command}' within {timeout:.0f}s") from exc
    if proc.returncode != 0:
        raise MpsError(f"{CONTROL} '{command}' failed: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


def status(pipe: str | None = None) -> MpsStatus:
    """Report whether a daemon answers in the pipe directory."""
    pipe = pipe_dir(pipe)
    if not (Path(pipe) / "control").exists():
        return MpsStatus(False, pipe)
    try:
        servers = tuple(s for s in _ask(pipe, "get_server_list").split() if s)
    except MpsError:
        return MpsStatus(False, pipe)
    return MpsStatus(True, pipe, servers)


def start(pipe: str | None = None, log: str | None = None) -> MpsStatus:
    """Start the daemon (no-op when one already answers) and return its status."""
    pipe = pipe_dir(pipe)
    current = status(pipe)
    if current.running:
        return current
    log_dir = _env(pipe, log)["CUDA_MPS_LOG_DIRECTORY"]
    for d in (pipe, log_dir):
        Path(d).mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([_control(), "-d"], env=_env(pipe, log), capture_output=True,
                          text=True, timeout=30)
    if proc.returncode != 0:
        raise MpsError(f"{CONTROL} -d failed: {(proc.stderr or proc.stdout).strip()}")
    deadline = time.monotonic() + 5  # the daemon creates its pipe after -d returns
    while not (Path(pipe) / "control").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return status(pipe)


def stop(pipe: str | None = None) -> MpsStatus:
    """Ask the daemon to quit (no-op when none answers) and return the new status."""
    pipe = pipe_dir(pipe)
    if status(pipe).running:
        _ask(pipe, "quit")
    return status(pipe)
