"""A real multi-node Ray cluster on this machine for the pool tests, made with flexai's own
commands: ``flexai pool up`` for the head and ``flexai pool join`` for each member, every node
with its own simulated device (count, memory, model name), state directory (hence its own pool
directory) and Ray temporary directory, and one node with no GPU at all.

Every node is a ``ray start --block`` process group of its own (flexai.pool.member); the
cluster records their ids in a file that a watchdog process reads: if the test process dies
without tearing down, the watchdog kills them. :meth:`RayCluster.stop` kills the groups and
every process running with one of the cluster's directories in its environment (the agents'
jobs), then removes the directory. Every wait is bounded.
This module must never stop a Ray it did not start (no ``ray stop``).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flexai import sim
from flexai.node.launch import without_flexai

#: Seconds one `flexai pool up|join` may take on a busy 2-core machine.
START_TIMEOUT = 150.0

_WATCHDOG = r"""
import os, signal, sys, time
parent, path, root = int(sys.argv[1]), sys.argv[2], sys.argv[3]
while True:
    time.sleep(1)
    try:
        os.kill(parent, 0)
        continue
    except ProcessLookupError:
        pass
    try:
        pgids = [int(x) for x in open(path).read().split()]
    except OSError:
        pgids = []
    for g in pgids:
        try:
            os.killpg(g, signal.SIGKILL)
        except OSError:
            pass
    marks = [f"FLEXAI_STATE_DIR={root}".encode()]
    for entry in os.listdir("/proc"):
        try:
            env = open(f"/proc/{entry}/environ", "rb").read().split(b"\0")
            if entry.isdigit() and any(v.startswith(m) for v in env for m in marks):
                os.kill(int(entry), signal.SIGKILL)
        except OSError:
            pass
    break
