"""The admission webhook: AdmissionReview v1 requests in (as the API server sends them, over
HTTP and HTTPS), AdmissionReview v1 responses out with a base64 JSON patch that sets the
scheduler and the ``flexai.io/gpu`` limit; malformed flexai requests refused with the reason;
pods that ask nothing of flexai untouched; and the request parsing it shares with the extender.
"""
from __future__ import annotations

import base64
import http.client
import json
import shutil
import ssl
import subprocess

import pytest

from flexai.k8s import webhook
from flexai.k8s.resources import parse_quantity, pod_priority, pod_request, slice_name


def review_of(pod: dict, uid: str = "705ab4f5-6393-11e8-b7cc-42010a800002") -> dict:
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": uid,
                        "kind": {"group": "", "version": "v1", "kind": "Pod"},
                        "resource": {"group": "", "version": "v1", "resource": "pods"},
                        "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
                        "requestResource": {"group": "", "version": "v1", "resource": "pods"},
                        "name": pod["metadata"].get("name", ""), "namespace": "default",
                        "operation": "CREATE",
                        "userInfo": {"username": "admin", "groups": ["system:authenticated"]},
                        "object": pod, "oldObject": None, "dryRun": False,
                        "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}}}


def pod(limits: dict | None, scheduler: str | None = None, **meta) -> dict:
    c = {"name": "main", "image": "busybox"}
    if limits is not None:
        c["resources"] = {"limits": limits}
    spec = {"containers": [{"name": "sidecar", "image": "envoy"}, c]}
    if scheduler is not None:
        spec["schedulerName"] = scheduler
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "default", **meta}, "spec": spec}


def apply_patch(obj: dict, ops: list[dict]) -> dict:
    """The RFC 6902 'add' operations the webhook emits, applied."""
    obj = json.loads(json.dumps(obj))
    for op in ops:
        assert op["op"] == "add"
        keys = [k.replace("~1", "/").replace("~0", "~") for k in op["path"].split("/")[1:]]
        target = obj
        for k in keys[:-1]:
            target = target[int(k)] if isinstance(target, list) else target[k]
        target[keys[-1]] = op["value"]
    return obj


def answer(body: dict) -> dict:
    out = webhook.review(body)
    assert out["apiVersion"] == "admission.k8s.io/v1" and out["kind"] == "AdmissionReview"
    return out["response"]


def test_memory_only_pod_gets_the_scheduler_and_a_gpu_limit():
    p = pod({"flexai.io/gpu-memory": "4096", "flexai.io/gpu-compute": "30"})
    resp = answer(review_of(p))
    assert resp["uid"] == "705ab4f5-6393-11e8-b7cc-42010a800002" and resp["allowed"]
    assert resp["patchType"] == "JSONPatch"
    patched = apply_patch(p, json.loads(base64.b64decode(resp["patch"])))
    assert patched["spec"]["schedulerName"] == "flexai-scheduler"
    assert patched["spec"]["containers"][1]["resources"]["limits"]["flexai.io/gpu"] == "1"
    assert pod_request(patched).memory_mib == 4096


def test_default_scheduler_is_replaced_and_a_present_gpu_limit_kept():
    p = pod({"flexai.io/gpu": "2"}, scheduler="default-scheduler")
    ops = json.loads(base64.b64decode(answer(review_of(p))["patch"]))
    assert ops == [{"op": "add", "path": "/spec/schedulerName", "value": "flexai-scheduler"}]


def test_another_scheduler_is_kept_with_a_warning():
    resp = answer(review_of(pod({"flexai.io/gpu": "1"}, scheduler="volcano")))
    assert resp["allowed"] and "patch" not in resp
    assert "volcano" in resp["warnings"][0]


