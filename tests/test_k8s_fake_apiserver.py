"""The fake API server behaves as kube-apiserver where flexai depends on it: a Binding posted to
pods/binding sets the node and merges the Binding's annotations into the pod in one write
(labels are not copied), and is refused as the real one refuses it (already bound, other UID,
being deleted, scheduling gates: 409; no pod: 404; no target: 422; name mismatch: 400); pod
field selectors accept only the fields a real server selects pods by.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from flexai.k8s.kubeapi import KubeApi, KubeApiError

sys.path.insert(0, str(Path(__file__).parent / "support"))
from fake_apiserver import FakeApiServer  # noqa: E402


@pytest.fixture
def api():
    srv = FakeApiServer().start()
    yield srv, KubeApi(srv.url)
    srv.stop()


def pod(name: str, **spec) -> dict:
    return {"metadata": {"name": name, "namespace": "ns", "labels": {"app": "x"},
                         "annotations": {"keep": "me"}},
            "spec": {"schedulerName": "flexai-scheduler", "containers": [], **spec}}


def test_binding_sets_node_and_merges_annotations_in_one_write(api):
    srv, client = api
    p = srv.add_pod(pod("a"))
    before, writes = p["metadata"]["resourceVersion"], srv.writes
    client.request("POST", "/api/v1/namespaces/ns/pods/a/binding", {
        "apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": "a", "namespace": "ns", "uid": p["metadata"]["uid"],
                     "annotations": {"flexai.io/allocation": "{}", "keep": "me"},
                     "labels": {"ignored": "yes"}},
        "target": {"apiVersion": "v1", "kind": "Node", "name": "n1"}})
    got = srv.pod("ns", "a")
    assert srv.writes == writes + 1
    assert got["spec"]["nodeName"] == "n1"
    assert got["metadata"]["annotations"] == {"keep": "me", "flexai.io/allocation": "{}"}
    assert got["metadata"]["labels"] == {"app": "x"}  # a Binding's labels are not copied
    assert {"type": "PodScheduled", "status": "True"} in got["status"]["conditions"]
    assert int(got["metadata"]["resourceVersion"]) > int(before)


@pytest.mark.parametrize("case, status, words", [
    ("bound", 409, "already assigned"),
    ("uid", 409, "Precondition failed"),
    ("deleting", 409, "being deleted"),
    ("gated", 409, "schedulingGates"),
    ("missing", 404, "not found"),
    ("no-target", 422, "target.name"),
    ("pod-kind", 422, "target.kind"),
    ("name", 400, "does not match"),
])
def test_binding_refused_as_kube_apiserver_refuses_it(api, case, status, words):
    srv, client = api
    p = pod("a", **({"nodeName": "n0"} if case == "bound" else {}),
            **({"schedulingGates": [{"name": "wait"}]} if case == "gated" else {}))
    if case == "deleting":
        p["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    if case != "missing":
        srv.add_pod(p)
    meta = {"name": "b" if case == "name" else "a", "namespace": "ns",
            "uid": "someone-else" if case == "uid" else "",
            "annotations": {"flexai.io/allocation": "{}"}}
    target = {"kind": "Pod" if case == "pod-kind" else "Node",
              "name": "" if case == "no-target" else "n1"}
    with pytest.raises(KubeApiError) as err:
        client.request("POST", "/api/v1/namespaces/ns/pods/a/binding",
                       {"kind": "Binding", "metadata": meta, "target": target})
    assert err.value.status == status and words in str(err.value)
    if case != "missing":
        got = srv.pod("ns", "a")
        assert "flexai.io/allocation" not in got["metadata"]["annotations"]
        assert got["spec"].get("nodeName") == ("n0" if case == "bound" else None)


def test_bind_helper_posts_one_binding_with_annotations(api):
    srv, client = api
    p = srv.add_pod(pod("a"))
    client.bind("ns", "a", p["metadata"]["uid"], "n1", annotations={"k": "v"})
    assert srv.pod("ns", "a")["metadata"]["annotations"]["k"] == "v"
    assert srv.calls == {"POST": 1}
    with pytest.raises(KubeApiError) as err:  # a second bind of the same pod
        client.bind("ns", "a", p["metadata"]["uid"], "n2")
    assert err.value.status == 409


def test_pod_field_selectors(api):
    srv, client = api
    srv.add_pod(pod("bound", nodeName="n1"))
    srv.add_pod(pod("pending"))
    other = pod("other", nodeName="n1")
    other["spec"]["schedulerName"] = "default-scheduler"
    srv.add_pod(other)
    names = lambda sel: sorted(p["metadata"]["name"] for p in client.list_pods(sel))  # noqa
    assert names("spec.nodeName=n1") == ["bound", "other"]
    assert names("spec.schedulerName=flexai-scheduler,spec.nodeName!=") == ["bound"]
    assert names("spec.schedulerName==flexai-scheduler") == ["bound", "pending"]
    with pytest.raises(KubeApiError) as err:
        client.list_pods("metadata.annotations=x")
    assert err.value.status == 400 and "not supported" in str(err.value)
