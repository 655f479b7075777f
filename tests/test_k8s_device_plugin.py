"""The device plugin as a real process (``python -m flexai k8s device-plugin``) on the simulated
device, driven by a fake kubelet built from the same .proto (tests/support/fake_kubelet.py) and
a fake API server (tests/support/fake_apiserver.py): registration, ListAndWatch updates when a
simulated GPU is lost and mended, Allocate for a pod whose annotation the extender wrote,
a program started with what Allocate returned running under its quota (LD_PRELOAD, and the
ld.so.preload file mounted over /etc in a mount namespace where one can be made), and
re-registration after the kubelet's sockets are deleted and recreated.

The tests share one plugin process (module fixture) and run in file order; the last one
restarts the fake kubelet.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import Run
from flexai import sim
from flexai.node.launch import without_flexai

sys.path.insert(0, str(Path(__file__).parent / "support"))
from fake_apiserver import FakeApiServer  # noqa: E402
from fake_kubelet import FakeKubelet  # noqa: E402

NODE = "node-1"
REPLICAS = 4
MIB = 1 << 20


def _wait(cond, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        time.sleep(0.05)


def _sim_env(tmp: Path) -> dict:
    env = without_flexai(os.environ, keep=("FLEXAI_LIB_DIR",))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env = sim.sim_env(env, devices=2, memory="16GiB", state_dir=str(tmp / "sim"))
    env["FLEXAI_SIM_LOST_FILE"] = str(tmp / "lost")
    return env


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("k8s-dp")
    (tmp / "sim").mkdir()
    api = FakeApiServer().start()
    api.add_node(NODE)
    kubelet = FakeKubelet(tmp / "device-plugins").start()
    lib, state = tmp / "lib", tmp / "state"
    env = _sim_env(tmp)
    log = open(tmp / "plugin.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "flexai", "k8s", "device-plugin",
         "--plugin-dir", str(kubelet.plugin_dir), "--kube-api", api.url, "--node-name", NODE,
         "--replicas", str(REPLICAS), "--host-lib-dir", str(lib), "--container-lib-dir",
         str(lib), "--host-state-dir", str(state), "--container-state-dir", str(state),
         "--preload", "both", "--install-lib", "--health-interval", "0.2",
         "--watch-interval", "0.1", "--pod-wait", "1"],
        env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT)
    rig = {"tmp": tmp, "api": api, "kubelet": kubelet, "proc": proc, "env": env, "lib": lib,
           "state": state, "log": tmp / "plugin.log"}
    try:
        yield rig
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()
        kubelet.stop()
        api.stop()


def _log(rig) -> str:
    return rig["log"].read_text()


def test_registers_after_serving_and_lists_every_gpu_healthy(rig):
    kubelet = rig["kubelet"]
    reg = kubelet.wait_registered(1)
    assert reg.version == "v1beta1" and reg.resource_name == "flexai.io/gpu", _log(rig)
    assert reg.endpoint == "flexai-gpu.sock"
    assert not kubelet.errors  # the kubelet dialled back inside Register: served first
    assert kubelet.options[0].get_preferred_allocation_available
    devices = kubelet.wait_devices(lambda d: len(d) == 2 * REPLICAS)
    assert {h for _, h in devices} == {"Healthy"}
    # the node annotation the extender reads: both GPUs, their UUIDs and memory
    _wait(lambda: "flexai.io/gpus" in rig["api"].node(NODE)["metadata"]["annotations"],
          what="node annotation")
    gpus = json.loads(rig["api"].node(NODE)["metadata"]["annotations"]["flexai.io/gpus"])
    assert [g["index"] for g in gpus] == [0, 1]
    assert all(g["memory"] == 16 << 30 and g["healthy"] for g in gpus)
    ids = {i for i, _ in devices}
    assert ids == {f"{g['uuid']}-{k}" for g in gpus for k in range(REPLICAS)}


def test_list_and_watch_reports_a_lost_gpu_and_its_return(rig):
    kubelet, lost = rig["kubelet"], rig["tmp"] / "lost"
    gpus = json.loads(rig["api"].node(NODE)["metadata"]["annotations"]["flexai.io/gpus"])
    bad = gpus[1]["uuid"]

    def health_of(devices, uuid):
        return {h for i, h in devices if i.startswith(uuid)}

    try:
        lost.write_text("1\n")
        devices = kubelet.wait_devices(lambda d: health_of(d, bad) == {"Unhealthy"})
        assert health_of(devices, gpus[0]["uuid"]) == {"Healthy"}
        assert len(devices) == 2 * REPLICAS
        _wait(lambda: not json.loads(rig["api"].node(NODE)["metadata"]["annotations"][
            "flexai.io/gpus"])[1]["healthy"], what="node annotation says GPU 1 unhealthy")
        assert "unhealthy" in _log(rig)
    finally:
        lost.unlink(missing_ok=True)
    kubelet.wait_devices(lambda d: health_of(d, bad) == {"Healthy"})


def _schedule(rig, name: str, limits: dict) -> dict:
    """Create a pod and place it as kube-scheduler with flexai's extender would."""
    from flexai.k8s.cluster import Cluster
    from flexai.k8s.extender import Extender
    from flexai.k8s.kubeapi import KubeApi

    api = rig["api"]
    pod = api.add_pod({"metadata": {"name": name, "namespace": "default"},
                       "spec": {"schedulerName": "flexai-scheduler",
                                "containers": [{"name": "main", "image": "x",
                                                "resources": {"limits": limits}}]}})
    ext = Extender(Cluster(), KubeApi(api.url))
    ext.resync()
    res = ext.filter({"Pod": pod, "NodeNames": [NODE]})
    assert res["NodeNames"] == [NODE], res
    uid = pod["metadata"]["uid"]
    assert ext.bind({"PodName": name, "PodNamespace": "default", "PodUID": uid,
                     "Node": NODE}) == {"Error": ""}
    return api.pod("default", name)


