"""A fake Kubernetes API server for the k8s tests and benchmarks: nodes and pods in memory, the
handful of calls flexai's components make, over HTTP/1.1 keep-alive with TCP_NODELAY.

- ``GET /api/v1/nodes``, ``GET|PATCH /api/v1/nodes/NAME`` (merge patch);
- ``GET /api/v1/pods`` with ``labelSelector=k=v,...`` and ``fieldSelector`` terms ``f=v``,
  ``f==v``, ``f!=v`` on the fields a real server lets pods be selected by (``spec.nodeName``,
  ``spec.schedulerName``, ``status.phase``, ...; any other field is a 400, as there);
- ``GET|PATCH /api/v1/namespaces/NS/pods/NAME`` (merge patch);
- ``POST /api/v1/namespaces/NS/pods/NAME/binding``, as kube-apiserver's pods/binding storage
  does it: in one update it sets ``spec.nodeName``, merges the Binding's
  ``metadata.annotations`` into the pod's and sets the ``PodScheduled`` condition; it does not
  copy the Binding's labels (kube-apiserver does only behind the ``PodTopologyLabelsAdmission``
  feature gate). Refused as there: a Binding whose name differs from the URL's (400), no
  ``target.name`` or a target kind other than Node (422), no such pod (404), and with 409
  Conflict a pod already bound, being deleted or with scheduling gates, or whose UID or
  resourceVersion differs from the Binding's ``metadata`` (the preconditions).

Every write bumps the object's ``resourceVersion``. ``latency`` (seconds) delays every answer,
as a loaded API server would; ``calls`` counts them per method, ``writes`` counts writes.
Test support only: it checks nothing about authorization and never persists anything.
"""
from __future__ import annotations

import copy
import json
import re
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


class FakeApiServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, latency: float = 0.0) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.latency = latency
        self.lock = threading.Lock()
        self.nodes: dict[str, dict] = {}
        self.pods: dict[tuple[str, str], dict] = {}
        self.calls: dict[str, int] = {}
        self.writes = 0
        self.bindings: list[tuple[str, str, str]] = []
        self._version = 0
        self._thread: Optional[threading.Thread] = None

    def get_request(self):
        conn, addr = super().get_request()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, addr

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> "FakeApiServer":
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    # ---- contents ------------------------------------------------------------------------------

    def bump(self, obj: dict) -> dict:
        """Give ``obj`` the next resourceVersion (call under the lock)."""
        self._version += 1
        obj.setdefault("metadata", {})["resourceVersion"] = str(self._version)
        return obj

    def add_node(self, name: str, annotations: Optional[dict] = None,
                 labels: Optional[dict] = None) -> dict:
        node = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "uid": f"node-{name}",
                             "annotations": dict(annotations or {}),
                             "labels": dict(labels or {})},
                "status": {"allocatable": {}}}
        with self.lock:
            self.nodes[name] = self.bump(node)
        return copy.deepcopy(node)

    def add_pod(self, pod: dict) -> dict:
        pod = copy.deepcopy(pod)
        meta = pod.setdefault("metadata", {})
        meta.setdefault("namespace", "default")
        meta.setdefault("uid", f"uid-{meta['namespace']}-{meta['name']}")
        pod.setdefault("status", {"phase": "Pending"})
        with self.lock:
            self.pods[(meta["namespace"], meta["name"])] = self.bump(pod)
        return copy.deepcopy(pod)

    def pod(self, namespace: str, name: str) -> dict:
        with self.lock:
            return copy.deepcopy(self.pods[(namespace, name)])

    def node(self, name: str) -> dict:
        with self.lock:
            return copy.deepcopy(self.nodes[name])


def _labels_match(obj: dict, selector: str) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in filter(None, selector.split(",")):
        if "!=" in term:
            k, _, v = term.partition("!=")
            if labels.get(k) == v:
                return False
            continue
        k, _, v = term.replace("==", "=").partition("=")
        if labels.get(k) != v:
            return False
    return True


