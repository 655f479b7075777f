"""Put a PyTorch program into a flexai slice from Python.

    import flexai.torch
    flexai.torch.use_slice(memory="8GiB", compute=30)   # before CUDA initializes
    import torch
    ...
    print(flexai.torch.memory_stats())

``use_slice`` re-executes the program under ``LD_PRELOAD=libflexai.so`` when the shim is not
loaded yet (the same interpreter, arguments and environment, plus the slice's variables); when it
is loaded, setting the variables is enough, because the shim reads them when CUDA starts. Child
processes (``torch.multiprocessing`` spawn, DataLoader workers) inherit both, so they join the
same slice. This module never imports torch itself (only ``install_oom_hint`` does, when
called) and never starts CUDA.
"""
from __future__ import annotations

import os
import sys
from typing import Any

from ._ffi import library_path
from .node.launch import slice_env
from .node.snapshot import NodeSnapshot
from .spec import SliceSpec, env_of, format_bytes, parse_config, variable

REEXEC_MARK = "FLEXAI_TORCH_REEXEC"


class SliceError(RuntimeError):
    """The program cannot be put into a slice (CUDA already initialized, no way to re-execute)."""


def shim_loaded() -> bool:
    """True when libflexai.so is preloaded, i.e. its ``dlsym`` is the one the process uses
    (merely being mapped, as the Python bindings map it, is not enough)."""
    import ctypes

    try:
        used = ctypes.cast(ctypes.CDLL(None).dlsym, ctypes.c_void_p).value
        ours = ctypes.cast(ctypes.CDLL(str(library_path())).dlsym, ctypes.c_void_p).value
    except (OSError, AttributeError):
        return False
    return used is not None and used == ours


def cuda_initialized() -> bool:
    """True when PyTorch has already initialized CUDA in this process."""
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    try:
        return bool(cuda is not None and cuda.is_initialized())
    except Exception:  # a half-imported or unusual torch: assume nothing started
        return False


def _original_argv() -> list[str]:
    argv = getattr(sys, "orig_argv", None)  # Python 3.10+: exactly what was run
    if argv:
        return list(argv)
    return [sys.executable, *sys.argv]


def use_slice(memory: str | int | None = None, compute: int | str | None = None, *,
              burst: int | str | None = None, slice: str | None = None,
              priority: str | None = None, state_dir: str | None = None) -> SliceSpec:
    """Run this program (and the processes it starts) inside a slice.

    Parameters
    ----------
    memory : str or int, optional
        Memory quota per device, e.g. ``"8GiB"`` or ``"0:8GiB,1:4GiB"``.
    compute : int or str, optional
        Compute share in percent, e.g. ``30``.
    burst : int, optional
        Make ``compute`` a guarantee that may use idle time up to this percent.
    slice : str, optional
        Slice name; processes with the same name share the quotas. Default: ``torch-<pid>``.
    priority : str, optional
        ``"high"``, ``"normal"`` or ``"low"``.
    state_dir : str, optional
        The node's state directory (``FLEXAI_STATE_DIR``).

    Returns
    -------
    SliceSpec
        The validated request (only when no re-execution was needed; otherwise this call does
        not return: the program starts again under the shim and reaches this call once more).

    Raises
    ------
    BadValueError
        (``flexai.ConfigError``) A value is invalid (the message names it and shows an
        example).
    SliceError
        CUDA is already initialized, or the program cannot be re-executed.
    """
    name = slice or os.environ.get(variable("slice").name) or f"torch-{os.getpid()}"
    spec = SliceSpec(memory=memory, compute=compute, burst=burst, slice=name, priority=priority)
    env = {**spec.env(), **env_of(state_dir=state_dir or None)}
    if state_dir:
        parse_config(env)
    if cuda_initialized():
        raise SliceError("flexai.torch.use_slice() must run before CUDA is initialized (before "
                         "the first torch.cuda call or GPU tensor); CUDA already runs in this "
                         "process. Call it at the top of the program, or start the program with "
                         "`flexai run --gpu-memory ... -- python ...`.")
    if shim_loaded():
        os.environ.update(env)  # read by the shim when CUDA starts
        return spec
    if os.environ.get(REEXEC_MARK):
        raise SliceError("re-executed under LD_PRELOAD=libflexai.so but the library is not "
                         "loaded (is LD_PRELOAD stripped, e.g. by a set-uid launcher?); start "
                         "the program with `flexai run ... -- python ...` instead")
    if "ipykernel" in sys.modules or sys.flags.interactive or not sys.argv or \
            sys.argv[0] in ("", "-"):
        raise SliceError("an interactive session cannot be re-executed under the shim; start it "
                         "with the variables of `python -m flexai.config --gpu-memory ... "
                         "--export` set (LD_PRELOAD included)")
    new_env = {**slice_env(os.environ, env), REEXEC_MARK: "1"}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, _original_argv(), new_env)
    raise AssertionError("not reached")  # pragma: no cover


def memory_stats(state_dir: str | None = None) -> dict[str, dict[str, Any]]:
    """This process's slice, per device UUID: quota, the slice's and this process's usage, and
    the compute share.

    Returns
    -------
    dict
        ``{uuid: {"slice", "limit_bytes", "used_bytes", "process_used_bytes", "compute",
        "burst", "gpu_seconds"}}``; empty when the process is not (yet) in a slice, i.e. before
        its first CUDA call.
    """
    pid = os.getpid()
    out: dict[str, dict[str, Any]] = {}
    for s in NodeSnapshot.read(state_dir, sweep=False).slices_of(pid):
        for d in s.devices:
            own = sum(p.used_bytes for p in d.processes if p.pid == pid)
            out[d.device] = {
                "slice": s.name, "limit_bytes": d.limit_bytes, "used_bytes": d.used_bytes,
                "process_used_bytes": own, "compute": d.compute, "burst": d.burst,
                "gpu_seconds": d.gpu_seconds}
    return out


def explain_oom(requested_bytes: int | None = None, state_dir: str | None = None) -> str:
    """One line saying which quota an out-of-memory error in this slice ran into, or "" when
    the process is not in a slice with a memory quota (the GPU itself is full then)."""
    parts = []
    for uuid, s in memory_stats(state_dir).items():
        if not s["limit_bytes"]:
            continue
        need = f"; {format_bytes(requested_bytes)} more did not fit" if requested_bytes else ""
        parts.append(f"slice {s['slice']!r} is at its memory quota on {uuid}: "
                     f"{format_bytes(s['used_bytes'])} of {format_bytes(s['limit_bytes'])} used "
                     f"(this process {format_bytes(s['process_used_bytes'])}){need}")
    return "flexai: " + "; ".join(parts) if parts else ""


def install_oom_hint() -> bool:
    """Make PyTorch's out-of-memory errors in a slice print which quota was hit (stderr).

    Uses PyTorch's allocator OOM observer; returns False where this PyTorch has none.
    """
    import torch

    attach = getattr(torch._C, "_cuda_attach_out_of_memory_observer", None)
    if attach is None:
        return False

    def observer(device: int, alloc: int, device_allocated: int, device_free: int) -> None:
        try:
            line = explain_oom(alloc)
        except Exception:  # never turn an OOM into a different error
            return
        if line:
            print(line, file=sys.stderr, flush=True)

    attach(observer)
    return True
