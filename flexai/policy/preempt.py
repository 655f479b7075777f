"""Preemption plans: when a request does not fit, which lower-priority slices to shrink or
evict so that it does.

Rules (docs/scheduler.md restates them):

- Only slices of a strictly lower priority than the request are touched; never equal or higher.
- First their burst (compute above the guarantee) is shrunk; only ``low`` and ``best-effort``
  slices are ever evicted (a ``normal`` slice may be shrunk by a ``high`` request, never
  evicted). Memory cannot be shrunk, so a memory shortfall always needs evictions.
- Of all plans, the one that disturbs the least work wins: fewest evicted jobs, then (for
  ``prefer-local``) a local place, then the least GPU memory taken, then the least compute
  taken, then pool order.
- A gang (``gpus > 1``) needs whole GPUs: every slice on each chosen GPU must be evictable.
- CPU and host memory are never preempted (slices do not carry them): the node must have them.

Pure: works on a :class:`PoolView`; never I/O, Ray or Kubernetes.
"""
from __future__ import annotations

from itertools import combinations
from typing import Optional

from .types import (
    COMPUTE_FULL,
    Evict,
    GpuView,
    NodeView,
    Place,
    PoolView,
    Preempt,
    Request,
    Shrink,
    SliceView,
    priority_rank,
)

__all__ = ["EVICTABLE", "MAX_EXACT", "plan_preemption"]

#: Priorities whose slices may be evicted (by a strictly higher request).
EVICTABLE = frozenset({"low", "best-effort"})
#: Up to this many evictable jobs on one GPU, every subset is tried; above, a greedy order.
MAX_EXACT = 10


def _jobs(gpu: GpuView) -> dict[str, list[SliceView]]:
    out: dict[str, list[SliceView]] = {}
    for s in gpu.slices:
        out.setdefault(s.job, []).append(s)
    return out


def _model_ok(r: Request, gpu: GpuView) -> bool:
    return (r.models is None or gpu.model in r.models) and gpu.memory_total >= r.memory


def _gpu_plan(r: Request, node: NodeView, gpu: GpuView) -> Optional[tuple[tuple, list]]:
    """The least disturbing way to fit a one-GPU request on ``gpu``: (cost, actions) or None."""
    dc = max(0, r.compute - gpu.compute_free)
    dm = max(0, r.memory - gpu.memory_free)
    lower = {job: ss for job, ss in _jobs(gpu).items()
             if all(priority_rank(s.priority) > r.rank for s in ss)}
    evictable = [job for job, ss in lower.items() if all(s.priority in EVICTABLE for s in ss)]
    mem = {job: sum(s.memory for s in ss) for job, ss in lower.items()}
    comp = {job: sum(s.compute for s in ss) for job, ss in lower.items()}
    burst = {job: sum(s.burst for s in ss) for job, ss in lower.items()}
    if sum(mem[j] for j in evictable) < dm:
        return None
    if len(evictable) > MAX_EXACT:  # greedy: the lowest priority and largest first
        evictable.sort(key=lambda j: (-max(priority_rank(s.priority) for s in lower[j]),
                                      -mem[j], -comp[j]))
        sets = [tuple(evictable[:k]) for k in range(len(evictable) + 1)]
    else:
        sets = [c for k in range(len(evictable) + 1) for c in combinations(evictable, k)]
    best = None
    for chosen in sets:
        if best is not None and len(chosen) > best[0][0]:
            break
        freed_m = sum(mem[j] for j in chosen)
        freed_c = sum(comp[j] for j in chosen)
        if freed_m < dm:
            continue
        shrink_need = max(0, dc - freed_c)
        rest = [j for j in lower if j not in chosen]
        if sum(burst[j] for j in rest) < shrink_need:
            continue
        cost = (len(chosen), freed_m, freed_c + shrink_need)
        if best is None or cost < best[0]:
            best = (cost, chosen, shrink_need, rest)
    if best is None:
        return None
    cost, chosen, need, rest = best
    actions: list = []
    # shrink the lowest priority first, the largest burst first within a priority
    rest.sort(key=lambda j: (-max(priority_rank(s.priority) for s in lower[j]), -burst[j], j))
    for job in rest:
        for s in lower[job]:
            if need <= 0:
                break
            take = min(s.burst, need)
            if take > 0:
                actions.append(Shrink(node.name, gpu.index, job, s.compute - take))
                need -= take
    actions += [Evict(node.name, job) for job in chosen]
    return cost, actions


def _gang_plan(r: Request, node: NodeView) -> Optional[tuple[tuple, list]]:
    """Empty ``r.gpus`` whole GPUs on ``node`` by evicting their jobs: (cost, actions, gpus)."""
    options = []
    for gpu in node.gpus:
        if not _model_ok(r, gpu):
            continue
        jobs = _jobs(gpu)
        if any(priority_rank(s.priority) <= r.rank or s.priority not in EVICTABLE
               for s in gpu.slices):
            continue
        if (gpu.memory_free + sum(s.memory for s in gpu.slices) < gpu.memory_total or
                gpu.compute_free + sum(s.compute for s in gpu.slices) < COMPUTE_FULL):
            continue  # something not listed holds it: evicting the slices would not empty it
        options.append((len(jobs), sum(s.memory for s in gpu.slices), gpu.index, set(jobs)))
    if len(options) < r.gpus:
        return None
    options.sort(key=lambda o: o[:3])
    chosen = options[:r.gpus]
    jobs = sorted(set().union(*(o[3] for o in chosen)))
    mem = sum(o[1] for o in chosen)
    comp = sum(COMPUTE_FULL for _ in chosen)
    actions = [Evict(node.name, j) for j in jobs]
    return (len(jobs), mem, comp), actions, tuple(sorted(o[2] for o in chosen))


def plan_preemption(r: Request, view: PoolView) -> Optional[Preempt]:
    """The least disturbing :class:`Preempt` that makes ``r`` fit, or None if there is none.

    Call it when the request does not fit as the pool is: it plans as if it had to take
    capacity (a plan with no action at all is still returned if one exists).
    """
    if r.gpus == 0 or r.rank == priority_rank("best-effort"):
        return None
    best = None
    for order, node in enumerate(view.nodes):
        if r.where == "local-only" and node.name != r.origin:
            continue
        if r.cpu_milli > node.cpu_milli_free or r.host_memory > node.host_memory_free:
            continue
        remote = r.origin is not None and node.name != r.origin
        lex_remote = remote and r.where == "prefer-local"
        if r.gpus == 1:
            for gpu in node.gpus:
                if not _model_ok(r, gpu):
                    continue
                found = _gpu_plan(r, node, gpu)
                if found is None:
                    continue
                cost, actions = found
                key = (cost[0], lex_remote) + cost[1:] + (remote, order, gpu.index)
                if best is None or key < best[0]:
                    best = (key, actions, Place(node.name, (gpu.index,), remote))
        else:
            found = _gang_plan(r, node)
            if found is None:
                continue
            cost, actions, gpus = found
            key = (cost[0], lex_remote) + cost[1:] + (remote, order, 0)
            if best is None or key < best[0]:
                best = (key, actions, Place(node.name, gpus, remote))
    if best is None:
        return None
    return Preempt(tuple(best[1]), then=best[2])