#: The pod fields kube-apiserver accepts in a field selector, and how to read them.
POD_FIELDS = {
    "metadata.name": lambda p: p["metadata"].get("name", ""),
    "metadata.namespace": lambda p: p["metadata"].get("namespace", ""),
    "spec.nodeName": lambda p: (p.get("spec") or {}).get("nodeName") or "",
    "spec.restartPolicy": lambda p: (p.get("spec") or {}).get("restartPolicy") or "",
    "spec.schedulerName": lambda p: (p.get("spec") or {}).get("schedulerName") or "",
    "spec.serviceAccountName": lambda p: (p.get("spec") or {}).get("serviceAccountName") or "",
    "spec.hostNetwork": lambda p: str(bool((p.get("spec") or {}).get("hostNetwork"))).lower(),
    "status.phase": lambda p: (p.get("status") or {}).get("phase") or "",
    "status.podIP": lambda p: (p.get("status") or {}).get("podIP") or "",
    "status.nominatedNodeName": lambda p: (p.get("status") or {}).get("nominatedNodeName") or "",
}


def parse_field_selector(selector: str) -> list[tuple[str, bool, str]]:
    """``[(field, equal, value)]``; ValueError names a field pods cannot be selected by."""
    terms = []
    for term in filter(None, selector.split(",")):
        if "!=" in term:
            field, _, value = term.partition("!=")
            equal = False
        else:
            field, _, value = term.replace("==", "=").partition("=")
            equal = True
        if field not in POD_FIELDS:
            raise ValueError(f'"{field}" is not a known field selector: only "'
                             + '", "'.join(POD_FIELDS) + '"')
        terms.append((field, equal, value))
    return terms


