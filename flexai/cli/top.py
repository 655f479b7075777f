"""``flexai top [--once] [--pool [--address A]] [--state-dir DIR] [--interval S]``: a live view
(rich) of the node or of the pool: GPUs with memory and compute bars, slices with priority and
usage, the queue. ``--once`` prints one frame (no terminal codes when stdout is not a terminal).

Node mode reads ``flexai.node.metrics.node_status`` (NodeSnapshot + NVML); pool mode calls
``flexai.pool.status(address)`` (the pool head builds it; extra keys are ignored).
Both give plain data of one shape, which is all this module draws::

    {"nodes":  [{"name": str, "alive": bool,
                 "gpus": [{"index": int, "uuid": str, "model": str, "memory_total": int,
                           "memory_used": int (optional), "memory_granted": int,
                           "compute_granted": int}]}],
     "slices": [{"name": str, "node": str, "gpu": str (UUID or index), "priority": str,
                 "nprocs": int, "memory_limit": int, "memory_used": int (optional),
                 "compute": int, "burst": int, "gpu_seconds": float,
                 "throttled_seconds": float (optional)}],
     "queue":  [{"job": str, "priority": str, "memory": int, "compute": int,
                 "waiting_s": float, "reason": str}]}

Sizes are bytes, compute percent. Where a GPU gives ``memory_free``/``compute_free`` (the
policy's view) instead of the granted figures, granted = total - free; slices listed inside
their GPU (``job``, ``memory``: what the pool granted) are shown too when the top-level list
(what the nodes' state shows) lacks them.

This module only draws: it must never change a slice or the pool, and never compute a figure
that the node or the pool did not report (beyond the two conversions above).
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

from .._ffi import FlexaiError
from ..spec import format_bytes, variable
from ._output import EXIT_BAD_VALUE, EXIT_FAILURE, error, fail

#: Frame width when stdout is not a terminal and $COLUMNS is unset (scripts read whole lines).
PIPE_WIDTH = 160


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``top`` to the ``flexai`` parser."""
    state = variable("state_dir")
    p = sub.add_parser("top", help="live view of the node's (or the pool's) GPUs and slices",
                       description="A live view of the GPUs (memory and compute bars), the "
                                   "slices (priority, usage) and, in a pool, the queue. "
                                   "Ctrl-C quits.")
    p.add_argument("--once", action="store_true", help="print one frame and exit (for scripts)")
    p.add_argument("--pool", action="store_true",
                   help="show the whole pool (flexai.pool.status()) instead of this node")
    p.add_argument("--address", metavar="HOST:PORT",
                   help="with --pool: the pool to show (default: the one this machine is in)")
    p.add_argument("--state-dir", metavar="DIR",
                   help=f"node state directory (default: ${state.name} or {state.default})")
    p.add_argument("--interval", metavar="S", default="2",
                   help="seconds between frames (default 2; e.g. 0.5)")
    p.set_defaults(func=main)


