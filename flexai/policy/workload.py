"""The expected mix of task types that FGD and flexai's default weigh (:class:`Workload`).

A workload is a set of request shapes with probabilities, built from sample requests (a
trace's pods, the pool's recent jobs) or :data:`DEFAULT_WORKLOAD`. It precomputes what a
placement policy needs per decision: the distinct GPU shapes, the probability of the types
whose CPU and host memory fit a node (``reach``), the CPU and host memory GPU tasks bring per
compute percent (``stranded``), and per GPU type which nodes can host one (``hosts``).

Pure: numpy only; never I/O, Ray or Kubernetes.
"""
from __future__ import annotations

from typing import Iterable, Optional, Union

import numpy as np

from .types import COMPUTE_FULL, Request

__all__ = ["DEFAULT_WORKLOAD", "Workload"]


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
    gang_weight : float
        Weigh a type that asks for whole GPUs by ``1 + gang_weight * gpus`` on top of its
        count (0: by count alone, as FGD does by default). Fragmentation costs what the tasks
        that can no longer start would have allocated, and a whole-GPU task allocates more
        than its count says; the FGD paper's simulator has the same option ("GPU resource
        weight").

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

    def __init__(self, tasks: Iterable[Union[Request, tuple]], max_types: int = 64,
                 gang_weight: float = 0.0) -> None:
        if isinstance(max_types, bool) or not isinstance(max_types, int) or max_types < 1:
            raise ValueError(f"Workload: max_types must be an integer >= 1, not {max_types!r} "
                             "(e.g. max_types=32)")
        if (isinstance(gang_weight, bool) or not isinstance(gang_weight, (int, float))
                or not gang_weight >= 0):
            raise ValueError(f"Workload: gang_weight must be a number >= 0, not {gang_weight!r} "
                             "(e.g. gang_weight=1.0)")
        self.max_types = max_types
        self.gang_weight = float(gang_weight)
        weights: dict[tuple, float] = {}
        for t in tasks:
            r, w = (t, 1.0) if isinstance(t, Request) else t
            if not isinstance(r, Request) or not (float(w) > 0):
                raise ValueError(f"Workload: each task is a Request or (Request, weight > 0), "
                                 f"not {t!r} (e.g. (Request(0, 50), 3))")
            key = (r.gpus, r.compute, r.memory, r.models, r.cpu_milli, r.host_memory)
            if r.gpus and r.compute == COMPUTE_FULL:
                w = float(w) * (1.0 + self.gang_weight * r.gpus)
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
        # the GPU task types one by one (for counting the nodes that can host each): their
        # shape, GPU count, CPU and host memory
        self.t_shape = np.array([shapes[k[:4]] for k, _ in gpu_types], np.int64)
        self.t_k = np.array([k[0] for k, _ in gpu_types], np.int64)
        self.t_cpu = np.array([k[4] for k, _ in gpu_types], np.int64)
        self.t_hm = np.array([k[5] for k, _ in gpu_types], np.int64)

    def weighted(self, gang_weight: float) -> "Workload":
        """The same task types with whole-GPU types weighed by ``1 + gang_weight * gpus``
        (see the class); ``self`` when that changes nothing."""
        if gang_weight == self.gang_weight:
            return self
        base = 1.0 + self.gang_weight * self.k_of_types
        return Workload([(Request(k[2], k[1], gpus=k[0], models=k[3], cpu_milli=k[4],
                                  host_memory=k[5]), p / b)
                         for (k, p), b in zip(self.types, base)],
                        max_types=self.max_types, gang_weight=gang_weight)

    @property
    def k_of_types(self) -> np.ndarray:
        """Per type (in ``types`` order): its GPU count if it asks for whole GPUs, else 0."""
        return np.array([k[0] if k[0] and k[1] == COMPUTE_FULL else 0 for k, _ in self.types],
                        np.float64)

    def hosts(self, cnt: np.ndarray, cpu: np.ndarray, hm: np.ndarray,
              types: Optional[np.ndarray] = None) -> np.ndarray:
        """(rows, GPU types) bool: whether each row (a node's count of GPUs that fit each
        shape, free CPU and host memory; see fgd._Frag) can host one task of each GPU type
        (of the GPU types indexed by ``types`` only, when given)."""
        t = slice(None) if types is None else types
        return ((cnt[..., self.t_shape[t]] >= self.t_k[t])
                & (np.asarray(cpu)[..., None] >= self.t_cpu[t])
                & (np.asarray(hm)[..., None] >= self.t_hm[t]))

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
        g = f", gang_weight={self.gang_weight:g}" if self.gang_weight else ""
        return f"Workload({len(self)} task types, {len(self.shapes)} GPU shapes{g})"


#: A generic mix for when nothing better is known: shares of one GPU, whole GPUs and gangs.
DEFAULT_WORKLOAD = Workload([(Request(0, 10), 2), (Request(0, 25), 3), (Request(0, 50), 3),
                             (Request(0, 100), 4), (Request(0, 100, gpus=2), 1),
                             (Request(0, 100, gpus=4), 1), (Request(0, 100, gpus=8), 1)])
