"""Trace replays for benchmarks/scheduler_trace.py: the FGD paper's packing replay, placement
latency, and a time-based replay with priorities, queueing and preemption.

The policy is flexai.policy (POLICIES, PoolState, decide, Queue); this module only feeds it the
trace and keeps its own ledger of what every node and GPU holds, so that a placement the policy
gets wrong (over a card's compute, a node's CPU, an unaccepted model) is caught here, as a
HarnessCheck error, and not counted.

Never prints, never exits, never reads files (gpu_trace.py reads them).
"""
from __future__ import annotations

import inspect
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from gpu_trace import TraceNode, TracePod

from flexai.policy import POLICIES, PoolState, Request, Workload
from flexai.policy import types as ptypes

#: qos -> priority (issue 10): LS high, Burstable normal, BE low. Guaranteed (rare in the trace;
#: Kubernetes' strictest class) is taken as high.
PRIORITY_OF_QOS = {"LS": "high", "Guaranteed": "high", "Burstable": "normal", "BE": "low"}
#: GPU memory per model, bytes. The trace gives none per task (gpu_milli only), so requests ask
#: for compute only and memory never binds; the totals only fill the view.
GPU_MEMORY = {"P100": 16, "T4": 16, "V100M16": 16, "V100M32": 32, "A10": 24, "G2": 32, "G3": 32}
GIB = 2**30
MIB = 2**20


class HarnessCheck(AssertionError):
    """The policy answered a placement that the harness's own ledger says does not fit."""


def compute_of(pod: TracePod) -> int:
    """The pod's compute percent per card (gpu_milli rounded up to whole percent)."""
    return 0 if pod.num_gpu == 0 else min(100, max(1, math.ceil(pod.gpu_milli / 10)))


def request_of(pod: TracePod, priorities: bool = False) -> Request:
    """The policy request for a pod: compute from gpu_milli, no GPU memory, node CPU and host
    memory from the trace, the models of gpu_spec, priority from qos when `priorities`."""
    return Request(memory=0, compute=compute_of(pod), gpus=pod.num_gpu,
                   priority=PRIORITY_OF_QOS[pod.qos] if priorities else "normal",
                   models=pod.gpu_spec, where="anywhere", cpu_milli=pod.cpu_milli,
                   host_memory=pod.memory_mib * MIB)


def empty_state(nodes: Sequence[TraceNode]) -> PoolState:
    """An idle PoolState of the trace's nodes, in file order (first-fit's order)."""
    return PoolState.empty([n.name for n in nodes], [n.gpus for n in nodes],
                           [n.model or "none" for n in nodes],
                           [GPU_MEMORY.get(n.model, 32) * GIB for n in nodes],
                           cpu_milli=[n.cpu_milli for n in nodes],
                           host_memory=[n.memory_mib * MIB for n in nodes])


#: FGD and flexai weigh up to this many task types of the trace (the library's default keeps
#: 64; the openb default list has 151, and FGD leaves fewer GPUs unallocated with all of them).
WORKLOAD_TYPES = 256


def make_policy(name: str, workload: Sequence[TracePod], seed: int = 0):
    """POLICIES[name], given the workload's requests where the policy takes them (FGD's task
    mix, up to WORKLOAD_TYPES types) and `seed` where it takes one (random-fit)."""
    cls = POLICIES[name]
    params = inspect.signature(cls).parameters
    opts: dict = {}
    if "workload" in params:
        opts["workload"] = Workload([request_of(p) for p in workload], max_types=WORKLOAD_TYPES)
    if "seed" in params:
        opts["seed"] = seed
    return cls(**opts)


