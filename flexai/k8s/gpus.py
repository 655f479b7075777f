"""The node's GPUs and their health, from NVML (``pynvml`` of ``nvidia-ml-py``), for the device
plugin.

A GPU is healthy while NVML answers for it: its handle is found by UUID and its memory
information reads. A GPU that fell off the bus answers ``NVML_ERROR_GPU_IS_LOST`` (or another
error) there and is reported unhealthy until it answers again. On the simulated device the
bundled ``libnvidia-ml.so.1`` answers; its ``FLEXAI_SIM_LOST_FILE`` lists devices to report lost.

This module must never preload libflexai.so, never initialize CUDA, and never raise for a node
without a GPU (no NVML: no GPUs, and the reason in words).
"""
from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Mapping

from .resources import NodeGpu

_lock = threading.Lock()  # pynvml's library handle and init count are process-wide


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _open_named_library(env: Mapping[str, str]) -> None:
    """Open the NVML library named by ``FLEXAI_LIBNVML`` (a path) first, so that pynvml's open
    of ``libnvidia-ml.so.1`` by soname finds it already loaded."""
    from ..spec import variable

    path = env.get(variable("libnvml").name, "")
    if "/" in path and os.path.isfile(path):
        try:
            ctypes.CDLL(path)
        except OSError:
            pass  # pynvml reports the failure itself


class Nvml:
    """NVML kept initialized for the life of the device plugin (``close`` shuts it down)."""

    def __init__(self, env: "Mapping[str, str] | None" = None) -> None:
        self.error = ""
        self._up = False
        try:
            import pynvml
        except ImportError:
            self.error = "the NVML bindings (nvidia-ml-py) are not installed"
            return
        self._nv = pynvml
        with _lock:
            _open_named_library(os.environ if env is None else env)
            try:
                pynvml.nvmlInit()
                self._up = True
            except pynvml.NVMLError as exc:
                self.error = f"NVML: {_text(exc)}"

    def gpus(self) -> tuple[NodeGpu, ...]:
        """The node's GPUs in NVML's order (empty when NVML is not usable; ``error`` says why,
        and names the GPUs left out because NVML failed on them)."""
        if not self._up:
            return ()
        nv = self._nv
        with _lock:
            try:
                count = nv.nvmlDeviceGetCount()
            except nv.NVMLError as exc:
                self.error = f"NVML: {_text(exc)}"
                return ()
            out, errors = [], []
            for i in range(count):
                try:  # a GPU NVML fails on now (lost) cannot be named: it is left out
                    h = nv.nvmlDeviceGetHandleByIndex(i)
                    out.append(NodeGpu(i, _text(nv.nvmlDeviceGetUUID(h)),
                                       _text(nv.nvmlDeviceGetName(h)),
                                       int(nv.nvmlDeviceGetMemoryInfo(h).total)))
                except nv.NVMLError as exc:
                    errors.append(f"GPU {i}: NVML: {_text(exc)}")
            self.error = "; ".join(errors)
            return tuple(out)

    def health(self, uuids: "list[str] | tuple[str, ...]") -> dict[str, str]:
        """``{uuid: ""}`` for each healthy GPU, ``{uuid: why}`` for each one NVML fails on."""
        if not self._up:
            return {u: self.error or "NVML is not initialized" for u in uuids}
        nv = self._nv
        out = {}
        with _lock:
            for u in uuids:
                try:
                    nv.nvmlDeviceGetMemoryInfo(nv.nvmlDeviceGetHandleByUUID(u))
                    out[u] = ""
                except nv.NVMLError as exc:
                    out[u] = f"NVML: {_text(exc)}"
        return out

    def close(self) -> None:
        if self._up:
            with _lock:
                try:
                    self._nv.nvmlShutdown()
                except self._nv.NVMLError:
                    pass
            self._up = False
