"""A real Prometheus server for the tests, on loopback, and a flexai metrics server to scrape.

:class:`Prometheus` starts the ``prometheus`` binary (Debian package ``prometheus``; ``.ci/run``
installs it) on a free loopback port with a private storage directory and a scrape config of the
given targets every second, waits until it is ready, queries it through its HTTP API, and stops
it (its whole process group; it also dies with the test process, through PR_SET_PDEATHSIG).
:class:`MetricsServer` serves ``flexai.node.metrics`` from a child process started in the
simulated device's environment (NVML answers there, not in the test process); :class:`Agent`
runs ``flexai agent --metrics-port 0``, which serves the same collector.

Every wait here is bounded. This module must never leave a process running after ``stop`` or
the ``with`` block, and never touch a port other than the ones it picked on 127.0.0.1.
"""
from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

#: Seconds to wait for Prometheus to say it is ready (a busy 2-core CI machine: generous).
READY_TIMEOUT = 60.0


def binary() -> str | None:
    """The ``prometheus`` executable, or None when it is not installed."""
    return shutil.which("prometheus") or next(
        (p for p in ("/usr/bin/prometheus", "/usr/local/bin/prometheus") if os.access(p, os.X_OK)),
        None)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


try:  # resolved before any fork: the child only makes the call
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _prctl = None


def _die_with_parent() -> None:
    """In the child before exec: a session of its own (so that stopping it reaches everything
    it started), and SIGKILL when the test process dies (Linux PR_SET_PDEATHSIG)."""
    os.setsid()
    if _prctl is not None:
        _prctl(1, signal.SIGKILL)


def _stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL after ``grace`` seconds; reap it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(grace)


def get(url: str, timeout: float = 5.0) -> bytes:
    """The body of a GET of ``url`` (raises on an HTTP or connection error)."""
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - loopback only
        return r.read()


class Prometheus:
    """A Prometheus server scraping ``targets`` ("host:port") every second.

    Parameters
    ----------
    workdir : Path
        Where its config, storage and log go (a test's tmp_path).
    targets : sequence of str
        The scrape targets, e.g. ``["127.0.0.1:9400"]`` (path ``/metrics``).
    """

    def __init__(self, workdir: Path, targets: Sequence[str]) -> None:
        exe = binary()
        if exe is None:
            raise FileNotFoundError("prometheus is not installed (apt-get install prometheus)")
        self.workdir = Path(workdir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = self.workdir / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            "scrape_configs:\n  - job_name: flexai\n    static_configs:\n"
            f"      - targets: {json.dumps(list(targets))}\n")
        self.log = self.workdir / "prometheus.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [exe, f"--config.file={config}",
                 f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited ({self.proc.returncode}): "
                                   f"{self.log.read_text()[-2000:]}")
            try:
                get(self.url + "/-/ready", timeout=2)
                return
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        raise TimeoutError(f"prometheus not ready after {READY_TIMEOUT:.0f} s: "
                           f"{self.log.read_text()[-2000:]}")

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The result vector of an instant query (``/api/v1/query``)."""
        body = json.loads(get(f"{self.url}/api/v1/query?" +
                              urllib.parse.urlencode({"query": expr})))
        assert body["status"] == "success", body
        return body["data"]["result"]

    def wait_for(self, expr: str, check: Callable[[list[dict[str, Any]]], bool],
                 timeout: float = 60.0) -> list[dict[str, Any]]:
        """Query ``expr`` until ``check(result)`` holds; return that result, or raise
        TimeoutError with the last result and the targets' health."""
        deadline = time.monotonic() + timeout
        result: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            result = self.query(expr)
            if check(result):
                return result
            time.sleep(0.5)
        targets = json.loads(get(self.url + "/api/v1/targets"))["data"]["activeTargets"]
        health = [(t["scrapeUrl"], t["health"], t.get("lastError")) for t in targets]
        raise TimeoutError(f"{expr}: last result {result}; targets {health}")

    def stop(self) -> None:
        """Stop the server and reap it (idempotent)."""
        _stop(self.proc)

    def __enter__(self) -> Prometheus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class MetricsServer:
    """``flexai.node.metrics.serve`` in a child process on 127.0.0.1, for the node in
    ``env["FLEXAI_STATE_DIR"]``; the child exits when its stdin closes (:meth:`stop`, or the
    test process dying).

    Parameters
    ----------
    env : Mapping[str, str]
        The child's environment: ``flexai.sim.sim_env(...)`` so that NVML answers, and
        ``FLEXAI_STATE_DIR``; without ``LD_PRELOAD``.
    """

    CODE = ("import sys\n"
            "from flexai.node.metrics import serve\n"
            "server = serve(0)\n"
            "print(server.server_port, flush=True)\n"
            "sys.stdin.read()\n"
            "server.shutdown()\n")

    def __init__(self, env: Mapping[str, str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", self.CODE], env=dict(env),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, preexec_fn=_die_with_parent)
        try:
            self.port = int(read_until(self.proc, r"^(\d+)\n", timeout=30)[1])
        except BaseException:
            self.stop()
            raise
        self.target = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.target}/metrics"

    def scrape(self) -> str:
        """The metrics text of one scrape."""
        return get(self.url, timeout=10).decode()

    def stop(self) -> None:
        """Close the child's stdin and reap it (SIGTERM/SIGKILL if it lingers)."""
        if self.proc.stdin and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            _stop(self.proc)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Agent:
    """``flexai agent --metrics-port 0`` for the node in ``state_dir``, in a child process; its
    metrics address is read from the line it prints when it is up. Stopped with SIGTERM (the
    agent's own clean exit), then SIGKILL after a grace period.

    Parameters
    ----------
    env : Mapping[str, str]
        The agent's environment (``flexai.sim.sim_env(...)``, without ``LD_PRELOAD``).
    state_dir, log_dir : Path
        The node's state directory and where jobs' logs go.
    name : str
        The node's name.
    """

    def __init__(self, env: Mapping[str, str], state_dir: Path, log_dir: Path,
                 name: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flexai", "agent", "--state-dir", str(state_dir),
             "--log-dir", str(log_dir), "--name", name, "--metrics-port", "0"],
            env=dict(env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, preexec_fn=_die_with_parent)
        try:
            found = read_until(self.proc, r"metrics on http://([0-9.]+):(\d+)/metrics", 60)
        except BaseException:
            self.stop()
            raise
        self.target = f"{found[1]}:{found[2]}"
        self.url = f"http://{self.target}/metrics"

    def stop(self) -> int | None:
        """Stop the agent and reap it; its exit status."""
        _stop(self.proc, grace=15)
        return self.proc.returncode

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def read_until(proc: subprocess.Popen, pattern: str, timeout: float) -> re.Match:
    """Read ``proc``'s stdout (a binary pipe) until ``pattern`` matches it, within ``timeout``
    seconds; the match. Raw reads, so that no buffer hides output from the wait."""
    import selectors

    out = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            found = re.search(pattern, out.decode(errors="replace"))
            if found:
                return found
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise TimeoutError(f"no {pattern!r} within {timeout:.0f} s: {out!r}")
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                proc.wait(10)
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise RuntimeError(f"exited ({proc.returncode}) before {pattern!r}: "
                                   f"{out!r} {err[-2000:]}")
            out += chunk
