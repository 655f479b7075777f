"""flexai: GPU slicing through an LD_PRELOAD shim.

``libflexai.so`` interposes the CUDA driver and NVML and enforces per-slice quotas. This package
finds the library, validates slice configurations through the library's own parser, reads and
changes the node's shared state, and provides the ``flexai`` command line.

Module map: ``_ffi`` (bindings, errors), ``spec`` (the contract, SliceSpec, Config), ``sim``
(the simulated device), ``node`` (Node, NodeSnapshot, launch, control, mps), ``cli`` (the
command), ``config`` (``python -m flexai.config``), ``torch``, ``demo``.

Importing the package loads nothing native and imports no submodule: the names below are
resolved on first use (PEP 562).
"""
from __future__ import annotations

import importlib
import importlib.metadata
from typing import Any

try:
    __version__ = importlib.metadata.version("flexai")
except importlib.metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"

# name -> the module that defines it. Resolved on first access, so that importing flexai never
# opens the native library and `python -m flexai.config` does not import flexai.config twice.
_LAZY = {
    "lib_dir": "_ffi",
    "library_path": "_ffi",
    "FlexaiError": "_ffi",
    "BadValueError": "_ffi",
    "ConfigError": "_ffi",
    "StateError": "_ffi",
    "NodeFullError": "_ffi",
    "NotFoundError": "_ffi",
    "SystemRefusedError": "_ffi",
    "QuotaError": "_ffi",
    "DriverError": "_ffi",
    "PermissionDeniedError": "_ffi",
    "parse_size": "_ffi",
    "Config": "spec",
    "SliceSpec": "spec",
    "Variable": "spec",
    "parse_config": "spec",
    "variables": "spec",
    "sim_dir": "sim",
    "real_gpu_present": "sim",
    "Node": "node",
    "NodeSnapshot": "node",
    "DeviceInfo": "node",
    "SliceInfo": "node",
    "UsageRow": "node",
    "resize": "node.control",
    "Resized": "node.control",
}

__all__ = sorted([*_LAZY, "__version__"])


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'flexai' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