def test_allocate_gives_the_slice_the_extender_chose(rig):
    kubelet = rig["kubelet"]
    pod = _schedule(rig, "pod-a", {"flexai.io/gpu": "1", "flexai.io/gpu-memory": "1024",
                                   "flexai.io/gpu-compute": "30"})
    alloc = json.loads(pod["metadata"]["annotations"]["flexai.io/allocation"])
    assert pod["spec"]["nodeName"] == NODE and alloc["node"] == NODE
    chosen = alloc["uuids"][0]
    ids = [i for i, _ in kubelet.latest]
    # the kubelet asks which devices it should take: the chosen GPU's
    pref = kubelet.preferred(ids[::-1], 1)
    assert pref.container_responses[0].deviceIDs[0].startswith(chosen)
    # ... but Allocate trusts the annotation, whatever device IDs the kubelet picked
    other = next(i for i in ids if not i.startswith(chosen))
    resp = kubelet.allocate([other])
    assert len(resp.container_responses) == 1
    c = resp.container_responses[0]
    assert c.envs["FLEXAI_GPU_MEMORY"] == "1024MiB"
    assert c.envs["FLEXAI_GPU_COMPUTE"] == "30"
    assert c.envs["FLEXAI_SLICE"] == "default.pod-a"
    assert c.envs["FLEXAI_PRIORITY"] == "normal"
    assert c.envs["NVIDIA_VISIBLE_DEVICES"] == chosen
    assert c.envs["FLEXAI_STATE_DIR"] == str(rig["state"])
    assert c.envs["LD_PRELOAD"] == str(rig["lib"] / "libflexai.so")
    mounts = {m.container_path: (m.host_path, m.read_only) for m in c.mounts}
    assert mounts[str(rig["lib"])] == (str(rig["lib"]), True)
    assert mounts[str(rig["state"])] == (str(rig["state"]), False)
    host_preload, ro = mounts["/etc/ld.so.preload"]
    assert ro and Path(host_preload).read_text() == f"{rig['lib'] / 'libflexai.so'}\n"
    assert (rig["lib"] / "libflexai.so").is_file()
    assert rig["api"].pod("default", "pod-a")["metadata"]["annotations"][
        "flexai.io/assigned"] == "true"
    # a second Allocate finds no pod waiting: a clear error, never an empty answer
    import grpc
    with pytest.raises(grpc.RpcError) as err:
        kubelet.allocate([other], timeout=30)
    assert "flexai.io/allocation" in err.value.details()
    rig["response"] = c


def _container_env(rig, response) -> dict:
    env = _sim_env(rig["tmp"])
    env.update(dict(response.envs))
    env["FLEXAI_CONTEXT_MEMORY"] = "0"  # only the program's allocations count here
    return env


