"""This machine's membership in a pool: ``up`` (``ray start --head`` + the head and agent
actors), ``join`` (``ray start --address`` + this node's agent actor), ``down``, and where the
node's record lives (the pool directory).

Each node runs ``ray start --block`` as a process of its own (a new session): ``down`` stops
exactly that node (SIGTERM, then SIGKILL to its process group), never every Ray on the machine
as ``ray stop`` would. The node declares flexai's resources to Ray: its GPU count, the GPUs'
memory in MiB (``flexai_gpu_memory_mib``), one ``flexai_gpu_model:<model>`` per GPU, and the
labels ``flexai.io/node`` and ``flexai.io/gpu-model``.

Bad input (an unreachable address, a version mismatch, a port in use, a bad node name) raises
``BadValueError`` with one line that says what to do; other failures ``PoolError``. This module
must never print (the CLI does) and never kill a process it did not start.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .._ffi import BadValueError, FlexaiError

#: The Ray namespace of flexai's named actors.
NAMESPACE = "flexai"
#: The head actor's name.
HEAD_ACTOR = "flexai-head"
#: Node labels and custom resources flexai declares to Ray.
LABEL_NODE = "flexai.io/node"
LABEL_MODEL = "flexai.io/gpu-model"
RESOURCE_MEMORY = "flexai_gpu_memory_mib"
RESOURCE_MODEL = "flexai_gpu_model:"
#: Where the pool's own facts (flexai version, head) live in Ray's key-value store.
KV_KEY = b"pool"
#: GCS port when --port is not given (Ray's default).
DEFAULT_PORT = 6379
#: How long a `ray start` may take before we give up (seconds).
START_TIMEOUT = 90.0

_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


class PoolError(FlexaiError):
    """The pool failed (not the caller's input): Ray did not start, a node stopped answering."""


def agent_actor_name(node: str) -> str:
    """The name of ``node``'s agent actor."""
    return f"flexai-agent-{node}"


def pool_dir(env: Mapping[str, str] | None = None) -> Path:
    """This node's pool directory (its record, ``ray start``'s log): a node is a machine and a
    flexai state directory, so ``/tmp/flexai-pool-<uid>`` for the default state directory and
    ``/tmp/flexai-pool-<uid>-<hash of the state directory>`` for another one."""
    from ..spec import variable

    env = os.environ if env is None else env
    var = variable("state_dir")
    state = os.path.abspath(env.get(var.name) or var.default)
    base = f"/tmp/flexai-pool-{os.getuid()}"
    if state == os.path.abspath(var.default):
        return Path(base)
    return Path(f"{base}-{hashlib.sha1(state.encode()).hexdigest()[:10]}")


def check_name(name: str) -> str:
    """Return ``name`` if it can name a node (a Ray label value), else raise BadValueError."""
    if not _NAME.match(name or ""):
        raise BadValueError(f"--name {name!r}: a node name is 1..63 letters, digits, '-', '_' "
                            "or '.', starting and ending with a letter or digit (e.g. gpu-node-1)")
    return name


def default_name() -> str:
    """The host name, made fit to name a node."""
    name = re.sub(r"[^-A-Za-z0-9_.]", "-", socket.gethostname()).strip("-_.")[:63]
    return name or "node"


@dataclass
class NodeRecord:
    """What ``up``/``join`` leave in the pool directory (``node.json``) for ``down`` and for
    clients on this machine."""

    name: str
    role: str            # "head" or "member"
    address: str         # the pool's GCS address, host:port
    pid: int             # the `ray start --block` process (a session leader)
    embedded: bool = False
    started_at: float = 0.0
    log: str = ""

    def alive(self) -> bool:
        """True while the node's ``ray start`` process runs."""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        try:  # a zombie (our own child, not yet reaped) is not running
            with open(f"/proc/{self.pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return False


def read_record(env: Mapping[str, str] | None = None) -> NodeRecord | None:
    """The node record of this machine's pool directory, or None (none, or unreadable)."""
    path = pool_dir(env) / "node.json"
    try:
        return NodeRecord(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _write_record(record: NodeRecord, env: Mapping[str, str]) -> None:
    path = pool_dir(env) / "node.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(record)))
    os.replace(tmp, path)


def node_env(env: Mapping[str, str]) -> dict[str, str]:
    """The environment of this node's Ray processes and agent: ``env`` without the per-slice
    ``FLEXAI_*`` settings and without ``LD_PRELOAD`` (no Ray process is a slice)."""
    from ..spec import variables

    per_slice = {v.name for v in variables() if v.per_slice}
    return {k: v for k, v in env.items() if k not in per_slice and k != "LD_PRELOAD"}


def agent_env_vars(env: Mapping[str, str]) -> dict[str, str]:
    """The variables the agent actor must start with (Ray's ``runtime_env`` env_vars): this
    node's ``FLEXAI_*`` node settings (state directory, driver libraries, simulated-device
    knobs, the pool directory) and ``LD_LIBRARY_PATH`` (read by the loader at exec time)."""
    clean = node_env(env)
    out = {k: v for k, v in clean.items() if k.startswith("FLEXAI_")}
    if clean.get("LD_LIBRARY_PATH"):
        out["LD_LIBRARY_PATH"] = clean["LD_LIBRARY_PATH"]
    return out


def _label_value(text: str) -> str:
    """``text`` as a Ray label value / resource suffix: letters, digits, '-', '_', '.'."""
    value = re.sub(r"[^-A-Za-z0-9_.]+", "-", text).strip("-_.")[:63]
    return value or "unknown"


def model_key(model: str) -> str:
    """The form of a GPU model name in flexai's Ray labels and resources."""
    return _label_value(model)


def ray_resources(devices: list[dict[str, Any]], name: str) -> tuple[int, dict[str, float],
                                                                       dict[str, str]]:
    """``(num_gpus, resources, labels)`` for ``ray start`` from the agent's ``info()``
    devices."""
    resources: dict[str, float] = {}
    labels = {LABEL_NODE: name}
    if devices:
        resources[RESOURCE_MEMORY] = float(sum(d["memory_total"] for d in devices) // 2**20)
        for d in devices:
            key = RESOURCE_MODEL + model_key(d["model"])
            resources[key] = resources.get(key, 0.0) + 1.0
        labels[LABEL_MODEL] = model_key(devices[0]["model"])
    return len(devices), resources, labels


def check_port_free(port: int, option: str = "--port") -> None:
    """Raise BadValueError when something listens on TCP ``port`` already."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise BadValueError(f"{option} {port}: the port is in use (another Ray or "
                                    f"flexai pool?); choose a free one (e.g. {option} "
                                    f"{_free_ports(1)[0]})") from None
            raise BadValueError(f"{option} {port}: cannot use the port: {exc.strerror} "
                                f"(e.g. {option} {DEFAULT_PORT})") from None


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` -> (host, port); BadValueError for anything else."""
    host, sep, port = (address or "").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BadValueError(f"address {address!r} is not HOST:PORT (e.g. 10.0.0.5:6379)")
    return host, int(port)


def probe(address: str, timeout: float = 20.0) -> dict[str, Any]:
    """Ask the Ray cluster at ``address`` for its versions and flexai's pool facts.

    Runs in a child process: a Ray client that cannot reach its server ends its own process.

    Returns
    -------
    dict
        ``{"ray_version", "python_version", "pool": {...} or None}``.

    Raises
    ------
    BadValueError
        Nothing answers at ``address``, or not a Ray cluster.
    """
    host, port = parse_address(address)
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as exc:
        why = exc.strerror or str(exc) or "no answer"
        raise BadValueError(f"{address}: no pool answers there ({why}); give the address "
                            "`flexai pool up` printed (e.g. 10.0.0.5:6379)") from None
    env = {**os.environ, "RAY_gcs_rpc_server_reconnect_timeout_s": "4",
           "RAY_gcs_rpc_server_connect_timeout_s": "3", "RAY_BACKEND_LOG_LEVEL": "fatal"}
    try:
        proc = subprocess.run([sys.executable, "-m", "flexai.pool._probe", address],
                              env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc = None
    if proc is None or proc.returncode != 0 or not proc.stdout.strip():
        raise BadValueError(f"{address}: something listens there, but not a Ray pool that "
                            "answers; give the address `flexai pool up` printed "
                            "(e.g. 10.0.0.5:6379)")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_versions(address: str, facts: Mapping[str, Any]) -> None:
    """Raise BadValueError when this machine's Ray, Python or flexai differ from the pool's."""
    import ray

    from .. import __version__

    python = ".".join(map(str, sys.version_info[:3]))
    mine = {"Ray": ray.__version__, "Python": python, "flexai": __version__}
    pool = facts.get("pool") or {}
    theirs = {"Ray": facts.get("ray_version"), "Python": facts.get("python_version"),
              "flexai": pool.get("flexai_version")}
    if not pool:
        raise BadValueError(f"{address}: a Ray cluster, but no flexai pool runs there; start "
                            "one with `flexai pool up` (e.g. flexai pool up --port 6379)")
    for what in ("Ray", "Python", "flexai"):
        if theirs[what] and theirs[what] != mine[what]:
            raise BadValueError(f"{address}: version mismatch: the pool runs {what} "
                                f"{theirs[what]}, this machine {mine[what]}; install the "
                                f"same version here (e.g. pip install '{_pkg(what)}=="
                                f"{theirs[what]}')")


def _pkg(what: str) -> str:
    return {"Ray": "ray", "flexai": "flexai"}.get(what, "python")


def _ray_command() -> str:
    ray = Path(sys.executable).with_name("ray")
    return str(ray) if ray.exists() else "ray"


def start_ray(args: list[str], env: Mapping[str, str], log: Path) -> subprocess.Popen:
    """Start ``ray start --block ARGS`` in a session of its own; return when the node runs.
    Ray gives a raylet 30 s to register, which a loaded machine can miss: that is tried once
    more.

    Raises
    ------
    PoolError
        When ``ray start`` fails or does not come up in :data:`START_TIMEOUT` seconds; the
        message is the last line Ray wrote about it.
    """
    try:
        return _start_ray(args, env, log)
    except PoolError as exc:
        if "timed out during startup" not in str(exc):
            raise
        return _start_ray(args, env, log)


def _start_ray(args: list[str], env: Mapping[str, str], log: Path) -> subprocess.Popen:
    ports = _free_ports(6)
    aux = ["--node-manager-port", str(ports[0]), "--object-manager-port", str(ports[1]),
           "--dashboard-agent-listen-port", str(ports[2]),
           "--dashboard-agent-grpc-port", str(ports[3]),
           "--runtime-env-agent-port", str(ports[4]), "--metrics-export-port", str(ports[5]),
           "--min-worker-port", "0", "--max-worker-port", "0", "--disable-usage-stats"]
    cmd = [_ray_command(), "start", "--block", *args, *aux]
    env = {**env, "RAY_USAGE_STATS_ENABLED": "0"}
    out = open(log, "wb")
    try:
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        out.close()
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if "block forever" in text:
            return proc
        if proc.poll() is not None:
            stop_process_group(proc.pid, 5.0)  # what it started before failing
            raise PoolError(f"ray start failed: {_last_error(text)} (log: {log})")
        time.sleep(0.1)
    stop_process_group(proc.pid, 5.0)
    raise PoolError(f"ray start did not come up in {START_TIMEOUT:.0f} s (log: {log})")


def _last_error(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if any(w in ln for w in ("Error", "error", "ERROR", "failed", "mismatch")):
            return ln[-300:]
    return lines[-1][-300:] if lines else "no output"


def stop_process_group(pid: int, grace_s: float) -> None:
    """SIGTERM the session leader ``pid`` (``ray start --block`` stops its node), wait up to
    ``grace_s``, then SIGKILL its whole process group."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                break
        except ChildProcessError:  # not our child: poll its existence
            if not NodeRecord("", "", "", pid).alive():
                break
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def node_start_args(name: str, devices: list[dict[str, Any]], *, num_cpus: int | None,
                    object_store_memory: int | None, node_ip: str | None) -> list[str]:
    """``ray start`` options that every node gets: its resources, labels and sizes."""
    num_gpus, resources, labels = ray_resources(devices, name)
    args = ["--num-gpus", str(num_gpus), "--resources", json.dumps(resources),
            "--labels", ",".join(f"{k}={v}" for k, v in labels.items())]
    if num_cpus is not None:
        args += ["--num-cpus", str(num_cpus)]
    if object_store_memory is not None:
        args += ["--object-store-memory", str(object_store_memory)]
    if node_ip:
        args += ["--node-ip-address", node_ip]
    return args


def write_record(record: NodeRecord, env: Mapping[str, str]) -> None:
    """Leave ``record`` in the pool directory."""
    _write_record(record, env)


def remove_record(env: Mapping[str, str]) -> None:
    """Forget this machine's node record."""
    try:
        (pool_dir(env) / "node.json").unlink()
    except FileNotFoundError:
        pass

