"""The time-based replay for benchmarks/scheduler_trace.py: pods arrive at their creation time,
run for as long as they ran in the trace and leave; priorities come from qos (LS high, Burstable
normal, BE low). What does not fit waits in flexai.policy's Queue (priority and age, with aging);
a high-priority pod that does not fit may evict lower-priority ones (flexai.policy's preemption
plan, on a PoolView the replay keeps of the running pods). An evicted pod goes back to the queue
and starts over when it runs again.

Reports the wait (start - creation) of each priority (p50, p99, max), the pods never started,
and the evictions. Never prints, exits or reads files.
"""
from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field

from gpu_trace import TraceNode, TracePod
from sched_replay import (
    GIB,
    GPU_MEMORY,
    HarnessCheck,
    Ledger,
    compute_of,
    empty_state,
    make_policy,
    percentile,
    request_of,
)

from flexai.policy import GpuView, NodeView, PoolView, SliceView, plan_preemption
from flexai.policy import types as ptypes


@dataclass
class TimedResult:
    """One policy's time-based replay."""

    policy: str
    waits: dict[str, list[float]] = field(default_factory=dict)  # priority -> waits, seconds
    never_started: dict[str, int] = field(default_factory=dict)
    evictions: int = 0
    evicted_by_priority: dict[str, int] = field(default_factory=dict)
    preemptions: int = 0
    decisions: int = 0

    def summary(self) -> dict:
        out = {"policy": self.policy, "evictions": self.evictions,
               "evicted": self.evicted_by_priority, "preemption_plans": self.preemptions,
               "decisions": self.decisions, "never_started": self.never_started}
        for prio, w in sorted(self.waits.items()):
            out[f"wait_{prio}_p50_s"] = percentile(w, 50)
            out[f"wait_{prio}_p99_s"] = percentile(w, 99)
            out[f"wait_{prio}_max_s"] = max(w) if w else None
            out[f"started_{prio}"] = len(w)
        return out


class _View:
    """A PoolView of the running pods, rebuilt per node only when the node changed."""

    def __init__(self, nodes: Sequence[TraceNode], state):
        self.nodes, self.state = list(nodes), state
        self.on_node: list[dict[str, tuple[TracePod, tuple[int, ...], str]]] = [
            {} for _ in nodes]
        self.cache: list[tuple[int, NodeView] | None] = [None] * len(nodes)

    def node_view(self, i: int) -> NodeView:
        stamp = int(self.state.stamp[i])
        hit = self.cache[i]
        if hit is not None and hit[0] == stamp:
            return hit[1]
        n, st = self.nodes[i], self.state
        slices: list[list[SliceView]] = [[] for _ in range(n.gpus)]
        for key, (pod, gpus, prio) in self.on_node[i].items():
            c = compute_of(pod) if pod.num_gpu == 1 else 100
            for g in gpus:
                slices[g].append(SliceView(key, prio, 0, c, c))
        mem = GPU_MEMORY.get(n.model, 32) * GIB
        gv = tuple(GpuView(g, n.model, mem, int(st.mfree[i, g]), int(st.cfree[i, g]),
                           tuple(slices[g])) for g in range(n.gpus))
        view = NodeView(n.name, gv, int(st.cpu[i]), int(st.hmem[i]))
        self.cache[i] = (stamp, view)
        return view

    def pool(self) -> PoolView:
        return PoolView(tuple(self.node_view(i) for i in range(len(self.nodes))))


