"""Start a process inside a slice: the environment of ``flexai run`` (libflexai.so preloaded
first, the slice's ``FLEXAI_*`` variables set), which ``flexai.torch.use_slice`` and the
benchmarks' jobs use too.

This module must never judge a value itself (the library's parser does, through
``flexai.spec``) and never touch the node's shared state: a slice comes to life when the first
process in it starts CUDA.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import NoReturn

from .._ffi import library_path
from ..spec import variable


def preload_value(existing: str | None) -> str:
    """``LD_PRELOAD`` with libflexai.so first, keeping (once) whatever was there before."""
    lib = str(library_path())
    rest = [p for p in (existing or "").replace(" ", ":").split(":") if p and p != lib]
    return ":".join([lib] + rest)


def without_flexai(env: Mapping[str, str], keep: Iterable[str] = ()) -> dict[str, str]:
    """``env`` without its ``FLEXAI_*`` settings (but the names in ``keep``) and without
    ``LD_PRELOAD``: the start of an environment for a process in a slice of its own."""
    kept = set(keep)
    return {k: v for k, v in env.items()
            if (not k.startswith("FLEXAI_") or k in kept) and k != "LD_PRELOAD"}


def slice_env(base: Mapping[str, str], variables: Mapping[str, str], *,
              default_slice: str | None = None) -> dict[str, str]:
    """The environment of a process in a slice.

    Parameters
    ----------
    base : Mapping[str, str]
        The environment to start from (the caller's, or a cleaned one).
    variables : Mapping[str, str]
        ``FLEXAI_*`` values that override ``base`` (``SliceSpec.env()``, ``spec.env_of(...)``).
    default_slice : str, optional
        The slice name when neither ``base`` nor ``variables`` names one.

    Returns
    -------
    dict
        ``base`` updated with ``variables``, the slice name, and ``LD_PRELOAD`` with
        libflexai.so first.
    """
    env = {**base, **variables}
    slice_var = variable("slice").name
    if default_slice is not None and slice_var not in env:
        env[slice_var] = default_slice
    env["LD_PRELOAD"] = preload_value(env.get("LD_PRELOAD"))
    return env


def run_slice_name() -> str:
    """The slice name ``flexai run`` gives a command without one: ``run-<pid>`` (exec keeps
    the pid, so the name is unique per command)."""
    return f"run-{os.getpid()}"


def exec_command(command: Sequence[str], env: Mapping[str, str]) -> NoReturn:
    """Replace this process by ``command`` in ``env`` (searched on ``PATH``).

    Raises
    ------
    FileNotFoundError
        When the command does not exist.
    OSError
        When it cannot be run.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(command[0], list(command), dict(env))
