"""The manifests that install flexai on a cluster (``flexai k8s manifests``; the default
rendering is committed as ``deploy/flexai.yaml``): the namespace, priority classes, the device
plugin DaemonSet, the scheduler (kube-scheduler with flexai's extender beside it, its
KubeSchedulerConfiguration), the admission webhook and its MutatingWebhookConfiguration, and
the RBAC each needs.

Objects are plain dicts rendered by a tiny YAML writer (block style; strings quoted whenever
YAML could read them as something else), so no YAML library is needed at run time. This module
must never talk to a cluster.
"""
from __future__ import annotations

import json
import re
from typing import Any

from .resources import PLUGIN_DIR, RESOURCE_COMPUTE, RESOURCE_GPU, RESOURCE_MEMORY

DEFAULTS = {"namespace": "flexai-system", "image": "flexai:0.1.0",
            "scheduler_image": "registry.k8s.io/kube-scheduler:v1.31.0",
            "scheduler_name": "flexai-scheduler"}
EXTENDER_PORT = 8888
WEBHOOK_PORT = 8443
PRIORITY_VALUES = {"high": 1000000, "normal": 0, "low": -10, "best-effort": -100}


# ---- a small YAML writer ------------------------------------------------------------------------

_PLAIN = re.compile(r"^[A-Za-z_/][A-Za-z0-9_./:=-]*$")
_RESERVED = {"true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"}


