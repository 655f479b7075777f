"""Placement policies: score every place a request fits on a :class:`PoolState` and pick the
lowest score. The classic baselines live here (First-fit, Best-fit, Dot-product, Random-fit,
GPU packing); FGD and flexai's default are in ``fgd.py``. ``POLICIES`` (in ``__init__``) names
them all.

Locality is the same for every policy: ``local-only`` scans only the origin node;
``prefer-local`` takes the origin when the request fits there (the remote cost is lexicographic:
any local place beats any remote one) and the best remote place otherwise; ``anywhere`` lets
the score decide and the origin only breaks ties.

Pure: numpy only; never I/O, Ray or Kubernetes. ``choose`` never changes the state.
"""
from __future__ import annotations

from typing import Optional, Union

import numpy as np

from .state import Candidates, PoolState
from .types import COMPUTE_FULL, Place, Request, Wait

__all__ = ["BestFit", "DotProduct", "FirstFit", "GpuPacking", "Policy", "RandomFit"]


class Policy:
    """A placement policy. Subclasses implement :meth:`score` (lower is better; ties go to
    the earlier candidate, i.e. node order then GPU order)."""

    name = "policy"
    #: Scan only the first of GPUs alike on a node (they score the same); False for policies
    #: that draw among all of them.
    distinct = True

    def choose(self, request: Request, state: PoolState) -> Union[Place, Wait]:
        """Where ``request`` should go now on ``state``, or why it cannot start.

        Never changes ``state``; never returns a place where the request does not fit.
        """
        origin = state.node_index.get(request.origin) if request.origin is not None else None
        if request.where == "local-only":
            if origin is None:
                return Wait(f"origin node {request.origin!r} is not in the pool and the request "
                            "is local-only")
            if request.gpus and not state.has_gpu[origin]:
                return Wait(f"origin node {request.origin!r} has no GPU and the request is "
                            "local-only", never=True)
            cand = state.candidates(request, only=origin, distinct=self.distinct)
        elif request.where == "prefer-local" and origin is not None and (
                state.has_gpu[origin] or not request.gpus):
            cand = state.candidates(request, only=origin, distinct=self.distinct)
            if not len(cand):
                cand = state.candidates(request, distinct=self.distinct)
        else:
            cand = state.candidates(request, distinct=self.distinct,
                                    keep=origin if request.where == "anywhere" else None)
        if not len(cand):
            never = not self._could_ever(request, state,
                                         origin if request.where == "local-only" else None)
            why = self._why(request, state, origin)
            return Wait(("never fits: " + why) if never else why, never=never)
        pick = self.pick(request, state, cand, origin if request.where == "anywhere" else None)
        return state.to_place(request, int(cand.node[pick]), int(cand.col[pick]))

    def pick(self, request: Request, state: PoolState, cand: Candidates,
             origin: Optional[int]) -> int:
        """Index into ``cand`` of the chosen place (the lowest score; the origin breaks ties)."""
        scores = np.asarray(self.score(request, state, cand), dtype=np.float64)
        best = int(np.argmin(scores))
        if origin is not None:
            tied = np.flatnonzero((scores <= scores[best] + 1e-9) & (cand.node == origin))
            if tied.size:
                return int(tied[0])
        return best

    def score(self, request: Request, state: PoolState, cand: Candidates) -> np.ndarray:
        """One score per candidate, lower is better."""
        raise NotImplementedError

    @staticmethod
    def _could_ever(r: Request, state: PoolState, only: Optional[int]) -> bool:
        """Whether ``r`` would fit the pool (or node ``only``) with nothing running on it
        (GPU count, model and memory size; CPU totals are not known, so CPU-only requests
        always could)."""
        if r.gpus == 0:
            return True
        ok = state.model_mask(r.models) & (state.mtot >= r.memory)
        if only is not None:
            ok = ok[only:only + 1]
        return bool((ok.sum(axis=1) >= r.gpus).any())

    @staticmethod
    def _why(r: Request, state: PoolState, origin: Optional[int]) -> str:
        where = f"on {r.origin!r}" if r.where == "local-only" else "anywhere in the pool"
        if r.gpus == 0:
            return f"no node has {r.cpu_milli} mCPU and {r.host_memory} B host memory free {where}"
        if r.gpus == 1:
            what = f"GPU with {r.compute}% compute and {r.memory} B memory free"
        else:
            what = f"{r.gpus} free GPUs on one node"
        models = f" of model {'/'.join(sorted(r.models))}" if r.models else ""
        return f"no {what}{models} {where}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _gpu_take(r: Request) -> int:
    """Compute percent a request takes in all (a gang takes whole GPUs)."""
    return r.gpus * (COMPUTE_FULL if r.gpus > 1 else r.compute)


