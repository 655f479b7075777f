"""Slice configuration: validated specs, the effective configuration, ``python -m flexai.config``.

Every value is checked by libflexai's own parser (``flexai_config_parse``), so this module, the
``flexai`` command and the preloaded shim always agree on what is valid.
"""
from __future__ import annotations

import argparse
import difflib
import json
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Callable

from . import _native, library_path

#: Variables of the user-facing contract, in the order ``--export`` prints them.
CONTRACT_VARIABLES = (
    "FLEXAI_GPU_MEMORY",
    "FLEXAI_GPU_COMPUTE",
    "FLEXAI_GPU_COMPUTE_BURST",
    "FLEXAI_SLICE",
    "FLEXAI_PRIORITY",
    "FLEXAI_STATE_DIR",
    "FLEXAI_LIBCUDA",
    "FLEXAI_LIBNVML",
    "FLEXAI_LOG",
    "FLEXAI_CONTEXT_MEMORY",
    "FLEXAI_SHARING",
)
#: Every FLEXAI_ name flexai reads (plus anything starting with FLEXAI_SIM_).
KNOWN_VARIABLES = CONTRACT_VARIABLES + ("FLEXAI_LIB_DIR",)


def format_bytes(n: int) -> str:
    """Format a byte count in binary units, e.g. ``8 GiB``, ``1.5 GiB``, ``512 B``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            text = f"{value:.2f}".rstrip("0").rstrip(".") if unit != "B" else str(int(value))
            return f"{text} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def describe_per_device(values: Sequence[int], fmt: Callable[[int], str]) -> str:
    """Describe a per-device quota table, e.g. ``all devices: 8 GiB`` or ``0: 8 GiB, 1: 4 GiB``.

    The last entry holds the default (an index-free value applies to every unlisted device, and
    no one lists all of them), so entries that differ from it are the explicit overrides.
    """
    if not any(values):
        return "none"
    default = values[-1]
    parts = [f"{i}: {fmt(v)}" for i, v in enumerate(values) if v != default]
    if not default:
        return ", ".join(parts)
    if not parts:
        return f"all devices: {fmt(default)}"
    return ", ".join(parts + [f"other devices: {fmt(default)}"])


@dataclass(frozen=True)
class Config:
    """The effective configuration of a process, as libflexai's parser sees it.

    Attributes
    ----------
    memory : tuple of int
        Memory quota in bytes per visible device index; 0 means no limit.
    compute : tuple of int
        Compute share in percent per visible device index; 0 means no limit.
    burst : tuple of int
        Burst limit in percent per device; 0 means the share is a hard cap, otherwise the
        share is guaranteed under contention and idle time may be used up to the burst.
    slice : str
        Slice name; empty means a private slice per process.
    priority : str
        ``"low"``, ``"normal"`` or ``"high"``.
    log_level : str
        ``"error"``, ``"warn"``, ``"info"`` or ``"debug"``.
    sharing : str
        ``"auto"`` (spatial where an MPS daemon runs, else time), ``"time"`` or ``"spatial"``.
    state_dir : str
        Directory of the node's shared state.
    libcuda, libnvml : str
        The real driver libraries the shim loads.
    context_memory : int
        Bytes charged per process and device for the CUDA context.
    """

    memory: tuple[int, ...]
    compute: tuple[int, ...]
    burst: tuple[int, ...]
    slice: str
    priority: str
    log_level: str
    sharing: str
    state_dir: str
    libcuda: str
    libnvml: str
    context_memory: int

    @classmethod
    def from_cdata(cls, c: Any) -> Config:
        """Build a Config from a ``flexai_config *`` filled by ``flexai_config_parse``."""
        n = _native.max_devices()
        return cls(
            memory=tuple(int(c.memory[i]) for i in range(n)),
            compute=tuple(int(c.compute[i]) for i in range(n)),
            burst=tuple(int(c.burst[i]) for i in range(n)),
            slice=_native.cstring(c.slice),
            priority=_native.priority_names().get(c.priority, str(c.priority)),
            log_level=_native.log_level_names().get(c.log_level, str(c.log_level)),
            sharing=_native.sharing_names().get(c.sharing, str(c.sharing)),
            state_dir=_native.cstring(c.state_dir),
            libcuda=_native.cstring(c.libcuda),
            libnvml=_native.cstring(c.libnvml),
            context_memory=int(c.context_memory),
        )

    def memory_text(self) -> str:
        """The memory quotas in words, e.g. ``all devices: 8 GiB`` or ``none``."""
        return describe_per_device(self.memory, format_bytes)

    def compute_text(self) -> str:
        """The compute shares in words, e.g. ``all devices: 30%`` or ``none``."""
        text = describe_per_device(self.compute, lambda v: f"{v}%")
        if any(self.burst):
            bursts = describe_per_device(self.burst, lambda v: f"{v}%")
            text += f" guaranteed; may burst to {bursts.removeprefix('all devices: ')}"
        elif any(self.compute):
            text += " hard cap"
        return text

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; ``memory``/``compute`` map device index to the quota of each
        limited device (absent: no limit), ``*_text`` describe them in words."""
        d = asdict(self)
        d["memory"] = {str(i): v for i, v in enumerate(self.memory) if v}
        d["compute"] = {str(i): v for i, v in enumerate(self.compute) if v}
        d["burst"] = {str(i): v for i, v in enumerate(self.burst) if v}
        d["memory_text"] = self.memory_text()
        d["compute_text"] = self.compute_text()
        return d


