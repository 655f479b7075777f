"""cffi bindings (ABI mode) to the control and statistics API of libflexai.so.

The library is opened lazily, on the first call that needs it. Every C failure becomes a
:class:`FlexaiError` (or :class:`ConfigError` for configuration values) carrying the library's
one-line message.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

if TYPE_CHECKING:
    from .config import Config

T = TypeVar("T")
_CDEFS = Path(__file__).with_name("_cdefs.h")
_lock = threading.Lock()
_loaded: tuple[Any, Any] | None = None


class FlexaiError(Exception):
    """A libflexai call failed; the message is the library's own one-line explanation."""


class ConfigError(FlexaiError, ValueError):
    """A FLEXAI_* value is invalid; the message names the variable and shows a valid example."""


def _load() -> tuple[Any, Any]:
    """Return ``(ffi, lib)``, opening libflexai.so on the first call."""
    global _loaded
    with _lock:
        if _loaded is None:
            import cffi

            from . import library_path

            path = library_path()
            if not path.is_file():
                raise FlexaiError(
                    f"libflexai.so not found at {path}: reinstall flexai, or set FLEXAI_LIB_DIR "
                    "to the directory that holds it"
                )
            ffi = cffi.FFI()
            ffi.cdef(_CDEFS.read_text())
            try:
                lib = ffi.dlopen(str(path))
            except OSError as exc:
                raise FlexaiError(f"cannot load {path}: {exc}") from None
            _loaded = (ffi, lib)
        return _loaded


def _errbuf() -> Any:
    ffi, lib = _load()
    return ffi.new("char[]", lib.FLEXAI_ERR_MAX)


def _message(err: Any) -> str:
    ffi, _ = _load()
    text = ffi.string(err).decode("utf-8", "replace")
    return text or "libflexai: unknown error"


def cstring(field: Any) -> str:
    """Decode a NUL-terminated ``char[]`` field of a C struct."""
    ffi, _ = _load()
    raw: bytes = ffi.string(field)
    return raw.decode("utf-8", "replace")


def _names(prefix: str, names: tuple[str, ...]) -> dict[int, str]:
    """Map the values of the C constants ``prefix + NAME`` to lower-case names."""
    _, lib = _load()
    return {getattr(lib, prefix + n.upper()): n for n in names}


def priority_names() -> dict[int, str]:
    """Return ``{FLEXAI_PRIORITY_* value: "low" | "normal" | "high"}`` from the C constants."""
    return _names("FLEXAI_PRIORITY_", ("low", "normal", "high"))


def log_level_names() -> dict[int, str]:
    """Return ``{FLEXAI_LOG_* value: "error" | "warn" | "info" | "debug"}`` from the C constants."""
    return _names("FLEXAI_LOG_", ("error", "warn", "info", "debug"))


def sharing_names() -> dict[int, str]:
    """Return ``{FLEXAI_SHARING_* value: "auto" | "time" | "spatial"}`` from the C constants."""
    return _names("FLEXAI_SHARING_", ("auto", "time", "spatial"))


def max_devices() -> int:
    """Return ``FLEXAI_MAX_DEVICES``, the number of per-device quota entries."""
    return int(_load()[1].FLEXAI_MAX_DEVICES)


def library_version() -> str:
    """Return the version string compiled into libflexai.so."""
    ffi, lib = _load()
    raw: bytes = ffi.string(lib.flexai_version())
    return raw.decode()


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
    ConfigError
        On the first invalid value, with the library's message (variable name and an example).
    """
    from .config import Config

    ffi, lib = _load()
    items = [(k, v) for k, v in env.items() if k.startswith("FLEXAI_")]
    keep = [ffi.new("char[]", os.fsencode(s)) for pair in items for s in pair]
    names = ffi.new("const char *[]", keep[0::2] or [ffi.NULL])
    values = ffi.new("const char *[]", keep[1::2] or [ffi.NULL])
    out = ffi.new("flexai_config *")
    err = _errbuf()
    if lib.flexai_config_parse(names, values, len(items), out, err) != 0:
        raise ConfigError(_message(err))
    return Config.from_cdata(out)


def parse_size(text: str) -> int:
    """Parse a size such as ``"8GiB"``, ``"4096MiB"``, ``"1.5G"`` (decimal) or ``"1024"``.

    Returns
    -------
    int
        The size in bytes.

    Raises
    ------
    ConfigError
        When the text is malformed, zero or too large.
    """
    ffi, lib = _load()
    out = ffi.new("uint64_t *")
    err = _errbuf()
    if lib.flexai_parse_size(os.fsencode(text), out, err) != 0:
        raise ConfigError(_message(err))
    return int(out[0])


@dataclass(frozen=True)
class DeviceInfo:
    """A device known to the node: ``id`` in the node's table and its ``uuid`` ("GPU-...")."""

    id: int
    uuid: str


@dataclass(frozen=True)
class SliceInfo:
    """A slice of the node: table ``id``, ``name``, ``priority`` name, live process count."""

    id: int
    name: str
    priority: str
    nprocs: int