class Ledger:
    """The harness's own account of every node and GPU, independent of the policy's state."""

    def __init__(self, nodes: Sequence[TraceNode]):
        self.nodes = {n.name: n for n in nodes}
        self.cpu = {n.name: 0 for n in nodes}
        self.mem = {n.name: 0 for n in nodes}
        self.gpu = {n.name: [0] * n.gpus for n in nodes}

    def take(self, pod: TracePod, node: str, gpus: Sequence[int], sign: int = 1) -> None:
        n = self.nodes.get(node)
        if n is None:
            raise HarnessCheck(f"{pod.name}: placed on unknown node {node!r}")
        if sign > 0:
            if len(gpus) != pod.num_gpu or len(set(gpus)) != len(gpus):
                raise HarnessCheck(f"{pod.name}: wants {pod.num_gpu} GPU(s), got {gpus}")
            if pod.gpu_spec and pod.num_gpu and n.model not in pod.gpu_spec:
                raise HarnessCheck(f"{pod.name}: wants {sorted(pod.gpu_spec)}, got {n.model}")
        self.cpu[node] += sign * pod.cpu_milli
        self.mem[node] += sign * pod.memory_mib
        c = compute_of(pod) if pod.num_gpu == 1 else 100
        for g in gpus:
            if not 0 <= g < n.gpus:
                raise HarnessCheck(f"{pod.name}: node {node} has no GPU {g}")
            if sign > 0 and pod.num_gpu > 1 and self.gpu[node][g]:
                raise HarnessCheck(f"{pod.name}: gang member GPU {g} of {node} is not free")
            self.gpu[node][g] += sign * c
            if self.gpu[node][g] > 100:
                raise HarnessCheck(f"{pod.name}: GPU {g} of {node} over 100% "
                                   f"({self.gpu[node][g]}%)")
        if self.cpu[node] > n.cpu_milli or self.mem[node] > n.memory_mib:
            raise HarnessCheck(f"{pod.name}: node {node} over its CPU or memory")


def workload(pods: Sequence[TracePod], capacity_gpus: float, seed: int,
             inflation: float = 1.3) -> list[TracePod]:
    """The paper's arrival order: the trace's pods shuffled (seeded), then pods drawn again at
    random from the trace until the GPUs asked for reach `inflation` x the cluster's."""
    rng = random.Random(seed)
    order = list(pods)
    rng.shuffle(order)
    asked = sum(p.gpu_request for p in order)
    if not any(p.num_gpu for p in pods):
        return order
    while asked < inflation * capacity_gpus:
        p = pods[rng.randrange(len(pods))]
        order.append(p)
        asked += p.gpu_request
    return order


@dataclass
class PackingResult:
    """One policy's snapshot replay (all shares are of the cluster's GPU capacity)."""

    policy: str
    capacity_gpus: int
    arrived: list[float] = field(default_factory=list)    # GPUs asked so far, after each pod
    allocated: list[float] = field(default_factory=list)  # GPUs allocated, after each pod
    latency_us: list[float] = field(default_factory=list)
    first_fail_index: int | None = None  # the first pod that fit the empty cluster but failed
    never_fit: int = 0                   # pods that would not fit even the empty cluster
    cpu_us: list[float] = field(default_factory=list)  # the thread's CPU time per decision
    placed: int = 0
    failed: int = 0
    failed_gpu_pods: int = 0

    def at_first_fail(self) -> float | None:
        i = self.first_fail_index
        return None if i is None else self.allocated[i] / self.capacity_gpus

    def final_share(self) -> float:
        return self.allocated[-1] / self.capacity_gpus if self.allocated else 0.0

    def unallocated_gpus(self) -> float:
        return self.capacity_gpus - (self.allocated[-1] if self.allocated else 0.0)

    def curve(self, step: float = 0.01, upto: float = 1.3) -> tuple[list[float], list[float]]:
        """Unallocated GPUs when the arrived workload first reaches each `step` of capacity."""
        xs, ys, j = [], [], 0
        for k in range(int(round(upto / step)) + 1):
            x = k * step
            while j < len(self.arrived) and self.arrived[j] < x * self.capacity_gpus:
                j += 1
            if j >= len(self.arrived):
                break
            xs.append(round(x, 4))
            ys.append(self.capacity_gpus - self.allocated[j])
        return xs, ys


