"""flexai: GPU slicing through an LD_PRELOAD shim.

``libflexai.so`` interposes the CUDA driver and NVML and enforces per-slice quotas. This package
finds the library, validates slice configurations through the library's own parser, reads the
node's shared state, and provides the ``flexai`` command line.

Importing the package loads nothing native: the library is opened on first use.
"""
from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path
from typing import Any

try:
    __version__ = importlib.metadata.version("flexai")
except importlib.metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "Config",
    "ConfigError",
    "DeviceInfo",
    "FlexaiError",
    "Node",
    "SliceInfo",
    "SliceSpec",
    "UsageRow",
    "__version__",
    "lib_dir",
    "library_path",
    "parse_config",
    "parse_size",
    "real_gpu_present",
    "resize",
    "sim_dir",
]


def lib_dir() -> Path:
    """Return the directory holding ``libflexai.so``.

    Returns
    -------
    pathlib.Path
        ``$FLEXAI_LIB_DIR`` when set, else the ``lib`` directory inside the installed package.
    """
    override = os.environ.get("FLEXAI_LIB_DIR")
    if override:
        return Path(override)
    return Path(__file__).parent / "lib"


def library_path() -> Path:
    """Return the path of ``libflexai.so`` (the file to put in ``LD_PRELOAD``)."""
    return lib_dir() / "libflexai.so"


def real_gpu_present() -> bool:
    """True when the real NVIDIA driver loads, initializes and shows at least one device.

    Initializes CUDA in the calling process: call it from a parent that does not use CUDA itself
    (or before it would, in a process that will anyway)."""
    import ctypes

    try:
        cuda = ctypes.CDLL("libcuda.so.1")
        count = ctypes.c_int(0)
        return (cuda.cuInit(0) == 0 and cuda.cuDeviceGetCount(ctypes.byref(count)) == 0
                and count.value > 0)
    except (OSError, AttributeError):
        return False


def sim_dir() -> Path:
    """Return the directory of the simulated device (stand-ins for libcuda.so.1 and NVML)."""
    return lib_dir() / "sim"


# Resolved on first access (PEP 562) so that ``python -m flexai.config`` does not import
# flexai.config twice, and so that importing flexai never opens the native library.
_LAZY = {
    "Config": "config",
    "SliceSpec": "config",
    "ConfigError": "_native",
    "FlexaiError": "_native",
    "Node": "_native",
    "DeviceInfo": "_native",
    "SliceInfo": "_native",
    "UsageRow": "_native",
    "parse_config": "_native",
    "parse_size": "_native",
    "resize": "control",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'flexai' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