@dataclass(frozen=True)
class SliceSpec:
    """A slice request, validated at construction by libflexai's parser.

    Parameters
    ----------
    memory : str or int, optional
        Memory quota: ``"8GiB"``, ``"4096MiB"``, ``"0:8GiB,1:4GiB"``, or bytes.
    compute : int or str, optional
        Compute share in percent, 1..100 (``30``), or a per-device list (``"0:30,1:50"``).
    burst : int or str, optional
        Makes ``compute`` a guarantee that may use idle time up to this percent (``100``);
        without it the share is a hard cap.
    slice : str, optional
        Slice name; processes with the same name share one quota, e.g. ``"job-42"``.
    priority : str, optional
        ``"high"``, ``"normal"`` or ``"low"``.

    Raises
    ------
    ConfigError
        With the variable's name and a valid example, e.g.
        ``FLEXAI_GPU_MEMORY: unknown unit 'XB' in '8XB' (expected e.g.
        FLEXAI_GPU_MEMORY=8GiB, ...)``.

    Examples
    --------
    >>> SliceSpec(memory="8GiB", compute=30, slice="job-42").env()     # doctest: +SKIP
    {'FLEXAI_GPU_MEMORY': '8GiB', 'FLEXAI_GPU_COMPUTE': '30', 'FLEXAI_SLICE': 'job-42'}
    """

    memory: str | int | None = None
    compute: int | str | None = None
    slice: str | None = None
    priority: str | None = None
    burst: int | str | None = None

    def __post_init__(self) -> None:
        _native.parse_config(self.env())

    def env(self) -> dict[str, str]:
        """Return the ``FLEXAI_*`` variables of the values that are set."""
        pairs = (
            ("FLEXAI_GPU_MEMORY", self.memory),
            ("FLEXAI_GPU_COMPUTE", self.compute),
            ("FLEXAI_GPU_COMPUTE_BURST", self.burst),
            ("FLEXAI_SLICE", self.slice),
            ("FLEXAI_PRIORITY", self.priority),
        )
        return {name: str(value) for name, value in pairs if value is not None}

    def config(self) -> Config:
        """Return the configuration this spec gives on its own (defaults elsewhere)."""
        return _native.parse_config(self.env())


