"""PoolState: the pool's free capacity in numpy arrays, updated in place as requests are placed
and released, so that a policy scans 1,000 nodes x 8 GPUs in well under a millisecond.

Rows are nodes (in the view's order), columns GPU slots (padded to the largest node; ``exists``
marks real GPUs). ``stamp[n]`` counts changes of node ``n`` so that policies can keep per-node
caches (FGD's fragmentation) and recompute only what changed.

Pure: no I/O, no Ray, no Kubernetes; the only dependency is numpy. It knows capacity, not
priorities (preemption works on the :class:`~flexai.policy.types.PoolView`).
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .types import COMPUTE_FULL, Place, PoolView, Request

__all__ = ["Allocation", "Candidates", "PoolState"]


@dataclass(frozen=True)
class Allocation:
    """What :meth:`PoolState.place` took, so that :meth:`PoolState.release` can give it back."""

    node: int
    cols: tuple[int, ...]
    compute: tuple[int, ...]
    memory: tuple[int, ...]
    cpu_milli: int
    host_memory: int


@dataclass
class Candidates:
    """Where a request could go now: parallel arrays, one entry per (node, GPU choice).

    ``col`` is the GPU column for a one-GPU request, -1 for CPU-only and gang requests (a gang
    takes the node's first ``gpus`` fully free GPUs: they are all alike).
    """

    node: np.ndarray
    col: np.ndarray

    def __len__(self) -> int:
        return int(self.node.size)


class PoolState:
    """Free capacity of every node and GPU, as numpy arrays (see the module docstring).

    Build it with :meth:`from_view` or :meth:`empty`; change it only with :meth:`place` and
    :meth:`release`.
    """

    def __init__(self, names: Sequence[str], exists: np.ndarray, index: np.ndarray,
                 model: np.ndarray, model_names: Sequence[str], memory_total: np.ndarray,
                 memory_free: np.ndarray, compute_free: np.ndarray, cpu_milli: np.ndarray,
                 host_memory: np.ndarray) -> None:
        self.names = list(names)
        self.node_index = {name: i for i, name in enumerate(self.names)}
        if len(self.node_index) != len(self.names):
            raise ValueError("PoolState: node names must be unique")
        self.exists = np.asarray(exists, dtype=bool)
        self.gpu_index = np.asarray(index, dtype=np.int64)
        self.model = np.asarray(model, dtype=np.int32)
        self.model_names = list(model_names)
        self.model_ids = {m: i for i, m in enumerate(self.model_names)}
        self.mtot = np.asarray(memory_total, dtype=np.int64)
        self.mfree = np.asarray(memory_free, dtype=np.int64).copy()
        self.cfree = np.asarray(compute_free, dtype=np.int64).copy()
        self.cpu = np.asarray(cpu_milli, dtype=np.int64).copy()
        self.hmem = np.asarray(host_memory, dtype=np.int64).copy()
        n = len(self.names)
        for name, arr in (("exists", self.exists), ("index", self.gpu_index),
                          ("model", self.model), ("memory_total", self.mtot),
                          ("memory_free", self.mfree), ("compute_free", self.cfree)):
            if arr.ndim != 2 or arr.shape[0] != n:
                raise ValueError(f"PoolState: {name} must have one row per node, "
                                 f"shape ({n}, gpus), not {arr.shape}")
        self.cfree[~self.exists] = 0
        self.mfree[~self.exists] = 0
        self.cpu_cap = np.maximum(self.cpu, 1)
        self.gpu_cap = np.maximum(self.exists.sum(axis=1) * COMPUTE_FULL, 1)
        self.has_gpu = self.exists.any(axis=1)
        self.stamp = np.zeros(n, dtype=np.int64)
        # first[n, j]: GPU j is the first of node n in its (free, total, model) class; a GPU
        # like an earlier one on the same node scores the same, so scans may skip it
        self.first = self.exists.copy()
        for j in range(1, self.exists.shape[1]):
            same = ((self.cfree[:, :j] == self.cfree[:, j:j + 1])
                    & (self.mfree[:, :j] == self.mfree[:, j:j + 1])
                    & (self.mtot[:, :j] == self.mtot[:, j:j + 1])
                    & (self.model[:, :j] == self.model[:, j:j + 1]) & self.exists[:, :j])
            self.first[:, j] &= ~same.any(axis=1)
        # sig[n]: an id shared by nodes alike in everything a policy reads (capacity, models,
        # free GPU, CPU and memory); scans may keep only the first node of each class
        self._static = [(self.exists[i].tobytes(), self.model[i].tobytes(),
                         self.mtot[i].tobytes(), int(self.cpu_cap[i])) for i in range(n)]
        self._sig_ids: dict = {}
        self.sig = np.array([self._sig_of(i) for i in range(n)], dtype=np.int64)
        self._members: dict[int, list[int]] = {}
        for i in range(n):  # in order, so each list is sorted
            self._members.setdefault(int(self.sig[i]), []).append(i)
        self.reps = np.zeros(n, bool)  # reps[n]: n is the first node of its class
        for members in self._members.values():
            self.reps[members[0]] = True
        # per node: the most compute / memory free on one GPU, and how many GPUs are whole
        # (upper bounds that let a scan skip nodes before looking at their GPUs)
        self.maxfree = self.cfree.max(axis=1)
        self.maxmem = self.mfree.max(axis=1)
        self.nfull = self.full().sum(axis=1)
        self.cache: dict = {}  # per-policy caches that live with this state (see fgd.py)
        self._model_masks: dict = {}

    # ---- construction --------------------------------------------------------------------------

    @classmethod
    def from_view(cls, view: PoolView) -> "PoolState":
        """Build the arrays from a :class:`PoolView` (slices are not kept: capacity only)."""
        nodes = view.nodes
        g = max([len(n.gpus) for n in nodes] + [1])
        shape = (len(nodes), g)
        exists = np.zeros(shape, bool)
        index = np.full(shape, -1, np.int64)
        model = np.full(shape, -1, np.int32)
        mtot, mfree, cfree = (np.zeros(shape, np.int64) for _ in range(3))
        models: dict[str, int] = {}
        for i, node in enumerate(nodes):
            for j, gpu in enumerate(sorted(node.gpus, key=lambda x: x.index)):
                exists[i, j] = True
                index[i, j] = gpu.index
                model[i, j] = models.setdefault(gpu.model, len(models))
                mtot[i, j], mfree[i, j], cfree[i, j] = (gpu.memory_total, gpu.memory_free,
                                                        gpu.compute_free)
        return cls([n.name for n in nodes], exists, index, model, list(models), mtot, mfree,
                   cfree, np.array([n.cpu_milli_free for n in nodes], np.int64),
                   np.array([n.host_memory_free for n in nodes], np.int64))

    @classmethod
    def empty(cls, names: Sequence[str], gpus: Sequence[int], models: Sequence[str],
              memory_per_gpu: Sequence[int], cpu_milli: Optional[Sequence[int]] = None,
              host_memory: Optional[Sequence[int]] = None) -> "PoolState":
        """An idle pool: node ``i`` has ``gpus[i]`` GPUs of model ``models[i]`` with
        ``memory_per_gpu[i]`` bytes each (GPU indices 0..gpus-1). For trace replays.

        Examples
        --------
        >>> PoolState.empty(["n0", "n1"], [8, 0], ["V100", "V100"], [16 * 2**30] * 2,
        ...                 cpu_milli=[96000, 32000])  # doctest: +SKIP
        """
        n = len(names)
        if not (len(gpus) == len(models) == len(memory_per_gpu) == n):
            raise ValueError("PoolState.empty: names, gpus, models and memory_per_gpu must "
                             "have one entry per node")
        if any(int(k) < 0 for k in gpus):
            raise ValueError("PoolState.empty: gpus must be >= 0 per node (e.g. [8, 8, 0])")
        g = max([int(k) for k in gpus] + [1])
        cols = np.arange(g)
        exists = cols[None, :] < np.asarray(gpus, np.int64)[:, None]
        ids: dict[str, int] = {}
        mid = np.array([ids.setdefault(m, len(ids)) for m in models], np.int32)
        model = np.where(exists, mid[:, None], -1)
        mtot = np.where(exists, np.asarray(memory_per_gpu, np.int64)[:, None], 0)
        cfree = np.where(exists, COMPUTE_FULL, 0)
        zeros = np.zeros(n, np.int64)
        return cls(names, exists, np.where(exists, cols[None, :], -1), model, list(ids), mtot,
                   mtot, cfree, zeros if cpu_milli is None else np.asarray(cpu_milli, np.int64),
                   zeros if host_memory is None else np.asarray(host_memory, np.int64))

    def copy(self) -> "PoolState":
        """An independent copy (caches are not copied)."""
        return PoolState(self.names, self.exists, self.gpu_index, self.model, self.model_names,
                         self.mtot, self.mfree, self.cfree, self.cpu, self.hmem)

    # ---- queries ---------------------------------------------------------------------------------

    def model_mask(self, models: Optional[frozenset]) -> np.ndarray:
        """(nodes, gpus) bool: real GPUs of an accepted model (cached per model set)."""
        mask = self._model_masks.get(models)
        if mask is None:
            if models is None:
                mask = self.exists
            else:
                ids = [self.model_ids[m] for m in models if m in self.model_ids]
                mask = self.exists & np.isin(self.model, ids)
            self._model_masks[models] = mask
        return mask

    def full(self) -> np.ndarray:
        """(nodes, gpus) bool: GPUs with nothing on them."""
        return self.exists & (self.cfree >= COMPUTE_FULL) & (self.mfree >= self.mtot)

    def node_ok(self, r: Request) -> np.ndarray:
        """(nodes,) bool: nodes with the CPU and host memory the request asks for."""
        ok = np.ones(len(self.names), bool)
        if r.cpu_milli:
            ok &= self.cpu >= r.cpu_milli
        if r.host_memory:
            ok &= self.hmem >= r.host_memory
        return ok

    def _sig_of(self, i: int) -> int:
        key = (self._static[i], self.cfree[i].tobytes(), self.mfree[i].tobytes(),
               int(self.cpu[i]), int(self.hmem[i]))
        return self._sig_ids.setdefault(key, len(self._sig_ids))

    def candidates(self, r: Request, only: Optional[int] = None,
                   distinct: bool = False, keep: Optional[int] = None) -> Candidates:
        """Every place the request fits now (all nodes, or only node ``only``).

        With ``distinct``, only one of places that every policy scores the same: the first
        node of each class of alike nodes (plus node ``keep``, e.g. the origin, which breaks
        ties), and on a node the first of GPUs alike (see ``first``).
        """
        node_ok = self.node_ok(r)
        if only is not None:
            mask = np.zeros_like(node_ok)
            mask[only] = node_ok[only]
            node_ok = mask
        elif distinct:
            ok_keep = keep is not None and node_ok[keep]
            node_ok &= self.reps
            if ok_keep:
                node_ok[keep] = True
        if r.gpus == 0:
            nodes = np.flatnonzero(node_ok)
            return Candidates(nodes, np.full(nodes.size, -1))
        if r.gpus == 1:
            node_ok &= self.maxfree >= r.compute
            if r.memory:
                node_ok &= self.maxmem >= r.memory
        else:
            node_ok &= self.nfull >= r.gpus
        rows = np.flatnonzero(node_ok)
        mask = self.model_mask(r.models)[rows]
        if r.gpus == 1:
            fit = mask & (self.cfree[rows] >= r.compute)
            if distinct:
                fit &= self.first[rows]
            if r.memory:
                fit &= self.mfree[rows] >= r.memory
            nodes, cols = np.nonzero(fit)
            return Candidates(rows[nodes], cols)
        fit = mask & self.full()[rows] if rows.size else mask
        if r.memory:
            fit &= self.mtot[rows] >= r.memory
        nodes = rows[fit.sum(axis=1) >= r.gpus]
        return Candidates(nodes, np.full(nodes.size, -1))

    def gang_cols(self, node: int, r: Request) -> tuple[int, ...]:
        """The first ``r.gpus`` fully free accepted GPU columns of ``node``."""
        fit = self.model_mask(r.models)[node] & self.full()[node]
        if r.memory:
            fit &= self.mtot[node] >= r.memory
        return tuple(int(c) for c in np.flatnonzero(fit)[:r.gpus])

    def to_place(self, r: Request, node: int, col: int) -> Place:
        """The :class:`Place` for a candidate (column -> the GPU's own index)."""
        if r.gpus == 0:
            cols: tuple[int, ...] = ()
        elif r.gpus == 1:
            cols = (int(col),)
        else:
            cols = self.gang_cols(node, r)
        name = self.names[node]
        return Place(name, tuple(int(self.gpu_index[node, c]) for c in cols),
                     remote=r.origin is not None and r.origin != name)

    # ---- changes ---------------------------------------------------------------------------------

    def place(self, r: Request, p: Place) -> Allocation:
        """Take the request's capacity at ``p``; return what was taken.

        Raises
        ------
        ValueError
            When it does not fit there (the state is then unchanged).
        """
        n = self.node_index.get(p.node)
        if n is None:
            raise ValueError(f"place: the pool has no node {p.node!r}")
        if len(p.gpus) != r.gpus:
            raise ValueError(f"place: the request wants {r.gpus} GPU(s), the placement names "
                             f"{len(p.gpus)}")
        colmap = {int(ix): c for c, ix in enumerate(self.gpu_index[n]) if self.exists[n, c]}
        cols = []
        for ix in p.gpus:
            if ix not in colmap or colmap[ix] in cols:
                raise ValueError(f"place: node {p.node!r} has no GPU {ix} (or it is named twice)")
            cols.append(colmap[ix])
        if r.cpu_milli > self.cpu[n] or r.host_memory > self.hmem[n]:
            raise ValueError(f"place: node {p.node!r} lacks the CPU or host memory asked for")
        models = self.model_mask(r.models)[n]
        gang = r.gpus > 1
        compute, memory = [], []
        for c in cols:
            if not models[c]:
                raise ValueError(f"place: GPU {self.gpu_index[n, c]} of {p.node!r} is not an "
                                 "accepted model")
            if gang and not (self.cfree[n, c] >= COMPUTE_FULL and self.mfree[n, c] >=
                             self.mtot[n, c] and self.mtot[n, c] >= r.memory):
                raise ValueError(f"place: GPU {self.gpu_index[n, c]} of {p.node!r} is not free")
            if not gang and (self.cfree[n, c] < r.compute or self.mfree[n, c] < r.memory):
                raise ValueError(f"place: GPU {self.gpu_index[n, c]} of {p.node!r} lacks the "
                                 f"compute or memory asked for")
            compute.append(COMPUTE_FULL if gang else r.compute)
            memory.append(int(self.mtot[n, c]) if gang else r.memory)
        for c, dc, dm in zip(cols, compute, memory):
            self.cfree[n, c] -= dc
            self.mfree[n, c] -= dm
        self.cpu[n] -= r.cpu_milli
        self.hmem[n] -= r.host_memory
        self._changed(n)
        return Allocation(n, tuple(cols), tuple(compute), tuple(memory), r.cpu_milli,
                          r.host_memory)

    def release(self, a: Allocation) -> None:
        """Give back what :meth:`place` took."""
        for c, dc, dm in zip(a.cols, a.compute, a.memory):
            self.cfree[a.node, c] += dc
            self.mfree[a.node, c] += dm
        self.cpu[a.node] += a.cpu_milli
        self.hmem[a.node] += a.host_memory
        self._changed(a.node)

    def _changed(self, n: int) -> None:
        """Node ``n`` changed: bump its stamp, recompute its class and ``first`` row."""
        self.stamp[n] += 1
        sig, old = self._sig_of(n), int(self.sig[n])
        if sig != old:
            self.sig[n] = sig
            members = self._members[old]
            members.remove(n)
            if members:
                self.reps[members[0]] = True
            else:
                del self._members[old]
            members = self._members.setdefault(sig, [])
            bisect.insort(members, n)
            if members[0] != n:
                self.reps[n] = False
            else:
                self.reps[n] = True
                if len(members) > 1:
                    self.reps[members[1]] = False
        self.maxfree[n] = self.cfree[n].max()
        self.maxmem[n] = self.mfree[n].max()
        self.nfull[n] = int((self.exists[n] & (self.cfree[n] >= COMPUTE_FULL)
                             & (self.mfree[n] >= self.mtot[n])).sum())
        seen = set()
        row = self.first[n]
        for j in range(row.size):
            if self.exists[n, j]:
                key = (int(self.cfree[n, j]), int(self.mfree[n, j]), int(self.mtot[n, j]),
                       int(self.model[n, j]))
                row[j] = key not in seen
                seen.add(key)
        for cache in self.cache.values():  # policies' caches follow the node now
            changed = getattr(cache, "node_changed", None)
            if changed is not None:
                changed(self, n)

    # ---- totals (for reports and tests) ----------------------------------------------------------

    def compute_allocated(self) -> int:
        """Compute percent allocated over the pool (a whole GPU counts 100)."""
        return int((COMPUTE_FULL - self.cfree[self.exists]).sum())

    def compute_capacity(self) -> int:
        """Compute percent of the whole pool."""
        return int(self.exists.sum()) * COMPUTE_FULL
