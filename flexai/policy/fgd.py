"""Fragmentation Gradient Descent (Weng et al., "Beware of Fragmentation", USENIX ATC'23) and
flexai's default policy built on it.

Definitions (from the paper; the code is our own):

- A node's fragmentation for a task type m, F_n(m), is the GPU compute free on the node that m
  cannot use. If m cannot run on the node at all (too few GPUs that fit it, too little CPU or
  host memory, no accepted model, or m asks for no GPU), all the node's free GPU compute is
  fragmented; otherwise the free compute of each GPU that cannot hold m's per-GPU share is.
- The expected fragmentation F_n = sum_m p_m F_n(m) over the workload's distribution of task
  types (:class:`~flexai.policy.workload.Workload`).
- FGD places a task where F_n grows the least (the steepest descent of fragmentation). The
  paper's scheduler plugin scores that growth as a Kubernetes score, an integer from 0 to 100
  through a sigmoid, so places whose growths differ by less than a point tie; :class:`FGD`
  does the same by default (``levels=100``) and reproduces the paper's published results on
  its trace (docs/scheduler.md); ``levels=None`` ranks the exact growth.

flexai's default (:class:`Flexai`) adds to FGD's growth the growth of the GPU compute a node's
CPU and host memory can no longer feed (stranded compute; our own term), a packing tie-break,
and a reserve: it does not take one of the last few nodes able to host a task type while
another place exists.

Speed: the per-node, per-type terms (which GPUs fit each type, how many, the unusable free
compute, which task types the node can host) are cached with the :class:`PoolState` and
recomputed only for nodes whose ``stamp`` changed; a decision then evaluates every candidate's
change in closed form, vectorized over candidates x task types.

Pure: numpy only; never I/O, Ray or Kubernetes.
"""
from __future__ import annotations

import math
from typing import Iterable, Optional, Union

import numpy as np

from .policies import Policy
from .state import Candidates, PoolState
from .types import COMPUTE_FULL, Request
from .workload import DEFAULT_WORKLOAD, Workload

__all__ = ["DEFAULT_WORKLOAD", "FGD", "Flexai", "Workload"]

#: What taking one of the last hosts of a task type costs in :class:`Flexai`'s score (compute
#: percent): more than any growth of fragmentation or stranded compute can reach, so such a
#: place is taken only when no other place exists.
RESERVE_COST = 1e6


