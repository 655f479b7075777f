"""The simulated device: flexai's bundled stand-ins for ``libcuda.so.1`` and
``libnvidia-ml.so.1`` (built from tests/fake_driver), and the one place that says how a program
is run on them. ``flexai demo``, the tests and the benchmarks all take their environment from
here, and ask here whether a real GPU answers instead.

This module must never open libflexai.so (test environments are built in processes that must
not load it, e.g. under a sanitizer), so it names the two driver variables itself instead of
reading them from the contract table; it must never set a slice's quotas (callers add their
own ``FLEXAI_*`` values) and never initialize CUDA except in :func:`real_gpu_present`.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from ._ffi import lib_dir

#: Variables under this prefix belong to the simulated driver, not to flexai's contract.
SIM_PREFIX = "FLEXAI_SIM_"

#: The contract's variables for the real driver libraries, which point at the simulated ones here
#: (a test checks them against the library's table).
DRIVER_VARIABLES = ("FLEXAI_LIBCUDA", "FLEXAI_LIBNVML")

#: The knobs the simulated driver reads, each as ``FLEXAI_SIM_<KNOB>`` (see docs/cli.md):
#: number of devices, memory per device, their UUIDs, the duration of every kernel, whether
#: kernels of different processes may overlap (as under MPS), where the simulated devices keep
#: their shared clock, whether cuGetProcAddress hands out thunks, and the devices' model name.
KNOBS = ("devices", "memory", "uuids", "kernel_us", "mps", "state_dir", "proc_thunks", "name")


def sim_dir() -> Path:
    """Return the directory of the simulated device (stand-ins for libcuda.so.1 and NVML)."""
    return lib_dir() / "sim"


def available() -> bool:
    """True when the simulated device was built and installed with the package."""
    return (sim_dir() / "libcuda.so.1").is_file()


def sim_env(base: Mapping[str, str] | None = None, **knobs: object) -> dict[str, str]:
    """An environment that runs programs on the simulated device.

    Parameters
    ----------
    base : Mapping[str, str], optional
        The environment to start from (default: this process's).
    **knobs
        Settings of the simulated driver, by the names in :data:`KNOBS`, e.g.
        ``memory="16GiB"``, ``kernel_us=500``; ``None`` leaves a knob unset.

    Returns
    -------
    dict
        ``base`` with the simulated libraries first on ``LD_LIBRARY_PATH``, flexai's
        ``FLEXAI_LIBCUDA``/``FLEXAI_LIBNVML`` pointing at them, and the knobs.

    Raises
    ------
    TypeError
        For a knob the simulated driver does not have.
    """
    env = dict(os.environ if base is None else base)
    sim = str(sim_dir())
    rest = [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p and p != sim]
    env["LD_LIBRARY_PATH"] = ":".join([sim] + rest)
    libcuda, libnvml = DRIVER_VARIABLES
    env[libcuda] = f"{sim}/libcuda.so.1"
    env[libnvml] = f"{sim}/libnvidia-ml.so.1"
    for knob, value in knobs.items():
        if knob not in KNOBS:
            raise TypeError(f"sim_env: no knob {knob!r} (expected one of {', '.join(KNOBS)})")
        if value is not None:
            env[SIM_PREFIX + knob.upper()] = str(value)
    return env


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
