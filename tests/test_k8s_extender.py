"""The scheduler extender over HTTP, with JSON in the exact shape kube-scheduler's extender/v1
sends (PascalCase top-level keys, camelCase Kubernetes objects inside): filter in node-cache
(``NodeNames``) and full (``Nodes``) mode with failed and unresolvable nodes and their reasons,
prioritize with integer scores 0..10, bind writing the annotation the device plugin reads in
the one Binding it posts, resync reading back the pods of its scheduler, reservations given
back when a bind fails or a pod finishes, concurrent binds that neither overcommit a GPU nor
wait on each other's API calls, and TCP_NODELAY on accepted sockets.
"""
from __future__ import annotations

import http.client
import json
import socket
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from flexai.k8s.cluster import Cluster
from flexai.k8s.extender import Extender
from flexai.k8s.httpserve import JsonServer
from flexai.k8s.kubeapi import KubeApi
from flexai.k8s.resources import NodeGpu, encode_node_gpus

sys.path.insert(0, str(Path(__file__).parent / "support"))
from fake_apiserver import FakeApiServer  # noqa: E402

GiB = 1 << 30


def node_obj(name: str, gpus: int = 2, memory: int = 16 * GiB, model: str = "H100",
             annotated: bool = True) -> dict:
    """A v1.Node as the scheduler sends it (camelCase), with the plugin's annotation."""
    ann = {}
    if annotated:
        ann["flexai.io/gpus"] = encode_node_gpus(
            [NodeGpu(i, f"GPU-{abs(hash(name)) % 10**8:08d}-0000-0000-0000-{i:012d}", model,
                     memory) for i in range(gpus)])
    return {"metadata": {"name": name, "uid": f"uid-{name}", "resourceVersion": "1",
                         "labels": {"kubernetes.io/hostname": name}, "annotations": ann},
            "spec": {"podCIDR": "10.0.0.0/24"},
            "status": {"capacity": {"cpu": "64", "flexai.io/gpu": str(gpus * 10)},
                       "allocatable": {"cpu": "64", "flexai.io/gpu": str(gpus * 10)},
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def pod_obj(name: str, limits: dict | None, ns: str = "default") -> dict:
    c = {"name": "main", "image": "busybox", "resources": {}}
    if limits is not None:
        c["resources"] = {"limits": limits, "requests": dict(limits)}
    return {"metadata": {"name": name, "namespace": ns, "uid": f"uid-{ns}-{name}",
                         "creationTimestamp": "2025-01-01T00:00:00Z"},
            "spec": {"schedulerName": "flexai-scheduler", "containers": [c],
                     "restartPolicy": "Never"},
            "status": {"phase": "Pending"}}


SLICE = {"flexai.io/gpu": "1", "flexai.io/gpu-memory": "4096", "flexai.io/gpu-compute": "30"}


class Client:
    """kube-scheduler's side: one kept-alive HTTP connection, JSON in and out."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def post(self, verb: str, body: dict):
        self.conn.request("POST", f"/{verb}", json.dumps(body),
                          {"Content-Type": "application/json"})
        resp = self.conn.getresponse()
        raw = resp.read()
        assert resp.status == 200, raw
        return json.loads(raw), raw


@pytest.fixture
def api():
    srv = FakeApiServer().start()
    yield srv
    srv.stop()


@pytest.fixture
def served(api):
    ext = Extender(Cluster(), KubeApi(api.url))
    server = ext.server("127.0.0.1", 0)
    server.start()
    yield ext, Client(server.port), api
    server.shutdown()
    server.server_close()


def test_filter_node_cache_mode_answers_node_names_with_reasons(served):
    ext, client, api = served
    api.add_node("big", {"flexai.io/gpus": node_obj("big")["metadata"]["annotations"][
        "flexai.io/gpus"]})
    small = node_obj("small", memory=2 * GiB)
    api.add_node("small", small["metadata"]["annotations"])
    api.add_node("cpu-only")
    ext.resync()
    args = {"Pod": pod_obj("p", SLICE), "Nodes": None,
            "NodeNames": ["big", "small", "cpu-only", "unknown"]}
    res, raw = client.post("filter", args)
    assert set(res) >= {"NodeNames", "FailedNodes", "FailedAndUnresolvableNodes", "Error"}
    assert res["NodeNames"] == ["big"] and res["Nodes"] is None and res["Error"] == ""
    never = res["FailedAndUnresolvableNodes"]
    assert set(never) == {"small", "cpu-only", "unknown"}
    assert "can never hold" in never["small"] and "4096 MiB" in never["small"]
    assert "no GPUs" in never["cpu-only"]
    assert res["FailedNodes"] == {}


def test_filter_full_mode_answers_nodes_and_learns_them(served):
    ext, client, api = served
    nodes = [node_obj("a"), node_obj("b", gpus=1), node_obj("c", annotated=False)]
    res, _ = client.post("filter", {"Pod": pod_obj("p", SLICE),
                                    "Nodes": {"metadata": {}, "items": nodes},
                                    "NodeNames": None})
    assert res["NodeNames"] is None
    assert [n["metadata"]["name"] for n in res["Nodes"]["items"]] == ["a", "b"]
    assert res["Nodes"]["items"][0] == nodes[0]  # the objects sent, untouched
    assert list(res["FailedAndUnresolvableNodes"]) == ["c"]
    # the nodes learnt in full mode serve node-cache calls too
    res, _ = client.post("filter", {"Pod": pod_obj("q", SLICE), "NodeNames": ["a", "b"]})
    assert res["NodeNames"] == ["a", "b"]


def test_pod_without_flexai_resources_passes_everywhere_and_malformed_is_refused(served):
    ext, client, api = served
    ext.cluster.update_nodes([node_obj("a")])
    res, _ = client.post("filter", {"Pod": pod_obj("plain", None), "NodeNames": ["a", "x"]})
    assert res["NodeNames"] == ["a", "x"]
    bad = dict(SLICE, **{"flexai.io/gpu-compute": "150"})
    res, _ = client.post("filter", {"Pod": pod_obj("bad", bad), "NodeNames": ["a"]})
    assert res["NodeNames"] == []
    assert "1..100" in res["FailedAndUnresolvableNodes"]["a"]


def test_prioritize_scores_are_integers_0_to_10_best_node_first(served):
    ext, client, api = served
    ext.cluster.update_nodes([node_obj(n) for n in ("a", "b", "c")] + [node_obj("full", 1)])
    # partly fill node b: packing policies prefer it; "full" gets a whole-card pod
    ext.cluster.reserve("x1", pod_request_of(SLICE), "b")
    ext.cluster.reserve("x2", pod_request_of({"flexai.io/gpu": "1"}), "full")
    res, raw = client.post("prioritize", {"Pod": pod_obj("p", SLICE),
                                          "NodeNames": ["a", "b", "c", "full", "nowhere"]})
    assert [r["Host"] for r in res] == ["a", "b", "c", "full", "nowhere"]
    assert all(type(r["Score"]) is int and 0 <= r["Score"] <= 10 for r in res), raw
    assert b"Score\":10" in raw and b"." not in raw.split(b"Score")[1][:4]
    scores = {r["Host"]: r["Score"] for r in res}
    assert scores["b"] == 10 and scores["full"] == 0 and scores["nowhere"] == 0
    assert scores["a"] == scores["c"] < 10


def pod_request_of(limits: dict):
    from flexai.k8s.resources import pod_request
    return pod_request(pod_obj("tmp", limits)).to_request()


def test_bind_is_one_write_carrying_the_annotation_and_reserves(served):
    ext, client, api = served
    api.add_node("n", node_obj("n", gpus=1)["metadata"]["annotations"])
    ext.resync()
    writes = api.writes
    names = []
    for i in range(4):  # 3 slices of 30% fit one card; the 4th does not
        pod = api.add_pod(pod_obj(f"p{i}", SLICE))
        res, _ = client.post("filter", {"Pod": pod, "NodeNames": ["n"]})
        if res["NodeNames"] != ["n"]:
            assert "no room now" in res["FailedNodes"]["n"]
            break
        res, _ = client.post("bind", {"PodName": f"p{i}", "PodNamespace": "default",
                                      "PodUID": pod["metadata"]["uid"], "Node": "n"})
        assert res == {"Error": ""}
        names.append(f"p{i}")
    assert names == ["p0", "p1", "p2"]
    assert [b[1:] for b in api.bindings] == [(n, "n") for n in names]
    assert api.writes - writes == 3 and api.calls.get("PATCH", 0) == 0  # one write per bind
    p0 = api.pod("default", "p0")
    alloc = json.loads(p0["metadata"]["annotations"]["flexai.io/allocation"])
    assert alloc["node"] == "n" and alloc["gpus"] == [0] and alloc["compute"] == 30
    assert alloc["memory"] == 4096 << 20 and alloc["slice"] == "default.p0"
    assert p0["metadata"]["annotations"]["flexai.io/assigned"] == "false"
    assert p0["spec"]["nodeName"] == "n"
    # a finished pod gives its share back at the next resync
    api.pods[("default", "p1")]["status"]["phase"] = "Succeeded"
    ext.resync()
    res, _ = client.post("filter", {"Pod": pod_obj("p9", SLICE), "NodeNames": ["n"]})
    assert res["NodeNames"] == ["n"]


def test_prioritize_assumes_the_best_place_until_bind_or_refilter(served):
    ext, client, api = served
    api.add_node("n", node_obj("n", gpus=1)["metadata"]["annotations"])
    ext.resync()
    whole = {"flexai.io/gpu": "1"}
    first, second = api.add_pod(pod_obj("first", whole)), api.add_pod(pod_obj("second", whole))
    client.post("filter", {"Pod": first, "NodeNames": ["n"]})
    res, _ = client.post("prioritize", {"Pod": first, "NodeNames": ["n"]})
    assert res == [{"Host": "n", "Score": 10}]
    assert ext.cluster.stats()["assumed"] == 1
    # before the first pod's bind lands, the next pod no longer counts on its card
    res, _ = client.post("filter", {"Pod": second, "NodeNames": ["n"]})
    assert res["NodeNames"] == [] and "no room now" in res["FailedNodes"]["n"]
    # the first pod scheduled again (its bind never came): the assumption is given back
    res, _ = client.post("filter", {"Pod": first, "NodeNames": ["n"]})
    assert res["NodeNames"] == ["n"] and ext.cluster.stats()["assumed"] == 0
    client.post("prioritize", {"Pod": first, "NodeNames": ["n"]})
    res, _ = client.post("bind", {"PodName": "first", "PodNamespace": "default",
                                  "PodUID": first["metadata"]["uid"], "Node": "n"})
    assert res == {"Error": ""}
    assert ext.cluster.stats() == {"nodes": 1, "reservations": 1, "assumed": 0}
    res, _ = client.post("bind", {"PodName": "first", "PodNamespace": "default",
                                  "PodUID": first["metadata"]["uid"], "Node": "n"})
    assert "already bound" in res["Error"]
    assert ext.cluster.stats()["reservations"] == 1


def test_bind_elsewhere_than_assumed_moves_the_reservation(served):
    ext, client, api = served
    for name in ("a", "b"):
        api.add_node(name, node_obj(name, gpus=1)["metadata"]["annotations"])
    ext.resync()
    whole = {"flexai.io/gpu": "1"}
    pod = api.add_pod(pod_obj("p", whole))
    client.post("filter", {"Pod": pod, "NodeNames": ["a", "b"]})
    scores, _ = client.post("prioritize", {"Pod": pod, "NodeNames": ["a", "b"]})
    best = max(scores, key=lambda s: s["Score"])["Host"]
    other = "b" if best == "a" else "a"
    # other scores made the scheduler choose the other node
    res, _ = client.post("bind", {"PodName": "p", "PodNamespace": "default",
                                  "PodUID": pod["metadata"]["uid"], "Node": other})
    assert res == {"Error": ""}
    assert ext.cluster.stats() == {"nodes": 2, "reservations": 1, "assumed": 0}
    nxt = api.add_pod(pod_obj("q", whole))
    res, _ = client.post("filter", {"Pod": nxt, "NodeNames": ["a", "b"]})
    assert res["NodeNames"] == [best]  # the assumed card was given back, the bound one taken


def test_failed_bind_gives_the_reservation_back(served):
    ext, client, api = served
    api.add_node("n", node_obj("n", gpus=1)["metadata"]["annotations"])
    ext.resync()
    whole = {"flexai.io/gpu": "1"}
    ghost = pod_obj("ghost", whole)  # never created in the API server: bind fails (404)
    client.post("filter", {"Pod": ghost, "NodeNames": ["n"]})
    res, _ = client.post("bind", {"PodName": "ghost", "PodNamespace": "default",
                                  "PodUID": ghost["metadata"]["uid"], "Node": "n"})
    assert "not found" in res["Error"]
    real = api.add_pod(pod_obj("real", whole))
    res, _ = client.post("filter", {"Pod": real, "NodeNames": ["n"]})
    assert res["NodeNames"] == ["n"]  # the card is free again


def test_concurrent_binds_overlap_their_api_calls_and_never_overcommit(api):
    api.latency = 0.05
    for i in range(4):
        api.add_node(f"n{i}", node_obj(f"n{i}")["metadata"]["annotations"])
    ext = Extender(Cluster(), KubeApi(api.url))
    ext.resync()
    pods = [api.add_pod(pod_obj(f"p{i}", SLICE)) for i in range(40)]  # 24 fit (4 x 2 x 3)
    inflight, high = [0], [0]
    lock = threading.Lock()
    real = ext.api.request

    def counting(*a, **k):
        with lock:
            inflight[0] += 1
            high[0] = max(high[0], inflight[0])
        try:
            return real(*a, **k)
        finally:
            with lock:
                inflight[0] -= 1

    ext.api.request = counting
    for p in pods:
        ext.filter({"Pod": p, "NodeNames": [f"n{i}" for i in range(4)]})

    def bind(i):
        p = pods[i]
        return ext.bind({"PodName": p["metadata"]["name"], "PodNamespace": "default",
                         "PodUID": p["metadata"]["uid"], "Node": f"n{i % 4}"})

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(bind, range(len(pods))))
    ok = [r for r in results if r["Error"] == ""]
    assert len(ok) == 24, results
    assert all("no room now" in r["Error"] for r in results if r["Error"])
    assert high[0] >= 4  # API calls of different binds ran at the same time
    per_gpu: dict = {}
    for (ns, name), p in api.pods.items():
        ann = (p["metadata"].get("annotations") or {}).get("flexai.io/allocation")
        if ann and p["spec"].get("nodeName"):
            a = json.loads(ann)
            key = (a["node"], a["gpus"][0])
            per_gpu[key] = per_gpu.get(key, 0) + a["compute"]
    assert len(per_gpu) == 8 and max(per_gpu.values()) <= 100


def test_accepted_sockets_have_tcp_nodelay():
    server = JsonServer(("127.0.0.1", 0), {})
    try:
        client = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        conn, _ = server.get_request()
        assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        conn.close()
        client.close()
    finally:
        server.server_close()


def test_bind_without_an_api_server_is_an_error_not_a_hang():
    ext = Extender(Cluster(), None)
    res = ext.bind({"PodName": "p", "PodNamespace": "default", "PodUID": "u", "Node": "n"})
    assert "no API server" in res["Error"]


def test_resync_reads_back_bound_pods_of_its_scheduler_only(api):
    api.add_node("n", node_obj("n", gpus=1)["metadata"]["annotations"])
    first = Extender(Cluster(), KubeApi(api.url))
    first.resync()
    whole = {"flexai.io/gpu": "1"}
    pod = api.add_pod(pod_obj("p", whole))
    first.filter({"Pod": pod, "NodeNames": ["n"]})
    assert first.bind({"PodName": "p", "PodNamespace": "default",
                       "PodUID": pod["metadata"]["uid"], "Node": "n"}) == {"Error": ""}
    # a pod of another scheduler carrying a stale copy of the annotation counts for nothing
    other = pod_obj("other", whole)
    other["spec"]["schedulerName"] = "default-scheduler"
    other["spec"]["nodeName"] = "n"
    other["metadata"]["annotations"] = api.pod("default", "p")["metadata"]["annotations"]
    api.add_pod(other)
    # a restarted extender learns the bound pod from the API server alone
    again = Extender(Cluster(), KubeApi(api.url))
    again.resync()
    assert again.cluster.stats()["reservations"] == 1
    nxt = api.add_pod(pod_obj("q", whole))
    res = again.filter({"Pod": nxt, "NodeNames": ["n"]})
    assert res["NodeNames"] == [] and "no room now" in res["FailedNodes"]["n"]
    # ... and a profile of another name reads none of them back
    third = Extender(Cluster(), KubeApi(api.url), scheduler_name="elsewhere")
    third.resync()
    assert third.cluster.stats()["reservations"] == 0


def test_bind_of_a_pod_bound_meanwhile_fails_and_gives_the_card_back(served):
    ext, client, api = served
    api.add_node("n", node_obj("n", gpus=1)["metadata"]["annotations"])
    ext.resync()
    whole = {"flexai.io/gpu": "1"}
    pod = api.add_pod(pod_obj("p", whole))
    client.post("filter", {"Pod": pod, "NodeNames": ["n"]})
    api.pods[("default", "p")]["spec"]["nodeName"] = "elsewhere"  # another binder won
    res, _ = client.post("bind", {"PodName": "p", "PodNamespace": "default",
                                  "PodUID": pod["metadata"]["uid"], "Node": "n"})
    assert "409" in res["Error"] and "already assigned" in res["Error"]
    assert "flexai.io/allocation" not in (api.pod("default", "p")["metadata"].get(
        "annotations") or {})  # nothing half-written
    assert ext.cluster.stats()["reservations"] == 0


def test_alike_nodes_all_pass_filter_and_score_alike(served):
    """The policy scans one node per class of alike nodes; the answers must still name every
    node of a class (a scheduler filtering out the one scanned must find the others)."""
    ext, client, api = served
    names = [f"n{i}" for i in range(6)]
    ext.cluster.update_nodes([node_obj(n) for n in names])
    res, _ = client.post("filter", {"Pod": pod_obj("p", SLICE), "NodeNames": names})
    assert res["NodeNames"] == names and res["FailedNodes"] == {}
    # n1 half used: the others stay alike; the scheduler sends a list without the first node
    ext.cluster.reserve("x1", pod_request_of(SLICE), "n1")
    sent = names[2:] + ["n1"]
    res, _ = client.post("filter", {"Pod": pod_obj("q", SLICE), "NodeNames": sent})
    assert res["NodeNames"] == sent
    scores, _ = client.post("prioritize", {"Pod": pod_obj("q", SLICE), "NodeNames": sent})
    got = {s["Host"]: s["Score"] for s in scores}
    assert got["n1"] == 10 and len({got[n] for n in names[2:]}) == 1 and got["n2"] < 10
    # whole cards: every empty node fits, the half-used one still has a free card
    whole = {"flexai.io/gpu": "2"}
    res, _ = client.post("filter", {"Pod": pod_obj("g", whole), "NodeNames": sent})
    assert res["NodeNames"] == names[2:] and "no room now" in res["FailedNodes"]["n1"]
    scores, _ = client.post("prioritize", {"Pod": pod_obj("g", whole), "NodeNames": sent})
    assert {s["Host"]: s["Score"] for s in scores}["n1"] == 0
    assert len({s["Score"] for s in scores if s["Host"] != "n1"}) == 1
    # the place assumed for the pod is on a node it was sent
    assert ext.cluster._held["uid-default-g"].node in names[2:]


def test_filter_json_answers_what_filter_answers(api):
    ext = Extender(Cluster(), KubeApi(api.url))
    ext.cluster.update_nodes([node_obj("a"), node_obj("b", gpus=1), node_obj("tiny", memory=GiB),
                              node_obj("bare", annotated=False), node_obj('odd"name')])
    ext.cluster.reserve("x", pod_request_of({"flexai.io/gpu": "1"}), "b")
    names = ["a", "b", "tiny", "bare", "ghost", 'odd"name']
    for limits in (SLICE, {"flexai.io/gpu": "1"}, {"flexai.io/gpu": "2"}, None,
                   dict(SLICE, **{"flexai.io/gpu-memory": "lots"})):
        args = {"Pod": pod_obj("p", limits), "Nodes": None, "NodeNames": names}
        assert json.loads(ext.filter_json(args)) == ext.filter(args), limits
    res = json.loads(ext.filter_json({"Pod": pod_obj("p", {"flexai.io/gpu": "1"}),
                                      "NodeNames": names}))
    assert res["NodeNames"] == ["a", "tiny", 'odd"name']  # a whole card: any size
    assert list(res["FailedNodes"]) == ["b"] and "no room now" in res["FailedNodes"]["b"]
    assert set(res["FailedAndUnresolvableNodes"]) == {"bare", "ghost"}


def test_prioritize_json_answers_what_prioritize_answers(api):
    ext = Extender(Cluster(), KubeApi(api.url))
    ext.cluster.update_nodes([node_obj("a"), node_obj("b", gpus=1), node_obj('odd"name')])
    ext.cluster.reserve("x", pod_request_of(SLICE), "b")
    names = ["a", "b", "ghost", 'odd"name']
    for limits in (SLICE, {"flexai.io/gpu": "2"}, None, {"flexai.io/gpu-compute": "0"}):
        args = {"Pod": pod_obj("p", limits), "Nodes": None, "NodeNames": names}
        assert json.loads(ext.prioritize_json(args)) == ext.prioritize(args), limits


def test_stats_report_wall_and_thread_cpu_per_route(served):
    ext, client, api = served
    ext.cluster.update_nodes([node_obj("a")])
    for _ in range(3):
        client.post("filter", {"Pod": pod_obj("p", SLICE), "NodeNames": ["a"]})
    client.conn.request("GET", "/stats")
    stats = json.loads(client.conn.getresponse().read())
    d = stats["POST /filter"]
    assert d["n"] == 3
    assert all(d[k] >= 0 for k in ("p50", "p99", "max", "cpu_p50", "cpu_p99", "cpu_max"))


def test_node_changes_rebuild_the_state_without_stopping_decisions(monkeypatch):
    """While the state is rebuilt after a node change (slow at scale), filter, prioritize and
    bind go on with the previous state; what they reserve or give back meanwhile is carried
    into the new state."""
    cluster = Cluster()
    cluster.update_nodes([node_obj("a", gpus=1), node_obj("b", gpus=1)])
    whole = pod_request_of({"flexai.io/gpu": "1"})
    cluster.reserve("gone", whole, "a")
    building, finish = threading.Event(), threading.Event()
    real = Cluster._build

    def slow(self, nodes, held):
        out = real(self, nodes, held)
        building.set()
        assert finish.wait(10)
        return out

    monkeypatch.setattr(Cluster, "_build", slow)
    changer = threading.Thread(target=cluster.update_nodes,
                               args=([node_obj("c", gpus=1)],), daemon=True)
    changer.start()
    assert building.wait(10)
    # decisions while the new state is being built: not blocked, on the previous state
    worker = threading.Thread(target=lambda: (cluster.release("gone"),
                                              cluster.reserve("new", whole, "b")), daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive()
    assert not cluster.ready
    passing, _, _ = cluster.filter(whole, ["a", "b", "c"])
    assert passing == ["a"]  # c is not known yet
    finish.set()
    changer.join(10)
    assert cluster.ready
    passing, failed, _ = cluster.filter(whole, ["a", "b", "c"])
    assert passing == ["a", "c"] and list(failed) == ["b"]  # "gone" released, "new" kept
    assert cluster.stats()["reservations"] == 1