"""


@dataclass
class Node:
    """One node of the test cluster."""

    name: str
    env: dict[str, str]
    gpus: int
    memory: str | None
    model: str | None
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def pool_dir(self) -> Path:
        from flexai.pool.member import pool_dir

        return pool_dir(self.env)

    def read_record(self) -> dict[str, Any]:
        self.record = json.loads((self.pool_dir / "node.json").read_text())
        return self.record


class RayCluster:
    """Start nodes with :meth:`up` / :meth:`join`, run ``flexai`` as a node with :meth:`flexai`,
    remove a node abruptly with :meth:`remove`, and :meth:`stop` it all."""

    def __init__(self, root: Path | None = None) -> None:
        # Ray's socket paths must stay short: a private directory directly under /tmp.
        self.root = Path(root or tempfile.mkdtemp(prefix="fxray-", dir="/tmp"))
        self.nodes: dict[str, Node] = {}
        self.address: str | None = None
        #: Other clusters started alongside (e.g. the embedded pool), stopped with this one.
        self.others: list[RayCluster] = []
        #: Commands started in the background by :func:`start_default`, by name.
        self.background: dict[str, subprocess.Popen] = {}
        self._pgids: list[int] = []
        self._pgid_file = self.root / "pgids"
        self._pgid_file.write_text("")
        self._watchdog = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(self._pgid_file),
             str(self.root)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)

    # ---- environments -----------------------------------------------------------------------

    def node_env(self, name: str, *, gpus: int = 1, memory: str | None = "16GiB",
                 model: str | None = None) -> dict[str, str]:
        """The environment of node ``name``: its own state directory (hence pool directory)
        and, with ``gpus`` > 0, its own simulated device; with ``gpus=0`` no GPU library."""
        base = without_flexai(os.environ, keep=("FLEXAI_LIB_DIR",))
        for k in ("CUDA_VISIBLE_DEVICES", "RAY_ADDRESS", "LD_LIBRARY_PATH"):
            base.pop(k, None)
        d = self.root / name
        (d / "state").mkdir(parents=True, exist_ok=True)
        if gpus:
            base = sim.sim_env(base, devices=gpus, memory=memory, name=model)
        base.update(FLEXAI_STATE_DIR=str(d / "state"),
                    FLEXAI_CONTEXT_MEMORY="0", RAY_USAGE_STATS_ENABLED="0")
        return base

    def flexai(self, node: Node | str, *args: str, timeout: float = 90,
               env: Mapping[str, str] | None = None,
               check: bool = False) -> subprocess.CompletedProcess:
        """Run ``python -m flexai ARGS`` as a process of ``node`` (its environment)."""
        n = self.nodes[node] if isinstance(node, str) else node
        proc = subprocess.run([sys.executable, "-m", "flexai", *args], env={**n.env, **(env or {})},
                              capture_output=True, text=True, timeout=timeout,
                              cwd=str(self.root))
        if check and proc.returncode != 0:
            raise AssertionError(f"flexai {' '.join(args)} on {n.name} failed "
                                 f"({proc.returncode}): {proc.stderr}{proc.stdout}")
        return proc

    def flexai_many(self, calls: Sequence[tuple[str, ...]], timeout: float = 90,
                    env: Mapping[str, str] | None = None) -> list[subprocess.CompletedProcess]:
        """Run several ``flexai`` commands at once, each ``(node, *args)``; their results in
        order (a 2-core machine runs CLI start-ups side by side well)."""
        procs = [subprocess.Popen([sys.executable, "-m", "flexai", *args],
                                  env={**self.nodes[node].env, **(env or {})},
                                  cwd=str(self.root), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
                 for node, *args in calls]
        out = []
        for p in procs:
            try:
                stdout, stderr = p.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                stdout, stderr = p.communicate()
            out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
        return out

    def popen(self, node: str, *args: str, **kwargs: Any) -> subprocess.Popen:
        """Start ``python -m flexai ARGS`` as a process of ``node`` without waiting."""
        return subprocess.Popen([sys.executable, "-m", "flexai", *args], env=self.nodes[node].env,
                                cwd=str(self.root), **kwargs)

    # ---- nodes ------------------------------------------------------------------------------

    def _remember(self, node: Node) -> None:
        pid = node.read_record()["pid"]
        self._pgids.append(pid)
        self._pgid_file.write_text(" ".join(map(str, self._pgids)))

    def add(self, name: str, *, gpus: int = 1, memory: str | None = "16GiB",
            model: str | None = None) -> Node:
        """A node's environment and directories, without starting anything (see
        :meth:`track`)."""
        node = Node(name, self.node_env(name, gpus=gpus, memory=memory, model=model), gpus,
                    memory, model)
        self.nodes[name] = node
        return node

    def track(self, name: str) -> None:
        """Stop node ``name`` with the cluster: it was started outside :meth:`up`/:meth:`join`
        (e.g. the embedded pool of ``flexai submit``)."""
        if (self.nodes[name].pool_dir / "node.json").exists():
            self._remember(self.nodes[name])

    def up(self, name: str, *, port: int, gpus: int = 1, memory: str | None = "16GiB",
           model: str | None = None, num_cpus: int = 1, args: Sequence[str] = ()) -> Node:
        """``flexai pool up`` as node ``name`` (the head)."""
        node = self.add(name, gpus=gpus, memory=memory, model=model)
        self.flexai(node, "pool", "up", "--name", name, "--port", str(port), "--num-cpus",
                    str(num_cpus), "--object-store-memory", "80MiB", "--temp-dir",
                    str(self.root / f"r-{name}"), *args, timeout=START_TIMEOUT, check=True)
        self._remember(node)
        self.address = node.record["address"]
        return node

    def join_many(self, specs: Sequence[dict[str, Any]]) -> list[Node]:
        """``flexai pool join`` several nodes at once (each spec: name, gpus, memory, model,
        num_cpus)."""
        assert self.address, "start the head first"
        started = []
        for spec in specs:
            spec = dict(spec)
            name, cpus = spec.pop("name"), spec.pop("num_cpus", 1)
            args = spec.pop("args", ())
            node = self.add(name, **spec)
            proc = self.popen(name, "pool", "join", self.address, "--name", name, "--num-cpus",
                              str(cpus), "--object-store-memory", "80MiB", "--temp-dir",
                              str(self.root / f"r-{name}"), *args, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
            started.append((node, proc))
        failures = []
        for node, proc in started:
            try:
                out, err = proc.communicate(timeout=START_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            if (node.pool_dir / "node.json").exists():
                self._remember(node)
            if proc.returncode != 0:
                failures.append(f"{node.name}: {err}{out}")
        if failures:
            raise AssertionError("flexai pool join failed: " + "; ".join(failures))
        return [n for n, _ in started]

    def join(self, name: str, **spec: Any) -> Node:
        """``flexai pool join`` one node."""
        return self.join_many([{"name": name, **spec}])[0]

    def remove(self, name: str) -> None:
        """Remove node ``name`` abruptly: SIGKILL its whole Ray process group (as if the
        machine went away)."""
        pid = self.nodes[name].read_record()["pid"]
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        """Kill every node's process group, then every process that runs with one of this
        cluster's directories in its environment (the agents' jobs, in sessions of their own),
        and remove the cluster's directory. ``flexai pool down`` is tested on its own; a
        teardown need not be graceful."""
        for other in self.others:
            other.stop()
        for proc in self.background.values():
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
        for pgid in self._pgids:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except OSError:
                pass
        _kill_strays(str(self.root))
        deadline = time.monotonic() + 10
        for pgid in self._pgids:
            while time.monotonic() < deadline and _group_alive(pgid):
                time.sleep(0.05)
        self._watchdog.kill()
        self._watchdog.wait(timeout=10)
        for node in self.nodes.values():  # pool directories are /tmp/flexai-pool-<uid>-<hash>
            shutil.rmtree(node.pool_dir, ignore_errors=True)
        shutil.rmtree(self.root, ignore_errors=True)


def _kill_strays(root: str) -> None:
    """SIGKILL the processes (but this one) whose FLEXAI_STATE_DIR lies under ``root`` (every
    node's processes and its jobs: each node has its state directory there)."""
    marks = [f"FLEXAI_STATE_DIR={root}".encode()]
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if any(v.startswith(m) for v in env for m in marks):
            try:
                os.kill(int(entry), signal.SIGKILL)
            except OSError:
                pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except OSError:
        return False


def start_default(cluster: RayCluster) -> None:
    """The tests' cluster: n0 the head (1 simulated GPU, 16 GiB, "Sim T4"; the pool's counters
    on a metrics port), n1 (2 GPUs, 40 GiB, "Sim A100"; the node's metrics on a port), n2 (no
    GPU) and n3 (1 GPU, 8 GiB, "Sim L4"; the one the loss tests take away); and, in the
    background, ``flexai submit`` on a machine "e" without a pool (``cluster.others[0]``,
    ``cluster.background["embedded"]``)."""
    from flexai.pool.member import _free_ports

    cluster.up("n0", port=_free_ports(1)[0], gpus=1, memory="16GiB", model="Sim T4",
               args=("--pool-metrics-port", "0"))
    cluster.join_many([
        {"name": "n1", "gpus": 2, "memory": "40GiB", "model": "Sim A100",
         "args": ("--metrics-port", "0")},
        {"name": "n2", "gpus": 0, "memory": None},
        {"name": "n3", "gpus": 1, "memory": "8GiB", "model": "Sim L4"},
    ])
    # `flexai submit` on a machine without a pool starts the embedded one: that takes as long
    # as a node's start, so it runs in the background while the tests use the cluster
    alone = RayCluster()
    cluster.others.append(alone)
    alone.add("e", gpus=1, memory="8GiB")
    cluster.background["embedded"] = alone.popen(
        "e", "submit", "--gpu-memory", "1GiB", "--", "sh", "-c", "echo embedded",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


_shared: RayCluster | None = None


def shared(request: Any, start: Any) -> RayCluster:
    """The session's one cluster, for the session-scoped fixtures of several test modules:
    the first caller builds it with ``start(cluster)``; it is stopped when the session ends
    (even after a failure), whichever module asked first."""
    global _shared
    if _shared is None:
        cluster = RayCluster()
        request.session.config.add_cleanup(cluster.stop)
        try:
            start(cluster)
        except BaseException:
            cluster.stop()
            raise
        _shared = cluster
    return _shared


def wait_for(predicate: Any, timeout: float, what: str, every: float = 0.2) -> Any:
    """Poll ``predicate()`` every ``every`` s until it returns something true, and return that;
    raise AssertionError naming ``what`` once ``timeout`` s have passed."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def connect(cluster: RayCluster, monkeypatch: Any, request: Any) -> Any:
    """``flexai.pool`` in this process, connected to ``cluster`` as a client on n0 (its
    origin), for a module's ``api`` fixture; Ray is shut down at the session's end, before the
    cluster stops."""
    import ray

    import flexai.pool

    monkeypatch.setenv("FLEXAI_STATE_DIR", cluster.nodes["n0"].env["FLEXAI_STATE_DIR"])
    if not ray.is_initialized():
        request.session.config.add_cleanup(ray.shutdown)  # runs before the cluster stops
    flexai.pool.connect(cluster.address)
    return flexai.pool
