"""The node's GPUs as NVML reports them (index, UUID, model name, memory): the agent's device
facts, read with pynvml (``nvidia-ml-py``).

On the simulated device the bundled ``libnvidia-ml.so.1`` answers: pynvml opens
``libnvidia-ml.so.1`` by name, so the process must start with the simulated directory on
``LD_LIBRARY_PATH`` (``flexai.sim.sim_env``), or have the contract's NVML variable point at the
library's file, which is then opened first so that pynvml's open by name finds it loaded.
A node without a GPU (no NVML library, or no driver) has no devices; that is not an error.

This module must never load libflexai.so into its process through ``LD_PRELOAD`` (the agent is
not a slice), never initialize CUDA, and never keep NVML initialized after a read.
"""
from __future__ import annotations

import ctypes
import os
import threading
from dataclasses import asdict, dataclass
from typing import Any

_lock = threading.Lock()


@dataclass(frozen=True)
class Gpu:
    """One GPU of the node.

    Attributes
    ----------
    index : int
        NVML's index (the physical order; ``CUDA_VISIBLE_DEVICES`` is not applied).
    uuid : str
        ``"GPU-..."`` as NVML writes it (compare case-insensitively).
    model : str
        The model name, e.g. ``"NVIDIA H100 80GB HBM3"``.
    memory_total : int
        Bytes of device memory.
    """

    index: int
    uuid: str
    model: str
    memory_total: int

    def to_dict(self) -> dict[str, Any]:
        """Plain data: ``{index, uuid, model, memory_total}``."""
        return asdict(self)


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _preload_named_library(env: dict[str, str] | os._Environ[str]) -> None:
    """Open the NVML library the contract names by path (the simulated one in tests), so that
    pynvml's ``CDLL("libnvidia-ml.so.1")`` finds it already loaded by its soname."""
    from ..spec import variable

    path = env.get(variable("libnvml").name, "")
    if "/" in path and os.path.isfile(path):
        try:
            ctypes.CDLL(path)  # kept loaded by the dynamic loader for the process's life
        except OSError:
            pass  # pynvml reports the failure its own way below


def read_gpus() -> tuple[tuple[Gpu, ...], str]:
    """Read the node's GPUs through NVML.

    Returns
    -------
    (tuple of Gpu, str)
        The GPUs in NVML's order, and ``""`` or, when NVML cannot be used (no library, no
        driver: a node without a GPU), why, in words. Never raises for a missing GPU.
    """
    try:
        import pynvml
    except ImportError:
        return (), "the NVML bindings (nvidia-ml-py) are not installed"
    with _lock:  # pynvml's library handle and nvmlInit count are process-wide
        _preload_named_library(os.environ)
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            return (), f"NVML: {_text(exc)}"
        try:
            gpus = []
            for i in range(pynvml.nvmlDeviceGetCount()):
                h = pynvml.nvmlDeviceGetHandleByIndex(i)
                gpus.append(Gpu(index=i,
                                uuid=_text(pynvml.nvmlDeviceGetUUID(h)),
                                model=_text(pynvml.nvmlDeviceGetName(h)),
                                memory_total=int(pynvml.nvmlDeviceGetMemoryInfo(h).total)))
            return tuple(gpus), ""
        except pynvml.NVMLError as exc:
            return (), f"NVML: {_text(exc)}"
        finally:
            try:
                pynvml.nvmlShutdown()
            except pynvml.NVMLError:
                pass
