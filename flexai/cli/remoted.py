"""``flexai remoted [--listen HOST:PORT] [--status]``: serve remote slices from this GPU node.

Thin: the engine is flexai.remote.server. It listens on loopback unless another address is
given, needs ``FLEXAI_REMOTE_TOKEN``, and logs sessions on stderr. ``--status`` lists the
sessions of the server on that address. This module must never judge a slice value itself.
"""
from __future__ import annotations

import argparse
import logging
import signal
import time

from .._ffi import FlexaiError
from ..remote.client import DEFAULT_PORT, parse_address, token_from_env
from ..spec import variable
from ._output import EXIT_BAD_VALUE, columns, error, fail


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``remoted`` to the ``flexai`` parser."""
    p = sub.add_parser("remoted", help="serve remote slices of this node's GPUs over TCP",
                       description="Accept flexai remote clients (`flexai run --remote "
                                   "HOST:PORT`) and run each session in a slice of this node, "
                                   "under the quotas it asks for. Needs FLEXAI_REMOTE_TOKEN, "
                                   "the secret shared with the clients.")
    p.add_argument("--listen", metavar="HOST:PORT", default=f"127.0.0.1:{DEFAULT_PORT}",
                   help=f"address to listen on (default 127.0.0.1:{DEFAULT_PORT}; "
                        f"e.g. 0.0.0.0:{DEFAULT_PORT} for every interface)")
    p.add_argument("--status", action="store_true",
                   help="list the sessions of the server on --listen and exit")
    p.add_argument("--max-sessions", type=int, default=64, metavar="N",
                   help="clients served at once (default 64)")
    p.set_defaults(func=main, parser=p)


def _status(host: str, port: int) -> int:
    from ..remote.server import read_status

    data = read_status(host, port)
    if data is None:
        return error(f"no flexai remoted listens on {host}:{port}", 1)
    print(f"flexai remoted on {data['listen']} (pid {data['pid']}), "
          f"{len(data['sessions'])} session(s)")
    if data["sessions"]:
        memory, compute = variable("gpu_memory").name, variable("gpu_compute").name
        rows = [["SESSION", "PID", "PEER", "SLICE", "MEMORY", "COMPUTE", "AGE"]]
        now = time.time()
        for s in data["sessions"]:
            req = s.get("request", {})
            rows.append([s["id"], str(s["pid"]), s["peer"], s["slice"],
                         req.get(memory, "-"), req.get(compute, "-"),
                         f"{now - s['started']:.0f}s"])
        print(columns(rows))
    return 0


def main(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT (or print the status); returns the exit status."""
    from ..remote.server import RemoteServer

    try:
        host, port = parse_address(args.listen, any_port=not args.status)
    except FlexaiError as exc:
        return fail(exc)
    if args.status:
        return _status(host, port)
    if args.max_sessions < 1:
        return error(f"--max-sessions {args.max_sessions}: expected at least 1, e.g. 64",
                     EXIT_BAD_VALUE)
    try:
        token = token_from_env()
    except FlexaiError as exc:
        return fail(exc)
    logging.basicConfig(level=logging.INFO, format="flexai remoted: %(message)s")
    try:
        server = RemoteServer(host, port, token, max_sessions=args.max_sessions)
    except OSError as exc:
        return error(f"cannot listen on {args.listen}: {exc.strerror}", 1)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: server.stop())
    logging.getLogger("flexai.remote").info("listening on %s", server.address)
    server.serve_forever()
    return 0
