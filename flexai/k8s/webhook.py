"""The admission webhook (``flexai k8s webhook``): AdmissionReview v1 in, AdmissionReview v1 out.

For a pod that asks for flexai resources it sends flexai's scheduler (``spec.schedulerName``, when
the pod names the default scheduler or none) and makes sure the container asks for
``flexai.io/gpu`` (1 when only memory or compute was given: without it the kubelet never calls
the device plugin), as a JSON patch. A malformed request (memory not a number, compute above 100,
several containers asking, ...) is refused with the reason and an accepted example.

TLS is the deployment's job (``--cert``/``--key``; plain HTTP for tests). This module must never
change anything but the scheduler name and the ``flexai.io/gpu`` limit, and never refuse a pod
that asks nothing of flexai.
"""
from __future__ import annotations

import base64
import json
from typing import Any

from .httpserve import JsonServer
from .resources import DEFAULT_SCHEDULER, RESOURCE_GPU, RESOURCES, pod_request

API_VERSION = "admission.k8s.io/v1"


def _escape(key: str) -> str:
    """A JSON pointer token (RFC 6901)."""
    return key.replace("~", "~0").replace("/", "~1")


def _deny(uid: str, message: str) -> dict:
    return {"uid": uid, "allowed": False,
            "status": {"metadata": {}, "status": "Failure", "reason": "Invalid", "code": 422,
                       "message": message}}


def pod_patch(pod: dict, scheduler: str = DEFAULT_SCHEDULER) -> tuple[list[dict], list[str]]:
    """The JSON patch for a pod that asks flexai, and warnings for its owner.

    Raises
    ------
    ValueError
        For a malformed request (see :func:`flexai.k8s.resources.pod_request`).
    """
    req = pod_request(pod)
    if req is None:
        return [], []
    spec = pod.get("spec") or {}
    ops: list[dict] = []
    warnings: list[str] = []
    current = spec.get("schedulerName")
    if current in (None, "", "default-scheduler"):
        ops.append({"op": "add", "path": "/spec/schedulerName", "value": scheduler})
    elif current != scheduler:
        warnings.append(f"flexai: the pod asks for flexai resources but names scheduler "
                        f"{current!r}; only {scheduler!r} gives it a flexai slice")
    for i, c in enumerate(spec.get("containers") or []):
        if c.get("name") != req.container:
            continue
        res = c.get("resources")
        lim = (res or {}).get("limits")
        if RESOURCE_GPU in (lim or {}) or RESOURCE_GPU in ((res or {}).get("requests") or {}):
            break
        base = f"/spec/containers/{i}/resources"
        if res is None:
            ops.append({"op": "add", "path": base, "value": {"limits": {RESOURCE_GPU: "1"}}})
        elif lim is None:
            ops.append({"op": "add", "path": f"{base}/limits", "value": {RESOURCE_GPU: "1"}})
        else:
            ops.append({"op": "add", "path": f"{base}/limits/{_escape(RESOURCE_GPU)}",
                        "value": "1"})
        break
    return ops, warnings


def review(body: Any, scheduler: str = DEFAULT_SCHEDULER) -> dict:
    """Answer one AdmissionReview (v1)."""
    req = (body or {}).get("request") if isinstance(body, dict) else None
    if not isinstance(req, dict):
        resp = _deny("", "flexai: not an AdmissionReview request (expected "
                         '{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview",'
                         '"request":{...}})')
        return {"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": resp}
    uid = str(req.get("uid") or "")
    kind = (req.get("kind") or {}).get("kind")
    obj = req.get("object") or {}
    resp: dict[str, Any] = {"uid": uid, "allowed": True}
    if kind == "Pod" and req.get("operation", "CREATE") == "CREATE":
        try:
            ops, warnings = pod_patch(obj, scheduler)
        except ValueError as exc:
            resp = _deny(uid, f"flexai: {exc}")
        else:
            if ops:
                resp["patchType"] = "JSONPatch"
                resp["patch"] = base64.b64encode(json.dumps(ops).encode()).decode()
            if warnings:
                resp["warnings"] = warnings
    return {"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": resp}


def server(host: str = "0.0.0.0", port: int = 8443, scheduler: str = DEFAULT_SCHEDULER,
           certfile: str | None = None, keyfile: str | None = None) -> JsonServer:
    """The webhook's server: ``POST /mutate`` (not started)."""
    routes = {("POST", "/mutate"): lambda b: (200, review(b, scheduler)),
              ("GET", "/healthz"): lambda b: (200, {"ok": True})}
    return JsonServer((host, port), routes, certfile, keyfile)


__all__ = ["API_VERSION", "RESOURCES", "pod_patch", "review", "server"]