def unknown_variable_warnings(env: Mapping[str, str]) -> list[str]:
    """Warnings for ``FLEXAI_*`` names that flexai ignores but that look like typos of its own."""
    known = [name[len("FLEXAI_"):] for name in KNOWN_VARIABLES]
    warnings = []
    for name in sorted(env):
        if not name.startswith("FLEXAI_") or name in KNOWN_VARIABLES:
            continue
        if name.startswith("FLEXAI_SIM_"):
            continue
        match = difflib.get_close_matches(name[len("FLEXAI_"):], known, n=1, cutoff=0.6)
        if match:
            warnings.append(f"warning: {name} is not a flexai variable and is ignored; "
                            f"did you mean FLEXAI_{match[0]}?")
    return warnings


def preload_value(existing: str | None) -> str:
    """``LD_PRELOAD`` with libflexai.so first, keeping (once) whatever was there before."""
    lib = str(library_path())
    rest = [p for p in (existing or "").replace(" ", ":").split(":") if p and p != lib]
    return ":".join([lib] + rest)


def option_overrides(args: argparse.Namespace) -> dict[str, str]:
    """The ``FLEXAI_*`` variables given as ``--gpu-memory/--gpu-compute/--slice/--priority``."""
    pairs = (
        ("FLEXAI_GPU_MEMORY", args.gpu_memory),
        ("FLEXAI_GPU_COMPUTE", args.gpu_compute),
        ("FLEXAI_GPU_COMPUTE_BURST", args.gpu_compute_burst),
        ("FLEXAI_SLICE", args.slice),
        ("FLEXAI_PRIORITY", args.priority),
    )
    return {name: value for name, value in pairs if value is not None}


def add_slice_options(parser: argparse.ArgumentParser) -> None:
    """Add the slice options shared by ``python -m flexai.config`` and ``flexai run``."""
    parser.add_argument("--gpu-memory", metavar="SIZE",
                        help="memory quota per device, e.g. 8GiB or 0:8GiB,1:4GiB")
    parser.add_argument("--gpu-compute", metavar="PERCENT",
                        help="compute share per device in percent, e.g. 30 or 0:30,1:50")
    parser.add_argument("--gpu-compute-burst", metavar="PERCENT",
                        help="make --gpu-compute a guarantee and allow idle time up to this "
                             "percent, e.g. 100")
    parser.add_argument("--slice", metavar="NAME",
                        help="slice name; processes with one name share one quota")
    parser.add_argument("--priority", metavar="P", help="high, normal or low")


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
        ("context memory", f"{format_bytes(cfg.context_memory)} per process and device"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _export(env: Mapping[str, str]) -> str:
    lines = [f"export LD_PRELOAD={shlex.quote(preload_value(env.get('LD_PRELOAD')))}"]
    lines += [f"export {name}={shlex.quote(env[name])}"
              for name in CONTRACT_VARIABLES if name in env]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m flexai.config",
        description="Validate and show the effective flexai configuration (options override "
                    "the FLEXAI_* environment).")
    add_slice_options(p)
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the configuration as JSON")
    out.add_argument("--export", action="store_true",
                     help="print shell 'export' lines for LD_PRELOAD and the FLEXAI_* values")
    out.add_argument("--lib", action="store_true", help="print the library path only")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m flexai.config``; returns the exit status."""
    args = _parser().parse_args(argv)
    env = {**os.environ, **option_overrides(args)}
    try:
        cfg = _native.parse_config(env)
    except _native.ConfigError as exc:
        print(f"flexai: {exc}", file=sys.stderr)
        return 2
    except _native.FlexaiError as exc:
        print(f"flexai: {exc}", file=sys.stderr)
        return 1
    for warning in unknown_variable_warnings(env):
        print(f"flexai: {warning}", file=sys.stderr)
    if args.lib:
        print(library_path())
    elif args.export:
        print(_export(env))
    elif args.json:
        print(json.dumps({"library": str(library_path()), **cfg.to_dict()}, indent=2))
    else:
        print(_table(cfg))
    return 0


if __name__ == "__main__":
    # Run the copy imported as flexai.config, not this __main__ copy, so that the Config
    # returned by the parser and the one used here are the same class.
    from flexai.config import main as _main

    sys.exit(_main())
