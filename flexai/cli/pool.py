"""``flexai pool up|join|down|status``: this machine's membership in the accelerator pool.

This module only wires flexai.pool's functions to the command line and prints what they
return: it must never start Ray or judge a value itself.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .._ffi import FlexaiError
from ..spec import format_bytes
from ._output import columns, fail
from .agent import tcp_port

_port = tcp_port(6379)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``pool`` (with up, join, down, status) to the ``flexai`` parser."""
    pool = sub.add_parser("pool", help="make this machine's GPUs part of a pool (Ray)",
                          description="The accelerator pool: one head (flexai pool up) and "
                                      "any number of members (flexai pool join ADDRESS), each "
                                      "running Ray and a node agent. The node's record lives "
                                      "in /tmp/flexai-pool-UID (one per flexai state "
                                      "directory).")
    cmds = pool.add_subparsers(dest="pool_command", metavar="COMMAND")
    up = cmds.add_parser("up", help="start a pool with this machine as its head",
                         description="Start Ray's head here (ray start --head) with flexai's "
                                     "resources and labels, the pool head and this node's "
                                     "agent. Prints the address others join.")
    up.add_argument("--port", type=_port, default=6379,
                    help="the pool's TCP port (Ray's GCS; default 6379)")
    _node_options(up)
    up.add_argument("--pool-metrics-port", type=_port, metavar="N",
                    help="serve the pool's counters (queue, placements, preemptions) as "
                         "Prometheus metrics on this port (0: a free one)")
    up.set_defaults(func=_up)
    join = cmds.add_parser("join", help="add this machine to a pool",
                           description="Start Ray here as a member of the pool at ADDRESS "
                                       "(ray start --address) and this node's agent.")
    join.add_argument("address", metavar="ADDRESS", help="the pool's HOST:PORT, as printed "
                                                         "by flexai pool up")
    _node_options(join)
    join.set_defaults(func=_join)
    down = cmds.add_parser("down", help="stop this machine's node (and the pool, on the head)",
                           description="Stop the jobs this node's agent runs, then this "
                                       "node's Ray; on the head, every agent and the head.")
    down.set_defaults(func=_down)
    status = cmds.add_parser("status", help="nodes, GPUs, free memory and compute, slices",
                             description="The pool's nodes with their GPUs, free memory and "
                                         "compute and slices by priority, and the queue.")
    status.add_argument("--json", action="store_true", help="print flexai.pool.status() as "
                                                            "JSON")
    status.add_argument("--address", metavar="HOST:PORT", help="the pool (default: this "
                                                               "machine's)")
    status.set_defaults(func=_status)
    pool.set_defaults(func=lambda args: (pool.print_help(sys.stderr), 2)[1])


def _node_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", metavar="NAME", help="this node's name (default: the host name)")
    p.add_argument("--node-ip-address", metavar="IP", dest="node_ip",
                   help="the address other nodes reach this one at (default: Ray's choice)")
    p.add_argument("--num-cpus", type=int, metavar="N", help="CPUs offered to Ray tasks")
    p.add_argument("--object-store-memory", metavar="SIZE",
                   help="Ray's object store size on this node (e.g. 512MiB)")
    p.add_argument("--temp-dir", metavar="DIR",
                   help="Ray's temporary directory on this node (default Ray's, /tmp/ray; "
                        "give each node on one machine its own)")
    p.add_argument("--metrics-port", type=_port, metavar="N",
                   help="serve this node's Prometheus metrics on this port (0: a free one)")



def _store(args: argparse.Namespace) -> int | None:
    from .._ffi import parse_size

    return None if args.object_store_memory is None else parse_size(args.object_store_memory)


def _up(args: argparse.Namespace) -> int:
    from ..pool import lifecycle

    try:
        record = lifecycle.up(name=args.name, port=args.port, node_ip=args.node_ip,
                              num_cpus=args.num_cpus, object_store_memory=_store(args),
                              temp_dir=args.temp_dir, metrics_port=args.metrics_port,
                              pool_metrics_port=args.pool_metrics_port)
    except FlexaiError as exc:
        return fail(exc)
    print(f"flexai pool: head {record.name} is up at {record.address}")
    print(f"join from another machine with: flexai pool join {record.address}")
    return 0


def _join(args: argparse.Namespace) -> int:
    from ..pool import lifecycle

    try:
        record = lifecycle.join(args.address, name=args.name, node_ip=args.node_ip,
                                num_cpus=args.num_cpus, object_store_memory=_store(args),
                                temp_dir=args.temp_dir, metrics_port=args.metrics_port)
    except FlexaiError as exc:
        return fail(exc)
    print(f"flexai pool: node {record.name} joined the pool at {record.address}")
    return 0


def _down(args: argparse.Namespace) -> int:
    from ..pool import lifecycle

    try:
        record = lifecycle.down()
    except FlexaiError as exc:
        return fail(exc)
    what = "the pool's head" if record.role == "head" else "node"
    print(f"flexai pool: {what} {record.name} is down")
    return 0


def _status(args: argparse.Namespace) -> int:
    from ..pool import client

    try:
        status = client.status(args.address)
    except FlexaiError as exc:
        return fail(exc)
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
        return 0
    print(render(status))
    return 0


def render(status: dict[str, Any]) -> str:
    """The text of ``flexai pool status``: one row per GPU (a GPU-less node: one row), then
    the queue."""
    rows = [["NODE", "STATE", "GPU", "MODEL", "MEMORY FREE", "COMPUTE FREE", "SLICES"]]
    for n in status["nodes"]:
        state = n["state"] if n["alive"] else f"{n['state']} ({n['reason']})"
        if not n["gpus"]:
            rows.append([n["name"], state, "-", "(no GPU)", "-", "-", "-"])
        for g in n["gpus"]:
            by = {}
            for s in g["slices"]:
                by[s["priority"]] = by.get(s["priority"], 0) + 1
            slices = " ".join(f"{p}:{c}" for p, c in by.items()) or "-"
            rows.append([n["name"], state, str(g["index"]), g["model"],
                         f"{format_bytes(g['memory_free'])} / {format_bytes(g['memory_total'])}",
                         f"{g['compute_free']}%", slices])
    out = [f"pool {status['pool']['address']} (policy: {status['pool']['policy']})",
           columns(rows)]
    queue = status["queue"]
    out.append(f"queue: {len(queue)} waiting")
    if queue:
        q = [["JOB", "PRIORITY", "MEMORY", "COMPUTE", "WAITING", "WHY"]]
        q += [[j["job"], j["priority"], format_bytes(j["memory"]), f"{j['compute']}%",
               f"{j['waiting_s']:.0f}s", j["reason"] or "-"] for j in queue]
        out.append(columns(q))
    return "\n".join(out)


def main(args: argparse.Namespace) -> int:
    """Run the chosen ``flexai pool`` command."""
    return int(args.func(args))
