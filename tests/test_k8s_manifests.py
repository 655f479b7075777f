"""The manifests: every object of ``flexai k8s manifests`` loads as the official model of the
``kubernetes`` Python client and serializes back to exactly what we wrote (so no field is
misspelled or misplaced: the client would drop it), the KubeSchedulerConfiguration uses only
fields of kubescheduler.config.k8s.io/v1, the pieces agree with each other, and
``deploy/flexai.yaml`` is the committed default rendering.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")
kubernetes = pytest.importorskip("kubernetes")

from flexai.k8s import manifests  # noqa: E402

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "flexai.yaml"

# kubescheduler.config.k8s.io/v1 fields (KubeSchedulerConfiguration, Extender, profiles)
SCHEDULER_FIELDS = {"apiVersion", "kind", "parallelism", "leaderElection", "clientConnection",
                    "healthzBindAddress", "metricsBindAddress", "enableProfiling",
                    "enableContentionProfiling", "percentageOfNodesToScore",
                    "podInitialBackoffSeconds", "podMaxBackoffSeconds", "profiles", "extenders",
                    "delayCacheUntilActive"}
EXTENDER_FIELDS = {"urlPrefix", "filterVerb", "preemptVerb", "prioritizeVerb", "weight",
                   "bindVerb", "enableHTTPS", "tlsConfig", "httpTimeout", "nodeCacheCapable",
                   "managedResources", "ignorable"}
PROFILE_FIELDS = {"schedulerName", "percentageOfNodesToScore", "plugins", "pluginConfig"}


def model_name(doc: dict) -> str:
    version = doc["apiVersion"].split("/")[-1]
    return version[0].upper() + version[1:] + doc["kind"]


def load(doc: dict):
    """The client's own deserializer (what ``deserialize`` runs on a response's JSON; its
    public signature differs between client versions, this name does not)."""
    api = kubernetes.client.ApiClient()
    return api._ApiClient__deserialize(json.loads(json.dumps(doc)), model_name(doc))


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    text = manifests.render()
    return [d for d in yaml.safe_load_all(text) if d]


def test_yaml_is_the_objects(docs):
    assert docs == json.loads(json.dumps(manifests.objects()))


def test_every_object_is_an_official_model_and_round_trips(docs):
    api = kubernetes.client.ApiClient()
    kinds = []
    for doc in docs:
        obj = load(doc)
        assert type(obj).__name__ == model_name(doc)
        assert api.sanitize_for_serialization(obj) == doc, doc["kind"]
        kinds.append(doc["kind"])
    for kind in ("Namespace", "DaemonSet", "Deployment", "ServiceAccount", "ClusterRole",
                 "ClusterRoleBinding", "RoleBinding", "ConfigMap", "Service",
                 "MutatingWebhookConfiguration", "PriorityClass"):
        assert kind in kinds


def test_a_misspelled_field_would_be_caught():
    doc = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "x"},
           "automountServiceAccountTokn": False}
    assert kubernetes.client.ApiClient().sanitize_for_serialization(load(doc)) != doc


def test_scheduler_configuration_uses_v1_fields_and_the_extender(docs):
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    cfg = yaml.safe_load(cm["data"]["scheduler-config.yaml"])
    assert cfg["apiVersion"] == "kubescheduler.config.k8s.io/v1"
    assert cfg["kind"] == "KubeSchedulerConfiguration"
    assert set(cfg) <= SCHEDULER_FIELDS
    assert all(set(p) <= PROFILE_FIELDS for p in cfg["profiles"])
    (ext,) = cfg["extenders"]
    assert set(ext) <= EXTENDER_FIELDS
    assert ext["nodeCacheCapable"] is True and isinstance(ext["weight"], int)
    assert {m["name"]: m["ignoredByScheduler"] for m in ext["managedResources"]} == {
        "flexai.io/gpu": False, "flexai.io/gpu-memory": True, "flexai.io/gpu-compute": True}
    # the extender container listens where the scheduler calls it
    dep = next(d for d in docs if d["kind"] == "Deployment"
               and d["metadata"]["name"] == "flexai-scheduler")
    containers = {c["name"]: c for c in dep["spec"]["template"]["spec"]["containers"]}
    listen = containers["extender"]["command"][containers["extender"]["command"].index(
        "--listen") + 1]
    assert ext["urlPrefix"] == f"http://{listen}"
    assert cfg["profiles"][0]["schedulerName"] == "flexai-scheduler"


def test_pieces_agree(docs):
    ns = "flexai-system"
    accounts = {d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"}
    for d in docs:
        if d["kind"] in ("DaemonSet", "Deployment"):
            spec = d["spec"]["template"]["spec"]
            assert spec["serviceAccountName"] in accounts
            assert d["spec"]["selector"]["matchLabels"].items() <= \
                d["spec"]["template"]["metadata"]["labels"].items()
            volumes = {v["name"] for v in spec.get("volumes", [])}
            for c in spec["containers"]:
                assert {m["name"] for m in c.get("volumeMounts", [])} <= volumes
        if d["kind"].endswith("Binding"):
            assert all(s["namespace"] == ns for s in d["subjects"])
    hook = next(d for d in docs if d["kind"] == "MutatingWebhookConfiguration")
    svc = hook["webhooks"][0]["clientConfig"]["service"]
    assert any(d["kind"] == "Service" and d["metadata"]["name"] == svc["name"] for d in docs)
    assert hook["webhooks"][0]["admissionReviewVersions"] == ["v1"]
    dp = next(d for d in docs if d["kind"] == "DaemonSet")
    mounts = {m["mountPath"] for m in dp["spec"]["template"]["spec"]["containers"][0][
        "volumeMounts"]}
    assert "/var/lib/kubelet/device-plugins" in mounts


def test_deploy_folder_holds_the_default_rendering():
    assert DEPLOY.read_text() == manifests.render(), \
        "deploy/flexai.yaml is stale: flexai k8s manifests -o deploy/flexai.yaml"


def test_cli_renders_with_options(tmp_path):
    out = tmp_path / "m.yaml"
    proc = subprocess.run([sys.executable, "-m", "flexai", "k8s", "manifests", "--namespace",
                           "gpu", "--image", "reg.example/flexai:1", "-o", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(out.read_text()) if d]
    assert docs[0] == {"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": "gpu", "labels": {"app.kubernetes.io/part-of": "flexai"}}}
    images = {c["image"] for d in docs if d["kind"] in ("DaemonSet", "Deployment")
              for c in d["spec"]["template"]["spec"]["containers"]}
    assert "reg.example/flexai:1" in images
