"""The front door: ``decide(request, view)`` -> Place | Wait | Preempt, and ``apply_decision``,
which returns the view as it will be once a decision is carried out (for queues and tests).

Pure: builds a :class:`PoolState` from the view, asks the policy, and plans preemption only when
the request does not fit as the pool is. Never I/O, Ray or Kubernetes.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional, Union

from .policies import Policy
from .preempt import plan_preemption
from .registry import POLICIES
from .state import PoolState
from .types import COMPUTE_FULL, Evict, Place, PoolView, Preempt, Request, Shrink, SliceView, Wait

__all__ = ["Decision", "apply_decision", "decide", "make_policy"]

Decision = Union[Place, Wait, Preempt]


def make_policy(policy: Union[str, Policy] = "flexai", **options) -> Policy:
    """A policy instance from a name in ``POLICIES`` (options go to its constructor), or the
    instance itself.

    Raises
    ------
    ValueError
        For an unknown name.
    """
    if isinstance(policy, Policy):
        return policy
    try:
        cls = POLICIES[policy]
    except (KeyError, TypeError):
        raise ValueError(f"unknown policy {policy!r}; one of {', '.join(POLICIES)} "
                         "(e.g. policy='fgd')") from None
    return cls(**options)


def decide(request: Request, view: PoolView, policy: Union[str, Policy] = "flexai",
           state: Optional[PoolState] = None) -> Decision:
    """Decide what to do with ``request`` on the pool ``view``.

    Parameters
    ----------
    request : Request
    view : PoolView
        Nodes, GPUs, free capacity and the running slices with their priorities.
    policy : str or Policy
        A name in ``POLICIES`` (default ``"flexai"``) or a policy instance (e.g. an FGD policy
        built with the pool's workload).
    state : PoolState, optional
        The view's arrays, when the caller keeps them (saves rebuilding them).

    Returns
    -------
    Place
        When the request fits now (a request that fits is never queued).
    Preempt
        When it fits only by shrinking or evicting strictly lower-priority slices.
    Wait
        Otherwise, with the reason.
    """
    if not isinstance(request, Request):
        raise ValueError(f"decide: request must be a Request, not {type(request).__name__} "
                         "(e.g. Request(memory=2**30, compute=20))")
    if not isinstance(view, PoolView):
        raise ValueError(f"decide: view must be a PoolView, not {type(view).__name__} "
                         "(e.g. PoolView(nodes=(NodeView(name='node-1'),)))")
    chosen = make_policy(policy).choose(request, state or PoolState.from_view(view))
    if isinstance(chosen, Place):
        return chosen
    plan = plan_preemption(request, view)
    if plan is not None:
        return plan
    if chosen.never:
        return chosen
    return Wait(chosen.reason + "; and no lower-priority capacity can be taken")


def _shrink(view_nodes: dict, a: Shrink) -> None:
    node = view_nodes[a.node]
    gpus = []
    for g in node.gpus:
        if g.index == a.gpu:
            slices, freed = [], 0
            for s in g.slices:
                if s.job == a.job:
                    new = max(s.guarantee, min(s.compute, a.compute))
                    freed += s.compute - new
                    s = replace(s, compute=new)
                slices.append(s)
            g = replace(g, slices=tuple(slices), compute_free=g.compute_free + freed)
        gpus.append(g)
    view_nodes[a.node] = replace(node, gpus=tuple(gpus))


def _evict(view_nodes: dict, a: Evict) -> None:
    node = view_nodes[a.node]
    gpus = []
    for g in node.gpus:
        gone = [s for s in g.slices if s.job == a.job]
        if gone:
            g = replace(g, slices=tuple(s for s in g.slices if s.job != a.job),
                        memory_free=min(g.memory_total,
                                        g.memory_free + sum(s.memory for s in gone)),
                        compute_free=min(COMPUTE_FULL,
                                         g.compute_free + sum(s.compute for s in gone)))
        gpus.append(g)
    view_nodes[a.node] = replace(node, gpus=tuple(gpus))


def apply_decision(view: PoolView, request: Request, decision: Decision, job: str,
                   guarantee: Optional[int] = None) -> PoolView:
    """The view after ``decision`` is carried out for ``request`` as job ``job``.

    Shrinks and evictions first, then the placement, which adds a slice (priority of the
    request; ``guarantee`` defaults to all its compute, 0 for best-effort) on each GPU.
    A :class:`Wait` returns the view unchanged.

    Raises
    ------
    ValueError
        When the placement does not fit (a policy bug this is meant to catch).
    """
    if isinstance(decision, Wait):
        return view
    nodes = {n.name: n for n in view.nodes}
    place = decision
    if isinstance(decision, Preempt):
        for a in decision.actions:
            (_shrink if isinstance(a, Shrink) else _evict)(nodes, a)
        place = decision.then
    node = nodes[place.node]
    if request.cpu_milli > node.cpu_milli_free or request.host_memory > node.host_memory_free:
        raise ValueError(f"apply_decision: {place.node!r} lacks the CPU or host memory")
    if len(place.gpus) != request.gpus or len(set(place.gpus)) != request.gpus:
        raise ValueError(f"apply_decision: {request.gpus} GPU(s) wanted, got {place.gpus}")
    gang = request.gpus > 1
    gpus = []
    for g in node.gpus:
        if g.index in place.gpus:
            if request.models is not None and g.model not in request.models:
                raise ValueError(f"apply_decision: GPU {g.index} of {place.node!r} is a "
                                 f"{g.model}, not an accepted model")
            mem = g.memory_total if gang else request.memory
            comp = COMPUTE_FULL if gang else request.compute
            if gang and g.slices:
                raise ValueError(f"apply_decision: GPU {g.index} of {place.node!r} is not free")
            if mem > g.memory_free or comp > g.compute_free:
                raise ValueError(f"apply_decision: GPU {g.index} of {place.node!r} has "
                                 f"{g.compute_free}% / {g.memory_free} B free, "
                                 f"{comp}% / {mem} B wanted")
            if guarantee is None:
                gu = 0 if request.priority == "best-effort" else comp
            else:
                gu = min(guarantee, comp)
            g = replace(g, memory_free=g.memory_free - mem, compute_free=g.compute_free - comp,
                        slices=g.slices + (SliceView(job, request.priority, mem, comp, gu),))
        gpus.append(g)
    missing = set(place.gpus) - {g.index for g in node.gpus}
    if missing:
        raise ValueError(f"apply_decision: {place.node!r} has no GPU {sorted(missing)}")
    nodes[place.node] = replace(node, gpus=tuple(gpus),
                                cpu_milli_free=node.cpu_milli_free - request.cpu_milli,
                                host_memory_free=node.host_memory_free - request.host_memory)
    return PoolView(tuple(nodes[n.name] for n in view.nodes))