def test_pod_without_flexai_resources_is_untouched():
    resp = answer(review_of(pod(None)))
    assert resp == {"uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "allowed": True}


@pytest.mark.parametrize("limits, words", [
    ({"flexai.io/gpu-memory": "lots"}, ["flexai.io/gpu-memory", "not a number", "4096"]),
    ({"flexai.io/gpu-memory": "1.5"}, ["not a whole number"]),
    ({"flexai.io/gpu-compute": "150"}, ["flexai.io/gpu-compute", "1..100", "e.g."]),
    ({"flexai.io/gpu-compute": "0"}, ["1..100"]),
    ({"flexai.io/gpu": "2", "flexai.io/gpu-compute": "50"}, ["whole cards", "100"]),
    ({"flexai.io/gpu": "0"}, ["at least 1"]),
])
def test_malformed_requests_are_refused_with_the_reason(limits, words):
    resp = answer(review_of(pod(limits)))
    assert resp["allowed"] is False
    assert resp["status"]["code"] == 422
    for w in words:
        assert w in resp["status"]["message"]


def test_bad_priority_annotation_and_two_asking_containers_are_refused():
    p = pod({"flexai.io/gpu": "1"}, annotations={"flexai.io/priority": "urgent"})
    assert "high, normal, low, best-effort" in answer(review_of(p))["status"]["message"]
    p = pod({"flexai.io/gpu": "1"})
    p["spec"]["containers"][0]["resources"] = {"limits": {"flexai.io/gpu": "1"}}
    assert "one container" in answer(review_of(p))["status"]["message"]


def test_not_a_review_is_answered_not_crashed():
    resp = answer({"hello": 1})
    assert resp["allowed"] is False and "AdmissionReview" in resp["status"]["message"]


def test_quantities_priorities_and_slice_names():
    assert parse_quantity("4096", "f", "e") == 4096
    assert parse_quantity("4k", "f", "e") == 4000
    assert parse_quantity("1Ki", "f", "e") == 1024
    assert parse_quantity("2e3", "f", "e") == 2000
    assert parse_quantity(7, "f", "e") == 7
    with pytest.raises(ValueError, match="not a number"):
        parse_quantity("4 GiB", "f", "e")
    assert pod_priority({"spec": {"priorityClassName": "flexai-high"}}) == "high"
    assert pod_priority({"spec": {"priorityClassName": "best-effort"}}) == "best-effort"
    assert pod_priority({"spec": {"priority": 2000000000}}) == "high"
    assert pod_priority({"spec": {"priority": -5}}) == "low"
    assert pod_priority({"metadata": {"annotations": {"flexai.io/priority": "low"}},
                         "spec": {"priorityClassName": "flexai-high"}}) == "low"
    assert slice_name("default", "train-1") == "default.train-1"
    long = slice_name("ns", "x" * 200, "0a1b2c3d-4e5f")
    assert len(long) <= 63 and long.endswith(".0a1b2c3d")


def _serve(srv):
    srv.start()
    return srv


def test_http_endpoint_answers_reviews():
    srv = _serve(webhook.server("127.0.0.1", 0))
    try:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        conn.request("POST", "/mutate", json.dumps(review_of(pod({"flexai.io/gpu": "1"}))),
                     {"Content-Type": "application/json"})
        r = conn.getresponse()
        out = json.loads(r.read())
        assert r.status == 200 and out["response"]["allowed"]
    finally:
        srv.shutdown()
        srv.server_close()


def test_https_when_given_a_certificate(tmp_path):
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    srv = _serve(webhook.server("127.0.0.1", 0, certfile=str(cert), keyfile=str(key)))
    try:
        ctx = ssl.create_default_context(cafile=str(cert))
        conn = http.client.HTTPSConnection("127.0.0.1", srv.port, context=ctx, timeout=10)
        bad = pod({"flexai.io/gpu-compute": "101"})
        conn.request("POST", "/mutate", json.dumps(review_of(bad)),
                     {"Content-Type": "application/json"})
        out = json.loads(conn.getresponse().read())
        assert out["response"]["allowed"] is False
    finally:
        srv.shutdown()
        srv.server_close()
