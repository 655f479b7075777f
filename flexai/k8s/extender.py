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

import numpy as np

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


_SCORE_TAILS = np.array([f"{i}}}" for i in range(11)], dtype=object)


_MALFORMED = 4  # a filter verdict beside the cluster's: the pod's request cannot be read


def _pairs(enc: np.ndarray, code: np.ndarray, kinds: tuple, words: dict) -> str:
    """``"name":"reason",...`` for the names whose verdict is one of ``kinds``."""
    parts = []
    for kind in kinds:
        sel = enc[code == kind]
        if len(sel):
            tail = ":" + json.dumps(words[kind])
            parts.append((tail + ",").join(sel) + tail)
    return ",".join(parts)


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

    def _verdicts(self, args: dict) -> tuple:
        """``(names, codes, encoded row names or None, row of each name or None, reasons by
        code, full-mode Node items or None)`` for an ExtenderArgs."""
        pod = args.get("Pod") or {}
        items = None
        if args.get("Nodes") is not None:
            items = (args.get("Nodes") or {}).get("items") or []
            self.cluster.update_nodes(items)
            names = _names(args.get("Nodes"))
        else:
            names = args.get("NodeNames") or []
        try:
            req = pod_request(pod)
        except ValueError as exc:
            code = np.full(len(names), _MALFORMED, np.int8)
            return names, code, None, None, {_MALFORMED: f"flexai: {exc}"}, items
        if req is None:
            return names, np.zeros(len(names), np.int8), None, None, {}, items
        uid = (pod.get("metadata") or {}).get("uid") or ""
        self.cluster.remember(uid, req)
        r = req.to_request()
        code, idx, encoded = self.cluster.filter_codes(r, names, uid)
        return names, code, encoded, idx, self.cluster.reasons(r), items

    def filter(self, args: dict) -> dict:
        """ExtenderArgs -> ExtenderFilterResult."""
        names, code, _, _, words, items = self._verdicts(args or {})
        passing, failed, never = [], {}, {}
        for name, c in zip(names, code.tolist()):
            if c == Cluster.FITS:
                passing.append(name)
            elif c == Cluster.BUSY:
                failed[name] = words[c]
            else:
                never[name] = words[c]
        result: dict[str, Any] = {"FailedNodes": failed, "FailedAndUnresolvableNodes": never,
                                  "Error": ""}
        if items is not None:
            keep = set(passing)
            result["Nodes"] = {"metadata": {}, "items": [
                n for n in items if (n.get("metadata") or {}).get("name") in keep]}
            result["NodeNames"] = None
        else:
            result["Nodes"] = None
            result["NodeNames"] = passing
        return result

    def filter_json(self, args: dict) -> Any:
        """ExtenderArgs -> ExtenderFilterResult as JSON bytes (node-cache mode; a full-mode
        call answers the dict of :meth:`filter`). Each name's JSON comes from the state's
        cache and every node of one verdict shares one reason, so the answer is string joins,
        not an encoder walking a thousand dict entries."""
        args = args or {}
        if args.get("Nodes") is not None:
            return self.filter(args)
        names, code, encoded, idx, words, _ = self._verdicts(args)
        if encoded is None:
            enc = np.array([json.dumps(n) for n in names] or [""], dtype=object)[:len(names)]
        else:
            enc = encoded[idx]
            unknown = np.flatnonzero(idx < 0)
            for i in unknown.tolist():
                enc[i] = json.dumps(names[i])
        out = ['{"NodeNames":[', ",".join(enc[code == Cluster.FITS]), '],"FailedNodes":{']
        out.append(_pairs(enc, code, (Cluster.BUSY,), words))
        out.append('},"FailedAndUnresolvableNodes":{')
        out.append(_pairs(enc, code, (Cluster.SMALL, Cluster.NO_GPU, _MALFORMED), words))
        out.append('},"Nodes":null,"Error":""}')
        return "".join(out).encode()

    def prioritize(self, args: dict) -> list[dict]:
        """ExtenderArgs -> HostPriorityList (integer scores 0..10)."""
        return [{"Host": n, "Score": s} for n, s in self.scores(args)]

    def prioritize_json(self, args: dict) -> bytes:
        """ExtenderArgs -> HostPriorityList as JSON bytes, joined from each node's cached
        ``{"Host":"NAME","Score":`` head and its score's tail (no dict per host)."""
        args = args or {}
        if args.get("Nodes") is not None:
            return json.dumps(self.prioritize(args), separators=(",", ":")).encode()
        names = args.get("NodeNames") or []
        req = self._request(args.get("Pod") or {})
        if req is None:
            return ("[" + ",".join(f'{{"Host":{json.dumps(n)},"Score":0}}' for n in names)
                    + "]").encode()
        uid = ((args.get("Pod") or {}).get("metadata") or {}).get("uid") or ""
        out, idx, heads = self.cluster.prioritize_scores(req.to_request(), names, uid)
        sel = heads[idx]
        for i in np.flatnonzero(idx < 0).tolist():
            sel[i] = f'{{"Host":{json.dumps(names[i])},"Score":'
        return ("[" + ",".join(sel + _SCORE_TAILS[out]) + "]").encode()

    @staticmethod
    def _request(pod: dict):
        try:
            return pod_request(pod)
        except ValueError:
            return None

    def scores(self, args: dict) -> list[tuple[str, int]]:
        """(host, integer score 0..10) for each node of ExtenderArgs."""
        args = args or {}
        full = args.get("Nodes") is not None
        names = _names(args.get("Nodes")) if full else list(args.get("NodeNames") or [])
        pod = args.get("Pod") or {}
        req = self._request(pod)
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
        self.cluster.warm()

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
            ("POST", f"{p}/filter"): lambda b: (200, self.filter_json(b)),
            ("POST", f"{p}/prioritize"): lambda b: (200, self.prioritize_json(b)),
            ("POST", f"{p}/bind"): lambda b: (200, self.bind(b)),
            ("GET", "/healthz"): lambda b: (200, {"ok": True, "ready": self.cluster.ready,
                                                  **self.cluster.stats()}),
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