@dataclass(frozen=True)
class UsageRow:
    """Usage of a slice (``pid == 0``) or of one of its processes on one device.

    ``limit_bytes``/``used_bytes`` are memory; ``compute``/``burst`` the slice's share and burst
    in percent (0: none); ``gpu_ns`` the GPU time the slice used while scheduled.
    """

    slice_id: int
    device_id: int
    pid: int
    limit_bytes: int
    used_bytes: int
    compute: int = 0
    burst: int = 0
    gpu_ns: int = 0


class Node:
    """The node's shared state (slices, processes, usage), as a context manager.

    Parameters
    ----------
    state_dir : str or os.PathLike, optional
        Directory of the shared state; ``None`` means ``$FLEXAI_STATE_DIR`` or
        ``/dev/shm/flexai``. Created when missing.

    Raises
    ------
    FlexaiError
        When the directory or its state file cannot be used.

    Examples
    --------
    >>> with Node("/tmp/flexai-state") as node:            # doctest: +SKIP
    ...     node.sweep()
    ...     rows = node.usage()
    """

    def __init__(self, state_dir: Any | None = None) -> None:
        ffi, lib = _load()
        handle = ffi.new("flexai_node **")
        err = _errbuf()
        arg = ffi.NULL if state_dir is None else os.fsencode(state_dir)
        if lib.flexai_node_open(arg, handle, err) != 0:
            raise FlexaiError(_message(err))
        self._node = handle[0]

    def __enter__(self) -> Node:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Detach from the shared state (idempotent)."""
        if self._node is not None:
            _load()[1].flexai_node_close(self._node)
            self._node = None

    def _handle(self) -> Any:
        if self._node is None:
            raise FlexaiError("node: already closed")
        return self._node

    def _call(self, fn: Callable[..., int], *args: Any) -> int:
        err = _errbuf()
        rc = fn(self._handle(), *args, err)
        if rc < 0:
            raise FlexaiError(_message(err))
        return rc

    def _table(self, fn: Callable[..., int], ctype: str, convert: Callable[[Any], T]) -> list[T]:
        """Copy a table out of the state, growing the buffer while the state grows."""
        ffi, _ = _load()
        cap = 64
        while True:
            buf = ffi.new(f"{ctype}[]", cap)
            n = self._call(fn, buf, cap)
            if n <= cap:  # convert while `buf` is alive: the rows point into it
                return [convert(buf[i]) for i in range(n)]
            cap = n + n // 2

    def sweep(self) -> int:
        """Reclaim the usage of processes that have exited; return how many were reclaimed."""
        return self._call(_load()[1].flexai_node_sweep)

    def devices(self) -> list[DeviceInfo]:
        """Return the devices known to the node."""
        return self._table(_load()[1].flexai_node_devices, "flexai_device_info",
                           lambda r: DeviceInfo(int(r.id), cstring(r.uuid)))

    def slices(self) -> list[SliceInfo]:
        """Return the node's slices."""
        names = priority_names()
        return self._table(
            _load()[1].flexai_node_slices, "flexai_slice_info",
            lambda r: SliceInfo(int(r.id), cstring(r.name), names.get(r.priority, str(r.priority)),
                                int(r.nprocs)))

    def usage(self) -> list[UsageRow]:
        """Return the usage rows: per slice and device one slice row, then its processes."""
        return self._table(
            _load()[1].flexai_node_usage, "flexai_usage_row",
            lambda r: UsageRow(int(r.slice_id), int(r.device_id), int(r.pid),
                               int(r.limit_bytes), int(r.used_bytes), int(r.compute),
                               int(r.burst), int(r.gpu_ns)))

    def set_memory_limit(self, slice: str, uuid: str, bytes: int) -> None:
        """Set a slice's memory quota on one device, creating the slice if needed.

        Parameters
        ----------
        slice : str
            Slice name, e.g. ``"job-42"``.
        uuid : str
            Device UUID, ``"GPU-..."``.
        bytes : int
            New quota in bytes; 0 removes the limit. Nothing already allocated is freed.
        """
        if bytes < 0:
            raise FlexaiError(f"memory limit: {bytes} is negative (expected e.g. 8589934592)")
        lib = _load()[1]
        self._call(lib.flexai_node_set_memory_limit, slice.encode(), uuid.encode(), bytes)

    def set_compute(self, slice: str, uuid: str, percent: int, burst: int = 0) -> None:
        """Set a slice's compute share on one device; running processes apply it at their
        next kernel launch.

        Parameters
        ----------
        slice : str
            Slice name, e.g. ``"job-42"``.
        uuid : str
            Device UUID, ``"GPU-..."``.
        percent : int
            Share of the device's time, 1..100, or 0 to remove it.
        burst : int
            0 makes the share a hard cap; ``percent..100`` makes it a guarantee with idle time
            usable up to ``burst``.
        """
        if percent < 0 or burst < 0:
            raise FlexaiError(f"compute: {percent}/{burst} is negative (expected e.g. 50)")
        lib = _load()[1]
        self._call(lib.flexai_node_set_compute, slice.encode(), uuid.encode(), percent, burst)
