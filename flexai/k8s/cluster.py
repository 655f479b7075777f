"""The extender's decisions: which nodes a pod fits (filter), how good each is (prioritize), and
which GPU(s) of the chosen node it gets (bind), all through :mod:`flexai.policy` on the
:class:`~flexai.policy.PoolState` of :class:`~flexai.k8s.view.ClusterView` (nodes and
reservations), with kube-scheduler's "assume" for the pods between prioritize and bind.

No lock convoys (HAMi's bind timeouts with thousands of pending pods): one lock guards the
in-memory state and is held only for array work (well under a millisecond); the API server is
never called under it. A bind reserves its GPU under the lock, then posts the Binding (which
carries the pod's annotation) outside it, and gives the reservation back if that fails.

The policy scans one node per class of alike nodes; every answer here still names each node
(a class's verdict and score are each of its nodes'). Answers come with the state's node names
already encoded as JSON, so the extender joins strings instead of encoding 1,000 names per call.

This module must never decide with anything but flexai.policy, and never call the API server
while holding its lock.
"""
from __future__ import annotations

import json
import logging
import time
from itertools import repeat

import numpy as np

from ..policy import Place, PoolState, Request, make_policy
from ..policy.state import Candidates
from .resources import MIB, Allocation, PodRequest, slice_name
from .view import ClusterView, Held

log = logging.getLogger("flexai.k8s.extender")

NO_GPUS = "flexai: no GPUs reported for this node (no healthy GPU in its flexai.io/gpus annotation)"


#: How long a reservation made at prioritize waits for its bind (kube-scheduler's assume).
ASSUME_SECONDS = 30.0


def _describe(r: Request) -> str:
    mem = f"{r.memory // MIB} MiB" if r.memory else "all its memory"
    if r.gpus > 1:
        return f"{r.gpus} whole free GPUs"
    return f"a GPU with {r.compute}% compute and {mem} free"


