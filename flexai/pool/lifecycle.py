"""``flexai pool up``, ``join`` and ``down`` as functions: start this node's Ray, create the
head and agent actors (detached, named, pinned to their node with the node's environment),
register the node with the head, and take it all down again.

The embedded pool of ``flexai submit`` is :func:`up` with ``embedded=True`` on loopback. This
module must never print and never stop a Ray it did not start (see flexai.pool.member).
"""
from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping
from typing import Any

from .._ffi import BadValueError
from .member import (
    DEFAULT_PORT,
    HEAD_ACTOR,
    KV_KEY,
    LABEL_NODE,
    NAMESPACE,
    NodeRecord,
    PoolError,
    _free_ports,
    agent_actor_name,
    agent_env_vars,
    check_name,
    check_port_free,
    check_versions,
    default_name,
    node_env,
    node_start_args,
    parse_address,
    pool_dir,
    probe,
    read_record,
    remove_record,
    start_ray,
    stop_process_group,
    write_record,
)
from .remote import new_token, write_token

#: How long the agent actor may take to start (seconds).
ACTOR_TIMEOUT = 60.0


def _devices(env: Mapping[str, str]) -> list[dict[str, Any]]:
    """This node's GPUs as the agent reads them (NVML in this process)."""
    from ..agent import read_gpus

    gpus, _ = read_gpus()
    return [g.to_dict() for g in gpus]


def _prepare(env: Mapping[str, str], name: str | None) -> tuple[dict[str, str], str]:
    env = dict(os.environ if env is None else env)
    name = check_name(name or default_name())
    d = pool_dir(env)
    old = read_record(env)
    if old is not None and old.alive():
        raise BadValueError(f"node {old.name} ({old.role} of {old.address}) already runs from "
                            f"{d}; stop it with `flexai pool down` first (or use another "
                            "node with another state directory, e.g. FLEXAI_STATE_DIR=/tmp/n2)")
    return env, name


def connect_ray(address: str) -> None:
    """Connect this process to the pool's Ray as a driver (no-op when already connected)."""
    import ray

    if ray.is_initialized():
        return
    ray.init(address=address, namespace=NAMESPACE, logging_level="ERROR",
             log_to_driver=False, configure_logging=True)
    _ray_messages_to_stderr()


def _ray_messages_to_stderr() -> None:
    """Ray's driver prints the cluster's error messages ("node ... marked dead") to stdout even
    with ``log_to_driver=False``, where ``flexai submit`` streams the job's own output: send them
    to stderr. (Ray's private printer; left alone if a Ray version has none.)"""
    try:
        from ray._private import worker
    except ImportError:
        return
    original = getattr(worker, "print_to_stdstream", None)
    if original is None or getattr(original, "flexai_stderr", False):
        return

    def to_stderr(data, ignore_prefix):
        original({**data, "is_err": True}, ignore_prefix)

    to_stderr.flexai_stderr = True
    worker.print_to_stdstream = to_stderr


def _node_id(name: str, timeout: float = 30.0) -> str:
    """The Ray node id of the live node labelled with flexai's ``name``."""
    import ray

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for n in ray.nodes():
            if n.get("Alive") and (n.get("Labels") or {}).get(LABEL_NODE) == name:
                return n["NodeID"]
        time.sleep(0.2)
    raise PoolError(f"node {name} did not appear in the pool within {timeout:.0f} s")


