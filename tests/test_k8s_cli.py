"""``flexai k8s``: bad input is a one-line error with exit status 2; the extender and the
webhook run as processes, answer, and exit 0 on SIGTERM; the device plugin without a kubelet
waits (and stops cleanly) instead of failing.
"""
from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import time

import pytest


def flexai(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flexai", "k8s", *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("args, words", [
    ((), "name a component"),
    (("extender", "--listen", "nonsense"), "--listen"),
    (("extender", "--listen", "127.0.0.1:0", "--policy", "nope"), "unknown policy"),
    (("webhook", "--listen", "127.0.0.1:0", "--cert", "x.crt"), "--key"),
    (("device-plugin", "--replicas", "0"), "--replicas"),
    (("device-plugin", "--host-lib-dir", "relative/dir"), "absolute"),
])
def test_bad_input_is_one_line_and_status_2(args, words):
    proc = flexai(*args)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("flexai:")]
    assert len(lines) == 1 and words in lines[0], proc.stderr


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(port: int, path: str, body: dict, deadline: float) -> dict:
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
            return json.loads(conn.getresponse().read())
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_extender_and_webhook_processes_answer_and_stop_on_sigterm(tmp_path):
    from flexai.k8s.resources import NodeGpu, encode_node_gpus

    ep, wp = _port(), _port()
    ext = subprocess.Popen([sys.executable, "-m", "flexai", "k8s", "extender", "--listen",
                            f"127.0.0.1:{ep}"], stderr=subprocess.PIPE, text=True)
    hook = subprocess.Popen([sys.executable, "-m", "flexai", "k8s", "webhook", "--listen",
                             f"127.0.0.1:{wp}"], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        node = {"metadata": {"name": "n", "annotations": {"flexai.io/gpus": encode_node_gpus(
            [NodeGpu(0, "GPU-00000000-0000-0000-0000-000000000000", "H100", 80 << 30)])}}}
        pod = {"metadata": {"name": "p", "namespace": "d", "uid": "u"},
               "spec": {"containers": [{"name": "c", "resources": {"limits": {
                   "flexai.io/gpu": "1", "flexai.io/gpu-compute": "50"}}}]}}
        res = _post(ep, "/filter", {"Pod": pod, "Nodes": {"items": [node]}}, deadline)
        assert [n["metadata"]["name"] for n in res["Nodes"]["items"]] == ["n"]
        review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                  "request": {"uid": "r", "kind": {"kind": "Pod"}, "operation": "CREATE",
                              "object": pod}}
        out = _post(wp, "/mutate", review, deadline)
        assert out["response"]["allowed"] and out["response"]["patchType"] == "JSONPatch"
    finally:
        assert _stop(ext) == 0, ext.stderr.read()
        assert _stop(hook) == 0, hook.stderr.read()


def test_device_plugin_waits_for_a_kubelet_and_stops_cleanly(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "flexai", "k8s", "device-plugin",
                             "--plugin-dir", str(tmp_path / "dp"), "--host-lib-dir",
                             str(tmp_path / "lib"), "--host-state-dir", str(tmp_path / "state"),
                             "--watch-interval", "0.1"],
                            stderr=subprocess.PIPE, text=True)
    preload = tmp_path / "lib" / "ld.so.preload"
    deadline = time.monotonic() + 30  # started: it prepared the host (a loaded machine is slow)
    while not preload.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # and is waiting for a kubelet
    assert proc.poll() is None, proc.stderr.read()
    assert _stop(proc) == 0
    assert (tmp_path / "lib" / "ld.so.preload").read_text() == \
        "/usr/local/flexai/lib/libflexai.so\n"