def _scalar(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return json.dumps(v)
    s = str(v)
    if _PLAIN.match(s) and s.lower() not in _RESERVED:
        return s
    return json.dumps(s)


def _yaml(v: Any, indent: int) -> list[str]:
    pad = " " * indent
    if isinstance(v, dict):
        if not v:
            return [pad + "{}"]
        out = []
        for k, x in v.items():
            key = _scalar(k)
            if isinstance(x, (dict, list)) and x:
                out.append(f"{pad}{key}:")
                out.extend(_yaml(x, indent + 2))
            elif isinstance(x, str) and "\n" in x:
                out.append(f"{pad}{key}: |")
                out.extend(f"{pad}  {line}" if line else "" for line in x.rstrip("\n").split("\n"))
            else:
                out.append(f"{pad}{key}: {_yaml(x, 0)[0].strip()}")
        return out
    if isinstance(v, list):
        if not v:
            return [pad + "[]"]
        out = []
        for x in v:
            inner = _yaml(x, indent + 2)
            out.append(f"{pad}- {inner[0].strip()}")
            out.extend(inner[1:])
        return out
    return [pad + _scalar(v)]


def to_yaml(doc: Any) -> str:
    """One document as block-style YAML."""
    return "\n".join(_yaml(doc, 0)) + "\n"


# ---- the objects --------------------------------------------------------------------------------

def _meta(name: str, namespace: str | None = None, **labels: str) -> dict:
    m: dict[str, Any] = {"name": name}
    if namespace:
        m["namespace"] = namespace
    m["labels"] = {"app.kubernetes.io/part-of": "flexai", **labels}
    return m


def _rbac(name: str, ns: str, rules: list[dict]) -> list[dict]:
    return [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": _meta(name), "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": _meta(name),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}]},
    ]


def scheduler_config(scheduler_name: str) -> str:
    """The KubeSchedulerConfiguration (v1) of flexai's scheduler profile and extender."""
    cfg = {
        "apiVersion": "kubescheduler.config.k8s.io/v1",
        "kind": "KubeSchedulerConfiguration",
        "leaderElection": {"leaderElect": False},
        "profiles": [{"schedulerName": scheduler_name}],
        "extenders": [{
            "urlPrefix": f"http://127.0.0.1:{EXTENDER_PORT}",
            "filterVerb": "filter", "prioritizeVerb": "prioritize", "bindVerb": "bind",
            "weight": 10, "enableHTTPS": False, "nodeCacheCapable": True,
            "httpTimeout": "30s", "ignorable": False,
            "managedResources": [
                {"name": RESOURCE_GPU, "ignoredByScheduler": False},
                {"name": RESOURCE_MEMORY, "ignoredByScheduler": True},
                {"name": RESOURCE_COMPUTE, "ignoredByScheduler": True},
            ],
        }],
    }
    return to_yaml(cfg)


def objects(namespace: str = DEFAULTS["namespace"], image: str = DEFAULTS["image"],
            scheduler_image: str = DEFAULTS["scheduler_image"],
            scheduler_name: str = DEFAULTS["scheduler_name"]) -> list[dict]:
    """Every object, in the order to apply them."""
    ns = namespace
    docs: list[dict] = [{"apiVersion": "v1", "kind": "Namespace", "metadata": _meta(ns)}]
    for prio, value in PRIORITY_VALUES.items():
        docs.append({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                     "metadata": _meta(f"flexai-{prio}"), "value": value,
                     "globalDefault": False,
                     "description": f"flexai priority {prio} (the slice's priority on its GPU)"})

    # device plugin
    dp = "flexai-device-plugin"
    docs.append({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(dp, ns)})
    docs += _rbac(dp, ns, [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "patch"]}])
    host = {"device-plugins": PLUGIN_DIR, "flexai-lib": "/usr/local/flexai/lib",
            "flexai-state": "/var/run/flexai"}
    docs.append({
        "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": _meta(dp, ns, app=dp),
        "spec": {
            "selector": {"matchLabels": {"app": dp}},
            "updateStrategy": {"type": "RollingUpdate"},
            "template": {
                "metadata": {"labels": {"app": dp}},
                "spec": {
                    "serviceAccountName": dp,
                    "priorityClassName": "system-node-critical",
                    "nodeSelector": {"flexai.io/gpu-node": "true"},
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                                     "effect": "NoSchedule"}],
                    "containers": [{
                        "name": "device-plugin", "image": image,
                        "command": ["flexai", "k8s", "device-plugin", "--install-lib"],
                        "env": [{"name": "NODE_NAME",
                                 "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                                {"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}],
                        "securityContext": {"allowPrivilegeEscalation": False},
                        "volumeMounts": [{"name": k, "mountPath": v} for k, v in host.items()],
                    }],
                    "volumes": [{"name": k, "hostPath": {"path": v, "type": "DirectoryOrCreate"}}
                                for k, v in host.items()],
                },
            },
        },
    })

    # scheduler: kube-scheduler + the extender beside it
    sc = "flexai-scheduler"
    docs.append({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(sc, ns)})
    docs += _rbac(sc, ns, [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["pods/binding"], "verbs": ["create"]}])
    for role in ("system:kube-scheduler", "system:volume-scheduler"):
        docs.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                     "metadata": _meta(f"{sc}-{role.split(':')[1]}"),
                     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                 "name": role},
                     "subjects": [{"kind": "ServiceAccount", "name": sc, "namespace": ns}]})
    docs.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                 "metadata": _meta(f"{sc}-auth-reader", "kube-system"),
                 "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                             "name": "extension-apiserver-authentication-reader"},
                 "subjects": [{"kind": "ServiceAccount", "name": sc, "namespace": ns}]})
    docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(f"{sc}-config", ns),
                 "data": {"scheduler-config.yaml": scheduler_config(scheduler_name)}})
    docs.append({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(sc, ns, app=sc),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": sc}},
            "template": {
                "metadata": {"labels": {"app": sc}},
                "spec": {
                    "serviceAccountName": sc,
                    "containers": [
                        {"name": "kube-scheduler", "image": scheduler_image,
                         "command": ["kube-scheduler",
                                     "--config=/etc/flexai/scheduler-config.yaml", "--v=2"],
                         "volumeMounts": [{"name": "config", "mountPath": "/etc/flexai",
                                           "readOnly": True}]},
                        {"name": "extender", "image": image,
                         "command": ["flexai", "k8s", "extender",
                                     "--listen", f"127.0.0.1:{EXTENDER_PORT}",
                                     "--scheduler-name", scheduler_name],
                         "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}}},
                    ],
                    "volumes": [{"name": "config", "configMap": {"name": f"{sc}-config"}}],
                },
            },
        },
    })

    # admission webhook
    wh = "flexai-webhook"
    docs.append({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(wh, ns)})
    docs.append({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(wh, ns, app=wh),
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": wh}},
            "template": {
                "metadata": {"labels": {"app": wh}},
                "spec": {
                    "serviceAccountName": wh,
                    "containers": [{
                        "name": "webhook", "image": image,
                        "command": ["flexai", "k8s", "webhook", "--listen",
                                    f"0.0.0.0:{WEBHOOK_PORT}", "--cert", "/tls/tls.crt",
                                    "--key", "/tls/tls.key", "--scheduler-name",
                                    scheduler_name],
                        "ports": [{"containerPort": WEBHOOK_PORT, "name": "https"}],
                        "readinessProbe": {"httpGet": {"path": "/healthz", "port": WEBHOOK_PORT,
                                                       "scheme": "HTTPS"}},
                        "volumeMounts": [{"name": "tls", "mountPath": "/tls",
                                          "readOnly": True}],
                    }],
                    "volumes": [{"name": "tls", "secret": {"secretName": f"{wh}-tls"}}],
                },
            },
        },
    })
    docs.append({"apiVersion": "v1", "kind": "Service", "metadata": _meta(wh, ns),
                 "spec": {"selector": {"app": wh},
                          "ports": [{"port": 443, "targetPort": WEBHOOK_PORT,
                                     "name": "https"}]}})
    hook_meta = _meta(wh)
    hook_meta["annotations"] = {"cert-manager.io/inject-ca-from": f"{ns}/{wh}"}
    docs.append({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": hook_meta,
        "webhooks": [{
            "name": "pods.flexai.io",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Fail",
            "timeoutSeconds": 5,
            "reinvocationPolicy": "Never",
            "clientConfig": {"service": {"name": wh, "namespace": ns, "path": "/mutate",
                                         "port": 443}},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                       "resources": ["pods"], "scope": "Namespaced"}],
            "namespaceSelector": {"matchExpressions": [{
                "key": "kubernetes.io/metadata.name", "operator": "NotIn",
                "values": ["kube-system", ns]}]},
        }],
    })
    return docs


def render(**options: str) -> str:
    """Every object as one multi-document YAML text (options: see :data:`DEFAULTS`)."""
    opts = {**DEFAULTS, **{k: v for k, v in options.items() if v is not None}}
    head = ("# flexai on Kubernetes: generated by `flexai k8s manifests` "
            f"(namespace {opts['namespace']}, image {opts['image']}); see docs/kubernetes.md\n")
    return head + "".join("---\n" + to_yaml(d) for d in objects(**opts))
