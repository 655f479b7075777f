"""A fake Kubernetes API server for the k8s tests and benchmarks: nodes and pods in memory, the
handful of calls flexai's components make, over HTTP/1.1 keep-alive with TCP_NODELAY.

- ``GET /api/v1/nodes``, ``GET|PATCH /api/v1/nodes/NAME`` (merge patch);
- ``GET /api/v1/pods`` with ``fieldSelector=spec.nodeName=X`` and ``labelSelector=k=v``;
- ``GET|PATCH /api/v1/namespaces/NS/pods/NAME`` (merge patch);
- ``POST /api/v1/namespaces/NS/pods/NAME/binding`` (409 when already bound, 404 for no pod).

``latency`` (seconds) delays every answer, as a loaded API server would; ``calls`` counts them.
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
        self.bindings: list[tuple[str, str, str]] = []
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

    def add_node(self, name: str, annotations: Optional[dict] = None,
                 labels: Optional[dict] = None) -> dict:
        node = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "uid": f"node-{name}",
                             "annotations": dict(annotations or {}),
                             "labels": dict(labels or {})},
                "status": {"allocatable": {}}}
        with self.lock:
            self.nodes[name] = node
        return node

    def add_pod(self, pod: dict) -> dict:
        pod = copy.deepcopy(pod)
        meta = pod.setdefault("metadata", {})
        meta.setdefault("namespace", "default")
        meta.setdefault("uid", f"uid-{meta['namespace']}-{meta['name']}")
        pod.setdefault("status", {"phase": "Pending"})
        with self.lock:
            self.pods[(meta["namespace"], meta["name"])] = pod
        return pod

    def pod(self, namespace: str, name: str) -> dict:
        with self.lock:
            return copy.deepcopy(self.pods[(namespace, name)])

    def node(self, name: str) -> dict:
        with self.lock:
            return copy.deepcopy(self.nodes[name])


def _labels_match(obj: dict, selector: str) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in filter(None, selector.split(",")):
        k, _, v = term.partition("=")
        if labels.get(k) != v:
            return False
    return True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeApiServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, obj: Any) -> None:
        """Answer in one write (headers and body), after the handler let go of the lock."""
        self._reply = (status, json.dumps(obj).encode())

    def _status(self, code: int, message: str) -> None:
        self._send(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                          "message": message, "code": code})

    def _handle(self, method: str) -> None:
        srv = self.server
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        if srv.latency:
            time.sleep(srv.latency)
        url = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(url.query))
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
                    return self._status(404, f'nodes "{m[1]}" not found')
                if method == "PATCH":
                    node = srv.nodes[m[1]] = merge_patch(node, body)
                return self._send(200, node)
            if method == "GET" and path == "/api/v1/pods":
                want = q.get("fieldSelector", "")
                node = want.split("=", 1)[1] if want.startswith("spec.nodeName=") else None
                items = [p for p in srv.pods.values()
                         if (node is None or (p.get("spec") or {}).get("nodeName") == node)
                         and _labels_match(p, q.get("labelSelector", ""))]
                return self._send(200, {"kind": "PodList", "apiVersion": "v1",
                                        "metadata": {}, "items": items})
            m = re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods/([^/]+)(/binding)?", path)
            if m:
                key = (m[1], m[2])
                pod = srv.pods.get(key)
                if pod is None:
                    return self._status(404, f'pods "{m[2]}" not found')
                if m[3] and method == "POST":
                    if (pod.get("spec") or {}).get("nodeName"):
                        return self._status(409, f'pod {m[2]} is already assigned to node '
                                                 f'"{pod["spec"]["nodeName"]}"')
                    target = (body or {}).get("target") or {}
                    pod.setdefault("spec", {})["nodeName"] = target.get("name")
                    srv.bindings.append((m[1], m[2], target.get("name")))
                    return self._send(201, {"kind": "Status", "status": "Success"})
                if method == "PATCH":
                    pod = srv.pods[key] = merge_patch(pod, body)
                return self._send(200, pod)
            return self._status(404, f"no {method} {path} in the fake API server")

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
