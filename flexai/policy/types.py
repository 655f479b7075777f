"""The values the scheduling policy reads and answers: a request, a view of the pool, and the
decisions (place, wait, preempt). All are small frozen dataclasses that validate themselves.

Pure data: this module must never import Ray, Kubernetes, subprocess, sockets or do file I/O,
and never import other flexai modules (the pool, the extender and the benchmark import it).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

__all__ = [
    "COMPUTE_FULL",
    "PRIORITIES",
    "WHERE",
    "Evict",
    "GpuView",
    "NodeView",
    "Place",
    "PoolView",
    "Preempt",
    "Request",
    "Shrink",
    "SliceView",
    "Wait",
    "priority_rank",
]

#: Priorities, highest first. ``best-effort`` slices have no guarantee and are evicted first.
PRIORITIES = ("high", "normal", "low", "best-effort")
#: Where a request may run relative to its origin node.
WHERE = ("prefer-local", "local-only", "anywhere")
#: A whole GPU's compute, in percent.
COMPUTE_FULL = 100

_RANK = {p: i for i, p in enumerate(PRIORITIES)}


def priority_rank(priority: str) -> int:
    """Return 0 for ``high`` ... 3 for ``best-effort`` (smaller is more important).

    Raises
    ------
    ValueError
        For a name not in :data:`PRIORITIES`.
    """
    try:
        return _RANK[priority]
    except (KeyError, TypeError):
        raise ValueError(f"priority {priority!r} is not one of {', '.join(PRIORITIES)} "
                         "(e.g. priority='high')") from None


def _int(owner: str, name: str, value: object, low: int, high: Optional[int] = None,
         example: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{owner}.{name} must be an integer, not {value!r} (e.g. {example})")
    if value < low or (high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise ValueError(f"{owner}.{name} must be {bound}, not {value} (e.g. {example})")


def _name(owner: str, name: str, value: object, example: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{owner}.{name} must be a non-empty string, not {value!r} "
                         f"(e.g. {example})")


# ---- the pool as the policy sees it ------------------------------------------------------------

@dataclass(frozen=True)
class SliceView:
    """A running slice on one GPU.

    Attributes
    ----------
    job : str
        The job that owns it (a job may hold slices on several GPUs of a node).
    priority : str
        One of :data:`PRIORITIES`.
    memory : int
        GPU memory held, bytes.
    compute : int
        Compute percent held now (0..100).
    guarantee : int
        The guaranteed part of ``compute``; ``compute - guarantee`` is burst that a
        higher-priority request may take by shrinking the slice.
    """

    job: str
    priority: str
    memory: int
    compute: int
    guarantee: int = 0

    def __post_init__(self) -> None:
        ex = "SliceView(job='train-1', priority='low', memory=2**30, compute=50, guarantee=20)"
        _name("SliceView", "job", self.job, ex)
        priority_rank(self.priority)
        _int("SliceView", "memory", self.memory, 0, example=ex)
        _int("SliceView", "compute", self.compute, 0, COMPUTE_FULL, ex)
        _int("SliceView", "guarantee", self.guarantee, 0, self.compute, ex)

    @property
    def burst(self) -> int:
        """Compute held above the guarantee."""
        return self.compute - self.guarantee


@dataclass(frozen=True)
class GpuView:
    """One GPU: its model, what is free on it, and the slices on it."""

    index: int
    model: str
    memory_total: int
    memory_free: int
    compute_free: int
    slices: tuple[SliceView, ...] = ()

    def __post_init__(self) -> None:
        ex = "GpuView(index=0, model='A100', memory_total=80*2**30, memory_free=80*2**30, " \
             "compute_free=100)"
        _int("GpuView", "index", self.index, 0, example=ex)
        _name("GpuView", "model", self.model, ex)
        _int("GpuView", "memory_total", self.memory_total, 0, example=ex)
        _int("GpuView", "memory_free", self.memory_free, 0, self.memory_total, ex)
        _int("GpuView", "compute_free", self.compute_free, 0, COMPUTE_FULL, ex)
        object.__setattr__(self, "slices", tuple(self.slices))
        for s in self.slices:
            if not isinstance(s, SliceView):
                raise ValueError(f"GpuView.slices holds {s!r}, not a SliceView ({ex})")


@dataclass(frozen=True)
class NodeView:
    """One node: its GPUs (none for a GPU-less node) and its free CPU and host memory.

    ``cpu_milli_free`` and ``host_memory_free`` are only checked against requests that ask for
    CPU or host memory (a request with ``cpu_milli=0`` fits any node's CPU).
    """

    name: str
    gpus: tuple[GpuView, ...] = ()
    cpu_milli_free: int = 0
    host_memory_free: int = 0

    def __post_init__(self) -> None:
        ex = "NodeView(name='node-1', gpus=(GpuView(...),), cpu_milli_free=64000)"
        _name("NodeView", "name", self.name, ex)
        object.__setattr__(self, "gpus", tuple(self.gpus))
        seen = set()
        for g in self.gpus:
            if not isinstance(g, GpuView):
                raise ValueError(f"NodeView.gpus holds {g!r}, not a GpuView ({ex})")
            if g.index in seen:
                raise ValueError(f"node {self.name!r} lists GPU index {g.index} twice")
            seen.add(g.index)
        _int("NodeView", "cpu_milli_free", self.cpu_milli_free, 0, example=ex)
        _int("NodeView", "host_memory_free", self.host_memory_free, 0, example=ex)

    def gpu(self, index: int) -> GpuView:
        """The GPU with this index (KeyError if none)."""
        for g in self.gpus:
            if g.index == index:
                return g
        raise KeyError(f"node {self.name!r} has no GPU {index}")


@dataclass(frozen=True)
class PoolView:
    """The pool: its nodes in a stable order (first-fit walks them in this order)."""

    nodes: tuple[NodeView, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes", tuple(self.nodes))
        names = set()
        for n in self.nodes:
            if not isinstance(n, NodeView):
                raise ValueError(f"PoolView.nodes holds {n!r}, not a NodeView "
                                 "(e.g. PoolView(nodes=(NodeView(name='node-1'),)))")
            if n.name in names:
                raise ValueError(f"PoolView lists node {n.name!r} twice")
            names.add(n.name)

    def node(self, name: str) -> NodeView:
        """The node with this name (KeyError if none)."""
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"the pool has no node {name!r}")


# ---- the request -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Request:
    """What a job asks for.

    Attributes
    ----------
    memory : int
        GPU memory in bytes, per GPU (0 allowed: compute-only, as in the Alibaba trace).
    compute : int
        Compute percent per GPU, 1..100. A gang (``gpus > 1``) takes whole GPUs: 100.
    gpus : int
        0: CPU only (``memory`` and ``compute`` must be 0); 1: a slice of one card;
        more: that many whole, fully free GPUs on one node, all or none.
    priority : str
        One of :data:`PRIORITIES`.
    models : frozenset of str or None
        GPU models the job accepts; None for any.
    origin : str or None
        The node the request comes from (its own GPUs are preferred).
    where : str
        ``"prefer-local"`` (the origin's GPUs when the request fits there, else remote),
        ``"local-only"`` (wait rather than go remote) or ``"anywhere"`` (no preference; the
        origin only breaks ties).
    cpu_milli, host_memory : int
        Node CPU (millicores) and host memory (bytes) needed; 0 checks nothing.
    """

    memory: int
    compute: int
    gpus: int = 1
    priority: str = "normal"
    models: Optional[frozenset] = None
    origin: Optional[str] = None
    where: str = "prefer-local"
    cpu_milli: int = 0
    host_memory: int = 0

    def __post_init__(self) -> None:
        ex = "Request(memory=4*2**30, compute=30, gpus=1, priority='high')"
        _int("Request", "gpus", self.gpus, 0, example=ex)
        _int("Request", "memory", self.memory, 0, example=ex)
        if self.gpus == 0:
            if self.memory or self.compute:
                raise ValueError("a CPU-only request (gpus=0) takes no GPU memory or compute, "
                                 f"got memory={self.memory}, compute={self.compute} "
                                 "(e.g. Request(memory=0, compute=0, gpus=0, cpu_milli=4000))")
            _int("Request", "compute", self.compute, 0, 0, ex)
        elif self.gpus == 1:
            _int("Request", "compute", self.compute, 1, COMPUTE_FULL, ex)
        else:
            _int("Request", "compute", self.compute, COMPUTE_FULL, COMPUTE_FULL,
                 "Request(memory=0, compute=100, gpus=4): a gang takes whole GPUs")
        priority_rank(self.priority)
        if self.models is not None:
            if isinstance(self.models, str) or not all(
                    isinstance(m, str) and m for m in self.models):
                raise ValueError(f"Request.models must be a set of model names or None, not "
                                 f"{self.models!r} (e.g. models=frozenset({{'A100', 'H100'}}))")
            object.__setattr__(self, "models", frozenset(self.models))
            if not self.models:
                raise ValueError("Request.models is empty: no GPU could match "
                                 "(e.g. models=frozenset({'A100'}), or None for any)")
        if self.origin is not None:
            _name("Request", "origin", self.origin, "origin='node-1'")
        if self.where not in WHERE:
            raise ValueError(f"Request.where {self.where!r} is not one of {', '.join(WHERE)} "
                             "(e.g. where='local-only')")
        if self.where == "local-only" and self.origin is None:
            raise ValueError("Request.where='local-only' needs an origin node "
                             "(e.g. origin='node-1', where='local-only')")
        _int("Request", "cpu_milli", self.cpu_milli, 0, example="cpu_milli=4000")
        _int("Request", "host_memory", self.host_memory, 0, example="host_memory=16*2**30")

    @property
    def rank(self) -> int:
        """0 for high ... 3 for best-effort."""
        return _RANK[self.priority]


# ---- decisions ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Place:
    """Start the request on ``node``'s GPUs ``gpus`` (empty for a CPU-only request).
    ``remote`` is True when the node is not the request's origin."""

    node: str
    gpus: tuple[int, ...]
    remote: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "gpus", tuple(self.gpus))


@dataclass(frozen=True)
class Wait:
    """The request cannot start now; ``reason`` says why (one line). ``never`` is True when it
    could not start even on an idle pool (no node has the GPUs, models or memory it asks for):
    a queue should reject it rather than let it wait."""

    reason: str
    never: bool = False


@dataclass(frozen=True)
class Shrink:
    """Resize ``job``'s slice on ``node``'s GPU ``gpu`` to ``compute`` percent (its burst)."""

    node: str
    gpu: int
    job: str
    compute: int


@dataclass(frozen=True)
class Evict:
    """Stop ``job`` on ``node`` (SIGTERM, grace period, SIGKILL): all its slices there."""

    node: str
    job: str


@dataclass(frozen=True)
class Preempt:
    """Take capacity from lower-priority slices (``actions``, in order), then ``then``."""

    actions: tuple[Union[Shrink, Evict], ...] = field(default_factory=tuple)
    then: Optional[Place] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "actions", tuple(self.actions))
        if not isinstance(self.then, Place):
            raise ValueError("Preempt.then must be a Place")
