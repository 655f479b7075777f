"""The user-facing contract in Python: the ``FLEXAI_*`` variables, the effective configuration,
and :class:`SliceSpec`, the validated slice request.

The variables, their command-line options, examples, defaults and help come from libflexai's
own table (``flexai_vars``) and every value is checked by its own parser, so this module, the
``flexai`` command and the preloaded shim cannot disagree. This module must never restate that
table (no list of variable names or options of its own), start processes or touch the node's
state.
"""
from __future__ import annotations

import argparse
import difflib
import functools
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable

from . import _ffi
from ._ffi import NotFoundError, parse_size
from .sim import SIM_PREFIX

__all__ = [
    "Config",
    "SliceSpec",
    "Variable",
    "add_options",
    "describe_per_device",
    "env_of",
    "format_bytes",
    "option_args",
    "options_env",
    "parse_config",
    "parse_size",
    "unknown_variable_warnings",
    "variable",
    "variables",
]

_PREFIX = "FLEXAI_"

# How a kind of value is shown as an option's argument (kinds are the library's FLEXAI_VAR_*).
_METAVARS = {"sizes": "SIZE", "percents": "PERCENT", "name": "NAME", "size": "SIZE",
             "path": "PATH"}


# ---- the contract table -------------------------------------------------------------------------

@dataclass(frozen=True)
class Variable:
    """One ``FLEXAI_*`` variable of the contract, as libflexai's table describes it.

    Attributes
    ----------
    name : str
        ``"FLEXAI_GPU_MEMORY"``.
    option : str or None
        Its option of ``flexai run``, e.g. ``"--gpu-memory"``; None when it has none.
    example : str
        A valid value, e.g. ``"8GiB"``.
    choices : tuple of str
        The accepted words of a choice (``("low", "normal", "high")``), else empty.
    default : str
        The default as a user would write it; ``""`` for none.
    help : str
        One line.
    kind : str
        ``"sizes"``, ``"percents"``, ``"choice"``, ``"name"``, ``"size"`` or ``"path"``.
    per_slice : bool
        True for a setting of the slice (memory, compute, ...), False for one of the process
        or the node (logging, paths).
    """

    name: str
    option: str | None
    example: str
    choices: tuple[str, ...]
    default: str
    help: str
    kind: str
    per_slice: bool

    @property
    def key(self) -> str:
        """The short name used for keyword arguments: ``FLEXAI_GPU_MEMORY`` -> ``gpu_memory``
        (the same as the option's argparse destination)."""
        return self.name[len(_PREFIX):].lower()

    @property
    def metavar(self) -> str:
        """How the option's argument is shown, e.g. ``SIZE`` or ``high|normal|low``."""
        if self.choices:
            return "|".join(self.choices)
        return _METAVARS.get(self.kind, "VALUE")


@functools.lru_cache(maxsize=None)
def variables() -> tuple[Variable, ...]:
    """Return the contract's variables in the library's order.

    Raises
    ------
    SystemRefusedError
        When libflexai.so cannot be loaded.
    """
    kinds = _ffi.names("FLEXAI_VAR_")
    return tuple(
        Variable(name=v["name"], option=v["option"], example=v["example"],
                 choices=tuple(c for c in (v["choices"] or "").split(",") if c),
                 default=v["default_text"], help=v["help"],
                 kind=kinds.get(v["kind"], str(v["kind"])), per_slice=bool(v["per_slice"]))
        for v in _ffi.variables())


def variable(name: str) -> Variable:
    """Return one variable by name (``"FLEXAI_SLICE"``) or key (``"slice"``).

    Raises
    ------
    NotFoundError
        When the library's table has no such variable.
    """
    for v in variables():
        if name in (v.name, v.key):
            return v
    known = ", ".join(v.key for v in variables())
    raise NotFoundError(f"{name}: not a flexai variable (expected one of {known})")


def env_of(**values: object) -> dict[str, str]:
    """The ``FLEXAI_*`` variables for keyword values; ``None`` values are left out.

    Examples
    --------
    >>> env_of(gpu_memory="8GiB", slice="job-42", priority=None)     # doctest: +SKIP
    {'FLEXAI_GPU_MEMORY': '8GiB', 'FLEXAI_SLICE': 'job-42'}
    """
    return {variable(key).name: str(value) for key, value in values.items()
            if value is not None}


