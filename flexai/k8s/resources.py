"""The contract between flexai's Kubernetes components: resource names, the annotations they
write for each other, a pod's request as a :class:`flexai.policy.Request`, a node's GPUs.

- A pod asks in a container's ``resources.limits`` (or ``requests``): ``flexai.io/gpu`` (count;
  1 = a slice of one card, more = that many whole cards on one node), ``flexai.io/gpu-memory``
  (MiB per card; absent = the whole card's memory) and ``flexai.io/gpu-compute`` (percent of a
  card, 1..100; absent = 100). The priority comes from the annotation ``flexai.io/priority``,
  else from the priority class (``flexai-high`` ... or a bare priority name), else from the
  pod's integer priority (``>= 1000000`` high, ``< 0`` low, else normal).
- The device plugin writes each node's GPUs in the node annotation ``flexai.io/gpus``.
- The extender writes its choice in the pod annotation ``flexai.io/allocation``, carried by the
  pod's ``Binding`` (the API server merges a Binding's annotations into the pod as it binds
  it); the device plugin reads it from the pod in ``Allocate`` and sets ``flexai.io/assigned``
  to ``"true"``.

Pure: this module must never do I/O, import gRPC or talk to the API server; its errors are
``ValueError`` naming the field and showing an accepted example.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:  # flexai.policy (numpy) is imported when a request is built, not before
    from ..policy import Request

RESOURCE_GPU = "flexai.io/gpu"
RESOURCE_MEMORY = "flexai.io/gpu-memory"
RESOURCE_COMPUTE = "flexai.io/gpu-compute"
RESOURCES = (RESOURCE_GPU, RESOURCE_MEMORY, RESOURCE_COMPUTE)

ANNOTATION_PRIORITY = "flexai.io/priority"
ANNOTATION_MODELS = "flexai.io/gpu-models"
ANNOTATION_ALLOCATION = "flexai.io/allocation"
ANNOTATION_ASSIGNED = "flexai.io/assigned"
ANNOTATION_NODE_GPUS = "flexai.io/gpus"

DEFAULT_SCHEDULER = "flexai-scheduler"
#: The kubelet's device plugin directory.
PLUGIN_DIR = "/var/lib/kubelet/device-plugins"
MIB = 1 << 20

_SUFFIX = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
           "m": Fraction(1, 1000), "u": Fraction(1, 10**6), "n": Fraction(1, 10**9),
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_QUANTITY = re.compile(r"^([+-]?)(\d+(?:\.\d*)?|\.\d+)(?:([eE][+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|"
                       r"[numkMGTPE])?)$")


def parse_quantity(value: object, field: str, example: str) -> int:
    """A Kubernetes quantity (``"4096"``, ``"4k"``, ``"1e3"``) as a whole number.

    Raises
    ------
    ValueError
        For anything else, naming ``field`` and showing ``example``.
    """
    if isinstance(value, bool):
        value = str(value)
    if isinstance(value, int):
        return value
    m = _QUANTITY.match(str(value).strip()) if isinstance(value, (str, float)) else None
    if m is None:
        raise ValueError(f"{field}: {value!r} is not a number (e.g. {example})")
    sign, digits, exp, suffix = m.groups()
    number = Fraction(digits) * (Fraction(10) ** int(exp[1:]) if exp else _SUFFIX[suffix or ""])
    if number.denominator != 1:
        raise ValueError(f"{field}: {value!r} is not a whole number (e.g. {example})")
    return -int(number) if sign == "-" else int(number)


@dataclass(frozen=True)
class PodRequest:
    """What one pod asks of flexai (one container per pod may ask).

    Attributes
    ----------
    container : str
        The container that asks.
    gpus : int
        Cards: 1 = a slice of one card, more = whole cards on one node.
    memory_mib : int or None
        MiB of device memory per card; None = the whole card.
    compute : int
        Percent of a card (100 for whole cards).
    priority : str
        One of :data:`flexai.policy.PRIORITIES`.
    models : frozenset of str or None
        Accepted GPU models (annotation ``flexai.io/gpu-models``), None = any.
    """

    container: str
    gpus: int
    memory_mib: Optional[int]
    compute: int
    priority: str = "normal"
    models: Optional[frozenset] = None

    def to_request(self) -> "Request":
        """The policy's request (memory in bytes; 0 when the whole card is asked for)."""
        from ..policy import Request

        return Request(memory=(self.memory_mib or 0) * MIB, compute=self.compute, gpus=self.gpus,
                       priority=self.priority, models=self.models, where="anywhere")


