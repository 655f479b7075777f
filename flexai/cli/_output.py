"""Output shared by the ``flexai`` commands: one-line errors on stderr, the exit status each
error category means, aligned columns.

Private to flexai.cli (and ``flexai demo``). The exit status is decided here and nowhere else:
a bad value exits 2, every other failure 1. This module must never read the node or judge a
value.
"""
from __future__ import annotations

import sys

from .._ffi import BadValueError, FlexaiError

#: Exit status for a bad value (argparse uses the same for a bad command line).
EXIT_BAD_VALUE = 2
#: Exit status for every other failure.
EXIT_FAILURE = 1


def exit_status(exc: FlexaiError) -> int:
    """The exit status of a failed command: it follows the error's category."""
    return EXIT_BAD_VALUE if isinstance(exc, BadValueError) else EXIT_FAILURE


def error(message: object, status: int) -> int:
    """Print ``flexai: message`` on stderr and return ``status``."""
    print(f"flexai: {message}", file=sys.stderr)
    return status


def fail(exc: FlexaiError) -> int:
    """Print a flexai error on stderr; return the exit status of its category."""
    return error(exc, exit_status(exc))


def warn(message: str) -> None:
    """Print ``flexai: message`` on stderr (the message says "warning: ..." itself)."""
    print(f"flexai: {message}", file=sys.stderr)


def columns(rows: list[list[str]]) -> str:
    """Rows of text as left-aligned columns two spaces apart, without trailing blanks."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
