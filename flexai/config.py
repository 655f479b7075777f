"""``python -m flexai.config``: validate the ``FLEXAI_*`` environment (plus options) with the
library's own parser and show the effective configuration, as a table, JSON, shell ``export``
lines or the library's path.

Only the command lives here: the contract and the configuration are flexai.spec's, the
``LD_PRELOAD`` value flexai.node.launch's. A bad value is one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Mapping, Sequence

from ._ffi import FlexaiError, library_path
from .cli._output import fail, warn
from .node.launch import preload_value
from .remote.client import client_library
from .spec import (
    Config,
    add_options,
    format_bytes,
    options_env,
    parse_config,
    unknown_variable_warnings,
    variables,
)


def _table(cfg: Config) -> str:
    rows = [
        ("library", str(library_path())),
        ("gpu memory", cfg.memory_text()),
        ("gpu compute", cfg.compute_text()),
        ("slice", cfg.slice or "(none: a private slice per process)"),
        ("priority", cfg.priority),
        ("log level", cfg.log_level),
        ("sharing", cfg.sharing),
        ("state dir", cfg.state_dir),
        ("libcuda", cfg.libcuda),
        ("libnvml", cfg.libnvml),
        ("remote client", f"{client_library()} (libcuda.so.1 of `flexai run --remote`)"),
        ("context memory", f"{format_bytes(cfg.context_memory)} per process and device"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _export(env: Mapping[str, str]) -> str:
    lines = [f"export LD_PRELOAD={shlex.quote(preload_value(env.get('LD_PRELOAD')))}"]
    lines += [f"export {v.name}={shlex.quote(env[v.name])}" for v in variables() if v.name in env]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m flexai.config",
        description="Validate and show the effective flexai configuration (options override "
                    "the FLEXAI_* environment).")
    add_options(p)
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the configuration as JSON")
    out.add_argument("--export", action="store_true",
                     help="print shell 'export' lines for LD_PRELOAD and the FLEXAI_* values")
    out.add_argument("--lib", action="store_true", help="print the library path only")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m flexai.config``; returns the exit status."""
    try:
        args = _parser().parse_args(argv)
        env = {**os.environ, **options_env(args)}
        cfg = parse_config(env)
    except FlexaiError as exc:
        return fail(exc)
    for warning in unknown_variable_warnings(env):
        warn(warning)
    if args.lib:
        print(library_path())
    elif args.export:
        print(_export(env))
    elif args.json:
        print(json.dumps({"library": str(library_path()), "remote_client": str(client_library()),
                          **cfg.to_dict()}, indent=2))
    else:
        print(_table(cfg))
    return 0


if __name__ == "__main__":
    # Run the copy imported as flexai.config, not this __main__ copy, so that the classes used
    # here are the package's own.
    from flexai.config import main as _main

    sys.exit(_main())
