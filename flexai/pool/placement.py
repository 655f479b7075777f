"""The pool's placement decision: ``decide(request, view) -> Place | Wait | Preempt``.

The scheduling policy lives in ``flexai.policy`` (issue 10). Where that package is installed,
this module is only a re-export of it; until then it holds a plain first-fit behind the same
interface, with the same dataclass shapes (``Request``, ``PoolView``/``NodeView``/``GpuView``/
``SliceView``, ``Place``/``Wait``/``Preempt``), so that the pool's head never changes when the
policy lands. Also here: :func:`view_from_dict`, the pool view rebuilt from the agents' plain
``view()`` dicts.

This module must never import Ray, start processes or do I/O: it is pure, like the policy.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional, Union

try:  # the real policy, once it is part of the package (issue 10)
    from ..policy import (  # type: ignore[import-not-found]  # noqa: F401
        PRIORITIES,
        Evict,
        GpuView,
        NodeView,
        Place,
        PoolView,
        Preempt,
        Queue,
        Request,
        Shrink,
        SliceView,
        Wait,
        decide,
    )

    POLICY = "flexai.policy"
except ModuleNotFoundError as exc:
    if exc.name != "flexai.policy":
        raise
    POLICY = "first-fit (flexai.pool.placement)"

    #: Priorities, highest first (the policy's order).
    PRIORITIES = ("high", "normal", "low", "best-effort")
    _WHERE = ("prefer-local", "local-only", "anywhere")

    @dataclass(frozen=True)
    class SliceView:  # type: ignore[no-redef]
        """A running slice on one GPU (bytes of memory, compute percent held, guaranteed
        part)."""

        job: str
        priority: str
        memory: int
        compute: int
        guarantee: int = 0

    @dataclass(frozen=True)
    class GpuView:  # type: ignore[no-redef]
        """One GPU: its model, what is free on it, and the slices on it."""

        index: int
        model: str
        memory_total: int
        memory_free: int
        compute_free: int
        slices: tuple[SliceView, ...] = ()

    @dataclass(frozen=True)
    class NodeView:  # type: ignore[no-redef]
        """One node: its GPUs (none for a GPU-less node), free CPU and host memory."""

        name: str
        gpus: tuple[GpuView, ...] = ()
        cpu_milli_free: int = 0
        host_memory_free: int = 0

    @dataclass(frozen=True)
    class PoolView:  # type: ignore[no-redef]
        """The pool's nodes in a stable order."""

        nodes: tuple[NodeView, ...] = ()

    @dataclass(frozen=True)
    class Request:  # type: ignore[no-redef]
        """What a job asks for (memory bytes and compute percent per GPU; ``gpus`` 0: CPU
        only, 1: a slice of one card, more: whole GPUs on one node)."""

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
            ex = "(e.g. Request(memory=4*2**30, compute=30, priority='high'))"
            if self.priority not in PRIORITIES:
                raise ValueError(f"priority {self.priority!r} is not one of "
                                 f"{', '.join(PRIORITIES)} {ex}")
            if self.where not in _WHERE:
                raise ValueError(f"where {self.where!r} is not one of {', '.join(_WHERE)} {ex}")
            if self.where == "local-only" and self.origin is None:
                raise ValueError("where='local-only' needs an origin node "
                                 "(e.g. origin='node-1', where='local-only')")
            low = 0 if self.gpus == 0 else (100 if self.gpus > 1 else 1)
            high = 0 if self.gpus == 0 else 100
            if self.gpus < 0 or self.memory < 0 or not low <= self.compute <= high:
                raise ValueError(f"bad request gpus={self.gpus} memory={self.memory} "
                                 f"compute={self.compute} {ex}")

    @dataclass(frozen=True)
    class Place:  # type: ignore[no-redef]
        """Start on ``node``'s GPUs ``gpus``; ``remote`` when not the request's origin."""

        node: str
        gpus: tuple[int, ...]
        remote: bool = False

    @dataclass(frozen=True)
    class Wait:  # type: ignore[no-redef]
        """Cannot start now; ``reason`` says why."""

        reason: str

    @dataclass(frozen=True)
    class Shrink:  # type: ignore[no-redef]
        """Resize ``job``'s slice on ``node``'s GPU ``gpu`` to ``compute`` percent."""

        node: str
        gpu: int
        job: str
        compute: int

    @dataclass(frozen=True)
    class Evict:  # type: ignore[no-redef]
        """Stop ``job`` on ``node``."""

        node: str
        job: str

    @dataclass(frozen=True)
    class Preempt:  # type: ignore[no-redef]
        """Take capacity from lower-priority slices (``actions``), then ``then``."""

        actions: tuple[Union[Shrink, Evict], ...] = field(default_factory=tuple)
        then: Optional[Place] = None

    def _fits(request: Request, gpu: GpuView) -> bool:
        if request.models is not None and gpu.model not in request.models:
            return False
        if request.gpus > 1:  # whole GPUs only
            return not gpu.slices and gpu.compute_free >= 100 and \
                gpu.memory_free >= max(request.memory, gpu.memory_total)
        return gpu.memory_free >= request.memory and gpu.compute_free >= request.compute

    class Queue:  # type: ignore[no-redef]
        """Waiting requests ordered by priority, then age; a request gains one priority level
        per :attr:`aging` seconds of waiting, so low priority never starves."""

        aging = 60.0

        def __init__(self) -> None:
            self._items: dict[Any, tuple[Request, float]] = {}

        def push(self, key: Any, request: Request, now: float) -> None:
            self._items[key] = (request, now)

        def remove(self, key: Any) -> None:
            self._items.pop(key, None)

        def __len__(self) -> int:
            return len(self._items)

        def __contains__(self, key: Any) -> bool:
            return key in self._items

        def ordered(self, now: float) -> list[tuple[Any, Request]]:
            def rank(item: tuple[Any, tuple[Request, float]]) -> tuple[float, float]:
                request, since = item[1]
                level = PRIORITIES.index(request.priority) - (now - since) / self.aging
                return (max(0.0, level), since)

            return [(k, r) for k, (r, _) in sorted(self._items.items(), key=rank)]

    def decide(request: Request, view: PoolView, policy: str = "first-fit"
               ) -> Union[Place, Wait, Preempt]:
        """First fit: the origin node first (unless ``anywhere``), then the others in the
        view's order; the first GPU(s) with room. Never preempts (the real policy does)."""
        nodes = list(view.nodes)
        if request.origin is not None and request.where != "anywhere":
            nodes.sort(key=lambda n: n.name != request.origin)
        if request.where == "local-only":
            nodes = [n for n in nodes if n.name == request.origin]
        for node in nodes:
            remote = node.name != request.origin
            if request.gpus == 0:
                return Place(node.name, (), remote)
            fitting = [g.index for g in node.gpus if _fits(request, g)]
            if len(fitting) >= request.gpus:
                return Place(node.name, tuple(fitting[:request.gpus]), remote)
        where = " on the origin node" if request.where == "local-only" else ""
        return Wait(f"no GPU{where} has {request.memory} bytes and {request.compute}% "
                    "compute free")


