"""Change running slices: ``flexai resize`` and :func:`resize`."""
from __future__ import annotations

import os
from dataclasses import dataclass

from . import _native


@dataclass(frozen=True)
class Resized:
    """What :func:`resize` changed: the slice, the devices (UUIDs) and the new values."""

    slice: str
    devices: tuple[str, ...]
    memory: int | None
    compute: int | None
    burst: int | None


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

    Raises
    ------
    FlexaiError
        Unknown slice or device, bad values, or an unusable state directory.
    """
    if memory is None and compute is None:
        raise _native.ConfigError("resize: nothing to change (expected e.g. "
                                  "flexai resize job-42 --gpu-compute 50 --gpu-memory 6GiB)")
    if burst is not None and compute is None:
        raise _native.ConfigError("resize: --gpu-compute-burst needs --gpu-compute (expected "
                                  "e.g. --gpu-compute 30 --gpu-compute-burst 100)")
    mem_bytes = None
    if memory is not None:
        mem_bytes = memory if isinstance(memory, int) else (
            0 if str(memory).strip() == "0" else _native.parse_size(str(memory)))
    if compute is not None and not 0 <= compute <= 100:
        raise _native.ConfigError(f"resize: compute {compute} is outside 0..100 (expected "
                                  "e.g. --gpu-compute 50)")
    with _native.Node(state_dir) as node:
        node.sweep()
        slices = {s.name: s for s in node.slices()}
        if slice not in slices:
            known = ", ".join(sorted(slices)) or "none"
            raise _native.FlexaiError(f"resize: no slice named {slice!r} on this node "
                                      f"(slices: {known})")
        uuids = {d.id: d.uuid for d in node.devices()}
        targets = _targets(device, uuids, {r.device_id for r in node.usage()
                                           if r.slice_id == slices[slice].id})
        for uuid in targets:
            if mem_bytes is not None:
                node.set_memory_limit(slice, uuid, mem_bytes)
            if compute is not None:
                node.set_compute(slice, uuid, compute, burst or 0)
    return Resized(slice, tuple(targets), mem_bytes, compute, burst)


def _targets(device: str | None, uuids: dict[int, str], used: set[int]) -> list[str]:
    if device is None:
        ids = sorted(used) or sorted(uuids)
        if not ids:
            raise _native.FlexaiError("resize: the node knows no device yet; give --device "
                                      "GPU-<uuid>")
        return [uuids[i] for i in ids if i in uuids]
    if device.isdigit() and int(device) in uuids:
        return [uuids[int(device)]]
    if device.startswith("GPU-"):
        return [device]
    raise _native.FlexaiError(f"resize: unknown device {device!r} (expected e.g. "
                              "GPU-5ca1ab1e-0000-4000-8000-000000000000)")
