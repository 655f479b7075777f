"""The node's GPUs for the agent: ``Gpu`` and ``read_gpus`` of :mod:`flexai.node.devices`, the
one module that reads devices through NVML (the metrics read them there too). The agent calls
``read_gpus()`` once at its start and keeps the reason NVML gave no GPU (``nvml_error``).

This module must never read NVML itself (that stays in ``flexai.node.devices``).
"""
from __future__ import annotations

from ..node.devices import Gpu, read_gpus

__all__ = ["Gpu", "read_gpus"]