def _limits(container: dict) -> dict:
    res = container.get("resources") or {}
    merged = dict(res.get("requests") or {})
    merged.update(res.get("limits") or {})
    return {k: v for k, v in merged.items() if k in RESOURCES}


def pod_priority(pod: dict) -> str:
    """The flexai priority of a pod (see the module docstring for the order of sources)."""
    from ..policy import PRIORITIES

    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    named = (meta.get("annotations") or {}).get(ANNOTATION_PRIORITY)
    if named is not None:
        if named not in PRIORITIES:
            raise ValueError(f"annotation {ANNOTATION_PRIORITY}: {named!r} is not one of "
                             f"{', '.join(PRIORITIES)} (e.g. {ANNOTATION_PRIORITY}: high)")
        return named
    cls = spec.get("priorityClassName") or ""
    bare = cls[len("flexai-"):] if cls.startswith("flexai-") else cls
    if bare in PRIORITIES:
        return bare
    value = spec.get("priority")
    if isinstance(value, int) and not isinstance(value, bool):
        return "high" if value >= 1_000_000 else "low" if value < 0 else "normal"
    return "normal"


def pod_request(pod: dict) -> Optional[PodRequest]:
    """The flexai request of a pod, or None when no container asks for flexai resources.

    Raises
    ------
    ValueError
        For a malformed request: a value not a whole number, compute outside 1..100, memory
        below 1 MiB, several containers asking, whole cards with a compute share, a bad
        priority annotation.
    """
    spec = pod.get("spec") or {}
    asking = [(c, _limits(c)) for c in spec.get("containers") or [] if _limits(c)]
    for c in spec.get("initContainers") or []:
        if _limits(c):
            raise ValueError(f"init container {c.get('name')!r}: flexai resources go in the "
                             f"pod's main container (e.g. {RESOURCE_GPU}: 1 in containers[0])")
    if not asking:
        return None
    if len(asking) > 1:
        names = ", ".join(repr(c.get("name")) for c, _ in asking)
        raise ValueError(f"containers {names} all ask for flexai resources; one container per "
                         f"pod may (e.g. {RESOURCE_GPU}: 1 in one container only)")
    container, lim = asking[0]
    name = str(container.get("name") or "")
    gpus = parse_quantity(lim.get(RESOURCE_GPU, 1), RESOURCE_GPU, f"{RESOURCE_GPU}: 1")
    if gpus < 1:
        raise ValueError(f"{RESOURCE_GPU}: {gpus} cards; at least 1 (e.g. {RESOURCE_GPU}: 1)")
    memory = None
    if RESOURCE_MEMORY in lim:
        memory = parse_quantity(lim[RESOURCE_MEMORY], RESOURCE_MEMORY,
                                f"{RESOURCE_MEMORY}: 4096 (MiB)")
        if memory < 1:
            raise ValueError(f"{RESOURCE_MEMORY}: {memory} MiB; at least 1 "
                             f"(e.g. {RESOURCE_MEMORY}: 4096)")
    compute = 100
    if RESOURCE_COMPUTE in lim:
        compute = parse_quantity(lim[RESOURCE_COMPUTE], RESOURCE_COMPUTE,
                                 f"{RESOURCE_COMPUTE}: 30 (percent)")
        if not 1 <= compute <= 100:
            raise ValueError(f"{RESOURCE_COMPUTE}: {compute} is not a percent of a card 1..100 "
                             f"(e.g. {RESOURCE_COMPUTE}: 30)")
    if gpus > 1 and compute != 100:
        raise ValueError(f"{RESOURCE_GPU}: {gpus} asks for whole cards, so {RESOURCE_COMPUTE} "
                         f"must be 100 or absent, not {compute} (e.g. {RESOURCE_GPU}: 1 with "
                         f"{RESOURCE_COMPUTE}: {compute})")
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    models = None
    if annotations.get(ANNOTATION_MODELS):
        models = frozenset(m.strip() for m in annotations[ANNOTATION_MODELS].split(",")
                           if m.strip()) or None
    return PodRequest(name, gpus, memory, compute, pod_priority(pod), models)