def option_args(**values: object) -> list[str]:
    """The ``flexai run`` options for keyword values, e.g. ``["--gpu-memory", "8GiB"]``.

    Raises
    ------
    NotFoundError
        For a variable that has no option.
    """
    out: list[str] = []
    for key, value in values.items():
        if value is None:
            continue
        v = variable(key)
        if v.option is None:
            raise NotFoundError(f"{v.name}: has no command-line option (set the variable)")
        out += [v.option, str(value)]
    return out


def add_options(parser: argparse.ArgumentParser) -> None:
    """Add an option for every variable that has one (``flexai run``, ``python -m
    flexai.config``). Values stay text: the library's parser checks them."""
    for v in variables():
        if v.option is None:
            continue
        example = f" (e.g. {v.example})" if v.example else ""
        parser.add_argument(v.option, dest=v.key, metavar=v.metavar, help=v.help + example)


def options_env(args: argparse.Namespace) -> dict[str, str]:
    """The ``FLEXAI_*`` variables given as options added by :func:`add_options`."""
    return {v.name: getattr(args, v.key) for v in variables()
            if v.option is not None and getattr(args, v.key, None) is not None}


def unknown_variable_warnings(env: Mapping[str, str]) -> list[str]:
    """Warnings for ``FLEXAI_*`` names that flexai ignores but that look like typos of its own."""
    known = {v.name for v in variables()} | {_ffi.LIB_DIR_VARIABLE}
    short = sorted(name[len(_PREFIX):] for name in known)
    warnings = []
    for name in sorted(env):
        if not name.startswith(_PREFIX) or name in known or name.startswith(SIM_PREFIX):
            continue
        match = difflib.get_close_matches(name[len(_PREFIX):], short, n=1, cutoff=0.6)
        if match:
            warnings.append(f"warning: {name} is not a flexai variable and is ignored; "
                            f"did you mean {_PREFIX}{match[0]}?")
    return warnings


# ---- the effective configuration ----------------------------------------------------------------

def format_bytes(n: int) -> str:
    """Format a byte count in binary units, e.g. ``8 GiB``, ``1.5 GiB``, ``512 B``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            text = f"{value:.2f}".rstrip("0").rstrip(".") if unit != "B" else str(int(value))
            return f"{text} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def describe_per_device(values: Sequence[int], given: Sequence[int],
                        fmt: Callable[[int], str]) -> str:
    """Describe a per-device quota table, e.g. ``all devices: 8 GiB`` or ``0: 8 GiB, 1: 4 GiB``.

    Parameters
    ----------
    values : sequence of int
        The value per device index; 0 means no limit.
    given : sequence of int
        The indices that were given explicitly (``"0:8GiB"``). Every other device holds the
        index-free default, or 0 when there was none.
    fmt : callable
        Formats one value.
    """
    if not any(values):
        return "none"
    explicit = sorted(i for i in set(given) if 0 <= i < len(values))
    rest = {v for i, v in enumerate(values) if i not in explicit}
    if len(rest) > 1:  # not the parser's output: show every device
        return ", ".join(f"{i}: {fmt(v)}" for i, v in enumerate(values) if v)
    default = rest.pop() if rest else 0
    parts = [f"{i}: {fmt(values[i])}" for i in explicit]
    if not default:
        return ", ".join(parts)
    if not parts:
        return f"all devices: {fmt(default)}"
    return ", ".join(parts + [f"other devices: {fmt(default)}"])


def _indices(mask: int, n: int) -> tuple[int, ...]:
    return tuple(i for i in range(n) if mask >> i & 1)


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
    memory_given, compute_given, burst_given : tuple of int
        The device indices given explicitly (``"0:8GiB"``); the others hold the index-free
        default, or no limit.
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
    memory_given: tuple[int, ...] = ()
    compute_given: tuple[int, ...] = ()
    burst_given: tuple[int, ...] = ()

    @classmethod
    def from_cdata(cls, c: Any) -> Config:
        """Build a Config from a ``flexai_config *`` filled by ``flexai_config_parse``."""
        n = _ffi.max_devices()

        def named(prefix: str, value: int) -> str:
            return _ffi.names(prefix).get(value, str(value))

        return cls(
            memory=tuple(int(c.memory[i]) for i in range(n)),
            compute=tuple(int(c.compute[i]) for i in range(n)),
            burst=tuple(int(c.burst[i]) for i in range(n)),
            slice=_ffi.cstring(c.slice),
            priority=named("FLEXAI_PRIORITY_", c.priority),
            log_level=named("FLEXAI_LOG_", c.log_level),
            sharing=named("FLEXAI_SHARING_", c.sharing),
            state_dir=_ffi.cstring(c.state_dir),
            libcuda=_ffi.cstring(c.libcuda),
            libnvml=_ffi.cstring(c.libnvml),
            context_memory=int(c.context_memory),
            memory_given=_indices(int(c.memory_given), n),
            compute_given=_indices(int(c.compute_given), n),
            burst_given=_indices(int(c.burst_given), n),
        )

    def memory_text(self) -> str:
        """The memory quotas in words, e.g. ``all devices: 8 GiB`` or ``none``."""
        return describe_per_device(self.memory, self.memory_given, format_bytes)

    def compute_text(self) -> str:
        """The compute shares in words, e.g. ``all devices: 30%`` or ``none``."""
        text = describe_per_device(self.compute, self.compute_given, lambda v: f"{v}%")
        if any(self.burst):
            bursts = describe_per_device(self.burst, self.burst_given, lambda v: f"{v}%")
            text += f" guaranteed; may burst to {bursts.removeprefix('all devices: ')}"
        elif any(self.compute):
            text += " hard cap"
        return text

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; ``memory``/``compute``/``burst`` map device index to the value of
        each limited device (absent: no limit), ``*_text`` describe them in words."""
        d = asdict(self)
        d["memory"] = {str(i): v for i, v in enumerate(self.memory) if v}
        d["compute"] = {str(i): v for i, v in enumerate(self.compute) if v}
        d["burst"] = {str(i): v for i, v in enumerate(self.burst) if v}
        d["memory_text"] = self.memory_text()
        d["compute_text"] = self.compute_text()
        return d


