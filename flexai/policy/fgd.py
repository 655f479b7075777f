"""Fragmentation Gradient Descent (Weng et al., "Beware of Fragmentation", USENIX ATC'23) and
flexai's default policy built on it.

Definitions (from the paper; the code is our own):

- A node's fragmentation for a task type m, F_n(m), is the GPU compute free on the node that m
  cannot use. If m cannot run on the node at all (too few GPUs that fit it, too little CPU or
  host memory, no accepted model, or m asks for no GPU), all the node's free GPU compute is
  fragmented; otherwise the free compute of each GPU that cannot hold m's per-GPU share is.
- The expected fragmentation F_n = sum_m p_m F_n(m) over the workload's distribution of task
  types (:class:`Workload`).
- FGD places a task where F_n grows the least (the steepest descent of fragmentation).

flexai's default (:class:`Flexai`) adds to FGD's growth the growth of the GPU compute a node's
CPU and host memory can no longer feed (stranded compute; our own term) and a packing
tie-break.

Speed: the per-node, per-type terms (which GPUs fit each type, how many, the unusable free
compute) are cached with the :class:`PoolState` and recomputed only for nodes whose ``stamp``
changed; a decision then evaluates every candidate's change in closed form, vectorized over
candidates x task types.

Pure: numpy only; never I/O, Ray or Kubernetes.
"""
from __future__ import annotations

from typing import Iterable, Optional, Union

import numpy as np

from .policies import Policy
from .state import Candidates, PoolState
from .types import COMPUTE_FULL, Request

__all__ = ["DEFAULT_WORKLOAD", "FGD", "Flexai", "Workload"]


