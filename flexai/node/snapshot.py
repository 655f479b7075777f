"""One view of the node: :class:`NodeSnapshot` holds its devices, slices, each slice's usage per
device and the processes charged there, read at one moment.

``flexai ps``, ``flexai.torch.memory_stats``, ``flexai resize`` (and later the agent and
``flexai top``) all read the node through this view, so they group and name rows the same way.
It must never change the state (beyond the sweep it is asked for) and never print.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

from .state import DeviceInfo, Node, effective_state_dir


@dataclass(frozen=True)
class ProcessUsage:
    """Memory charged to one process of a slice on one device."""

    pid: int
    used_bytes: int


@dataclass(frozen=True)
class SliceDevice:
    """A slice on one device: its limits, what it uses and which processes use it.

    Attributes
    ----------
    device : str
        The device's UUID (``"#<id>"`` when the node's table has no UUID for it).
    device_id : int
        The device's index in the node's table.
    limit_bytes, used_bytes : int
        Memory quota (0: none) and memory charged to the slice.
    compute, burst : int
        Compute share and burst in percent (0: none).
    gpu_ns : int
        GPU time the slice used on the device while it was scheduled.
    throttled_ns : int
        Time the slice's launches on the device were held back by the scheduler (its cap, a
        higher priority, another slice's lease).
    processes : tuple of ProcessUsage
        The slice's processes charged on this device.
    """

    device: str
    device_id: int
    limit_bytes: int
    used_bytes: int
    compute: int
    burst: int
    gpu_ns: int
    processes: tuple[ProcessUsage, ...] = ()
    throttled_ns: int = 0

    @property
    def gpu_seconds(self) -> float:
        """:attr:`gpu_ns` in seconds."""
        return self.gpu_ns / 1e9


@dataclass(frozen=True)
class SliceUsage:
    """A slice of the node with its usage on every device it has a limit or usage on."""

    id: int
    name: str
    priority: str
    nprocs: int
    devices: tuple[SliceDevice, ...] = ()

    @property
    def pids(self) -> frozenset[int]:
        """The processes charged on any of the slice's devices."""
        return frozenset(p.pid for d in self.devices for p in d.processes)


@dataclass(frozen=True)
class NodeSnapshot:
    """The node's devices, slices, usage and processes at one moment.

    Attributes
    ----------
    state_dir : str
        The state directory that was read.
    devices : tuple of DeviceInfo
        The devices the node knows, by id.
    slices : tuple of SliceUsage
        The node's slices in its table order.
    reclaimed : int
        How many exited processes the sweep before reading reclaimed.

    Examples
    --------
    >>> snap = NodeSnapshot.read("/tmp/flexai-state")        # doctest: +SKIP
    >>> [s.name for s in snap.slices]
    ['job-42']
    """

    state_dir: str
    devices: tuple[DeviceInfo, ...]
    slices: tuple[SliceUsage, ...]
    reclaimed: int = 0

    @classmethod
    def read(cls, state_dir: str | os.PathLike[str] | None = None, *,
             sweep: bool = True) -> NodeSnapshot:
        """Open the node's state, optionally sweep exited processes, and read it.

        Parameters
        ----------
        state_dir : path, optional
            The state directory (default ``$FLEXAI_STATE_DIR`` or ``/dev/shm/flexai``).
        sweep : bool
            Reclaim the usage of exited processes first.

        Raises
        ------
        FlexaiError
            When the state directory cannot be used.
        """
        with Node(state_dir) as node:
            return cls.from_node(node, state_dir, sweep=sweep)

    @classmethod
    def from_node(cls, node: Node, state_dir: str | os.PathLike[str] | None = None, *,
                  sweep: bool = True) -> NodeSnapshot:
        """Read an open :class:`Node` (see :meth:`read`)."""
        reclaimed = node.sweep() if sweep else 0
        devices = tuple(node.devices())
        infos = node.slices()
        rows = node.usage()
        uuids = {d.id: d.uuid for d in devices}
        slices = []
        for s in infos:
            # rows come as one slice row (pid 0) followed by that slice's process rows
            per_device: list[SliceDevice] = []
            procs: list[list[ProcessUsage]] = []
            for r in (r for r in rows if r.slice_id == s.id):
                if r.pid == 0:
                    per_device.append(SliceDevice(
                        uuids.get(r.device_id, f"#{r.device_id}"), r.device_id, r.limit_bytes,
                        r.used_bytes, r.compute, r.burst, r.gpu_ns,
                        throttled_ns=r.throttled_ns))
                    procs.append([])
                elif procs:
                    procs[-1].append(ProcessUsage(r.pid, r.used_bytes))
            devs = tuple(replace(d, processes=tuple(p)) for d, p in zip(per_device, procs))
            slices.append(SliceUsage(s.id, s.name, s.priority, s.nprocs, devs))
        return cls(effective_state_dir(state_dir), devices, tuple(slices), reclaimed)

    def slice(self, name: str) -> SliceUsage | None:
        """The slice called ``name``, or None."""
        return next((s for s in self.slices if s.name == name), None)

    def slices_of(self, pid: int) -> list[SliceUsage]:
        """The slices in which process ``pid`` is charged on some device."""
        return [s for s in self.slices if pid in s.pids]

    def uuid(self, device_id: int) -> str | None:
        """The UUID of the node's device ``device_id``, or None."""
        return next((d.uuid for d in self.devices if d.id == device_id), None)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (the JSON of ``flexai ps --json``)."""
        return {
            "state_dir": self.state_dir,
            "reclaimed": self.reclaimed,
            "devices": [{"id": d.id, "uuid": d.uuid} for d in sorted(self.devices,
                                                                       key=lambda d: d.id)],
            "slices": [{
                "name": s.name, "priority": s.priority, "nprocs": s.nprocs,
                "devices": [{"device": d.device, "limit_bytes": d.limit_bytes,
                             "used_bytes": d.used_bytes, "compute": d.compute,
                             "burst": d.burst, "gpu_seconds": d.gpu_seconds,
                             "throttled_seconds": d.throttled_ns / 1e9,
                             "processes": [{"pid": p.pid, "used_bytes": p.used_bytes}
                                           for p in d.processes]}
                            for d in s.devices]}
                for s in self.slices],
        }
