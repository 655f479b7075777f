"""flexai.policy: pure scheduling. A request and a view of the pool in; a placement, a reason
to wait, or a preemption plan out. The pool on Ray, the Kubernetes extender and the trace
benchmark all call this one package.

It must never import Ray, Kubernetes, subprocess or sockets, nor read or write files
(``tests/test_policy.py`` parses every module here to check); numpy is its only dependency.

Public API
----------
Values (``types``), all frozen dataclasses that validate themselves (``ValueError`` naming the
field and showing an accepted example):

- ``PRIORITIES = ("high", "normal", "low", "best-effort")``, highest first; ``WHERE``;
  ``COMPUTE_FULL = 100``; ``priority_rank(name) -> 0..3``.
- ``SliceView(job, priority, memory, compute, guarantee=0)``: a running slice on one GPU;
  ``compute - guarantee`` is burst that may be shrunk.
- ``GpuView(index, model, memory_total, memory_free, compute_free, slices=())``.
- ``NodeView(name, gpus=(), cpu_milli_free=0, host_memory_free=0)``: ``gpus=()`` for a
  GPU-less node.
- ``PoolView(nodes)``; ``view.node(name)``, ``node.gpu(index)``.
- ``Request(memory, compute, gpus=1, priority="normal", models=None, origin=None,
  where="prefer-local", cpu_milli=0, host_memory=0)``: ``gpus=1`` a slice of one card
  (compute 1..100 percent, memory bytes, 0 allowed); ``gpus>1`` that many whole free GPUs on
  one node, all or none (compute must be 100); ``gpus=0`` CPU/host memory only (memory and
  compute 0). ``where``: ``prefer-local`` | ``local-only`` | ``anywhere``.
- Decisions: ``Place(node, gpus, remote)``, ``Wait(reason, never=False)`` (``never``: it would
  not fit even an idle pool), ``Preempt(actions, then=Place)`` with actions
  ``Shrink(node, gpu, job, compute)`` (resize to ``compute``) and ``Evict(node, job)``.

Deciding (``decide``):

- ``decide(request, view, policy="flexai", state=None) -> Decision`` (``Place | Wait |
  Preempt``): a request that fits is placed, never queued; otherwise the least disturbing
  preemption of strictly lower priorities (shrink burst first, then evict ``low`` /
  ``best-effort``), else ``Wait``.
- ``apply_decision(view, request, decision, job, guarantee=None) -> PoolView``: the view once a
  decision is carried out (the new slice gets the request's priority).
- ``make_policy(name_or_policy, **options) -> Policy``.
- ``plan_preemption(request, view) -> Preempt | None`` (``preempt``); ``EVICTABLE``.

Policies (``POLICIES``: name -> class, ``DEFAULT_POLICY = "flexai"``): ``first-fit``
(``FirstFit``), ``best-fit`` (``BestFit``), ``dot-product`` (``DotProduct``), ``random-fit``
(``RandomFit(seed=0)``), ``gpu-packing`` (``GpuPacking``), ``fgd`` (``FGD(workload=None,
levels=100)``: the paper's FGD, scoring the growth of fragmentation as an integer 0..100 the
way its Kubernetes plugin does), ``fgd-exact`` (``FGDExact(workload=None)``: FGD on the exact
growth) and ``flexai`` (``Flexai(workload=None, pack=1.0, balance=10.0, gang_weight=1.0,
reserve=0.01)``: FGD's exact growth on the workload weighed by the GPUs each type asks for, plus
``balance`` times the growth of the GPU compute the node's CPU and host memory can no longer
feed at the workload's average CPU and memory per GPU (``Workload.stranded``, from
``cpu_per_compute`` and ``hmem_per_compute``), a packing term that breaks the remaining ties,
and a reserve: never one of the last nodes able to host a task type (``reserve`` of the GPU
nodes, at least one) while another place exists).
``Workload(tasks, max_types=64, gang_weight=0.0)`` (``workload``) is the expected mix of task
types FGD weighs (sample ``Request``s or ``(Request, weight)`` pairs, e.g. the trace's pods;
``gang_weight`` weighs a whole-GPU type by ``1 + gang_weight * gpus``); ``DEFAULT_WORKLOAD`` when
none is given; ``FGD.fragmentation(state)`` is the pool's expected fragmentation. Every policy
is a ``Policy`` with ``choose(request, state) -> Place | Wait`` (never changes the state) and
handles locality the same way: ``local-only`` only the origin; ``prefer-local`` the origin
whenever the request fits there, else the best remote place (a GPU-less origin always goes
remote); ``anywhere`` the best place, the origin breaking ties.

Fast state for large pools (``state``): ``PoolState.from_view(view)`` or
``PoolState.empty(names, gpus, models, memory_per_gpu, cpu_milli=None, host_memory=None)``;
``alloc = state.place(request, place)`` (an ``Allocation``; ValueError if it does not fit),
``state.release(alloc)``, ``state.copy()``, ``state.compute_allocated()``,
``state.compute_capacity()``. A scan skips nodes alike in everything a policy reads and GPUs
alike on a node (the choice is the one a full scan makes); FGD's per-node terms live in
``state.cache`` and follow each ``place``/``release`` of a node, so a decision costs about
0.15-0.2 ms (p50) and 0.3-0.5 ms (p99) of CPU at 1,000 nodes x 8 GPUs for FGD, 0.25 / 0.5-0.6
ms for flexai (docs/scheduler.md).

Queueing (``queue``): ``Queue(aging=AGING_SECONDS)`` (300 s per level) with
``push(key, request, now)``, ``remove(key)``, ``ordered(now) -> [(key, request)]``,
``effective_rank(key, now)``, ``since(key)``, ``len()``, ``in``; and
``schedule_queue(queue, view, now, policy="flexai") -> [(key, decision)]``: what can start now,
in order (see ``queue`` for the aging and blocking rules).
"""
from __future__ import annotations

from .decide import Decision, apply_decision, decide, make_policy
from .fgd import FGD, FGDExact, Flexai
from .policies import BestFit, DotProduct, FirstFit, GpuPacking, Policy, RandomFit
from .preempt import EVICTABLE, plan_preemption
from .queue import AGING_SECONDS, Queue, schedule_queue
from .registry import DEFAULT_POLICY, POLICIES
from .state import Allocation, PoolState
from .types import (
    COMPUTE_FULL,
    PRIORITIES,
    WHERE,
    Evict,
    GpuView,
    NodeView,
    Place,
    PoolView,
    Preempt,
    Request,
    Shrink,
    SliceView,
    Wait,
    priority_rank,
)
from .workload import DEFAULT_WORKLOAD, Workload

__all__ = [
    "AGING_SECONDS", "Queue", "schedule_queue",
    "COMPUTE_FULL", "DEFAULT_POLICY", "DEFAULT_WORKLOAD", "EVICTABLE", "POLICIES", "PRIORITIES",
    "WHERE", "FGD", "FGDExact", "Flexai", "Workload",
    "Allocation", "BestFit", "Decision", "DotProduct", "Evict", "FirstFit", "GpuPacking",
    "GpuView", "NodeView", "Place", "Policy", "PoolState", "PoolView", "Preempt", "RandomFit",
    "Request", "Shrink", "SliceView", "Wait", "apply_decision", "decide", "make_policy",
    "plan_preemption", "priority_rank",
]
