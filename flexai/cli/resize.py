"""``flexai resize SLICE``: change a running slice's memory quota or compute share.

The work is flexai.node.control's; the option names are the contract table's. This module must
never judge a value or touch the node itself.
"""
from __future__ import annotations

import argparse

from .._ffi import FlexaiError
from ..node.control import resize
from ..spec import format_bytes, variable
from ._output import fail


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``resize`` to the ``flexai`` parser."""
    rs = sub.add_parser("resize", help="change a running slice's memory quota or compute share",
                        description="Change a slice's quotas while it runs: compute within "
                                    "milliseconds, memory at the next allocation. Lowering "
                                    "memory below usage refuses new allocations until usage "
                                    "drops; nothing is freed.")
    rs.add_argument("slice", help="slice name, e.g. job-42")
    # the contract's option names; the destinations are the variables' keys (gpu_memory, ...)
    memory, compute, burst = (variable(k) for k in ("gpu_memory", "gpu_compute",
                                                    "gpu_compute_burst"))
    rs.add_argument(memory.option, dest=memory.key, metavar=memory.metavar,
                    help=f"new memory quota, e.g. {memory.example} (0: none)")
    rs.add_argument(compute.option, dest=compute.key, metavar=compute.metavar, type=int,
                    help="new compute share, 1..100 (0: none)")
    rs.add_argument(burst.option, dest=burst.key, metavar=burst.metavar, type=int,
                    help="make the share a guarantee that may burst up to PERCENT")
    rs.add_argument("--device", metavar="UUID", help="only this device (default: all it uses)")
    rs.add_argument("--state-dir", metavar="DIR", help="node state directory")
    rs.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Resize the slice and say what changed."""
    try:
        done = resize(args.slice, memory=args.gpu_memory, compute=args.gpu_compute,
                      burst=args.gpu_compute_burst, device=args.device, state_dir=args.state_dir)
    except FlexaiError as exc:
        return fail(exc)
    parts = []
    if done.memory is not None:
        parts.append(f"memory {format_bytes(done.memory) if done.memory else 'unlimited'}")
    if done.compute is not None:
        parts.append(f"compute {done.compute}%" + (f" (burst {done.burst}%)" if done.burst else ""))
    print(f"{done.slice}: {', '.join(parts)} on {', '.join(done.devices)}")
    return 0