def packing_replay(nodes: Sequence[TraceNode], order: Sequence[TracePod], policy_name: str,
                   workload_pods: Sequence[TracePod], seed: int = 0) -> PackingResult:
    """Pods arrive in `order` and never leave; each is placed by the policy or dropped."""
    state, ledger = empty_state(nodes), Ledger(nodes)
    policy = make_policy(policy_name, workload_pods, seed)
    res = PackingResult(policy_name, sum(n.gpus for n in nodes))
    empty = empty_state(nodes)
    impossible: dict[Request, bool] = {}
    arrived = allocated = 0.0
    clock, cpu = time.perf_counter_ns, time.thread_time_ns
    for i, pod in enumerate(order):
        req = request_of(pod)
        c0, t0 = cpu(), clock()
        d = policy.choose(req, state)
        t1, c1 = clock(), cpu()
        res.latency_us.append((t1 - t0) / 1e3)
        res.cpu_us.append((c1 - c0) / 1e3)
        arrived += pod.gpu_request
        if isinstance(d, ptypes.Place):
            ledger.take(pod, d.node, d.gpus)
            state.place(req, d)
            allocated += pod.gpu_request
            res.placed += 1
        else:
            res.failed += 1
            res.failed_gpu_pods += pod.num_gpu > 0
            if req not in impossible:
                impossible[req] = len(empty.candidates(req)) == 0
            res.never_fit += impossible[req]
            if res.first_fail_index is None and not impossible[req]:
                res.first_fail_index = i
        res.arrived.append(arrived)
        res.allocated.append(allocated)
    return res


@dataclass
class Latency:
    """Microseconds per decision, measured three ways (see `latency_replay`), and the state's
    bookkeeping per placement."""

    wall_us: list[float] = field(default_factory=list)
    min_us: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)
    place_us: list[float] = field(default_factory=list)
    repeats: int = 1

    def summary(self) -> dict:
        out: dict = {"decisions": len(self.wall_us), "repeats": self.repeats}
        for name in ("wall", "min", "cpu", "place"):
            xs = getattr(self, f"{name}_us")
            out[f"{name}_p50_us"] = percentile(xs, 50)
            out[f"{name}_p99_us"] = percentile(xs, 99)
            out[f"{name}_max_us"] = max(xs) if xs else None
        return out


def latency_replay(nodes: Sequence[TraceNode], order: Sequence[TracePod], policy_name: str,
                   decisions: int, repeats: int = 3) -> Latency:
    """Time the decisions for the first `decisions` pods of `order` (each placed as chosen).

    Each decision is timed `repeats` times on the same state (``choose`` never changes it):
    ``wall_us`` is the first call's wall-clock time (what a caller waits, including any time
    the machine's other work takes the CPU away), ``min_us`` the least of the `repeats` calls
    (a decision is slow in all of them only if it is slow itself, not if another process
    preempted one call), ``cpu_us`` the first call's CPU time of this thread
    (time.thread_time_ns: it does not count time spent descheduled). ``place_us`` is the wall
    time of ``state.place`` after the decision (bookkeeping, not part of the decision).
    """
    state = empty_state(nodes)
    policy = make_policy(policy_name, order)
    lat = Latency(repeats=max(1, repeats))
    clock, cpu = time.perf_counter_ns, time.thread_time_ns
    for pod in order[:decisions]:
        req = request_of(pod)
        c0, t0 = cpu(), clock()
        d = policy.choose(req, state)
        t1, c1 = clock(), cpu()
        best = t1 - t0
        for _ in range(lat.repeats - 1):
            t2 = clock()
            policy.choose(req, state)
            best = min(best, clock() - t2)
        lat.wall_us.append((t1 - t0) / 1e3)
        lat.cpu_us.append((c1 - c0) / 1e3)
        lat.min_us.append(best / 1e3)
        if isinstance(d, ptypes.Place):
            t0 = clock()
            state.place(req, d)
            lat.place_us.append((clock() - t0) / 1e3)
    return lat


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (nearest rank) or None for no values."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