def view_from_dict(nodes: Iterable[Mapping[str, Any]]) -> PoolView:
    """The pool view from the agents' ``view()`` dicts (same field names as the dataclasses).

    Values are clamped where an agent reports more granted than a GPU has (a slice without a
    limit that uses more than it was given), so the view always validates."""
    out = []
    for n in nodes:
        gpus = []
        for g in n.get("gpus", ()):
            total = int(g["memory_total"])
            slices = tuple(SliceView(job=str(s["job"]), priority=_priority(s["priority"]),
                                     memory=int(s["memory"]),
                                     compute=min(100, max(0, int(s["compute"]))),
                                     guarantee=min(max(0, int(s.get("guarantee", 0))),
                                                   min(100, max(0, int(s["compute"])))))
                           for s in g.get("slices", ()))
            gpus.append(GpuView(index=int(g["index"]), model=str(g["model"]) or "unknown",
                                memory_total=total,
                                memory_free=min(total, max(0, int(g["memory_free"]))),
                                compute_free=min(100, max(0, int(g["compute_free"]))),
                                slices=slices))
        out.append(NodeView(name=str(n["name"]), gpus=tuple(gpus),
                            cpu_milli_free=max(0, int(n.get("cpu_milli_free", 0))),
                            host_memory_free=max(0, int(n.get("host_memory_free", 0)))))
    return PoolView(nodes=tuple(out))


def _priority(name: object) -> str:
    """A slice's priority as the policy names it (anything unknown counts as normal)."""
    return str(name) if name in PRIORITIES else "normal"
