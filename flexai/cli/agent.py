"""``flexai agent [--state-dir DIR] [--metrics-port N] [--name NAME]``: run this node's agent
alone (outside a pool), serving Prometheus metrics, until SIGTERM or Ctrl-C.

This module only wires flexai.agent and flexai.node.metrics to the command line: it must never
decide anything about jobs or slices itself.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any

from .._ffi import FlexaiError
from ._output import error, fail

#: How often the agent notices exited jobs while it waits (seconds).
REAP_INTERVAL = 1.0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``agent`` to the ``flexai`` parser."""
    p = sub.add_parser("agent", help="run this node's agent (metrics, jobs) until stopped",
                       description="Run the node agent: it reads the node's GPUs (NVML) and "
                                   "slices, and serves Prometheus metrics at "
                                   "http://ADDR:PORT/metrics, until SIGTERM or Ctrl-C. In a "
                                   "pool, `flexai pool up|join` starts it for you.")
    p.add_argument("--state-dir", metavar="DIR",
                   help="the node's flexai state directory (default $FLEXAI_STATE_DIR or "
                        "/dev/shm/flexai)")
    p.add_argument("--metrics-port", metavar="N", type=_port, default=None,
                   help="serve /metrics on this TCP port (0: a free one, printed); default: "
                        "no metrics")
    p.add_argument("--metrics-addr", metavar="ADDR", default="127.0.0.1",
                   help="address for /metrics (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--name", metavar="NAME", help="the node's name (default: the host name)")
    p.add_argument("--log-dir", metavar="DIR", help="where jobs' stdout/stderr go")
    p.set_defaults(func=main, parser=p)


def tcp_port(example: int):
    """An argparse type for a TCP port 0..65535; its error shows ``example`` (``flexai pool``
    uses it too)."""
    def port(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = -1
        if not 0 <= value <= 65535:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a TCP port 0..65535 (e.g. {example})")
        return value
    return port


_port = tcp_port(9464)


def main(args: argparse.Namespace) -> int:
    """Start the agent (and its metrics), wait for SIGTERM/SIGINT, stop cleanly; exit 0."""
    from ..agent import NodeAgent

    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    server = None
    try:
        agent = NodeAgent(name=args.name, state_dir=args.state_dir, log_dir=args.log_dir)
    except FlexaiError as exc:
        return fail(exc)
    try:
        agent.view()  # the state directory must be usable before we say we are up
        if args.metrics_port is not None:
            try:
                from ..node import metrics
            except ImportError:
                return error("metrics are not available in this installation", 1)
            try:
                server = metrics.serve(args.metrics_port, args.metrics_addr,
                                       state_dir=agent.state_dir)
            except OSError as exc:
                return error(f"--metrics-port {args.metrics_port}: cannot listen on "
                             f"{args.metrics_addr}: {exc.strerror} (expected a free port, "
                             "e.g. --metrics-port 9464)", 2)
        info = agent.info()
        where = ("" if server is None else
                 f", metrics on http://{args.metrics_addr}:{server.server_port}/metrics")
        models = sorted({d["model"] for d in info["devices"]})
        print(f"flexai agent {agent.name}: {len(info['devices'])} GPU(s)"
              f"{' (' + ', '.join(models) + ')' if models else ''}, state "
              f"{agent.state_dir}{where}", flush=True)
        while not stop.wait(REAP_INTERVAL):
            agent.heartbeat()  # notices exited jobs
        return 0
    except FlexaiError as exc:
        return fail(exc)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        agent.close()
        for s, handler in old.items():
            signal.signal(s, handler)
        sys.stdout.flush()