def parse_config(env: Mapping[str, str]) -> Config:
    """Parse and validate the ``FLEXAI_*`` items of ``env`` with the library's parser.

    Parameters
    ----------
    env : Mapping[str, str]
        Usually ``os.environ``; items whose name does not start with ``FLEXAI_`` are ignored.

    Returns
    -------
    Config
        The effective configuration, defaults filled in.

    Raises
    ------
    BadValueError
        On the first invalid value, with the library's message (variable name and an example).
    """
    return Config.from_cdata(_ffi.config_parse(env))


# ---- the slice request --------------------------------------------------------------------------

def _var(key: str) -> Any:
    """A SliceSpec field that fills the contract variable with this key."""
    return field(default=None, metadata={"variable": key})


@dataclass(frozen=True)
class SliceSpec:
    """A slice request, validated at construction by libflexai's parser.

    Parameters
    ----------
    memory : str or int, optional
        Memory quota: ``"8GiB"``, ``"4096MiB"``, ``"0:8GiB,1:4GiB"``, or bytes.
    compute : int or str, optional
        Compute share in percent, 1..100 (``30``), or a per-device list (``"0:30,1:50"``).
    slice : str, optional
        Slice name; processes with the same name share one quota, e.g. ``"job-42"``.
    priority : str, optional
        ``"high"``, ``"normal"`` or ``"low"``.
    burst : int or str, optional
        Makes ``compute`` a guarantee that may use idle time up to this percent (``100``);
        without it the share is a hard cap.

    Raises
    ------
    BadValueError
        (also ``flexai.ConfigError``, a ``ValueError``) with the variable's name and a valid
        example, e.g. ``FLEXAI_GPU_MEMORY: unknown unit 'XB' in '8XB' (expected e.g.
        FLEXAI_GPU_MEMORY=8GiB, ...)``.

    Examples
    --------
    >>> SliceSpec(memory="8GiB", compute=30, slice="job-42").env()     # doctest: +SKIP
    {'FLEXAI_GPU_MEMORY': '8GiB', 'FLEXAI_GPU_COMPUTE': '30', 'FLEXAI_SLICE': 'job-42'}
    """

    memory: str | int | None = _var("gpu_memory")
    compute: int | str | None = _var("gpu_compute")
    slice: str | None = _var("slice")
    priority: str | None = _var("priority")
    burst: int | str | None = _var("gpu_compute_burst")

    def __post_init__(self) -> None:
        parse_config(self.env())

    def env(self) -> dict[str, str]:
        """Return the ``FLEXAI_*`` variables of the values that are set."""
        return env_of(**{f.metadata["variable"]: getattr(self, f.name) for f in fields(self)})

    def config(self) -> Config:
        """Return the configuration this spec gives on its own (defaults elsewhere)."""
        return parse_config(self.env())
