"""The pool's placement decision: a thin door onto ``flexai.policy`` (issue 10).

The pool's head calls ``decide(request, view)`` (flexai's default policy, FGD with packing),
keeps its waiting jobs in ``flexai.policy``'s :class:`Queue` (priority, age, aging) and carries
out its ``Place`` / ``Wait`` / ``Preempt`` (``Shrink`` / ``Evict``) decisions; everything here
is re-exported from ``flexai.policy`` so that the head names one module. Also here:
:func:`view_from_dict`, the pool view rebuilt from the agents' plain ``view()`` dicts.

This module must never import Ray, start processes or do I/O: it is pure, like the policy.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..policy import (  # noqa: F401  (re-exported for the head and the tests)
    DEFAULT_POLICY,
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
    apply_decision,
    decide,
)

#: The policy the pool places with, as ``flexai pool status`` names it.
POLICY = f"flexai.policy ({DEFAULT_POLICY})"


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