def timed_replay(nodes: Sequence[TraceNode], pods: Sequence[TracePod], policy_name: str,
                 preempt: bool = True, retry_limit: int = 8, seed: int = 0) -> TimedResult:
    """Replay `pods` (with creation and deletion times) on `nodes` under `policy_name`.

    After a pod leaves, the queue is retried in its order until `retry_limit` requests in a
    row do not fit (a long queue of requests that cannot fit is not rescanned whole each time).
    """
    timed = [p for p in pods if p.creation is not None and p.deletion is not None]
    if not timed:
        raise ValueError("timed_replay: no pod has creation and deletion times "
                         "(e.g. a row ...,Running,9679175,9973826,9679175)")
    timed.sort(key=lambda p: (p.creation, p.name))
    state, ledger = empty_state(nodes), Ledger(nodes)
    view = _View(nodes, state)
    policy = make_policy(policy_name, timed, seed)
    from flexai.policy import Queue  # the queue module may land after the rest
    queue = Queue()
    empty = empty_state(nodes)
    never: dict = {}  # request shape -> would not fit even the idle pool
    res = TimedResult(policy_name)
    index = {n.name: i for i, n in enumerate(nodes)}
    running: dict[str, tuple] = {}   # key -> (pod, place, allocation, epoch)
    epoch: dict[str, int] = {}
    events: list[tuple] = []  # (time, kind 0 leave / 1 arrive, seq, key)
    by_key: dict[str, tuple[TracePod, ptypes.Request]] = {}
    for seq, p in enumerate(timed):
        key = f"{p.name}#{seq}"
        by_key[key] = (p, request_of(p, priorities=True))
        heapq.heappush(events, (p.creation, 1, seq, key))
    seq_next = len(timed)

    def start(key: str, place: ptypes.Place, now: float) -> None:
        nonlocal seq_next
        pod, req = by_key[key]
        ledger.take(pod, place.node, place.gpus)
        alloc = state.place(req, place)
        epoch[key] = epoch.get(key, 0) + 1
        running[key] = (pod, place, alloc, epoch[key])
        view.on_node[index[place.node]][key] = (pod, place.gpus, req.priority)
        if epoch[key] == 1:  # an evicted pod's restart is not a second wait
            res.waits.setdefault(req.priority, []).append(now - pod.creation)
        life = max(1, pod.deletion - (pod.scheduled or pod.creation))
        seq_next += 1
        heapq.heappush(events, (now + life, 0, seq_next, f"{key}@{epoch[key]}"))

    def stop(key: str) -> None:
        pod, place, alloc, _ = running.pop(key)
        ledger.take(pod, place.node, place.gpus, sign=-1)
        state.release(alloc)
        del view.on_node[index[place.node]][key]

    def try_start(key: str, now: float, allow_preempt: bool) -> bool:
        pod, req = by_key[key]
        res.decisions += 1
        d = policy.choose(req, state)
        if isinstance(d, ptypes.Place):
            start(key, d, now)
            return True
        if not (allow_preempt and preempt and req.priority != "best-effort"):
            return False
        plan = plan_preemption(req, view.pool())
        if plan is None:
            return False
        res.preemptions += 1
        for a in plan.actions:
            if isinstance(a, ptypes.Evict):
                victim = a.job
                if victim not in running:
                    raise HarnessCheck(f"preemption plan evicts {victim}, which is not running")
                vprio = by_key[victim][1].priority
                if ptypes.priority_rank(vprio) <= req.rank:
                    raise HarnessCheck(f"{key} ({req.priority}) evicts {victim} ({vprio})")
                stop(victim)
                res.evictions += 1
                res.evicted_by_priority[vprio] = res.evicted_by_priority.get(vprio, 0) + 1
                queue.push(victim, by_key[victim][1], now)
            else:  # a Shrink: trace pods hold only what they asked for (no burst)
                raise HarnessCheck(f"preemption plan shrinks {a.job}, which has no burst")
        start(key, plan.then, now)
        return True

    while events:
        now = events[0][0]
        freed = False
        while events and events[0][0] == now:
            _, kind, _, key = heapq.heappop(events)
            if kind == 0:
                base, _, ep = key.rpartition("@")
                if base in running and running[base][3] == int(ep):
                    stop(base)
                    freed = True
            else:
                queue.push(key, by_key[key][1], now)
        # The queue's rules (flexai/policy/queue.py): served in effective-priority order; a
        # request that cannot start stops lower effective priorities behind it this round,
        # lets equal ones backfill until it has waited `aging` seconds, then stops them too.
        # A request that would not fit even the idle pool blocks nothing.
        misses, block, hard = 0, None, False
        failed: set = set()  # request shapes that did not fit in this pass: not asked again
        for key, req in list(queue.ordered(now)):
            rank = queue.effective_rank(key, now)
            if hard or (block is not None and rank > block):
                break
            new = by_key[key][0].creation == now
            if not (freed or new) or req in failed:
                continue
            if try_start(key, now, allow_preempt=True):
                queue.remove(key)
                misses = 0
                continue
            failed.add(req)
            if req not in never:
                never[req] = len(empty.candidates(req)) == 0
            if never[req]:
                continue
            block = rank if block is None else block
            hard = now - queue.since(key) >= queue.aging
            misses += 1
            if misses >= retry_limit and freed:
                freed = False  # still look at this instant's arrivals
    for key, _req in queue.ordered(now if timed else 0.0):
        prio = by_key[key][1].priority
        res.never_started[prio] = res.never_started.get(prio, 0) + 1
    return res