class Cluster(ClusterView):
    """The decisions over a :class:`~flexai.k8s.view.ClusterView` (thread-safe).

    Parameters
    ----------
    policy : str
        A name in :data:`flexai.policy.POLICIES` (default ``flexai``).
    """

    def __init__(self, policy: str = "flexai") -> None:
        super().__init__()
        self.policy = make_policy(policy)
        self._purged = 0.0

    # ---- decisions ---------------------------------------------------------------------------

    def _take(self, uid: str, state: PoolState, request: Request, node: int, col: int,
              phase: str) -> Place:
        """Reserve GPU column ``col`` of node row ``node`` (-1 for a gang: its first whole
        GPUs) for the pod; call under the lock."""
        place = state.to_place(request, node, col)
        taken = state.place(request, place)
        self._held[uid] = Held(place.node, place.gpus, request, time.time(), phase, self._gen,
                                taken)
        return place

    def _forget_assumed(self, uid: str) -> None:
        """A pod filtered again was not bound where assumed: give that back; and, once a
        second, every assumption older than ``ASSUME_SECONDS``. Call under the lock."""
        h = self._held.get(uid)
        if h is not None and h.phase == "assumed":
            self._drop(uid)
        now = time.time()
        if now - self._purged > 1.0:
            self._purged = now
            for u in [u for u, h in self._held.items()
                      if h.phase == "assumed" and now - h.since > ASSUME_SECONDS]:
                self._drop(u)

    #: filter's verdict per node: fits, no room now, GPUs too small / of another model, none.
    FITS, BUSY, SMALL, NO_GPU = 0, 1, 2, 3

    def _best(self, state: PoolState, cand: Candidates, values: np.ndarray,
              distinct: bool) -> np.ndarray:
        """Per node row (plus one last slot, for names the state lacks) the least of
        ``values`` over the node's candidates, inf where it has none. Scans with ``distinct``
        keep one node per class of alike nodes: its value is every node of its class's."""
        n = len(state.names)
        out = np.full(n + 1, np.inf)
        if len(cand):
            if distinct:
                per = np.full(int(state.sig.max()) + 1, np.inf)
                np.minimum.at(per, state.sig[cand.node], values)
                out[:n] = per[state.sig]
            else:
                np.minimum.at(out, cand.node, values)
        return out

    def _could(self, state: PoolState, request: Request) -> np.ndarray:
        """Per node row: whether its GPUs could ever hold the request (cached per state)."""
        cache = state.cache.setdefault("k8s-could", {})
        key = (request.models, request.memory, max(request.gpus, 1))
        could = cache.get(key)
        if could is None:
            ok = state.model_mask(request.models) & (state.mtot >= request.memory)
            could = ok.sum(axis=1) >= max(request.gpus, 1)
            if len(cache) >= 64:
                cache.pop(next(iter(cache)))
            cache[key] = could
        return could

    def filter_codes(self, request: Request, names: list[str],
                     uid: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For each name its verdict (:attr:`FITS`, :attr:`BUSY`, :attr:`SMALL`,
        :attr:`NO_GPU`), its row in the state (-1: unknown) and the state's row names as JSON
        strings (an object array, for answers built without encoding each name again)."""
        with self._lock:
            self._forget_assumed(uid)
            state = self._current()
            cand = state.candidates(request, distinct=True)
            fits = np.isfinite(self._best(state, cand, np.zeros(len(cand)), True))
            could = self._could(state, request)
            idx = self._indices(state, names)
            encoded = self._encoded(state)
        code = np.full(len(names), self.NO_GPU, np.int8)
        known = idx >= 0
        k = idx[known]
        code[known] = np.where(fits[k], self.FITS, np.where(
            could[k], self.BUSY, np.where(state.has_gpu[k], self.SMALL, self.NO_GPU)))
        return code, idx, encoded

    def reasons(self, request: Request) -> dict[int, str]:
        """The words of each verdict but :attr:`FITS` for ``request``."""
        small = f"flexai: its GPUs can never hold {_describe(request)}" + (
            f" of model {'/'.join(sorted(request.models))}" if request.models else "")
        return {self.BUSY: f"flexai: no room now, needs {_describe(request)}",
                self.SMALL: small, self.NO_GPU: NO_GPUS}

    def filter(self, request: Request, names: list[str],
               uid: str = "") -> tuple[list[str], dict, dict]:
        """``(fitting names, {name: reason} failed, {name: reason} unresolvable)``: a node
        whose GPUs could never hold the request is unresolvable (preemption would not help)."""
        code, _, _ = self.filter_codes(request, names, uid)
        words = self.reasons(request)
        passing, failed, never = [], {}, {}
        for name, c in zip(names, code.tolist()):
            if c == self.FITS:
                passing.append(name)
            elif c == self.BUSY:
                failed[name] = words[c]
            else:
                never[name] = words[c]
        return passing, failed, never

    def _encoded(self, state: PoolState, key: str = "k8s-encoded",
                 form: str = "{}") -> np.ndarray:
        """The state's row names as JSON strings put in ``form`` (an object array, cached per
        state, whose last slot stands for names the state lacks); call under the lock."""
        enc = state.cache.get(key)
        if enc is None:
            enc = np.empty(len(state.names) + 1, dtype=object)
            enc[:-1] = [form.format(json.dumps(n)) for n in state.names]
            enc[-1] = form.format('""')
            state.cache[key] = enc
        return enc

    def _indices(self, state: PoolState, names: list[str]) -> np.ndarray:
        """Row of each name in ``state`` (-1: unknown); the scheduler sends the same lists
        again and again (filter: every node), so the last few used are remembered (per
        state). Call under the lock."""
        key = tuple(names)
        cache = state.cache.setdefault("k8s-indices", {})
        idx = cache.pop(key, None)
        if idx is not None:
            cache[key] = idx  # the most recently used last
        else:
            idx = np.array(list(map(state.node_index.get, names, repeat(-1, len(names)))),
                           np.int64)
            if len(cache) >= 8:
                cache.pop(next(iter(cache)))
            cache[key] = idx
        return idx

    def prioritize(self, request: Request, names: list[str],
                   uid: str = "") -> list[tuple[str, int]]:
        """An integer 0..10 per name: 10 for the policy's best node, 0 where it does not fit.

        With the pod's ``uid``, the best place among ``names`` is also reserved (assumed) until
        the pod's bind or its next filter, so that the pods scheduled before its bind lands do
        not count on the same capacity."""
        out, _, _ = self.prioritize_scores(request, names, uid)
        return list(zip(names, out.tolist()))

    def prioritize_scores(self, request: Request, names: list[str],
                          uid: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`prioritize`'s scores as an array, with each name's row in the state (-1:
        unknown) and the state's rows as ``{"Host":"NAME","Score":`` JSON heads (an object
        array whose last slot stands for unknown names)."""
        distinct = self.policy.distinct
        with self._lock:
            state = self._current()
            idx = self._indices(state, names)
            heads = self._encoded(state, "k8s-heads", '{{"Host":{},"Score":')
            cand = state.candidates(request, distinct=distinct)
            scores = (np.asarray(self.policy.score(request, state, cand), dtype=np.float64)
                      if len(cand) else np.zeros(0))
            best = self._best(state, cand, scores, distinct)
            mine = best[idx]  # -1 -> the extra inf slot
            if uid and uid not in self._held and np.isfinite(mine).any():
                node = int(idx[int(np.argmin(mine))])
                # the candidate scored for that node's class (alike nodes: same GPU columns)
                same = (state.sig[cand.node] == state.sig[node]) if distinct else (
                    cand.node == node)
                k = int(np.flatnonzero(same)[int(np.argmin(scores[same]))])
                self._take(uid, state, request, node, int(cand.col[k]), "assumed")
        finite = np.isfinite(mine)
        out = np.zeros(len(names), np.int64)
        if finite.any():
            lo, hi = mine[finite].min(), mine[finite].max()
            if hi > lo:
                out[finite] = np.rint(10 * (hi - mine[finite]) / (hi - lo))
            else:
                out[finite] = 10
        return out, idx, heads

    def reserve(self, uid: str, request: Request, node: str) -> Place:
        """Choose the GPU(s) of ``node`` for the pod and take them (idempotent per uid).

        Raises
        ------
        ValueError
            When the pod no longer fits there (the reason in words).
        """
        with self._lock:
            state = self._current()
            h = self._held.get(uid)
            if h is not None:
                if h.node == node and h.phase == "bound":
                    raise ValueError(f"pod is already bound to {node!r}")
                if h.node == node:
                    h.phase, h.since = "binding", time.time()
                    return Place(node, h.gpus, False)
                if h.phase != "assumed":
                    raise ValueError(f"pod already holds GPUs on {h.node!r}")
                self._drop(uid)
                state = self._current()
            i = state.node_index.get(node)
            if i is None:
                raise ValueError(f"{node!r}: {NO_GPUS}")
            cand = state.candidates(request, only=int(i), distinct=self.policy.distinct)
            if not len(cand):
                raise ValueError(f"{node!r} has no room now: the pod needs "
                                 f"{_describe(request)}")
            scores = np.asarray(self.policy.score(request, state, cand), dtype=np.float64)
            k = int(np.argmin(scores))
            return self._take(uid, state, request, int(cand.node[k]), int(cand.col[k]),
                              "binding")

    def bound(self, uid: str) -> None:
        """The pod's bind landed: its reservation lasts until the pod is gone."""
        with self._lock:
            h = self._held.get(uid)
            if h is not None:
                h.phase, h.since = "bound", time.time()

    def release(self, uid: str) -> None:
        """Give back a reservation (a bind that failed)."""
        with self._lock:
            self._drop(uid)

    def allocation(self, namespace: str, name: str, uid: str, pod: PodRequest,
                   place: Place) -> Allocation:
        """The ``flexai.io/allocation`` annotation for a reserved pod."""
        r = pod.to_request()
        return Allocation(place.node, place.gpus, self.uuids(place.node, place.gpus),
                          r.memory if r.gpus == 1 else 0, r.compute, r.priority,
                          slice_name(namespace, name, uid), pod.container, time.time())
