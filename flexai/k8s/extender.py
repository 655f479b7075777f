"""The scheduler extender (``flexai k8s extender``): kube-scheduler's HTTP/JSON extender protocol
(``filter``, ``prioritize``, ``bind``) answered by :class:`~flexai.k8s.cluster.Cluster`.

Wire format, as kube-scheduler's extender/v1 types have no JSON tags: top-level keys are
PascalCase (``Pod``, ``Nodes``, ``NodeNames``, ``FailedNodes``, ``FailedAndUnresolvableNodes``,
``Error``, ``Host``, ``Score``, ``PodName``, ``PodNamespace``, ``PodUID``, ``Node``); the
Kubernetes objects inside keep their camelCase. A score is an integer 0..10 (a float fails the
whole answer). In node-cache mode (``nodeCacheCapable: true``) the scheduler sends
``NodeNames`` and the answer is ``NodeNames`` (only names it sent); otherwise it sends full
``Nodes`` and gets ``Nodes`` back. Answers are written with TCP_NODELAY (``httpserve``).

Bind makes one API write: a ``Binding`` whose ``metadata.annotations`` carry the pod's
``flexai.io/allocation`` (the device plugin reads it from the pod), which the API server merges
into the pod in the same update that sets its node. Resync finds the placed pods by the
scheduler's name (field selector ``spec.schedulerName``), as labels on a Binding are not copied
to the pod. See ``cluster`` for why nothing here waits on a lock while the API server answers.
This module must never decide placement itself (the policy does) nor print.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from typing import Any, Optional

from .cluster import Cluster
from .httpserve import JsonServer
from .kubeapi import KubeApi, KubeApiError
from .resources import (
    ANNOTATION_ALLOCATION,
    ANNOTATION_ASSIGNED,
    DEFAULT_SCHEDULER,
    pod_request,
)

log = logging.getLogger("flexai.k8s.extender")


_ENCODED: dict[str, str] = {}  # node name -> '{"Host":"name"', for fast prioritize answers
_SCORE_TAIL = [f',"Score":{i}}}' for i in range(11)]


def host_priority_json(pairs: list[tuple[str, int]]) -> bytes:
    """A HostPriorityList as JSON text, built without a dict per host (1,000 dicts through
    ``json.dumps`` cost more than the decision)."""
    parts = []
    for name, score in pairs:
        head = _ENCODED.get(name)
        if head is None:
            head = '{"Host":' + json.dumps(name)
            if len(_ENCODED) < 200_000:
                _ENCODED[name] = head
        parts.append(head + _SCORE_TAIL[score] if 0 <= score <= 10
                     else f'{head},"Score":{int(score)}}}')
    return ("[" + ",".join(parts) + "]").encode()


def _names(nodes: Optional[dict]) -> list[str]:
    return [((n.get("metadata") or {}).get("name") or "") for n in (nodes or {}).get("items") or []]


class Extender:
    """The three verbs over a :class:`Cluster` and (for bind and resync) an API client;
    ``scheduler_name`` is the profile whose pods resync reads back."""

    def __init__(self, cluster: Cluster, api: Optional[KubeApi] = None,
                 scheduler_name: str = DEFAULT_SCHEDULER) -> None:
        self.cluster = cluster
        self.api = api
        self.scheduler_name = scheduler_name
        # seconds of each successful bind spent in the API server / in the extender itself
        self.bind_times: deque = deque(maxlen=10000)

    # ---- verbs -------------------------------------------------------------------------------

    def filter(self, args: dict) -> dict:
        """ExtenderArgs -> ExtenderFilterResult."""
        args = args or {}
        pod = args.get("Pod") or {}
        full = args.get("Nodes") is not None
        items = (args.get("Nodes") or {}).get("items") or []
        if full:
            self.cluster.update_nodes(items)
            names = _names(args.get("Nodes"))
        else:
            names = list(args.get("NodeNames") or [])
        failed: dict[str, str] = {}
        never: dict[str, str] = {}
        try:
            req = pod_request(pod)
        except ValueError as exc:
            req, passing = None, []
            never = {n: f"flexai: {exc}" for n in names}
        else:
            if req is None:
                passing = names
            else:
                uid = (pod.get("metadata") or {}).get("uid") or ""
                self.cluster.remember(uid, req)
                passing, failed, never = self.cluster.filter(req.to_request(), names, uid)
        result: dict[str, Any] = {"FailedNodes": failed, "FailedAndUnresolvableNodes": never,
                                  "Error": ""}
        if full:
            keep = set(passing)
            result["Nodes"] = {"metadata": {}, "items": [
                n for n in items if (n.get("metadata") or {}).get("name") in keep]}
            result["NodeNames"] = None
        else:
            result["Nodes"] = None
            result["NodeNames"] = passing
        return result

    def prioritize(self, args: dict) -> list[dict]:
        """ExtenderArgs -> HostPriorityList (integer scores 0..10)."""
        return [{"Host": n, "Score": s} for n, s in self.scores(args)]

    def scores(self, args: dict) -> list[tuple[str, int]]:
        """(host, integer score 0..10) for each node of ExtenderArgs."""
        args = args or {}
        full = args.get("Nodes") is not None
        names = _names(args.get("Nodes")) if full else list(args.get("NodeNames") or [])
        pod = args.get("Pod") or {}
        try:
            req = pod_request(pod)
        except ValueError:
            req = None
        if req is None:
            return [(n, 0) for n in names]
        uid = (pod.get("metadata") or {}).get("uid") or ""
        return self.cluster.prioritize(req.to_request(), names, uid)

    def bind(self, args: dict) -> dict:
        """ExtenderBindingArgs -> ExtenderBindingResult."""
        args = args or {}
        name, ns = args.get("PodName") or "", args.get("PodNamespace") or ""
        uid, node = args.get("PodUID") or "", args.get("Node") or ""
        if not (name and ns and node):
            return {"Error": "flexai: bind needs PodName, PodNamespace and Node"}
        if self.api is None:
            return {"Error": "flexai: the extender has no API server to bind with "
                             "(run it in a pod, or pass --kube-api)"}
        try:
            req = self.cluster.request_of(uid)
            if req is None:  # not filtered by this extender (restarted since): read the pod
                req = pod_request(self.api.get_pod(ns, name))
            if req is None:
                self.api.bind(ns, name, uid, node)
                return {"Error": ""}
            start = time.perf_counter()
            place = self.cluster.reserve(uid, req.to_request(), node)
        except (ValueError, KubeApiError) as exc:
            return {"Error": f"flexai: pod {ns}/{name}: {exc}"}
        alloc = self.cluster.allocation(ns, name, uid, req, place)
        api_start = time.perf_counter()
        try:  # one write: the Binding carries the annotations onto the pod
            self.api.bind(ns, name, uid, node, annotations={
                ANNOTATION_ALLOCATION: alloc.to_json(), ANNOTATION_ASSIGNED: "false"})
        except KubeApiError as exc:
            self.cluster.release(uid)
            return {"Error": f"flexai: pod {ns}/{name}: {exc}"}
        self.cluster.bound(uid)
        end = time.perf_counter()
        self.bind_times.append((end - api_start, api_start - start))
        log.info("bound %s/%s to %s GPU(s) %s", ns, name, node, list(place.gpus))
        return {"Error": ""}

    # ---- resync from the API server ----------------------------------------------------------

    def resync(self) -> None:
        """Nodes and placed pods from the API server: every node, and every pod of this
        scheduler that is bound (those carrying the allocation annotation count)."""
        if self.api is None:
            return
        started = time.time()
        self.cluster.update_nodes(self.api.list_nodes(), complete=True)
        self.cluster.sync_pods(self.api.list_pods(
            field_selector=f"spec.schedulerName={self.scheduler_name},spec.nodeName!="),
            started)

    def resync_loop(self, stop: threading.Event, every: float) -> None:
        while True:
            try:
                self.resync()
            except KubeApiError as exc:
                log.error("resync: %s", exc)
            if stop.wait(every):
                return

    # ---- serving -----------------------------------------------------------------------------

    def routes(self, prefix: str = "") -> dict:
        p = "/" + prefix.strip("/") if prefix.strip("/") else ""
        return {
            ("POST", f"{p}/filter"): lambda b: (200, self.filter(b)),
            ("POST", f"{p}/prioritize"): lambda b: (200, host_priority_json(self.scores(b))),
            ("POST", f"{p}/bind"): lambda b: (200, self.bind(b)),
            ("GET", "/healthz"): lambda b: (200, {"ok": True, **self.cluster.stats()}),
            ("GET", "/stats/bind"): lambda b: (200, self.bind_stats()),
        }

    def bind_stats(self) -> dict:
        """Milliseconds of the last successful binds spent in the API server (one write) and
        in the extender's own work (decision, reservation), p50/p99."""
        out = {}
        for k, name in ((0, "api"), (1, "own")):
            xs = sorted(t[k] for t in self.bind_times)
            if xs:
                out[name] = {"p50": xs[len(xs) // 2] * 1e3,
                             "p99": xs[min(len(xs) - 1, int(len(xs) * 0.99))] * 1e3,
                             "n": len(xs)}
        return out

    def server(self, host: str = "127.0.0.1", port: int = 8888, prefix: str = "") -> JsonServer:
        """An HTTP server answering the verbs under ``/<prefix>/`` (not started)."""
        return JsonServer((host, port), self.routes(prefix))