def _start_agent(name: str, node_id: str, env: Mapping[str, str],
                 metrics_port: int | None) -> dict[str, Any]:
    """Create this node's agent actor, pinned to ``node_id``; return its ``info()``."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from .agent_actor import AgentActor

    actor = ray.remote(AgentActor).options(
        name=agent_actor_name(name), namespace=NAMESPACE, lifetime="detached", num_cpus=0,
        max_concurrency=16, max_restarts=0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        runtime_env={"env_vars": agent_env_vars(env)}).remote(name, metrics_port)
    try:
        return ray.get(actor.info.remote(), timeout=ACTOR_TIMEOUT)
    except Exception as exc:
        _kill_quietly(actor)
        raise PoolError(f"the agent of node {name} did not start: {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:300]


def _kill_quietly(handle: Any) -> None:
    import ray

    try:
        ray.kill(handle, no_restart=True)
    except Exception:
        pass


def _ray_address(log_text: str, node_ip: str | None, port: int) -> str:
    """The GCS address Ray printed (``ray start --address='HOST:PORT'``)."""
    found = re.findall(r"--address='([^']+)'", log_text)
    if found:
        return found[-1]
    return f"{node_ip or '127.0.0.1'}:{port}"


def up(*, name: str | None = None, port: int = DEFAULT_PORT, node_ip: str | None = None,
       num_cpus: int | None = None, object_store_memory: int | None = None,
       temp_dir: str | None = None, metrics_port: int | None = None,
       pool_metrics_port: int | None = None, embedded: bool = False,
       env: Mapping[str, str] | None = None) -> NodeRecord:
    """Start a pool with this machine as its head (see ``flexai pool up``).

    Raises
    ------
    BadValueError
        A node already runs from this pool directory, the port is in use, a bad name.
    PoolError
        Ray or an actor did not start.
    """
    env, name = _prepare(env, name)
    check_port_free(port)
    d = pool_dir(env)
    args = ["--head", "--port", str(port), "--include-dashboard", "false",
            "--dashboard-port", str(_free_ports(1)[0])]
    if temp_dir:
        args += ["--temp-dir", temp_dir]
    args += node_start_args(name, _devices(env), num_cpus=num_cpus,
                            object_store_memory=object_store_memory, node_ip=node_ip)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    new_token(env)  # the pool's remote-slice secret (flexai.pool.remote), 0600, never printed
    log = d / "ray.log"
    proc = start_ray(args, node_env(env), log)
    address = _ray_address(log.read_text(errors="replace"), node_ip, port)
    record = NodeRecord(name=name, role="head", address=address, pid=proc.pid,
                        embedded=embedded, started_at=time.time(), log=str(log))
    write_record(record, env)
    try:
        _start_actors_head(record, env, metrics_port, pool_metrics_port)
    except BaseException:
        _stop_local(record, env)
        raise
    return record


def _start_actors_head(record: NodeRecord, env: Mapping[str, str], metrics_port: int | None,
                       pool_metrics_port: int | None) -> None:
    import ray
    from ray.experimental.internal_kv import _internal_kv_put
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from .. import __version__
    from .head import PoolHead

    connect_ray(record.address)
    node_id = _node_id(record.name)
    head = ray.remote(PoolHead).options(
        name=HEAD_ACTOR, namespace=NAMESPACE, lifetime="detached", num_cpus=0,
        max_concurrency=256, max_restarts=0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        runtime_env={"env_vars": agent_env_vars(env)}).remote(record.address, pool_metrics_port)
    try:
        ray.get(head.ping.remote(), timeout=ACTOR_TIMEOUT)
    except Exception as exc:
        _kill_quietly(head)
        raise PoolError(f"the pool head did not start: {_one_line(exc)}") from None
    info = _start_agent(record.name, node_id, env, metrics_port)
    ray.get(head.register.remote(record.name, info), timeout=ACTOR_TIMEOUT)
    facts = {"flexai_version": __version__, "head": record.name, "address": record.address,
             "started_at": record.started_at}
    _internal_kv_put(KV_KEY, json.dumps(facts).encode(), overwrite=True, namespace=NAMESPACE)


def join(address: str, *, name: str | None = None, node_ip: str | None = None,
         num_cpus: int | None = None, object_store_memory: int | None = None,
         temp_dir: str | None = None, metrics_port: int | None = None,
         env: Mapping[str, str] | None = None) -> NodeRecord:
    """Add this machine to the pool at ``address`` (see ``flexai pool join``).

    Raises
    ------
    BadValueError
        Nothing (or no flexai pool) answers at the address, a version mismatch, a node of
        that name already in the pool, a node already running from this pool directory.
    PoolError
        Ray or the agent did not start.
    """
    parse_address(address)
    record = read_record(env)
    if record is not None and record.alive() and record.address == address and \
            record.name == (name or record.name):
        return _repair(record, dict(os.environ if env is None else env), metrics_port)
    env, name = _prepare(env, name)
    facts = probe(address)
    check_versions(address, facts)
    d = pool_dir(env)
    args = ["--address", address] + (["--temp-dir", temp_dir] if temp_dir else [])
    args += node_start_args(name, _devices(env), num_cpus=num_cpus,
                            object_store_memory=object_store_memory, node_ip=node_ip)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    log = d / "ray.log"
    proc = start_ray(args, node_env(env), log)
    record = NodeRecord(name=name, role="member", address=address, pid=proc.pid,
                        started_at=time.time(), log=str(log))
    write_record(record, env)
    try:
        import ray

        connect_ray(address)
        head = ray.get_actor(HEAD_ACTOR, namespace=NAMESPACE)
        live = [n for n in ray.nodes() if n.get("Alive")
                and (n.get("Labels") or {}).get(LABEL_NODE) == name]
        if len(live) > 1:
            raise BadValueError(f"--name {name}: a node of that name is already in the pool "
                                f"(choose another, e.g. --name {name}-2)")
        write_token(ray.get(head.remote_token.remote(), timeout=ACTOR_TIMEOUT), env)
        info = _start_agent(name, _node_id(name), env, metrics_port)
        ray.get(head.register.remote(name, info), timeout=ACTOR_TIMEOUT)
    except BaseException:
        _stop_local(record, env)
        raise
    return record


def _repair(record: NodeRecord, env: Mapping[str, str], metrics_port: int | None
            ) -> NodeRecord:
    """``join`` again on a node that is in the pool: start its agent when it is gone (killed),
    and register it with the head again; nothing when it answers."""
    import ray

    connect_ray(record.address)
    agent = _actor(agent_actor_name(record.name))
    if agent is not None:
        try:
            ray.get(agent.info.remote(), timeout=10)
            return record
        except Exception:
            _kill_quietly(agent)
    head = ray.get_actor(HEAD_ACTOR, namespace=NAMESPACE)
    info = _start_agent(record.name, _node_id(record.name), env, metrics_port)
    ray.get(head.register.remote(record.name, info), timeout=ACTOR_TIMEOUT)
    return record


def _stop_local(record: NodeRecord, env: Mapping[str, str]) -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
    stop_process_group(record.pid, 30.0)
    remove_record(env)


def down(env: Mapping[str, str] | None = None, grace_s: float = 5.0) -> NodeRecord:
    """Stop this machine's node: its agent stops the jobs it runs, the head (on the head
    node) stops, then this node's Ray.

    Raises
    ------
    PoolError
        No node runs from this pool directory.
    """
    env = dict(os.environ if env is None else env)
    record = read_record(env)
    if record is None:
        raise PoolError(f"no pool node runs from {pool_dir(env)} (nothing to stop)")
    if record.alive():
        try:
            probe(record.address, timeout=15.0)
            _leave(record, grace_s)
        except Exception:
            pass  # the pool is gone already: stop what is ours anyway
    _stop_local(record, env)
    return record


def _leave(record: NodeRecord, grace_s: float) -> None:
    import ray

    connect_ray(record.address)
    head = _actor(HEAD_ACTOR)
    names = [record.name]
    if record.role == "head" and head is not None:
        try:
            names = [n["name"] for n in ray.get(head.status.remote(), timeout=15)["nodes"]
                     if n["alive"]]
        except Exception:
            pass
    elif head is not None:
        try:
            ray.get(head.leave.remote(record.name), timeout=10)
        except Exception:
            pass
    for node in names:  # on the head: every agent stops its jobs before Ray goes
        agent = _actor(agent_actor_name(node))
        if agent is None:
            continue
        try:
            ray.get(agent.close.remote(grace_s), timeout=grace_s + 10)
        except Exception:
            pass
        _kill_quietly(agent)
    if record.role == "head" and head is not None:
        try:
            ray.get(head.shutdown.remote(), timeout=10)
        except Exception:
            pass
        _kill_quietly(head)
    ray.shutdown()


def _actor(name: str) -> Any:
    import ray

    try:
        return ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return None