class _Frag:
    """FGD's cached per-node terms for one (state, workload) pair, per GPU shape s:
    ``fit`` (which GPUs could hold one GPU's share of s), ``cnt`` (how many), ``ut`` (free
    compute on the GPUs that cannot, minus the node's free compute); per node ``total`` free
    compute and ``frag``.

    With host_m = "type m can run on the node", sum_m p_m F_n(m) = total + sum_s
    [cnt_s >= k_s] * reach_s(cpu, hm) * ut_s, which is what ``_frag`` computes.

    Also per node and GPU task type ``hosts`` (whether the node can host one task of the type
    now) and per type ``nhosts`` (how many nodes can), kept only when ``track_hosts``.
    """

    def __init__(self, state: PoolState, w: Workload, track_hosts: bool = False) -> None:
        n, g = state.cfree.shape
        self.w = w
        self.track_hosts = track_hosts
        self.hosts = np.zeros((n, w.t_k.size), bool)
        self.nhosts = np.zeros(w.t_k.size, np.int64)
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
        if self.track_hosts:
            h = w.hosts(cnt, s.cpu[rows], s.hmem[rows])
            self.nhosts += h.sum(axis=0) - self.hosts[rows].sum(axis=0)
            self.hosts[rows] = h

    def _frag(self, cnt, ut, total, cpu, hmem) -> np.ndarray:
        """Expected fragmentation from the per-shape terms (rows x shapes -> rows)."""
        w = self.w
        return total + ((cnt >= w.k) * w.reach(cpu, hmem) * ut).sum(axis=1)

    def after(self, s: PoolState, r: Request, cand: Candidates):
        """Each candidate node's (cnt, ut, total, cpu, hmem) if ``r`` went there.

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
        return cnt, ut, total, cpu, hmem

    def delta(self, s: PoolState, r: Request, cand: Candidates, after=None) -> np.ndarray:
        """The growth of each candidate node's expected fragmentation if ``r`` went there
        (``after``: :meth:`after`'s answer, when the caller has it)."""
        cnt, ut, total, cpu, hmem = after if after is not None else self.after(s, r, cand)
        return self._frag(cnt, ut, total, cpu, hmem) - self.frag[cand.node]

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
    levels : int or None
        Score the growth g (compute percent) as the paper's plugin does: ``floor(levels *
        sigmoid(-g / 100))``, an integer where higher is better, so growths less than about
        ``400 / levels`` percent apart tie (100, the default, is a Kubernetes score). None
        ranks the exact growth.
    """

    name = "fgd"

    def __init__(self, workload: Optional[Union[Workload, Iterable]] = None,
                 levels: Optional[int] = 100) -> None:
        if workload is None:
            workload = DEFAULT_WORKLOAD
        elif not isinstance(workload, Workload):
            workload = Workload(workload)
        if levels is not None and (isinstance(levels, bool) or not isinstance(levels, int)
                                   or levels < 1):
            raise ValueError(f"{type(self).__name__}: levels must be an integer >= 1 or None, "
                             f"not {levels!r} (e.g. levels=100)")
        self.workload = workload
        self.levels = levels

    def frag(self, state: PoolState) -> "_Frag":
        """The cached fragmentation terms for ``state`` (refreshed for changed nodes)."""
        key = ("fgd", id(self.workload))
        cache = state.cache.get(key)
        if cache is None or cache.w is not self.workload:
            cache = state.cache[key] = _Frag(state, self.workload, self._track_hosts)
        elif self._track_hosts and not cache.track_hosts:
            cache = state.cache[key] = _Frag(state, self.workload, True)
        cache.refresh(state)
        return cache

    _track_hosts = False

    def fragmentation(self, state: PoolState) -> float:
        """The pool's expected fragmentation (sum over nodes), in compute percent."""
        return float(self.frag(state).frag.sum())

    def score(self, request, state, cand):
        growth = self.frag(state).delta(state, request, cand)
        if self.levels is None:
            return growth
        x = np.clip(growth / COMPUTE_FULL, -60.0, 60.0)
        return -np.floor(self.levels / (1.0 + np.exp(x)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(workload={self.workload!r}, levels={self.levels!r})"


class FGDExact(FGD):
    """:class:`FGD` ranking the exact growth of fragmentation (``levels=None``): no ties
    between places whose growths differ at all."""

    name = "fgd-exact"

    def __init__(self, workload=None) -> None:
        super().__init__(workload, levels=None)


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
      and whole GPUs and idle nodes stay free for larger tasks (gangs);
    - the **reserve**: :data:`RESERVE_COST` for each GPU task type of which the place would
      take one of the last nodes able to host it (the last ``reserve`` share of the pool's
      GPU nodes, at least one). The rarest task types (a
      whole 8-GPU machine with most of its CPU, which only a few nodes of the pool can hold)
      keep somewhere to go while the pool has room elsewhere; without it a CPU-heavy task can
      take the last such node long before the pool is full.

    FGD's workload is weighed with ``gang_weight`` (:meth:`Workload.weighted`): a whole-GPU
    type counts ``1 + gang_weight * gpus`` times, as the GPU capacity it would allocate.

    Parameters
    ----------
    workload : see :class:`FGD`
    pack : float
        Weight of the packing term. 0 drops it.
    balance : float
        Weight of the stranded-compute term. 0 drops it.
    gang_weight : float
        See above; 0 weighs task types by their count alone. (``Flexai(pack=0, balance=0,
        gang_weight=0, reserve=0)`` is ``FGD(levels=None)``.)
    reserve : float
        The share of the pool's GPU nodes (0..1; at least one node) kept as the last hosts of
        each task type; 0 keeps none. 0.01: 13 nodes of a 1,213-node pool, 1 of 23.
    """

    name = "flexai"

    def __init__(self, workload=None, pack: float = 1.0, balance: float = 10.0,
                 gang_weight: float = 1.0, reserve: float = 0.01) -> None:
        super().__init__(workload, levels=None)
        for what, v, eg in (("pack", pack, "pack=1.0"), ("balance", balance, "balance=10"),
                            ("gang_weight", gang_weight, "gang_weight=1.0")):
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v >= 0:
                raise ValueError(f"Flexai: {what} must be a number >= 0, not {v!r} (e.g. {eg})")
        if (isinstance(reserve, bool) or not isinstance(reserve, (int, float))
                or not 0 <= reserve <= 1):
            raise ValueError(f"Flexai: reserve must be a share of the pool's nodes, 0..1, not "
                             f"{reserve!r} (e.g. reserve=0.01)")
        self.pack = float(pack)
        self.balance = float(balance)
        self.gang_weight = float(gang_weight)
        self.reserve = float(reserve)
        self._track_hosts = reserve > 0
        self.workload = self.workload.weighted(self.gang_weight)

    def score(self, request, state, cand):
        f = self.frag(state)
        after = f.after(state, request, cand)
        delta = f.delta(state, request, cand, after)
        n = cand.node
        if self.reserve:
            delta = delta + RESERVE_COST * self._hosts_lost(state, f, cand, after)
        left = after[2]  # the node's free compute once the request is there
        w = self.workload
        if self.balance and w.feeds:
            cpu, hmem = after[3], after[4]
            delta = delta + self.balance * (w.stranded(left, cpu, hmem) - f.strand[n])
        if not self.pack:
            return delta
        packed = left / state.gpu_cap[n]
        if request.gpus == 1:
            packed = packed + (state.cfree[n, cand.col] - request.compute) / COMPUTE_FULL
        return delta + self.pack * packed

    def _hosts_lost(self, state: PoolState, f: _Frag, cand: Candidates, after) -> np.ndarray:
        """Per candidate: how many task types with no more hosts than the reserve the place
        would take a host from (only candidates on such hosts are looked at)."""
        lost = np.zeros(len(cand))
        last = max(1, math.ceil(self.reserve * int(state.has_gpu.sum())))
        scarce = np.flatnonzero((f.nhosts <= last) & (f.nhosts > 0))
        if not scarce.size:
            return lost
        held = f.hosts[cand.node][:, scarce]
        rows = np.flatnonzero(held.any(axis=1))
        if rows.size:
            cnt, cpu, hmem = after[0], after[3], after[4]
            keep = self.workload.hosts(cnt[rows], cpu[rows], hmem[rows], scarce)
            lost[rows] = (held[rows] & ~keep).sum(axis=1)
        return lost

    def __repr__(self) -> str:
        return (f"Flexai(workload={self.workload!r}, pack={self.pack:g}, "
                f"balance={self.balance:g}, gang_weight={self.gang_weight:g}, "
                f"reserve={self.reserve:g})")
