"""``flexai mps start|stop|status``: the node's NVIDIA MPS control daemon.

The work is flexai.node.mps's; this module only prints its status and must never drive the
daemon itself.
"""
from __future__ import annotations

import argparse

from ..node import mps
from ._output import error, fail


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``mps`` to the ``flexai`` parser."""
    mp = sub.add_parser("mps", help="start, stop or query the node's NVIDIA MPS daemon",
                        description="With MPS, slices run kernels at the same time; flexai keeps "
                                    "their caps and priorities (FLEXAI_SHARING=auto notices it).")
    mp.add_argument("action", choices=["start", "stop", "status"])
    mp.add_argument("--pipe-dir", metavar="DIR",
                    help=f"MPS pipe directory (default $CUDA_MPS_PIPE_DIRECTORY or "
                         f"{mps.DEFAULT_PIPE_DIR})")
    mp.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Run the action and print the daemon's status."""
    try:
        st = {"start": mps.start, "stop": mps.stop, "status": mps.status}[args.action](
            args.pipe_dir)
    except mps.MpsError as exc:
        return fail(exc)
    state = "running" if st.running else "not running"
    servers = f", servers: {', '.join(st.servers)}" if st.servers else ""
    print(f"MPS control daemon {state} (pipe directory {st.pipe_dir}{servers})")
    if args.action == "start" and not st.running:
        return error("the daemon did not come up; see its log directory", 1)
    return 0
