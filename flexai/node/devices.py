"""The node's GPUs as NVML reports them (index, UUID, model name, memory): the one place that
reads devices through pynvml (``nvidia-ml-py``). The node agent (``flexai.agent``) reads them
once when it starts; the metrics (``flexai.node.metrics``) at every scrape.

On the simulated device the bundled ``libnvidia-ml.so.1`` answers: pynvml opens
``libnvidia-ml.so.1`` by name, so the process must start with the simulated directory on
``LD_LIBRARY_PATH`` (``flexai.sim.sim_env``), or have the contract's NVML variable
(``FLEXAI_LIBNVML``) point at the library's file, which is then opened first so that pynvml's
open by name finds it loaded. A node without a GPU (no NVML library, or no driver) has no
devices; that is not an error, and the reason is given in words.

This module must never load libflexai.so into its process, never initialize CUDA, and never
leave NVML initialized after a read unless the caller asked it to (``keep=True``).
"""
from __future__ import annotations

import ctypes
import os
import threading
from dataclasses import dataclass
from typing import Any

from .._ffi import FlexaiError

__all__ = ["Gpu", "read_gpus"]

_lock = threading.Lock()
_kept = False  # NVML left initialized by a read with keep=True (for the process's life)


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
    memory_used : int
        Bytes every process on the node holds on it, when it was read.
    """

    index: int
    uuid: str
    model: str
    memory_total: int
    memory_used: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The device's facts as plain data: ``{index, uuid, model, memory_total}`` (not the
        moment's ``memory_used``)."""
        return {"index": self.index, "uuid": self.uuid, "model": self.model,
                "memory_total": self.memory_total}


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _open_named_nvml() -> None:
    """Open the NVML library the contract names by path (the simulated one in tests), so that
    pynvml's ``CDLL("libnvidia-ml.so.1")`` finds it already loaded by its soname."""
    from ..spec import variable

    try:
        path = os.environ.get(variable("libnvml").name, "")
    except FlexaiError:  # no library, no contract: pynvml's open by name alone
        return
    if "/" in path and os.path.isfile(path):
        try:
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)  # loaded for the process's life
        except OSError:
            pass  # pynvml reports the failure its own way


def read_gpus(keep: bool = False) -> tuple[tuple[Gpu, ...], str]:
    """Read the node's GPUs through NVML.

    Parameters
    ----------
    keep : bool
        Leave NVML initialized after a successful read, so that the next reads skip its
        start (a metrics server reading at every scrape). Default: shut it down again.

    Returns
    -------
    (tuple of Gpu, str)
        The GPUs in NVML's order, and ``""`` or, when NVML cannot be used (no bindings, no
        library, no driver: a node without a GPU), why, in words. Never raises for a missing
        GPU.
    """
    global _kept
    try:
        import pynvml
    except ImportError:
        return (), "the NVML bindings (nvidia-ml-py) are not installed"
    with _lock:  # pynvml's library handle and nvmlInit count are process-wide
        opened = False
        if not _kept:
            _open_named_nvml()
            try:
                pynvml.nvmlInit()
            except pynvml.NVMLError as exc:
                return (), f"NVML: {_text(exc)}"
            opened = True
        try:
            gpus = []
            for i in range(pynvml.nvmlDeviceGetCount()):
                h = pynvml.nvmlDeviceGetHandleByIndex(i)
                mem = pynvml.nvmlDeviceGetMemoryInfo(h)
                gpus.append(Gpu(index=i, uuid=_text(pynvml.nvmlDeviceGetUUID(h)),
                                model=_text(pynvml.nvmlDeviceGetName(h)),
                                memory_total=int(mem.total), memory_used=int(mem.used)))
            if keep and opened:
                _kept, opened = True, False
            return tuple(gpus), ""
        except pynvml.NVMLError as exc:
            return (), f"NVML: {_text(exc)}"
        finally:
            if opened:
                try:
                    pynvml.nvmlShutdown()
                except pynvml.NVMLError:
                    pass