class Workload:
    """The expected mix of task types: each a request shape with a probability.

    Parameters
    ----------
    tasks : iterable of Request or (Request, weight)
        Sample requests (e.g. the trace's pods); identical shapes (gpus, compute, memory, models,
        cpu, host memory) are merged and their weights added.
    max_types : int
        Keep the most popular shapes up to this many, renormalized. The cost of a decision grows
        with the number of distinct GPU shapes among them (gpus, compute, memory, models), not
        with CPU or host memory variants.

    Attributes
    ----------
    types : list of (shape key, probability)
    cpu_per_compute, hmem_per_compute : float
        What the GPU task types bring on average per compute percent they ask for: CPU
        (milli) and host memory (bytes), weighted by probability (0 when none asks any).

    Examples
    --------
    >>> Workload([(Request(0, 50), 3), (Request(0, 100, gpus=8), 1)])  # doctest: +SKIP
    """

    def __init__(self, tasks: Iterable[Union[Request, tuple]], max_types: int = 64) -> None:
        if isinstance(max_types, bool) or not isinstance(max_types, int) or max_types < 1:
            raise ValueError(f"Workload: max_types must be an integer >= 1, not {max_types!r} "
                             "(e.g. max_types=32)")
        weights: dict[tuple, float] = {}
        for t in tasks:
            r, w = (t, 1.0) if isinstance(t, Request) else t
            if not isinstance(r, Request) or not (float(w) > 0):
                raise ValueError(f"Workload: each task is a Request or (Request, weight > 0), "
                                 f"not {t!r} (e.g. (Request(0, 50), 3))")
            key = (r.gpus, r.compute, r.memory, r.models, r.cpu_milli, r.host_memory)
            weights[key] = weights.get(key, 0.0) + float(w)
        if not weights:
            raise ValueError("Workload: needs at least one task (e.g. Workload([Request(0, 50)]))")
        top = sorted(weights.items(), key=lambda kv: -kv[1])[:max_types]
        total = sum(w for _, w in top)
        self.types = [(k, w / total) for k, w in top]
        # GPU shapes (gpus, compute, memory, models): the CPU-only types need none (for them
        # all free GPU compute is fragmented, whatever the placement)
        shapes: dict[tuple, int] = {}
        for (k, d, mem, models, _, _), _ in self.types:
            if k:
                shapes.setdefault((k, d, mem, models), len(shapes))
        self.shapes = list(shapes)
        self.k = np.array([s[0] for s in self.shapes], np.int64)
        self.d = np.array([s[1] for s in self.shapes], np.int64)
        self.mem = np.array([s[2] for s in self.shapes], np.int64)
        self.models = [s[3] for s in self.shapes]
        self.gang = self.k > 1
        # q[i, j, s]: probability of the types of shape s whose CPU is within the i smallest
        # CPU thresholds and host memory within the j smallest (see `reach`)
        gpu_types = [(key, p) for key, p in self.types if key[0]]
        self.cpu_steps = np.unique([key[4] for key, _ in gpu_types] or [0])
        self.hm_steps = np.unique([key[5] for key, _ in gpu_types] or [0])
        q = np.zeros((self.cpu_steps.size + 1, self.hm_steps.size + 1, len(self.shapes)))
        for (k, d, mem, models, cpu, hm), p in gpu_types:
            i = int(np.searchsorted(self.cpu_steps, cpu)) + 1
            j = int(np.searchsorted(self.hm_steps, hm)) + 1
            q[i, j, shapes[(k, d, mem, models)]] += p
        self.q = q.cumsum(axis=0).cumsum(axis=1)
        # what the GPU task types bring per compute percent they ask for, on average: CPU
        # (milli) and host memory (bytes); 0 when no type asks for that resource
        asked = sum(p * k * d for (k, d, *_), p in gpu_types)
        self.cpu_per_compute = (sum(p * key[4] for key, p in gpu_types) / asked
                                if asked else 0.0)
        self.hmem_per_compute = (sum(p * key[5] for key, p in gpu_types) / asked
                                 if asked else 0.0)
        self.feeds = bool(self.cpu_per_compute or self.hmem_per_compute)

    def stranded(self, free_compute, cpu, hmem) -> np.ndarray:
        """Free GPU compute (percent) beyond what ``cpu`` (milli) and ``hmem`` (bytes) can
        feed at :attr:`cpu_per_compute` and :attr:`hmem_per_compute` (element-wise; a
        resource no GPU type asks for never binds; zeros when neither is asked)."""
        c, h = self.cpu_per_compute, self.hmem_per_compute
        if c and h:
            fed = np.minimum(np.asarray(cpu) / c, np.asarray(hmem) / h)
        elif c:
            fed = np.asarray(cpu) / c
        elif h:
            fed = np.asarray(hmem) / h
        else:
            return np.zeros(np.shape(free_compute))
        return np.maximum(free_compute - fed, 0.0)

    def reach(self, cpu: np.ndarray, hm: np.ndarray) -> np.ndarray:
        """(rows, shapes): the probability of the GPU task types of each shape whose CPU and
        host memory fit within ``cpu`` and ``hm`` (per row)."""
        return self.q[np.searchsorted(self.cpu_steps, cpu, side="right"),
                      np.searchsorted(self.hm_steps, hm, side="right")]

    def __len__(self) -> int:
        return len(self.types)

    def __repr__(self) -> str:
        return f"Workload({len(self)} task types, {len(self.shapes)} GPU shapes)"


#: A generic mix for when nothing better is known: shares of one GPU, whole GPUs and gangs.
DEFAULT_WORKLOAD = Workload([(Request(0, 10), 2), (Request(0, 25), 3), (Request(0, 50), 3),
                             (Request(0, 100), 4), (Request(0, 100, gpus=2), 1),
                             (Request(0, 100, gpus=4), 1), (Request(0, 100, gpus=8), 1)])


