"""The extender's view of the cluster, without its decisions: the nodes' GPUs (from the node
annotation ``flexai.io/gpus`` the device plugins write), the pods' reservations (the extender's
own binds at once; every pod of its scheduler carrying ``flexai.io/allocation`` at each
resync, so a restarted extender and finished pods are caught up), and the
:class:`~flexai.policy.PoolState` holding both.

One lock guards it all and is held only for array work. A node change rebuilds the state
*outside* the lock (~0.1 s at 1,000 nodes with 1,000 reservations) while decisions go on with
the previous state, then installs it, carrying over what was reserved or given back meanwhile.

This module must never decide placement (:mod:`flexai.k8s.cluster` does, through
flexai.policy), never call the API server, and never build a state while holding its lock
(but the very first one).
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

from ..policy import GpuView, NodeView, Place, PoolState, PoolView, Request
from .resources import (
    ANNOTATION_ALLOCATION,
    ANNOTATION_NODE_GPUS,
    Allocation,
    NodeGpu,
    PodRequest,
    decode_node_gpus,
)

log = logging.getLogger("flexai.k8s.extender")


@dataclass
class Held:
    """A pod's reservation in the state: ``assumed`` at prioritize (the node the scheduler will
    most likely bind), ``binding`` while bind writes to the API server, then ``bound``."""

    node: str
    gpus: tuple
    request: Request
    since: float
    phase: str = "bound"
    gen: int = -1
    taken: object = None  # the state's Allocation while gen is current


class ClusterView:
    """Nodes, reservations and their state (thread-safe); :class:`~flexai.k8s.cluster.Cluster`
    adds the decisions."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._nodes: dict[str, tuple[str, tuple[NodeGpu, ...]]] = {}
        self._held: dict[str, Held] = {}
        self._requests: "OrderedDict[str, PodRequest]" = OrderedDict()
        self._state: Optional[PoolState] = None
        self._gen = 0
        self._nodes_version = 0  # bumped by every change of self._nodes
        self._built_version = -1  # the nodes version the state was built from

    # ---- inputs ------------------------------------------------------------------------------

    def update_nodes(self, nodes: list[dict], complete: bool = False) -> None:
        """Take node objects (annotations read); ``complete``: the list is every node, so
        nodes not in it are forgotten."""
        fresh = {}
        for node in nodes:
            meta = node.get("metadata") or {}
            name = meta.get("name")
            raw = (meta.get("annotations") or {}).get(ANNOTATION_NODE_GPUS)
            if not name:
                continue
            old = self._nodes.get(name)
            if old is not None and old[0] == raw:
                fresh[name] = old
                continue
            try:
                gpus = decode_node_gpus(raw) if raw else ()
            except ValueError as exc:
                log.error("node %s: %s", name, exc)
                gpus = ()
            fresh[name] = (raw, gpus)
        with self._lock:
            changed = False
            for name, entry in fresh.items():
                if self._nodes.get(name) is not entry:
                    self._nodes[name] = entry
                    changed = True
            if complete:
                for name in set(self._nodes) - set(fresh):
                    del self._nodes[name]
                    changed = True
            if changed:
                self._nodes_version += 1
        if changed:
            self.refresh()

    def remember(self, uid: str, request: PodRequest) -> None:
        """Keep a pod's request from its filter call for its bind call (which carries none)."""
        with self._lock:
            self._requests[uid] = request
            self._requests.move_to_end(uid)
            while len(self._requests) > 20000:
                self._requests.popitem(last=False)

    def request_of(self, uid: str) -> Optional[PodRequest]:
        with self._lock:
            return self._requests.get(uid)

    def sync_pods(self, pods: list[dict], started: float) -> None:
        """Reservations from the pods' ``flexai.io/allocation`` annotations (a list taken at
        ``started``): pods gone or finished are released, unknown ones are taken."""
        from .resources import pod_request

        live: dict[str, Held] = {}
        finished = set()
        for pod in pods:
            meta = pod.get("metadata") or {}
            ann = (meta.get("annotations") or {}).get(ANNOTATION_ALLOCATION)
            if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                finished.add(meta.get("uid", ""))
                continue
            if not ann:
                continue
            try:
                a = Allocation.from_json(ann)
                req = pod_request(pod)
            except ValueError as exc:
                log.error("pod %s/%s: %s", meta.get("namespace"), meta.get("name"), exc)
                continue
            if req is not None:
                live[meta.get("uid", "")] = Held(a.node, a.gpus, req.to_request(), a.time)
        with self._lock:
            for uid, h in list(self._held.items()):
                if uid in finished or (uid not in live and h.phase == "bound"
                                       and h.since < started):
                    self._drop(uid)
            for uid, h in live.items():
                if uid not in self._held:
                    self._held[uid] = h
                    if self._state is not None:
                        self._place_held(self._state, self._gen, uid, h)

    # ---- the state ---------------------------------------------------------------------------

    def _build(self, nodes: dict, held: dict) -> tuple[PoolState, dict]:
        """A state of ``nodes`` with the reservations ``held`` placed: ``(state, {uid:
        (held, its Allocation)})``; touches nothing shared, so it may run without the lock."""
        views = []
        for name, (_, gpus) in sorted(nodes.items()):
            views.append(NodeView(name, tuple(
                GpuView(g.index, g.model, g.memory, g.memory, 100) for g in gpus if g.healthy)))
        state = PoolState.from_view(PoolView(tuple(views)))
        taken = {}
        for uid, h in held.items():
            try:
                taken[uid] = (h, state.place(h.request, Place(h.node, h.gpus, False)))
            except ValueError as exc:
                log.warning("reservation of pod %s on %s no longer fits: %s", uid, h.node, exc)
        return state, taken

    def _install(self, state: PoolState, taken: dict, version: int) -> None:
        """Make ``state`` current: reservations made or given back since it was built are
        placed or released in it; call under the lock."""
        self._gen += 1
        for uid, h in self._held.items():
            got = taken.pop(uid, None)
            if got is not None and got[0] is h:
                h.taken, h.gen = got[1], self._gen
            else:
                if got is not None:  # the pod was given back and reserved again meanwhile
                    state.release(got[1])
                self._place_held(state, self._gen, uid, h)
        for _, alloc in taken.values():  # given back while the state was built
            state.release(alloc)
        self._state, self._built_version = state, version

    def _place_held(self, state: PoolState, gen: int, uid: str, h: Held) -> None:
        """Place reservation ``h`` in ``state`` (a place that no longer fits is logged and
        left out); call under the lock."""
        try:
            h.taken, h.gen = state.place(h.request, Place(h.node, h.gpus, False)), gen
        except ValueError as exc:
            log.warning("reservation of pod %s on %s no longer fits: %s", uid, h.node, exc)
            h.taken, h.gen = None, -1

    def refresh(self) -> None:
        """Rebuild the state after node changes without holding the lock while building (at
        1,000 nodes with 1,000 reservations that takes ~0.1 s, during which filter, prioritize
        and bind go on with the previous state); never call it under the lock."""
        for _ in range(3):
            with self._lock:
                if self._state is not None and self._built_version == self._nodes_version:
                    return
                nodes, held, version = dict(self._nodes), dict(self._held), self._nodes_version
            state, taken = self._build(nodes, held)
            with self._lock:
                if version == self._nodes_version:
                    self._install(state, taken, version)
                    return
        with self._lock:  # nodes keep changing: build under the lock
            self._state = None
            self._current()

    def _current(self) -> PoolState:
        """The state (built here only the first time: :meth:`refresh` rebuilds it after node
        changes); call under the lock."""
        if self._state is None:
            version = self._nodes_version
            state, taken = self._build(self._nodes, self._held)
            self._install(state, taken, version)
        return self._state

    def _drop(self, uid: str) -> None:
        """Give back a reservation; call under the lock."""
        h = self._held.pop(uid, None)
        if h is None:
            return
        if h.gen == self._gen and self._state is not None and h.taken is not None:
            self._state.release(h.taken)
        # else: it was never placed in the current state (it no longer fitted there)

    def uuids(self, node: str, gpus: tuple) -> tuple:
        with self._lock:
            by_index = {g.index: g.uuid for g in self._nodes.get(node, ("", ()))[1]}
        return tuple(by_index.get(i, "") for i in gpus)

    def warm(self) -> None:
        """Build the state now (after a resync) rather than in the next filter's time."""
        self.refresh()

    @property
    def ready(self) -> bool:
        """Whether the state is built and follows the nodes last taken."""
        with self._lock:
            return self._state is not None and self._built_version == self._nodes_version

    def stats(self) -> dict:
        with self._lock:
            assumed = sum(1 for h in self._held.values() if h.phase == "assumed")
            return {"nodes": len(self._nodes), "reservations": len(self._held),
                    "assumed": assumed}