def _gpu_left(state: PoolState, r: Request, cand: Candidates) -> np.ndarray:
    """Compute left on the chosen GPU after placing (0 for gangs and CPU-only requests)."""
    if r.gpus != 1:
        return np.zeros(len(cand))
    return (state.cfree[cand.node, cand.col] - r.compute).astype(np.float64)


class FirstFit(Policy):
    """The first node (in pool order) and the first GPU on it where the request fits."""

    name = "first-fit"

    def pick(self, request, state, cand, origin):
        return 0  # candidates come in node order, then GPU order

    def score(self, request, state, cand):
        return np.arange(len(cand), dtype=np.float64)


class BestFit(Policy):
    """The node left with the least free capacity (GPU compute plus CPU, each as a share of
    the node's), and on it the GPU left with the least compute."""

    name = "best-fit"

    def score(self, request, state, cand):
        n = cand.node
        gpu_left = (state.cfree[n].sum(axis=1) - _gpu_take(request)) / state.gpu_cap[n]
        cpu_left = (state.cpu[n] - request.cpu_milli) / state.cpu_cap[n]
        return gpu_left + cpu_left + _gpu_left(state, request, cand) / (COMPUTE_FULL * 100.0)


class DotProduct(Policy):
    """Tetris-style alignment: the node whose free (GPU, CPU) vector has the largest dot
    product with the request's, both as shares of the node's capacity; on it, the tightest
    GPU."""

    name = "dot-product"

    def score(self, request, state, cand):
        n = cand.node
        cap_g, cap_c = state.gpu_cap[n], state.cpu_cap[n]
        dot = (_gpu_take(request) / cap_g) * (state.cfree[n].sum(axis=1) / cap_g) \
            + (request.cpu_milli / cap_c) * (state.cpu[n] / cap_c)
        return -dot + _gpu_left(state, request, cand) / (COMPUTE_FULL * 1e4)


class RandomFit(Policy):
    """A place drawn uniformly from those where the request fits (seeded, reproducible)."""

    name = "random-fit"
    distinct = False

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def pick(self, request, state, cand, origin):
        return int(self.rng.integers(len(cand)))

    def score(self, request, state, cand):
        return self.rng.random(len(cand))

    def __repr__(self) -> str:
        return f"RandomFit(seed={self.seed})"


class GpuPacking(Policy):
    """GPU packing: a GPU already in use first (tightest first), then an idle GPU on a node
    already in use, then an idle node. Gangs go to busy nodes with the fewest free GPUs."""

    name = "gpu-packing"

    def score(self, request, state, cand):
        n = cand.node
        node_busy = (state.cfree[n] < COMPUTE_FULL)[:, :] & state.exists[n]
        node_used = node_busy.any(axis=1)
        if request.gpus == 1:
            gpu_used = state.cfree[n, cand.col] < COMPUTE_FULL
            tier = np.where(gpu_used, 0, np.where(node_used, 1, 2))
            return tier * 1000.0 + _gpu_left(state, request, cand)
        full = state.full()[n].sum(axis=1)
        return np.where(node_used, 0, 1000.0) + full