class _Frag:
    """FGD's cached per-node terms for one (state, workload) pair, per GPU shape s:
    ``fit`` (which GPUs could hold one GPU's share of s), ``cnt`` (how many), ``ut`` (free
    compute on the GPUs that cannot, minus the node's free compute); per node ``total`` free
    compute and ``frag``.

    With host_m = "type m can run on the node", sum_m p_m F_n(m) = total + sum_s
    [cnt_s >= k_s] * reach_s(cpu, hm) * ut_s, which is what ``_frag`` computes.
    """

    def __init__(self, state: PoolState, w: Workload) -> None:
        n, g = state.cfree.shape
        self.w = w
        masks = [state.model_mask(m) for m in w.models]
        self.model_ok = np.stack(masks, axis=2) if masks else np.zeros((n, g, 0), bool)
        self.fit = np.zeros((n, g, len(w.shapes)), bool)
        self.cnt = np.zeros((n, len(w.shapes)), np.int64)
        self.ut = np.zeros((n, len(w.shapes)), np.int64)
        self.total = np.zeros(n, np.int64)
        self.frag = np.zeros(n)
        self.strand = np.zeros(n)  # Workload.stranded of each node as it is (for Flexai)
        self.stamp = np.full(n, -1, np.int64)
        # a gang shape never fits a GPU that holds anything: its compute bar is out of reach
        self.bar = np.where(w.gang, 2 * COMPUTE_FULL + 1, w.d)

    def node_changed(self, s: PoolState, n: int) -> None:
        """Called by the state when node ``n`` changes: recompute its row now."""
        self._rows(s, np.array([n]))
        self.stamp[n] = s.stamp[n]

    def refresh(self, s: PoolState) -> None:
        rows = np.flatnonzero(s.stamp != self.stamp)
        if rows.size:
            self._rows(s, rows)
            self.stamp[rows] = s.stamp[rows]

    def _rows(self, s: PoolState, rows: np.ndarray) -> None:
        w = self.w
        f, m, mt = s.cfree[rows], s.mfree[rows], s.mtot[rows]
        fit = self.model_ok[rows] & (f[:, :, None] >= w.d)
        full_mem = (m >= mt)[:, :, None] & (mt[:, :, None] >= w.mem)
        fit &= np.where(w.gang, full_mem, m[:, :, None] >= w.mem)
        total = f.sum(axis=1)
        cnt = fit.sum(axis=1)
        ut = np.where(fit, 0, f[:, :, None]).sum(axis=1) - total[:, None]
        self.fit[rows], self.cnt[rows], self.ut[rows], self.total[rows] = fit, cnt, ut, total
        self.frag[rows] = self._frag(cnt, ut, total, s.cpu[rows], s.hmem[rows])
        if w.feeds:
            self.strand[rows] = w.stranded(total, s.cpu[rows], s.hmem[rows])

    def _frag(self, cnt, ut, total, cpu, hmem) -> np.ndarray:
        """Expected fragmentation from the per-shape terms (rows x shapes -> rows)."""
        w = self.w
        return total + ((cnt >= w.k) * w.reach(cpu, hmem) * ut).sum(axis=1)

    def delta(self, s: PoolState, r: Request, cand: Candidates) -> np.ndarray:
        """The growth of each candidate node's expected fragmentation if ``r`` went there.

        For one GPU with free compute f0 taking c: the shapes it fitted and no longer fits
        (``lost``) leave the count, and ut grows by f0 for those and by c for the shapes it
        still fits (a GPU that did not fit stays unusable: ut is unchanged).
        """
        w, n = self.w, cand.node
        cnt, ut, total = self.cnt[n], self.ut[n], self.total[n]
        if r.gpus == 1:
            f0 = s.cfree[n, cand.col]
            fit0 = self.fit[n, cand.col]
            fit1 = fit0 & ((f0 - r.compute)[:, None] >= self.bar)  # fewer fit, never more
            if r.memory:
                fit1 &= (s.mfree[n, cand.col] - r.memory)[:, None] >= w.mem
            lost = fit0 ^ fit1
            cnt = cnt - lost
            ut = ut + lost * f0[:, None] + fit1 * r.compute
            total = total - r.compute
        elif r.gpus > 1:
            taken = self._gang_taken(s, r, n)  # (cand, gpus) bool
            lost = (self.fit[n] & taken[:, :, None]).sum(axis=1)
            cnt = cnt - lost
            ut = ut + lost * COMPUTE_FULL
            total = total - r.gpus * COMPUTE_FULL
        cpu, hmem = s.cpu[n], s.hmem[n]
        if r.cpu_milli:
            cpu = cpu - r.cpu_milli
        if r.host_memory:
            hmem = hmem - r.host_memory
        return self._frag(cnt, ut, total, cpu, hmem) - self.frag[n]

    @staticmethod
    def _gang_taken(s: PoolState, r: Request, n: np.ndarray) -> np.ndarray:
        ok = s.model_mask(r.models)[n] & s.full()[n]
        if r.memory:
            ok &= s.mtot[n] >= r.memory
        return ok & (np.cumsum(ok, axis=1) <= r.gpus)