def test_program_runs_under_its_quota_with_what_allocate_returned(rig, clients):
    resp = rig.get("response")
    if resp is None:
        pytest.skip("needs test_allocate_gives_the_slice_the_extender_chose")
    env = _container_env(rig, resp)
    proc = subprocess.Popen([str(clients["client"]), "init", "ctx", "0", "info", "alloc",
                             "800MiB", "alloc", "400MiB", "module", "saturate", "kernel", "500",
                             "1500"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        # while it runs, the node's state directory shows its slice under the pod's name
        slices: list = []
        deadline = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < deadline and not slices:
            ps = subprocess.run([sys.executable, "-m", "flexai", "ps", "--json", "--state-dir",
                                 str(rig["state"])], capture_output=True, text=True, timeout=30,
                                env=without_flexai(os.environ))
            slices = [s for s in json.loads(ps.stdout)["slices"] if s["name"] == "default.pod-a"]
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    assert proc.returncode == 0, err
    assert slices and slices[0]["devices"][0]["limit_bytes"] == 1024 * MIB
    assert slices[0]["devices"][0]["compute"] == 30
    run = Run(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    assert run.op("info")["total"] == 1024 * MIB  # the quota, not the 16 GiB card
    assert run.rcs("alloc") == [0, 2]  # the second one would pass 1024 MiB: out of memory
    assert run.op("saturate")["fraction"] < 0.6  # 30% compute (alone it is ~1.0)


def test_ld_so_preload_file_alone_puts_the_program_in_its_slice(rig, clients, tmp_path):
    resp = rig.get("response")
    if resp is None:
        pytest.skip("needs test_allocate_gives_the_slice_the_extender_chose")
    unshare = shutil.which("unshare")
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir(), work.mkdir()
    (upper / "ld.so.preload").write_text("")  # the mount point the runtime would make
    setup = (f"mount -t overlay overlay -o lowerdir=/etc,upperdir={upper},workdir={work} /etc")
    probe = subprocess.run([unshare or "unshare", "-m", "--propagation", "private", "sh", "-c",
                            setup], capture_output=True, text=True, timeout=10) \
        if unshare else None
    if probe is None or probe.returncode != 0:
        pytest.skip("no mount namespace here to mount ld.so.preload over /etc: "
                    + (probe.stderr.strip() if probe else "no unshare"))
    mounts = {m.container_path: m.host_path for m in resp.mounts}
    env = _container_env(rig, resp)
    del env["LD_PRELOAD"]
    script = (f"{setup} && mount --bind {mounts['/etc/ld.so.preload']} /etc/ld.so.preload && "
              f"exec {clients['client']} init ctx 0 info alloc 800MiB alloc 400MiB")
    proc = subprocess.run([unshare, "-m", "--propagation", "private", "sh", "-c", script],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    run = Run(proc)
    assert run.op("info")["total"] == 1024 * MIB
    assert run.rcs("alloc") == [0, 2]


def test_registers_again_when_the_kubelet_restarts(rig):
    kubelet = rig["kubelet"]
    before = len(kubelet.registrations)
    kubelet.restart()  # deletes every socket, kubelet.sock included, and serves a new one
    reg = kubelet.wait_registered(before + 1)
    assert reg.version == "v1beta1"
    assert (kubelet.plugin_dir / "flexai-gpu.sock").is_socket()
    devices = kubelet.wait_devices(lambda d: len(d) == 2 * REPLICAS)
    assert {h for _, h in devices} == {"Healthy"}
    assert "registering again" in _log(rig)
    assert rig["proc"].poll() is None


def test_container_response_per_preload_mode_and_whole_cards():
    from flexai.k8s.allocate import Layout, container_response
    from flexai.k8s.resources import Allocation, NodeGpu

    gpus = {u: NodeGpu(i, u, "H100", (80 << 30) + i) for i, u in enumerate(("GPU-a", "GPU-b"))}
    whole = Allocation("n", (0, 1), ("GPU-a", "GPU-b"), 0, 100, "best-effort", "ns.p", "c", 1.0)
    r = container_response(whole, Layout(preload="file"), gpus)
    assert "LD_PRELOAD" not in r["envs"]
    assert ("/etc/ld.so.preload", "/usr/local/flexai/lib/ld.so.preload", True) in r["mounts"]
    assert r["envs"]["FLEXAI_GPU_MEMORY"] == f"0:{80 << 30},1:{(80 << 30) + 1}"
    assert r["envs"]["FLEXAI_PRIORITY"] == "low"  # best-effort: the library's lowest
    assert r["envs"]["NVIDIA_VISIBLE_DEVICES"] == "GPU-a,GPU-b"
    one = Allocation("n", (1,), ("GPU-b",), 3 * MIB + 1, 20, "high", "ns.q", "c", 1.0)
    r = container_response(one, Layout(preload="env"), gpus)
    assert r["envs"]["LD_PRELOAD"] == "/usr/local/flexai/lib/libflexai.so"
    assert all(m[0] != "/etc/ld.so.preload" for m in r["mounts"])
    assert r["envs"]["FLEXAI_GPU_MEMORY"] == str(3 * MIB + 1)
    with pytest.raises(ValueError, match="GPU-z"):
        container_response(Allocation("n", (0,), ("GPU-z",), 0, 100, "normal", "s", "c", 1.0),
                           Layout(), gpus)
    with pytest.raises(ValueError, match="absolute"):
        Layout(host_lib_dir="lib")
