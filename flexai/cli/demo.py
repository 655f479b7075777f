"""``flexai demo``: the command line of flexai/demo.py, which does the work; this module must
never grow demo logic of its own."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``demo`` to the ``flexai`` parser."""
    demo = sub.add_parser("demo", help="show two slices sharing a GPU with their quotas enforced")
    demo.add_argument("--json", action="store_true", help="machine-readable output")
    demo.add_argument("--simulated", action="store_true",
                      help="use the simulated device even when a GPU is present")
    demo.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Run the demo (imported here: it is the heaviest command)."""
    from ..demo import run_demo

    return run_demo(simulated=args.simulated, as_json=args.json)