class FGD(Policy):
    """Fragmentation Gradient Descent: the place where the expected fragmentation grows least
    (ties: pool order, then GPU order).

    Parameters
    ----------
    workload : Workload or iterable of Request / (Request, weight), optional
        The expected task types; :data:`DEFAULT_WORKLOAD` when omitted.
    """

    name = "fgd"

    def __init__(self, workload: Optional[Union[Workload, Iterable]] = None) -> None:
        if workload is None:
            workload = DEFAULT_WORKLOAD
        elif not isinstance(workload, Workload):
            workload = Workload(workload)
        self.workload = workload

    def frag(self, state: PoolState) -> "_Frag":
        """The cached fragmentation terms for ``state`` (refreshed for changed nodes)."""
        key = ("fgd", id(self.workload))
        cache = state.cache.get(key)
        if cache is None or cache.w is not self.workload:
            cache = state.cache[key] = _Frag(state, self.workload)
        cache.refresh(state)
        return cache

    def fragmentation(self, state: PoolState) -> float:
        """The pool's expected fragmentation (sum over nodes), in compute percent."""
        return float(self.frag(state).frag.sum())

    def score(self, request, state, cand):
        return self.frag(state).delta(state, request, cand)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(workload={self.workload!r})"


class Flexai(FGD):
    """flexai's default: FGD's fragmentation growth, plus the GPU compute a placement strands
    for want of CPU and host memory, with packing to break the remaining ties.

    The score of a place is the sum of three terms, all in compute percent (FGD's unit):

    - FGD's growth of the node's expected fragmentation;
    - ``balance`` times the growth of the node's **stranded** GPU compute: the free compute
      that the node's free CPU and host memory cannot feed, when GPU tasks bring on average
      what the workload's do per compute percent (``Workload.stranded``). A task that takes
      much CPU or memory and few GPUs (a CPU-only task above all) goes where the GPUs are
      already taken; a task that brings little goes where CPU or memory is short, so idle
      GPUs do not end up on nodes with no CPU left. FGD sees this only per task type (a type
      whose CPU no longer fits a node counts all the node's free compute as fragmented), one
      task at a time; the balance term sees the node's whole remaining GPU, CPU and memory.
      Off when the workload asks neither CPU nor host memory (e.g. :data:`DEFAULT_WORKLOAD`);
    - ``pack`` times how much free capacity the chosen GPU and node keep (as shares of a GPU
      / of the node), so that among places that score alike the one that packs tighter wins
      and whole GPUs and idle nodes stay free for larger tasks (gangs).

    Parameters
    ----------
    workload : see :class:`FGD`
    pack : float
        Weight of the packing term. 0 drops it.
    balance : float
        Weight of the stranded-compute term. 0 drops it (``Flexai(pack=0, balance=0)`` is
        FGD).
    """

    name = "flexai"

    def __init__(self, workload=None, pack: float = 1.0, balance: float = 10.0) -> None:
        super().__init__(workload)
        for what, v, eg in (("pack", pack, "pack=1.0"), ("balance", balance, "balance=10")):
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v >= 0:
                raise ValueError(f"Flexai: {what} must be a number >= 0, not {v!r} (e.g. {eg})")
        self.pack = float(pack)
        self.balance = float(balance)

    def score(self, request, state, cand):
        f = self.frag(state)
        delta = f.delta(state, request, cand)
        n = cand.node
        take = request.gpus * (COMPUTE_FULL if request.gpus > 1 else request.compute)
        left = f.total[n] - take
        w = self.workload
        if self.balance and w.feeds:
            cpu, hmem = state.cpu[n], state.hmem[n]
            if request.cpu_milli:
                cpu = cpu - request.cpu_milli
            if request.host_memory:
                hmem = hmem - request.host_memory
            delta = delta + self.balance * (w.stranded(left, cpu, hmem) - f.strand[n])
        if not self.pack:
            return delta
        packed = left / state.gpu_cap[n]
        if request.gpus == 1:
            packed = packed + (state.cfree[n, cand.col] - request.compute) / COMPUTE_FULL
        return delta + self.pack * packed

    def __repr__(self) -> str:
        return (f"Flexai(workload={self.workload!r}, pack={self.pack:g}, "
                f"balance={self.balance:g})")