def _fields_match(pod: dict, terms: list[tuple[str, bool, str]]) -> bool:
    return all((POD_FIELDS[f](pod) == v) == eq for f, eq, v in terms)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeApiServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, obj: Any) -> None:
        """Answer in one write (headers and body), after the handler let go of the lock."""
        self._reply = (status, json.dumps(obj).encode())

    def _status(self, code: int, message: str, reason: str = "") -> None:
        self._send(code, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                          "status": "Failure", "message": message, "code": code,
                          **({"reason": reason} if reason else {})})

    def _handle(self, method: str) -> None:
        srv = self.server
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        if srv.latency:
            time.sleep(srv.latency)
        url = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        path = url.path
        with srv.lock:
            srv.calls[method] = srv.calls.get(method, 0) + 1
            if method == "GET" and path == "/api/v1/nodes":
                items = [n for n in srv.nodes.values()
                         if _labels_match(n, q.get("labelSelector", ""))]
                return self._send(200, {"kind": "NodeList", "apiVersion": "v1",
                                        "metadata": {}, "items": items})
            m = re.fullmatch(r"/api/v1/nodes/([^/]+)", path)
            if m:
                node = srv.nodes.get(m[1])
                if node is None:
                    return self._status(404, f'nodes "{m[1]}" not found', "NotFound")
                if method == "PATCH":
                    srv.writes += 1
                    node = srv.nodes[m[1]] = srv.bump(merge_patch(node, body))
                return self._send(200, node)
            if method == "GET" and path == "/api/v1/pods":
                try:
                    terms = parse_field_selector(q.get("fieldSelector", ""))
                except ValueError as exc:
                    return self._status(400, f"field label not supported: {exc}", "BadRequest")
                items = [p for p in srv.pods.values() if _fields_match(p, terms)
                         and _labels_match(p, q.get("labelSelector", ""))]
                return self._send(200, {"kind": "PodList", "apiVersion": "v1",
                                        "metadata": {}, "items": items})
            m = re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods/([^/]+)(/binding)?", path)
            if m and m[3]:
                if method != "POST":
                    return self._status(405, f"{method} is not allowed on pods/binding",
                                        "MethodNotAllowed")
                return self._bind(m[1], m[2], body)
            if m:
                key = (m[1], m[2])
                pod = srv.pods.get(key)
                if pod is None:
                    return self._status(404, f'pods "{m[2]}" not found', "NotFound")
                if method == "PATCH":
                    srv.writes += 1
                    pod = srv.pods[key] = srv.bump(merge_patch(pod, body))
                return self._send(200, pod)
            return self._status(404, f"no {method} {path} in the fake API server", "NotFound")

    def _bind(self, namespace: str, name: str, binding: Any) -> None:
        """pods/binding's create, as kube-apiserver's pod storage does it (call under the
        lock)."""
        srv = self.server
        if not isinstance(binding, dict) or binding.get("kind") not in (None, "Binding"):
            return self._status(400, "the body of pods/binding must be a v1 Binding",
                                "BadRequest")
        meta = binding.get("metadata") or {}
        if meta.get("name") != name:
            return self._status(400, "name in URL does not match name in Binding object",
                                "BadRequest")
        if meta.get("namespace") not in (None, "", namespace):
            return self._status(400, "the namespace of the provided object does not match "
                                     "the namespace sent on the request", "BadRequest")
        ann = meta.get("annotations") or {}
        if not isinstance(ann, dict) or not all(isinstance(v, str) for v in ann.values()):
            return self._status(400, "metadata.annotations of a Binding must map strings to "
                                     "strings", "BadRequest")
        target = binding.get("target") or {}
        if not target.get("name"):
            return self._status(422, f'Binding "{name}" is invalid: target.name: Required '
                                     "value", "Invalid")
        if target.get("kind") not in (None, "", "Node"):
            return self._status(422, f'Binding "{name}" is invalid: target.kind: Invalid '
                                     f'value: "{target["kind"]}": must be empty or \'Node\'',
                                "Invalid")
        pod = srv.pods.get((namespace, name))
        if pod is None:
            return self._status(404, f'pods "{name}" not found', "NotFound")
        pmeta, spec = pod["metadata"], pod.setdefault("spec", {})
        why = None
        if meta.get("uid") and meta["uid"] != pmeta.get("uid"):
            why = (f"Precondition failed: UID in precondition: {meta['uid']}, UID in object "
                   f"meta: {pmeta.get('uid')}")
        elif meta.get("resourceVersion") and meta["resourceVersion"] != pmeta.get(
                "resourceVersion"):
            why = "the object has been modified; please apply your changes to the latest version"
        elif pmeta.get("deletionTimestamp"):
            why = f"pod {name} is being deleted, cannot be assigned to a host"
        elif spec.get("nodeName"):
            why = f'pod {name} is already assigned to node "{spec["nodeName"]}"'
        elif spec.get("schedulingGates"):
            why = f"pod {name} has non-empty .spec.schedulingGates"
        if why:
            return self._status(409, f'Operation cannot be fulfilled on pods/binding "{name}": '
                                     f"{why}", "Conflict")
        spec["nodeName"] = target["name"]
        pmeta["annotations"] = {**(pmeta.get("annotations") or {}), **ann}
        status = pod.setdefault("status", {})
        conds = [c for c in status.get("conditions") or [] if c.get("type") != "PodScheduled"]
        status["conditions"] = conds + [{"type": "PodScheduled", "status": "True"}]
        srv.bump(pod)
        srv.writes += 1
        srv.bindings.append((namespace, name, target["name"]))
        return self._send(201, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                "status": "Success", "code": 201})

    def _do(self, method: str) -> None:
        self._reply = (500, b"{}")
        self._handle(method)
        status, body = self._reply
        head = (f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
        self.wfile.write(head.encode() + body)

    def do_GET(self) -> None:
        self._do("GET")

    def do_PATCH(self) -> None:
        self._do("PATCH")

    def do_POST(self) -> None:
        self._do("POST")
