"""``flexai run [OPTIONS] -- CMD``: run a command (and all it spawns) inside a slice.

The options come from libflexai's contract table; the environment from flexai.node.launch.
This module only wires them to the command line: it must never restate an option or judge a
value.
"""
from __future__ import annotations

import argparse
import os

from .._ffi import FlexaiError
from ..node.launch import exec_command, run_slice_name, slice_env
from ..remote.client import remote_env
from ..spec import add_options, options_env, parse_config, unknown_variable_warnings, variable
from ..spec import variables as contract_variables
from ._output import error, fail, warn


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``run`` to the ``flexai`` parser."""
    opts = " ".join(f"[{v.option} {v.metavar}]" for v in contract_variables() if v.option)
    run = sub.add_parser("run", help="run a command (and all it spawns) inside a slice",
                         usage=f"flexai run {opts} -- CMD [ARGS...]",
                         description="Run CMD with libflexai.so preloaded, so that CMD and every "
                                     "process it starts share one slice's quotas. Options "
                                     "override the FLEXAI_* environment; without a slice name "
                                     "the command gets its own (run-<pid>). The exit status is "
                                     "CMD's.")
    add_options(run)
    run.add_argument("--remote", metavar="HOST:PORT",
                     help="run CMD here, its CUDA driver calls on a slice of the GPU node "
                          "serving `flexai remoted` at HOST:PORT (needs FLEXAI_REMOTE_TOKEN; "
                          "e.g. gpu-node-3:7470)")
    run.add_argument("command", nargs=argparse.REMAINDER, help="the command and its arguments")
    run.set_defaults(func=main, parser=run)


def main(args: argparse.Namespace) -> int:
    """Validate the slice, then replace this process by the command (returns only on error)."""
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        args.parser.error("missing the command to run, e.g. flexai run --gpu-memory 8GiB -- "
                          "python train.py")
    try:
        if args.remote:  # the quota is enforced by the server's slice; values are checked here
            env = remote_env(os.environ, args.remote, options_env(args))
        else:
            env = slice_env(os.environ, options_env(args), default_slice=run_slice_name())
        cfg = parse_config(env)
    except FlexaiError as exc:
        return fail(exc)
    for warning in unknown_variable_warnings(env):
        warn(warning)
    if not any(cfg.memory) and not any(cfg.compute):
        memory, compute = variable("gpu_memory").option, variable("gpu_compute").option
        warn(f"warning: no {memory} or {compute} given; the command runs without a quota")
    try:
        exec_command(command, env)
    except FileNotFoundError:
        return error(f"{command[0]}: command not found", 127)
    except OSError as exc:
        return error(f"{command[0]}: cannot run: {exc.strerror}", 126)
