"""Change running slices: :func:`resize` (``flexai resize``).

Values are judged by the library (its parser first, so that a bad value is reported as one
whatever the node holds; then its setters), the node is read through :class:`NodeSnapshot`.
This module must never print or exit: it returns what it changed or raises a categorized
:class:`~flexai.FlexaiError`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from .._ffi import BadValueError, NotFoundError, parse_size
from ..spec import env_of, parse_config
from .snapshot import NodeSnapshot
from .state import Node


@dataclass(frozen=True)
class Resized:
    """What :func:`resize` changed: the slice, the devices (UUIDs) and the new values."""

    slice: str
    devices: tuple[str, ...]
    memory: int | None
    compute: int | None
    burst: int | None


def _memory_bytes(memory: str | int) -> int:
    if isinstance(memory, int):
        if memory < 0:
            raise BadValueError(f"resize: memory {memory} is negative (expected e.g. 6GiB, or 0 "
                                "to remove the limit)")
        return memory
    text = str(memory).strip()
    return 0 if text == "0" else parse_size(text)


def _check_compute(compute: int, burst: int | None) -> None:
    """Judge a share and burst with the library's parser (0 removes the share: nothing to
    judge unless a burst comes with it)."""
    try:
        parse_config(env_of(gpu_compute=compute or None, gpu_compute_burst=burst or None))
    except BadValueError as exc:
        raise BadValueError(f"resize: {exc}", exc.code) from None


def resize(slice: str, *, memory: str | int | None = None, compute: int | None = None,
           burst: int | None = None, device: str | None = None,
           state_dir: str | os.PathLike[str] | None = None) -> Resized:
    """Change a slice's quotas while its processes run.

    Processes apply a new compute share at their next kernel launch (within milliseconds) and a
    new memory quota at their next allocation. Lowering memory below what the slice holds
    refuses new allocations until usage drops; nothing already allocated is freed.

    Parameters
    ----------
    slice : str
        Name of a slice that exists on this node, e.g. ``"job-42"``.
    memory : str or int, optional
        New memory quota, e.g. ``"6GiB"`` or bytes; ``0`` removes the limit.
    compute : int, optional
        New compute share in percent (1..100); ``0`` removes it.
    burst : int, optional
        With ``compute``: ``0`` makes the share a hard cap, ``compute..100`` a guarantee that
        may burst up to this percent.
    device : str, optional
        A device UUID ("GPU-...") or the node's device id; default: every device the slice
        uses (or, if it uses none yet, every device the node knows).
    state_dir : path, optional
        The node's state directory (default ``$FLEXAI_STATE_DIR`` or ``/dev/shm/flexai``).

    Returns
    -------
    Resized
        The slice, the devices changed and the new values.

    Raises
    ------
    BadValueError
        A value is invalid (checked before the node is read).
    NotFoundError
        No such slice or device on this node.
    FlexaiError
        The state directory cannot be used (its category says why).
    """
    if memory is None and compute is None:
        raise BadValueError("resize: nothing to change (expected e.g. "
                            "flexai resize job-42 --gpu-compute 50 --gpu-memory 6GiB)")
    if burst is not None and compute is None:
        raise BadValueError("resize: a burst needs a compute share (expected e.g. "
                            "flexai resize job-42 --gpu-compute 30 --gpu-compute-burst 100)")
    mem_bytes = None if memory is None else _memory_bytes(memory)
    if compute is not None:
        _check_compute(compute, burst)
    with Node(state_dir) as node:
        snap = NodeSnapshot.from_node(node, state_dir)
        target = snap.slice(slice)
        if target is None:
            known = ", ".join(sorted(s.name for s in snap.slices)) or "none"
            raise NotFoundError(f"resize: no slice named {slice!r} on this node "
                                f"(slices: {known})")
        targets = _targets(device, snap, [d.device_id for d in target.devices])
        for uuid in targets:
            if mem_bytes is not None:
                node.set_memory_limit(slice, uuid, mem_bytes)
            if compute is not None:
                node.set_compute(slice, uuid, compute, burst or 0)
    return Resized(slice, tuple(targets), mem_bytes, compute, burst)


def _targets(device: str | None, snap: NodeSnapshot, used: list[int]) -> list[str]:
    uuids = {d.id: d.uuid for d in snap.devices}
    if device is None:
        ids = sorted(set(used)) or sorted(uuids)
        if not ids:
            raise NotFoundError("resize: the node knows no device yet; give --device "
                                "GPU-<uuid>")
        return [uuids[i] for i in ids if i in uuids]
    if device.isdigit() and int(device) in uuids:
        return [uuids[int(device)]]
    if device.startswith(("GPU-", "NPU-")):  # a GPU UUID, or an NPU id (docs/ascend.md)
        return [device]
    raise NotFoundError(f"resize: unknown device {device!r} (expected e.g. "
                        "GPU-5ca1ab1e-0000-4000-8000-000000000000)")
