"""The wait queue: requests that cannot start, ordered by priority and age, with aging so that
low priority is never starved, and ``schedule_queue`` to start what can when capacity frees.

Rules (docs/scheduler.md restates them):

- Order: effective priority, then the original priority, then arrival (oldest first), then
  push order. The effective priority rises one level (towards ``high``) per ``aging`` seconds
  waited (default :data:`AGING_SECONDS` = 300 s): a ``best-effort`` request waiting 15 minutes
  ranks with ``high`` ones (but after older ones and after genuine ``high`` ones of its age).
  Aging orders the queue only: preemption always uses the request's own priority.
- Blocking: ``schedule_queue`` walks the order. When a request cannot start, requests behind
  it of a lower effective priority do not start in that round (a small low-priority request
  never jumps a waiting higher one), while requests of the same effective priority may fill in
  behind it (backfill) until it has waited ``aging`` seconds; from then on it blocks everything
  behind it, so it starts as soon as capacity frees for it. Every request thus reaches the
  head: none waits forever while capacity keeps freeing. A request that could not start even
  on an idle pool (``Wait.never``) blocks nothing; the caller should reject it.

Pure: no clocks of its own (``now`` is passed in), no I/O, Ray or Kubernetes.
"""
from __future__ import annotations

import math
from typing import Hashable, Union

from .decide import Decision, apply_decision, decide, make_policy
from .policies import Policy
from .types import PRIORITIES, Place, PoolView, Preempt, Request, Wait

__all__ = ["AGING_SECONDS", "Queue", "schedule_queue"]

#: Seconds of waiting that raise a request's effective priority by one level.
AGING_SECONDS = 300.0


class Queue:
    """Waiting requests in priority + age order, with aging (see the module docstring).

    Parameters
    ----------
    aging : float
        Seconds per level of effective priority gained while waiting (> 0).
    """

    def __init__(self, aging: float = AGING_SECONDS) -> None:
        if isinstance(aging, bool) or not isinstance(aging, (int, float)) or not aging > 0 \
                or math.isinf(aging):
            raise ValueError(f"Queue: aging must be a number of seconds > 0, not {aging!r} "
                             "(e.g. Queue(aging=300))")
        self.aging = float(aging)
        self._items: dict[Hashable, tuple[Request, float, int]] = {}
        self._seq = 0

    def push(self, key: Hashable, request: Request, now: float) -> None:
        """Add ``request`` under ``key`` (unique), arrived at ``now`` (seconds)."""
        if not isinstance(request, Request):
            raise ValueError(f"Queue.push: request must be a Request, not {request!r}")
        if key in self._items:
            raise ValueError(f"Queue.push: key {key!r} is already queued")
        if isinstance(now, bool) or not isinstance(now, (int, float)) or math.isnan(now):
            raise ValueError(f"Queue.push: now must be a time in seconds, not {now!r} "
                             "(e.g. time.monotonic())")
        self._items[key] = (request, float(now), self._seq)
        self._seq += 1

    def remove(self, key: Hashable) -> Request:
        """Take ``key`` out of the queue and return its request (KeyError if absent)."""
        return self._items.pop(key)[0]

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def since(self, key: Hashable) -> float:
        """When ``key`` was pushed."""
        return self._items[key][1]

    def effective_rank(self, key: Hashable, now: float) -> int:
        """The request's priority rank (0 = high) after aging at time ``now``."""
        request, since, _ = self._items[key]
        return max(0, request.rank - int(max(0.0, now - since) // self.aging))

    def ordered(self, now: float) -> list[tuple[Hashable, Request]]:
        """The queue in the order it is served at ``now``."""
        def order(item):
            key, (request, since, seq) = item
            return (self.effective_rank(key, now), request.rank, since, seq)
        return [(key, request) for key, (request, _, _) in sorted(self._items.items(), key=order)]

    def __repr__(self) -> str:
        return f"Queue({len(self)} waiting, aging={self.aging:g} s)"


def schedule_queue(queue: Queue, view: PoolView, now: float,
                   policy: Union[str, Policy] = "flexai") -> list[tuple[Hashable, Decision]]:
    """What can start now, in queue order, as ``(key, Place | Preempt)`` pairs.

    Each decision is planned on the view as left by the ones before it (see
    :func:`~flexai.policy.decide.apply_decision`), so together they fit. The queue itself is not
    changed: the caller removes the keys it starts. Blocking follows the module's rules.
    """
    chosen = make_policy(policy)
    started: list[tuple[Hashable, Decision]] = []
    block_below = len(PRIORITIES)  # effective ranks >= this may not start
    for key, request in queue.ordered(now):
        rank = queue.effective_rank(key, now)
        if rank >= block_below:
            continue
        decision = decide(request, view, chosen)
        if isinstance(decision, (Place, Preempt)):
            started.append((key, decision))
            view = apply_decision(view, request, decision, job=str(key))
            continue
        assert isinstance(decision, Wait)
        if decision.never:
            continue  # it can never start here: it must not hold the others back
        starving = now - queue.since(key) >= queue.aging
        block_below = min(block_below, rank if starving else rank + 1)
    return started
