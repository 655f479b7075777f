"""The node's shared state through libflexai's C API: :class:`Node` opens it, sweeps exited
processes, copies out its tables and sets a slice's limits.

This is a thin handle over the bindings: it must never decide anything (which devices a resize
touches, how rows are grouped: see snapshot.py and control.py) and never print.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from .. import _ffi
from .._ffi import BadValueError, StateError
from ..spec import variable

T = TypeVar("T")


def effective_state_dir(state_dir: str | os.PathLike[str] | None = None) -> str:
    """The state directory libflexai uses for ``state_dir``: the argument, else
    ``$FLEXAI_STATE_DIR``, else the library's default."""
    if state_dir:
        return os.fspath(state_dir)
    var = variable("state_dir")
    return os.environ.get(var.name) or var.default


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
    in percent (0: none); ``gpu_ns`` the GPU time the slice used while scheduled;
    ``throttled_ns`` the time its launches were held back by the scheduler.
    """

    slice_id: int
    device_id: int
    pid: int
    limit_bytes: int
    used_bytes: int
    compute: int = 0
    burst: int = 0
    gpu_ns: int = 0
    throttled_ns: int = 0


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
        When the directory or its state file cannot be used (its category says why).

    Examples
    --------
    >>> with Node("/tmp/flexai-state") as node:            # doctest: +SKIP
    ...     node.sweep()
    ...     rows = node.usage()
    """

    def __init__(self, state_dir: str | os.PathLike[str] | None = None) -> None:
        ffi, lib = _ffi.load()
        handle = ffi.new("flexai_node **")
        err = _ffi.new_error()
        arg = ffi.NULL if state_dir is None else os.fsencode(state_dir)
        _ffi.check(lib.flexai_node_open(arg, handle, err), err)
        self._node = handle[0]

    def __enter__(self) -> Node:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Detach from the shared state (idempotent)."""
        if self._node is not None:
            _ffi.load()[1].flexai_node_close(self._node)
            self._node = None

    def _handle(self) -> Any:
        if self._node is None:
            raise StateError("node: already closed")
        return self._node

    def _call(self, fn: Callable[..., int], *args: Any) -> int:
        err = _ffi.new_error()
        return _ffi.check(fn(self._handle(), *args, err), err)

    def _table(self, fn: Callable[..., int], ctype: str, convert: Callable[[Any], T]) -> list[T]:
        """Copy a table out of the state, growing the buffer while the state grows."""
        ffi, _ = _ffi.load()
        cap = 64
        while True:
            buf = ffi.new(f"{ctype}[]", cap)
            n = self._call(fn, buf, cap)
            if n <= cap:  # convert while `buf` is alive: the rows point into it
                return [convert(buf[i]) for i in range(n)]
            cap = n + n // 2

    def sweep(self) -> int:
        """Reclaim the usage of processes that have exited; return how many were reclaimed."""
        return self._call(_ffi.load()[1].flexai_node_sweep)

    def devices(self) -> list[DeviceInfo]:
        """Return the devices known to the node."""
        return self._table(_ffi.load()[1].flexai_node_devices, "flexai_device_info",
                           lambda r: DeviceInfo(int(r.id), _ffi.cstring(r.uuid)))

    def slices(self) -> list[SliceInfo]:
        """Return the node's slices."""
        names = _ffi.names("FLEXAI_PRIORITY_")
        return self._table(
            _ffi.load()[1].flexai_node_slices, "flexai_slice_info",
            lambda r: SliceInfo(int(r.id), _ffi.cstring(r.name),
                                names.get(r.priority, str(r.priority)), int(r.nprocs)))

    def usage(self) -> list[UsageRow]:
        """Return the usage rows: per slice and device one slice row, then its processes."""
        return self._table(
            _ffi.load()[1].flexai_node_usage, "flexai_usage_row",
            lambda r: UsageRow(int(r.slice_id), int(r.device_id), int(r.pid),
                               int(r.limit_bytes), int(r.used_bytes), int(r.compute),
                               int(r.burst), int(r.gpu_ns), int(r.throttled_ns)))

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

        Raises
        ------
        BadValueError
            For a negative size or a bad slice name or UUID.
        """
        if bytes < 0:
            raise BadValueError(f"memory limit: {bytes} is negative (expected e.g. 8589934592)")
        lib = _ffi.load()[1]
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

        Raises
        ------
        BadValueError
            For a share or burst out of range (the library decides).
        """
        if percent < 0 or burst < 0:
            raise BadValueError(f"compute: {percent}/{burst} is negative (expected e.g. 50)")
        lib = _ffi.load()[1]
        self._call(lib.flexai_node_set_compute, slice.encode(), uuid.encode(), percent, burst)
