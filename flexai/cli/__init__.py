"""The ``flexai`` command: one small module per subcommand (run, resize, mps, ps, demo, agent,
top, pool, submit with jobs and cancel, remoted, k8s) and their shared output helpers
(``_output``).

``main`` assembles the parser from the command modules; it imports them when called, so that
importing ``flexai.cli`` (or a module that uses ``flexai.cli.ps``) runs nothing. Commands never
call ``sys.exit`` themselves: they return the exit status.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _parser() -> argparse.ArgumentParser:
    from .. import __version__
    from . import agent, demo, k8s, mps, pool, ps, remoted, resize, run, submit, top

    p = argparse.ArgumentParser(prog="flexai", description="GPU slicing: run programs with "
                                "memory and compute quotas on a shared GPU.")
    p.add_argument("--version", action="version", version=f"flexai {__version__}")
    sub = p.add_subparsers(dest="subcommand", metavar="COMMAND")
    for command in (run, resize, mps, ps, demo, agent, top, pool, submit, remoted, k8s):
        command.add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``flexai`` command; returns the exit status."""
    from .._ffi import FlexaiError
    from ._output import fail

    try:
        parser = _parser()  # the options of `flexai run` come from the library's table
    except FlexaiError as exc:
        return fail(exc)
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help(sys.stderr)
        return 2
    return int(args.func(args))
