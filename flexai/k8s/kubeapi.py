"""The few Kubernetes API calls flexai's components make, over plain HTTP(S) with the standard
library: read and annotate nodes and pods, list them, bind a pod to a node.

``KubeApi.in_cluster()`` uses the pod's service account (token and CA under
``/var/run/secrets/kubernetes.io/serviceaccount``, ``KUBERNETES_SERVICE_HOST``/``_PORT``);
``KubeApi(url)`` talks to any address (``kubectl proxy``, the tests' fake API server).
Connections are kept alive, one per thread, with TCP_NODELAY, so concurrent binds never queue
behind one socket or one lock.

This module must never decide anything (it only moves JSON), never retry a call except once on
a kept-alive connection the server had closed, and never log the token.
"""
from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import threading
import urllib.parse
from pathlib import Path
from typing import Any, Optional

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubeApiError(Exception):
    """A call the API server refused or that could not reach it; ``status`` is the HTTP status
    (0 when the server could not be reached)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"API server: {status or 'unreachable'}: {message}")
        self.status = status


class KubeApi:
    """A small API client.

    Parameters
    ----------
    url : str
        ``https://host:port`` or ``http://host:port``.
    token : str, optional
        Bearer token (a service account's).
    ca_file : str, optional
        CA bundle to verify the server with (HTTPS).
    timeout : float
        Seconds per call.
    """

    def __init__(self, url: str, token: Optional[str] = None, ca_file: Optional[str] = None,
                 timeout: float = 10.0) -> None:
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"API server address {url!r} is not http(s)://HOST:PORT "
                             "(e.g. https://10.96.0.1:443)")
        self.url = url
        self._https = u.scheme == "https"
        self._host, self._port = u.hostname, u.port or (443 if self._https else 80)
        self._token = token
        self._timeout = timeout
        self._ctx = ssl.create_default_context(cafile=ca_file) if self._https else None
        self._local = threading.local()

    @classmethod
    def in_cluster(cls, timeout: float = 10.0) -> "KubeApi":
        """The API server as seen from a pod, with its service account.

        Raises
        ------
        ValueError
            Outside a pod (no ``KUBERNETES_SERVICE_HOST`` or no service account token).
        """
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get(
            "KUBERNETES_SERVICE_PORT", "443")
        token = SERVICE_ACCOUNT / "token"
        if not host or not token.is_file():
            raise ValueError("not in a pod: KUBERNETES_SERVICE_HOST or the service account token "
                             "is missing (outside a cluster pass --kube-api http://127.0.0.1:8001 "
                             "with kubectl proxy)")
        if ":" in host:
            host = f"[{host}]"
        return cls(f"https://{host}:{port}", token=token.read_text().strip(),
                   ca_file=str(SERVICE_ACCOUNT / "ca.crt"), timeout=timeout)

    # ---- transport ---------------------------------------------------------------------------

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._https:
                conn = http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout,
                                                   context=self._ctx)
            else:
                conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
            conn.connect()
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._local.conn = conn
        return conn

    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/json") -> Any:
        """One call; the decoded JSON answer.

        Raises
        ------
        KubeApiError
            For a status >= 400 (with the server's message) or a connection failure.
        """
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = content_type
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        for attempt in (0, 1):
            reused = getattr(self._local, "conn", None) is not None
            try:
                conn = self._connection()
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
                break
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                # only a kept-alive connection the server had closed is tried again, once
                stale = isinstance(exc, (http.client.RemoteDisconnected, BrokenPipeError,
                                         ConnectionResetError))
                if attempt or not (reused and stale):
                    raise KubeApiError(0, f"{method} {path}: {exc}") from None
        try:
            answer = json.loads(raw) if raw else {}
        except ValueError:
            answer = {"message": raw[:200].decode(errors="replace")}
        if resp.status >= 400:
            msg = answer.get("message") if isinstance(answer, dict) else None
            raise KubeApiError(resp.status, f"{method} {path}: {msg or resp.reason}")
        return answer

    def close(self) -> None:
        """Close this thread's connection."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # ---- calls -------------------------------------------------------------------------------

    @staticmethod
    def _query(**params: Optional[str]) -> str:
        q = {k: v for k, v in params.items() if v}
        return "?" + urllib.parse.urlencode(q) if q else ""

    def list_nodes(self, label_selector: Optional[str] = None) -> list[dict]:
        """Every node (``items`` of a NodeList)."""
        return self.request("GET", "/api/v1/nodes" + self._query(
            labelSelector=label_selector)).get("items") or []

    def patch_node_annotations(self, node: str, annotations: dict[str, Optional[str]]) -> dict:
        """Merge ``annotations`` into the node's (None deletes a key)."""
        return self.request("PATCH", f"/api/v1/nodes/{node}",
                            {"metadata": {"annotations": annotations}},
                            "application/merge-patch+json")

    def list_pods(self, field_selector: Optional[str] = None,
                  label_selector: Optional[str] = None) -> list[dict]:
        """Pods of every namespace matching the selectors."""
        return self.request("GET", "/api/v1/pods" + self._query(
            fieldSelector=field_selector, labelSelector=label_selector)).get("items") or []

    def get_pod(self, namespace: str, name: str) -> dict:
        return self.request("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")

    def patch_pod_metadata(self, namespace: str, name: str,
                           annotations: Optional[dict] = None,
                           labels: Optional[dict] = None) -> dict:
        """Merge annotations and labels into the pod's metadata."""
        meta: dict[str, Any] = {}
        if annotations:
            meta["annotations"] = annotations
        if labels:
            meta["labels"] = labels
        return self.request("PATCH", f"/api/v1/namespaces/{namespace}/pods/{name}",
                            {"metadata": meta}, "application/merge-patch+json")

    def bind(self, namespace: str, name: str, uid: str, node: str,
             annotations: Optional[dict[str, str]] = None) -> dict:
        """Bind the pod to ``node``: one ``v1.Binding`` posted to the pod's ``binding``
        subresource. The API server merges the Binding's ``metadata.annotations`` into the
        pod's in the same write that sets ``spec.nodeName`` (pods/binding storage has always
        done so), so a choice recorded this way lands atomically with the binding. With
        ``uid`` the server refuses (409) a pod of that name that is another incarnation.
        """
        meta: dict[str, Any] = {"name": name, "namespace": namespace}
        if uid:
            meta["uid"] = uid
        if annotations:
            meta["annotations"] = dict(annotations)
        body = {"apiVersion": "v1", "kind": "Binding", "metadata": meta,
                "target": {"apiVersion": "v1", "kind": "Node", "name": node}}
        return self.request("POST", f"/api/v1/namespaces/{namespace}/pods/{name}/binding", body)
