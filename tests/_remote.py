"""Test support for remote slices: a ``flexai remoted`` on loopback serving the simulated device,
and the environment of a client program that reaches it through flexai's client libcuda.so.1.

It must never let a server outlive its test (context managers end it, and its workers), never
wait without a timeout, and never give a client the simulated driver (the client machine is
GPU-less: only the remote client library is on its path).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import flexai
from flexai import sim
from flexai.node.launch import without_flexai

TOKEN = "test-token-4f1c"
PROGRAM = Path(__file__).parent / "remote" / "driver_program.py"


def server_env(state_dir: Path, run_dir: Path, **extra: str) -> dict[str, str]:
    """The GPU node's environment: simulated device, node state in state_dir, the token."""
    env = without_flexai(os.environ, keep=("FLEXAI_LIB_DIR",))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env = sim.sim_env(env, memory="16GiB")
    env.update(FLEXAI_STATE_DIR=str(state_dir), FLEXAI_CONTEXT_MEMORY="0",
               FLEXAI_REMOTE_TOKEN=TOKEN, FLEXAI_REMOTE_RUN_DIR=str(run_dir))
    env.update(extra)
    return env


def client_env(token: str | None = TOKEN, **extra: str) -> dict[str, str]:
    """A GPU-less machine's environment (no simulated driver, no flexai settings)."""
    env = without_flexai(os.environ, keep=("FLEXAI_LIB_DIR",))
    sim_dir = str(sim.sim_dir())
    env["LD_LIBRARY_PATH"] = ":".join(
        p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p and p != sim_dir)
    if token is not None:
        env["FLEXAI_REMOTE_TOKEN"] = token
    env.update(extra)
    return env


class Remoted:
    """``flexai remoted --listen 127.0.0.1:0`` as a context manager; ``address`` is where it
    listens. Its stderr is collected in ``log``."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flexai", "remoted", "--listen", "127.0.0.1:0", *args],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True)
        self.lines: list[str] = []
        self._ready = threading.Event()
        self.address = ""
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(30):
            self.close()
            raise RuntimeError(f"flexai remoted did not start: {self.log}")

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip())
            if "listening on " in line and not self.address:
                self.address = line.rsplit("listening on ", 1)[1].strip()
                self._ready.set()
        self._ready.set()

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def workers(self) -> list[int]:
        """Pids of the session workers (the server's children)."""
        try:
            text = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:
            return []
        return [int(p) for p in text.split()]

    def kill(self) -> None:
        """SIGKILL the server and its workers (its process group)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        try:  # workers the server could not end
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def __enter__(self) -> Remoted:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def remote_command(address: str, *options: str) -> list[str]:
    """``flexai run --remote ADDRESS OPTIONS -- python driver_program.py``, without the mode."""
    return [sys.executable, "-m", "flexai", "run", "--remote", address, *options, "--",
            sys.executable, str(PROGRAM)]


def run_program(address: str, mode: str, *args: str, options: tuple[str, ...] = (),
                env: dict[str, str] | None = None, timeout: float = 120) -> dict:
    """Run the cuda.bindings program through the remote client; its JSON line."""
    proc = subprocess.run([*remote_command(address, *options), mode, *args],
                          env=client_env() if env is None else env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"program failed ({proc.returncode}): {proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def start_program(address: str, mode: str, *args: str, options: tuple[str, ...] = ()
                  ) -> subprocess.Popen:
    """The program started in the background (stdin and stdout piped)."""
    return subprocess.Popen([*remote_command(address, *options), mode, *args], env=client_env(),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def first_line(proc: subprocess.Popen, timeout: float = 60) -> dict:
    """The first JSON line of a background program (fails after timeout)."""
    box: list[str] = []
    t = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    t.start()
    t.join(timeout)
    if not box or not box[0]:
        proc.kill()
        raise AssertionError(f"no output from the program: {proc.stderr.read()}")
    return json.loads(box[0])


def slice_used(state_dir: Path, name: str) -> int:
    """Bytes slice ``name`` holds on its devices in ``state_dir`` (0 when there is no such
    slice)."""
    s = flexai.NodeSnapshot.read(state_dir).slice(name)
    return 0 if s is None else sum(d.used_bytes for d in s.devices)


def wait_for(predicate, timeout: float, interval: float = 0.02) -> float:
    """Seconds until predicate() held; raises AssertionError after timeout."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if predicate():
            return time.monotonic() - t0
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")
