"""The ``flexai`` command: run a program in a slice, list the node's slices, show a demo."""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__, _native
from .config import (
    add_slice_options,
    format_bytes,
    option_overrides,
    preload_value,
    unknown_variable_warnings,
)

DEFAULT_STATE_DIR = "/dev/shm/flexai"


def _error(message: object, status: int) -> int:
    print(f"flexai: {message}", file=sys.stderr)
    return status


# ---- flexai run ---------------------------------------------------------------------------------

def _run_env(args: argparse.Namespace) -> dict[str, str]:
    """The environment of the command: options over the caller's environment, a slice name."""
    env = {**os.environ, **option_overrides(args)}
    if "FLEXAI_SLICE" not in env:
        env["FLEXAI_SLICE"] = f"run-{os.getpid()}"  # exec keeps the pid: unique per command
    return env


def _cmd_run(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        args.parser.error("missing the command to run, e.g. flexai run --gpu-memory 8GiB -- "
                          "python train.py")
    env = _run_env(args)
    try:
        cfg = _native.parse_config(env)
    except _native.ConfigError as exc:
        return _error(exc, 2)
    except _native.FlexaiError as exc:
        return _error(exc, 1)
    for warning in unknown_variable_warnings(env):
        print(f"flexai: {warning}", file=sys.stderr)
    if not any(cfg.memory) and not any(cfg.compute):
        print("flexai: warning: no --gpu-memory or --gpu-compute given; the command runs "
              "without a quota", file=sys.stderr)
    env["LD_PRELOAD"] = preload_value(env.get("LD_PRELOAD"))
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(command[0], command, env)
    except FileNotFoundError:
        return _error(f"{command[0]}: command not found", 127)
    except OSError as exc:
        return _error(f"{command[0]}: cannot run: {exc.strerror}", 126)
    return 0  # not reached: exec replaced this process


# ---- flexai ps ----------------------------------------------------------------------------------

def effective_state_dir(state_dir: str | None) -> str:
    """The state directory libflexai uses for `state_dir` (None: environment, then default)."""
    return state_dir or os.environ.get("FLEXAI_STATE_DIR") or DEFAULT_STATE_DIR


def ps_snapshot(state_dir: str | None = None) -> dict[str, Any]:
    """Sweep dead processes, then read the node's devices, slices and usage as plain data.

    Raises
    ------
    FlexaiError
        When the state directory cannot be used.
    """
    with _native.Node(state_dir) as node:
        reclaimed = node.sweep()
        uuids = {d.id: d.uuid for d in node.devices()}
        slices = node.slices()
        usage = node.usage()
    out = []
    for s in slices:
        devices: list[dict[str, Any]] = []
        for row in (r for r in usage if r.slice_id == s.id):
            if row.pid == 0:
                devices.append({"device": uuids.get(row.device_id, f"#{row.device_id}"),
                                "limit_bytes": row.limit_bytes, "used_bytes": row.used_bytes,
                                "compute": row.compute, "burst": row.burst,
                                "gpu_seconds": row.gpu_ns / 1e9, "processes": []})
            elif devices:
                devices[-1]["processes"].append({"pid": row.pid, "used_bytes": row.used_bytes})
        out.append({"name": s.name, "priority": s.priority, "nprocs": s.nprocs,
                    "devices": devices})
    return {"state_dir": effective_state_dir(state_dir), "reclaimed": reclaimed,
            "devices": [{"id": i, "uuid": u} for i, u in sorted(uuids.items())], "slices": out}


def _columns(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def render_ps(snap: dict[str, Any]) -> str:
    """Format a :func:`ps_snapshot` as a table (human units, devices by UUID)."""
    if not snap["slices"]:
        return f"no slices in {snap['state_dir']}"
    rows = [["SLICE", "PRIORITY", "PROCS", "DEVICE", "LIMIT", "USED", "COMPUTE", "GPU TIME"]]
    for s in snap["slices"]:
        head = [s["name"], s["priority"], str(s["nprocs"])]
        if not s["devices"]:
            rows.append(head + ["-"] * 5)
        for dev in s["devices"]:
            limit = format_bytes(dev["limit_bytes"]) if dev["limit_bytes"] else "none"
            compute = f"{dev['compute']}%" if dev["compute"] else "-"
            if dev["burst"]:
                compute += f" (burst {dev['burst']}%)"
            gpu = f"{dev['gpu_seconds']:.2f}s" if dev["gpu_seconds"] else "-"
            rows.append(head + [dev["device"], limit, format_bytes(dev["used_bytes"]), compute,
                                gpu])
            head = ["", "", ""]
            for p in dev["processes"]:
                rows.append([f"  pid {p['pid']}", "", "", "", "", format_bytes(p["used_bytes"]),
                             "", ""])
    return f"state dir: {snap['state_dir']}\n" + _columns(rows)


def _cmd_ps(args: argparse.Namespace) -> int:
    try:
        snap = ps_snapshot(args.state_dir)
    except _native.FlexaiError as exc:
        return _error(exc, 1)
    print(json.dumps(snap, indent=2) if args.json else render_ps(snap))
    return 0


# ---- flexai demo --------------------------------------------------------------------------------

def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(simulated=args.simulated, as_json=args.json)


# ---- flexai resize ------------------------------------------------------------------------------

def _cmd_resize(args: argparse.Namespace) -> int:
    from .control import resize

    try:
        done = resize(args.slice, memory=args.gpu_memory, compute=args.gpu_compute,
                      burst=args.gpu_compute_burst, device=args.device,
                      state_dir=args.state_dir)
    except _native.ConfigError as exc:
        return _error(exc, 2)
    except _native.FlexaiError as exc:
        return _error(exc, 1)
    parts = []
    if done.memory is not None:
        parts.append(f"memory {format_bytes(done.memory) if done.memory else 'unlimited'}")
    if done.compute is not None:
        parts.append(f"compute {done.compute}%" + (f" (burst {done.burst}%)" if done.burst else ""))
    print(f"{done.slice}: {', '.join(parts)} on {', '.join(done.devices)}")
    return 0


# ---- flexai mps ---------------------------------------------------------------------------------

def _cmd_mps(args: argparse.Namespace) -> int:
    from . import mps

    try:
        st = {"start": mps.start, "stop": mps.stop, "status": mps.status}[args.action](
            args.pipe_dir)
    except mps.MpsError as exc:
        return _error(exc, 1)
    state = "running" if st.running else "not running"
    servers = f", servers: {', '.join(st.servers)}" if st.servers else ""
    print(f"MPS control daemon {state} (pipe directory {st.pipe_dir}{servers})")
    if args.action == "start" and not st.running:
        return _error("the daemon did not come up; see its log directory", 1)
    return 0


# ---- the parser ---------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flexai", description="GPU slicing: run programs with "
                                "memory and compute quotas on a shared GPU.")
    p.add_argument("--version", action="version", version=f"flexai {__version__}")
    sub = p.add_subparsers(dest="subcommand", metavar="COMMAND")

    run = sub.add_parser("run", help="run a command (and all it spawns) inside a slice",
                         usage="flexai run [--gpu-memory SIZE] [--gpu-compute PERCENT] "
                               "[--gpu-compute-burst PERCENT] [--slice NAME] [--priority P] "
                               "-- CMD [ARGS...]",
                         description="Run CMD with libflexai.so preloaded, so that CMD and every "
                                     "process it starts share one slice's quotas. Options "
                                     "override the FLEXAI_* environment; without a slice name "
                                     "the command gets its own (run-<pid>). The exit status is "
                                     "CMD's.")
    add_slice_options(run)
    run.add_argument("command", nargs=argparse.REMAINDER, help="the command and its arguments")
    run.set_defaults(func=_cmd_run, parser=run)

    rs = sub.add_parser("resize", help="change a running slice's memory quota or compute share",
                        description="Change a slice's quotas while it runs: compute within "
                                    "milliseconds, memory at the next allocation. Lowering "
                                    "memory below usage refuses new allocations until usage "
                                    "drops; nothing is freed.")
    rs.add_argument("slice", help="slice name, e.g. job-42")
    rs.add_argument("--gpu-memory", metavar="SIZE", help="new memory quota, e.g. 6GiB (0: none)")
    rs.add_argument("--gpu-compute", metavar="PERCENT", type=int,
                    help="new compute share, 1..100 (0: none)")
    rs.add_argument("--gpu-compute-burst", metavar="PERCENT", type=int,
                    help="make the share a guarantee that may burst up to PERCENT")
    rs.add_argument("--device", metavar="UUID", help="only this device (default: all it uses)")
    rs.add_argument("--state-dir", metavar="DIR", help="node state directory")
    rs.set_defaults(func=_cmd_resize)

    mp = sub.add_parser("mps", help="start, stop or query the node's NVIDIA MPS daemon",
                        description="With MPS, slices run kernels at the same time; flexai keeps "
                                    "their caps and priorities (FLEXAI_SHARING=auto notices it).")
    mp.add_argument("action", choices=["start", "stop", "status"])
    mp.add_argument("--pipe-dir", metavar="DIR",
                    help="MPS pipe directory (default $CUDA_MPS_PIPE_DIRECTORY or "
                         "/tmp/nvidia-mps)")
    mp.set_defaults(func=_cmd_mps)

    ps = sub.add_parser("ps", help="list the node's slices, processes and memory")
    ps.add_argument("--json", action="store_true", help="machine-readable output")
    ps.add_argument("--state-dir", metavar="DIR",
                    help=f"node state directory (default: $FLEXAI_STATE_DIR or "
                         f"{DEFAULT_STATE_DIR})")
    ps.set_defaults(func=_cmd_ps)

    demo = sub.add_parser("demo", help="show two slices sharing a GPU with their quotas enforced")
    demo.add_argument("--json", action="store_true", help="machine-readable output")
    demo.add_argument("--simulated", action="store_true",
                      help="use the simulated device even when a GPU is present")
    demo.set_defaults(func=_cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``flexai`` command; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help(sys.stderr)
        return 2
    return int(args.func(args))