def slice_name(namespace: str, name: str, uid: str = "") -> str:
    """The flexai slice of a pod: ``namespace.name`` (at most 63 characters, the slice name
    alphabet; long names are cut and made unique by the pod's UID)."""
    full = re.sub(r"[^A-Za-z0-9._-]", "-", f"{namespace}.{name}")
    if len(full) <= 63:
        return full
    tag = re.sub(r"[^A-Za-z0-9]", "", uid)[:8] or "x"
    return f"{full[:54]}.{tag}"


# ---- node GPUs (device plugin -> extender) ------------------------------------------------------

@dataclass(frozen=True)
class NodeGpu:
    """One GPU of a node as the device plugin reports it."""

    index: int
    uuid: str
    model: str
    memory: int  # bytes
    healthy: bool = True


def encode_node_gpus(gpus: "list[NodeGpu] | tuple[NodeGpu, ...]") -> str:
    """The value of the node annotation ``flexai.io/gpus``."""
    return json.dumps([asdict(g) for g in gpus], separators=(",", ":"))


def decode_node_gpus(text: str) -> tuple[NodeGpu, ...]:
    """Parse the node annotation ``flexai.io/gpus``.

    Raises
    ------
    ValueError
        When it is not the list the device plugin writes.
    """
    try:
        items = json.loads(text)
        gpus = tuple(NodeGpu(int(g["index"]), str(g["uuid"]), str(g["model"]),
                             int(g["memory"]), bool(g.get("healthy", True))) for g in items)
    except (TypeError, ValueError, KeyError) as exc:
        raise ValueError(f"annotation {ANNOTATION_NODE_GPUS}: not a list of GPUs ({exc}); e.g. "
                         '[{"index":0,"uuid":"GPU-...","model":"H100","memory":85899345920}]'
                         ) from None
    return gpus


# ---- the extender's choice (extender -> device plugin) ------------------------------------------

@dataclass(frozen=True)
class Allocation:
    """Where a pod's slice lives: written by the extender at bind, read by the device plugin.

    ``memory`` is bytes per card (0: the whole card), ``gpus`` the cards' NVML indices and
    ``uuids`` their UUIDs, in the same order.
    """

    node: str
    gpus: tuple
    uuids: tuple
    memory: int
    compute: int
    priority: str
    slice: str
    container: str
    time: float

    def to_json(self) -> str:
        d = asdict(self)
        d["gpus"], d["uuids"] = list(self.gpus), list(self.uuids)
        return json.dumps(d, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "Allocation":
        """Parse the annotation ``flexai.io/allocation``.

        Raises
        ------
        ValueError
            When it is not what the extender writes.
        """
        try:
            d: dict[str, Any] = json.loads(text)
            return cls(str(d["node"]), tuple(int(i) for i in d["gpus"]),
                       tuple(str(u) for u in d["uuids"]), int(d["memory"]), int(d["compute"]),
                       str(d["priority"]), str(d["slice"]), str(d["container"]),
                       float(d["time"]))
        except (TypeError, ValueError, KeyError) as exc:
            raise ValueError(f"annotation {ANNOTATION_ALLOCATION}: not what the extender writes "
                             f"({exc})") from None
