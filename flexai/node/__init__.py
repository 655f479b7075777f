"""The node: its shared state (:class:`Node`), one view of it (:class:`NodeSnapshot`), and what
acts on it: starting processes in slices (``launch``), changing slices (``control``), the MPS
daemon (``mps``).

Importing this package opens nothing; it imports only the state handle and the snapshot, so
that ``launch``, ``control`` and ``mps`` stay independent of each other.
"""
from __future__ import annotations

from .snapshot import NodeSnapshot, ProcessUsage, SliceDevice, SliceUsage
from .state import DeviceInfo, Node, SliceInfo, UsageRow, effective_state_dir

__all__ = [
    "DeviceInfo",
    "Node",
    "NodeSnapshot",
    "ProcessUsage",
    "SliceDevice",
    "SliceInfo",
    "SliceUsage",
    "UsageRow",
    "effective_state_dir",
]
