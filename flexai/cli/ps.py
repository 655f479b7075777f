"""``flexai ps``: list the node's slices, their devices, processes, memory and compute.

Reads the node through :class:`~flexai.node.NodeSnapshot` and only formats it; it must never
group or interpret rows itself.
"""
from __future__ import annotations

import argparse
import json

from .._ffi import FlexaiError
from ..node.snapshot import NodeSnapshot
from ..spec import format_bytes, variable
from ._output import columns, fail


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``ps`` to the ``flexai`` parser."""
    state = variable("state_dir")
    ps = sub.add_parser("ps", help="list the node's slices, processes and memory")
    ps.add_argument("--json", action="store_true", help="machine-readable output")
    ps.add_argument("--state-dir", metavar="DIR",
                    help=f"node state directory (default: ${state.name} or {state.default})")
    ps.set_defaults(func=main)


def render_ps(snap: NodeSnapshot) -> str:
    """Format a snapshot as a table (human units, devices by UUID)."""
    if not snap.slices:
        return f"no slices in {snap.state_dir}"
    rows = [["SLICE", "PRIORITY", "PROCS", "DEVICE", "LIMIT", "USED", "COMPUTE", "GPU TIME"]]
    for s in snap.slices:
        head = [s.name, s.priority, str(s.nprocs)]
        if not s.devices:
            rows.append(head + ["-"] * 5)
        for dev in s.devices:
            limit = format_bytes(dev.limit_bytes) if dev.limit_bytes else "none"
            compute = f"{dev.compute}%" if dev.compute else "-"
            if dev.burst:
                compute += f" (burst {dev.burst}%)"
            gpu = f"{dev.gpu_seconds:.2f}s" if dev.gpu_ns else "-"
            rows.append(head + [dev.device, limit, format_bytes(dev.used_bytes), compute, gpu])
            head = ["", "", ""]
            for p in dev.processes:
                rows.append([f"  pid {p.pid}", "", "", "", "", format_bytes(p.used_bytes), "",
                             ""])
    return f"state dir: {snap.state_dir}\n" + columns(rows)


def main(args: argparse.Namespace) -> int:
    """Sweep exited processes, then print the node's slices."""
    try:
        snap = NodeSnapshot.read(args.state_dir)
    except FlexaiError as exc:
        return fail(exc)
    print(json.dumps(snap.to_dict(), indent=2) if args.json else render_ps(snap))
    return 0