def _interval(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if 0.05 <= value <= 3600 else None


def _bar(part: float, whole: float, width: int = 12) -> Any:
    """A bar of ``part`` out of ``whole``: green, yellow above 75%, red above 90%."""
    from rich.text import Text

    frac = 0.0 if whole <= 0 else min(max(part / whole, 0.0), 1.0)
    filled = round(frac * width)
    style = "red" if frac > 0.9 else "yellow" if frac > 0.75 else "green"
    return Text.assemble(("█" * filled, style), ("·" * (width - filled), "dim"))


def _size(n: Any) -> str:
    return "-" if n is None else format_bytes(int(n))


def gpus_of(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The GPUs of every node, each with its ``node`` and the granted figures."""
    out = []
    for node in data.get("nodes") or []:
        for g in node.get("gpus") or []:
            total = int(g.get("memory_total") or 0)
            granted = g.get("memory_granted")
            if granted is None and g.get("memory_free") is not None:
                granted = total - int(g["memory_free"])
            compute = g.get("compute_granted")
            if compute is None and g.get("compute_free") is not None:
                compute = 100 - int(g["compute_free"])
            out.append({**g, "node": node.get("name", ""), "alive": node.get("alive", True),
                        "memory_total": total, "memory_granted": int(granted or 0),
                        "compute_granted": int(compute or 0)})
    return out


def slices_of(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The slices: the top-level list (what the nodes' state shows), then those listed inside
    their GPUs (what the pool granted) that the state does not show yet, e.g. a job whose
    processes have not started CUDA."""
    out = list(data.get("slices") or [])
    shown = {(s.get("node", ""), s.get("name", "")) for s in out}
    for g in gpus_of(data):
        for s in g.get("slices") or []:
            name = s.get("job", s.get("name", ""))
            if (g["node"], name) in shown:
                continue
            out.append({"name": name, "node": g["node"],
                        "gpu": g.get("uuid") or str(g.get("index", "")),
                        "priority": s.get("priority", ""),
                        "memory_limit": s.get("memory", s.get("memory_limit", 0)),
                        "compute": s.get("compute", 0)})
    return out


def render(data: dict[str, Any], *, pool: bool, now: float | None = None) -> Any:
    """One frame of ``data`` (the shape in this module's docstring) as a rich renderable."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    gpus, slices, queue = gpus_of(data), slices_of(data), list(data.get("queue") or [])
    nodes = data.get("nodes") or []
    nslices = len({(s.get("node", ""), s.get("name", "")) for s in slices})
    stamp = time.strftime("%H:%M:%S", time.localtime(now))
    if pool:
        alive = sum(1 for n in nodes if n.get("alive", True))
        head = (f"flexai top · pool · {len(nodes)} node(s), {alive} up · {len(gpus)} GPU(s) · "
                f"{nslices} slice(s) · {len(queue)} queued · {stamp}")
    else:
        name = nodes[0].get("name", "") if nodes else ""
        head = (f"flexai top · node {name} · {len(gpus)} GPU(s) · {nslices} slice(s) · "
                f"{stamp}")
    parts: list[Any] = [Text(head, style="bold")]

    # the GPU column of a slice names the GPU by index where the node knows it
    index_of = {(g["node"], str(g.get("uuid")).lower()): g.get("index") for g in gpus}
    t = Table(title="GPUs", title_justify="left", expand=False, box=None, pad_edge=False)
    for col in (["NODE"] if pool else []) + ["GPU", "UUID", "MODEL", "MEMORY USED", "",
                                             "GRANTED", "COMPUTE GRANTED", "", "SLICES"]:
        # in a narrow terminal the UUID gives way first (cut with an ellipsis)
        t.add_column(col, no_wrap=col != "UUID", overflow="ellipsis")
    for g in gpus:
        total, used = g["memory_total"], g.get("memory_used")
        on_gpu = sum(1 for s in slices if s.get("node", g["node"]) == g["node"]
                     and str(s.get("gpu")).lower() in (str(g.get("uuid")).lower(),
                                                       str(g.get("index"))))
        label = str(g["index"]) if g.get("index", -1) >= 0 else "?"
        row = ([g["node"] + ("" if g["alive"] else " (down)")] if pool else []) + [
            label, g.get("uuid", ""), g.get("model") or "-",
            _bar(used if used is not None else g["memory_granted"], total),
            f"{_size(used)} / {_size(total) if total else '?'}",
            _size(g["memory_granted"]), _bar(g["compute_granted"], 100),
            f"{g['compute_granted']}%", str(on_gpu)]
        t.add_row(*row)
    parts += [Text(""), t if gpus else Text("no GPUs")]

    t = Table(title="Slices", title_justify="left", box=None, pad_edge=False)
    for col in (["NODE"] if pool else []) + ["SLICE", "PRIORITY", "PROCS", "GPU", "MEMORY",
                                             "USED", "LIMIT", "COMPUTE", "GPU TIME",
                                             "THROTTLED"]:
        t.add_column(col, no_wrap=True)
    for s in slices:
        limit, used = s.get("memory_limit") or 0, s.get("memory_used")
        gpu = s.get("gpu") or ""
        index = index_of.get((s.get("node", ""), gpu.lower()))
        compute = f"{s['compute']}%" if s.get("compute") else "-"
        if s.get("burst"):
            compute += f" (burst {s['burst']}%)"
        seconds, throttled = s.get("gpu_seconds"), s.get("throttled_seconds")
        row = ([s.get("node", "")] if pool else []) + [
            s.get("name", ""), s.get("priority", ""), str(s.get("nprocs", "-")),
            str(index) if index is not None and index >= 0 else (gpu[:12] or "-"),
            _bar(used or 0, limit) if limit else Text("no limit", style="dim"),
            _size(used), _size(limit) if limit else "none", compute,
            f"{seconds:.2f}s" if seconds else "-",
            f"{throttled:.2f}s" if throttled else "-"]
        t.add_row(*row)
    parts += [Text(""), t if slices else Text("no slices")]

    if pool or queue:
        t = Table(title="Queue", title_justify="left", box=None, pad_edge=False)
        for col in ("JOB", "PRIORITY", "MEMORY", "COMPUTE", "WAITING", "REASON"):
            t.add_column(col, no_wrap=True)
        for q in queue:
            waiting = q.get("waiting_s")
            t.add_row(str(q.get("job", q.get("name", ""))), q.get("priority", ""),
                      _size(q.get("memory")), f"{q.get('compute', 0)}%",
                      "-" if waiting is None else f"{waiting:.0f}s", q.get("reason", ""))
        parts += [Text(""), t if queue else Text("queue empty")]
    return Group(*parts)


def _source(args: argparse.Namespace) -> Callable[[], dict[str, Any]] | None:
    """What reads one frame's data (raises FlexaiError or the pool's error); None when
    ``--pool`` is asked of an installation without the pool."""
    if args.pool:
        try:
            from .. import pool
        except ImportError:
            return None
        return lambda: pool.status(args.address)
    from ..node.metrics import node_status

    return lambda: node_status(args.state_dir)


def _console() -> Any:
    import os

    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(highlight=False, width=PIPE_WIDTH)
    return console


def main(args: argparse.Namespace) -> int:
    """Print one frame (``--once``) or redraw every interval until Ctrl-C (exit 0)."""
    if args.address and not args.pool:
        return error("--address is for the pool view: flexai top --pool --address "
                     "10.0.0.5:6379", EXIT_BAD_VALUE)
    interval = _interval(args.interval)
    if interval is None:
        return error(f"--interval {args.interval!r}: expected seconds from 0.05 to 3600, "
                     "e.g. --interval 0.5", EXIT_BAD_VALUE)
    read = _source(args)
    if read is None:
        return error("top --pool: the pool is not part of this installation "
                     "(pip install 'flexai[pool]')", EXIT_FAILURE)
    try:
        data = read()
    except FlexaiError as exc:
        return fail(exc)
    except (OSError, RuntimeError, ConnectionError) as exc:  # the pool could not be reached
        return error(f"top --pool: {exc}", EXIT_FAILURE)
    except KeyboardInterrupt:
        return 0
    console = _console()
    if args.once:
        if console.is_terminal:
            console.print(render(data, pool=args.pool))
        else:  # plain lines for scripts: no codes (rich adds none here), no padding
            with console.capture() as frame:
                console.print(render(data, pool=args.pool))
            sys.stdout.write("".join(line.rstrip() + "\n"
                                     for line in frame.get().splitlines()))
        return 0
    return _live(console, read, data, interval, args.pool)


def _live(console: Any, read: Callable[[], dict[str, Any]], data: dict[str, Any],
          interval: float, pool: bool) -> int:
    from rich.live import Live
    from rich.text import Text

    try:
        with Live(render(data, pool=pool), console=console, screen=True,
                  auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                try:
                    frame = render(read(), pool=pool)
                except (FlexaiError, OSError, RuntimeError) as exc:  # keep going: it may pass
                    frame = Text(f"flexai top: {exc} (retrying every {interval:g}s)",
                                 style="red")
                live.update(frame, refresh=True)
    except KeyboardInterrupt:
        pass
    sys.stdout.flush()
    return 0
