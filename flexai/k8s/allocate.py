"""What the device plugin's ``Allocate`` gives a container: the ``FLEXAI_*`` variables of its
slice (from the extender's ``flexai.io/allocation`` annotation), the library and the node's state
directory mounted, and the preload (an ``ld.so.preload`` file mounted over the container's, or
``LD_PRELOAD``, or both).

Also installs the library on the host and writes the ``ld.so.preload`` file the mounts point at
(:func:`prepare_host`). Pure otherwise: this module must never talk to the kubelet or the API
server, and never preload libflexai.so into its own process (the variables' names are read
from the library's table through flexai.spec, as everywhere else).
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .resources import MIB, Allocation, NodeGpu

LIBRARY = "libflexai.so"
PRELOAD_FILE = "ld.so.preload"
PRELOAD_MODES = ("file", "env", "both")


@dataclass(frozen=True)
class Layout:
    """Where things are on the host and where the container sees them.

    Attributes
    ----------
    host_lib_dir, container_lib_dir : str
        The directory holding ``libflexai.so`` (and the ``ld.so.preload`` file) on the host,
        and where it is mounted (read-only) in the container.
    host_state_dir, container_state_dir : str
        The node's flexai state directory (every slice of the node shares it) and its mount.
    preload : str
        ``file`` (mount ``ld.so.preload`` over ``/etc/ld.so.preload``: also covers programs
        that reset the environment), ``env`` (``LD_PRELOAD``), or ``both``.
    """

    host_lib_dir: str = "/usr/local/flexai/lib"
    container_lib_dir: str = "/usr/local/flexai/lib"
    host_state_dir: str = "/var/run/flexai"
    container_state_dir: str = "/var/run/flexai"
    preload: str = "file"

    def __post_init__(self) -> None:
        if self.preload not in PRELOAD_MODES:
            raise ValueError(f"preload {self.preload!r} is not one of {', '.join(PRELOAD_MODES)} "
                             "(e.g. --preload file)")
        for name in ("host_lib_dir", "container_lib_dir", "host_state_dir",
                     "container_state_dir"):
            if not os.path.isabs(getattr(self, name)):
                raise ValueError(f"{name.replace('_', '-')} must be an absolute path, not "
                                 f"{getattr(self, name)!r} (e.g. /usr/local/flexai/lib)")

    @property
    def container_library(self) -> str:
        return f"{self.container_lib_dir.rstrip('/')}/{LIBRARY}"


def prepare_host(layout: Layout, install_from: Optional[Path] = None) -> None:
    """Make the host side ready: the state directory, the library (copied from
    ``install_from`` when given, replaced by rename so that running containers keep their
    mapped copy) and the ``ld.so.preload`` file naming the library's container path.

    Raises
    ------
    OSError
        When a directory or file cannot be written.
    """
    lib_dir = Path(layout.host_lib_dir)
    lib_dir.mkdir(parents=True, exist_ok=True)
    Path(layout.host_state_dir).mkdir(parents=True, exist_ok=True)
    if install_from is not None and install_from.resolve() != (lib_dir / LIBRARY).resolve():
        tmp = lib_dir / f".{LIBRARY}.{os.getpid()}"
        shutil.copyfile(install_from, tmp)
        os.chmod(tmp, 0o755)
        os.replace(tmp, lib_dir / LIBRARY)
    text = layout.container_library + "\n"
    preload = lib_dir / PRELOAD_FILE
    if not preload.is_file() or preload.read_text() != text:
        tmp = lib_dir / f".{PRELOAD_FILE}.{os.getpid()}"
        tmp.write_text(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, preload)


def _library_priority(priority: str) -> str:
    """The library knows high, normal and low; best-effort runs at its lowest."""
    return "low" if priority == "best-effort" else priority


def container_response(alloc: Allocation, layout: Layout,
                       gpus: dict[str, NodeGpu]) -> dict:
    """The parts of a ``ContainerAllocateResponse`` for a container of ``alloc``.

    Parameters
    ----------
    alloc : Allocation
        The extender's choice for the pod.
    layout : Layout
    gpus : dict
        The node's GPUs by UUID (for the memory of whole cards).

    Returns
    -------
    dict
        ``{"envs": {...}, "mounts": [(container_path, host_path, read_only), ...],
        "annotations": {...}}``.

    Raises
    ------
    ValueError
        When the allocation names a GPU this node does not have.
    """
    missing = [u for u in alloc.uuids if u not in gpus]
    if missing:
        raise ValueError(f"the allocation names GPU(s) {', '.join(missing)} that this node "
                         "does not have")
    if alloc.memory > 0:
        memory = f"{alloc.memory // MIB}MiB" if alloc.memory % MIB == 0 else str(alloc.memory)
    else:  # whole cards: the quota is each card's own size
        memory = ",".join(f"{i}:{gpus[u].memory}" for i, u in enumerate(alloc.uuids))
        if len(alloc.uuids) == 1:
            memory = str(gpus[alloc.uuids[0]].memory)
    from ..spec import env_of  # the contract's names come from the library's own table

    envs = env_of(gpu_memory=memory, gpu_compute=alloc.compute, slice=alloc.slice,
                  priority=_library_priority(alloc.priority),
                  state_dir=layout.container_state_dir)
    envs["NVIDIA_VISIBLE_DEVICES"] = ",".join(alloc.uuids)
    mounts = [(layout.container_lib_dir, layout.host_lib_dir, True),
              (layout.container_state_dir, layout.host_state_dir, False)]
    if layout.preload in ("env", "both"):
        envs["LD_PRELOAD"] = layout.container_library
    if layout.preload in ("file", "both"):
        mounts.append(("/etc/ld.so.preload",
                       f"{layout.host_lib_dir.rstrip('/')}/{PRELOAD_FILE}", True))
    return {"envs": envs, "mounts": mounts,
            "annotations": {"flexai.io/slice": alloc.slice}}
