"""flexai.ray on the real test cluster (tests/support/raycluster.py, shared with test_pool):
inside a Ray task and inside a Ray actor the slice's memory quota holds — allocating past it
through the (simulated) CUDA driver gets CUDA_ERROR_OUT_OF_MEMORY in the worker itself — and
libflexai.so is mapped there, preloaded through the runtime environment (the node's Ray
processes run without LD_PRELOAD). Also the options flexai gives Ray: a GPU fraction, the
memory resource, the slice's variables (named by the library's table), bad values.
"""
from __future__ import annotations

import pytest

pytest.importorskip("ray")

from support import raycluster  # noqa: E402

import flexai  # noqa: E402
import flexai.ray  # noqa: E402
from flexai.spec import variable  # noqa: E402

#: CUDA_ERROR_OUT_OF_MEMORY
OOM = 2


@pytest.fixture(scope="session")
def cluster(request) -> raycluster.RayCluster:
    return raycluster.shared(request, raycluster.start_default)


@pytest.fixture
def connected(cluster, request):
    import ray

    if not ray.is_initialized():
        request.session.config.add_cleanup(ray.shutdown)  # before the cluster stops
        ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    return cluster


def _probe():
    """A function run in the Ray worker: allocate through libcuda with ctypes (half the quota,
    then the quota again), and report what the worker was started with. Made here, so that
    Ray pickles it by value (workers cannot import this test module)."""

    def probe(quota: int) -> dict:
        import ctypes
        import os

        cuda = ctypes.CDLL("libcuda.so.1")
        dev, ctx = ctypes.c_int(0), ctypes.c_void_p()
        rc = {"init": cuda.cuInit(0), "device": cuda.cuDeviceGet(ctypes.byref(dev), 0)}
        rc["ctx"] = cuda.cuCtxCreate_v2(ctypes.byref(ctx), 0, dev)
        first, second = ctypes.c_uint64(), ctypes.c_uint64()
        rc["half"] = cuda.cuMemAlloc_v2(ctypes.byref(first), ctypes.c_size_t(quota // 2))
        rc["past"] = cuda.cuMemAlloc_v2(ctypes.byref(second), ctypes.c_size_t(quota))
        with open("/proc/self/environ", "rb") as f:
            raw = f.read().split(b"\0")
        env = dict(x.decode(errors="replace").split("=", 1) for x in raw if b"=" in x)
        with open("/proc/self/maps") as f:
            mapped = "libflexai.so" in f.read()
        cuda.cuMemFree_v2(first)
        return {"rc": rc, "mapped": mapped, "exec_env": env, "pid": os.getpid(),
                "visible": os.environ.get("CUDA_VISIBLE_DEVICES")}

    return probe


def _check(result: dict, quota: int) -> None:
    rc = result["rc"]
    assert rc["init"] == 0 and rc["device"] == 0 and rc["ctx"] == 0, rc
    assert rc["half"] == 0, rc
    assert rc["past"] == OOM, rc  # the driver's out-of-memory error, in the worker itself
    assert result["mapped"], "libflexai.so is not mapped in the Ray worker"
    env = result["exec_env"]
    assert env["LD_PRELOAD"].split(":")[0] == str(flexai.library_path())
    assert int(env[variable("gpu_memory").name]) == quota
    assert result["visible"] not in (None, "")  # Ray gave it a GPU


def test_quota_holds_inside_a_ray_task(connected):
    import ray

    quota = 2**30
    task = flexai.ray.remote(gpu_memory=quota, gpu_compute=20)(_probe())
    result = ray.get(task.remote(quota), timeout=120)
    _check(result, quota)


def test_quota_holds_inside_a_ray_actor(connected):
    import ray

    quota = 512 * 2**20
    probe = _probe()

    class Worker:
        def run(self, quota: int) -> dict:
            return probe(quota)

    actor = flexai.ray.remote(gpu_memory="512MiB", gpu_compute=10)(Worker).remote()
    try:
        _check(ray.get(actor.run.remote(quota), timeout=120), quota)
    finally:
        ray.kill(actor)


def test_options_book_a_fraction_the_memory_and_the_slice(connected):
    opts = flexai.ray.options(gpu_memory="24GiB", gpu_compute=30, priority="high",
                              num_cpus=0, runtime_env={"env_vars": {"SEED": "1"}})
    # the smallest card that holds 24 GiB is n1's 40 GiB: 24/40 of it, more than 30 %
    assert opts["num_gpus"] == pytest.approx(0.6)
    assert opts["resources"] == {"flexai_gpu_memory_mib": 24 * 1024.0}
    env = opts["runtime_env"]["env_vars"]
    assert env["SEED"] == "1" and opts["num_cpus"] == 0
    assert env[variable("gpu_compute").name] == "30"
    assert env[variable("priority").name] == "high"
    assert env["LD_PRELOAD"] == f"{flexai.library_path()}:${{LD_PRELOAD}}"
    small = flexai.ray.options(gpu_memory="1GiB", gpu_compute=25, gpu_model="Sim A100")
    assert small["num_gpus"] == 0.25
    assert small["resources"]["flexai_gpu_model:Sim-A100"] == 0.25


@pytest.mark.parametrize("kwargs, words", [
    ({"gpu_memory": "8 gigs"}, ["8 gigs"]),
    ({"gpu_compute": 150}, ["150"]),
    ({"gpu_memory": "1GiB", "priority": "urgent"}, ["urgent", "high"]),
    ({}, ["gpu_memory"]),
])
def test_bad_values_fail_at_decoration(kwargs, words):
    with pytest.raises(flexai.BadValueError) as info:
        flexai.ray.remote(**kwargs)(lambda: None)
    for w in words:
        assert w in str(info.value)


def test_memory_larger_than_any_card(connected):
    with pytest.raises(flexai.BadValueError, match="more than any GPU"):
        flexai.ray.options(gpu_memory="64GiB")


def test_fraction_before_ray_is_connected_never_overpacks():
    """Without Ray the cards' sizes are unknown: the compute share decides, and memory alone
    books a whole GPU (run in a child: this process may be connected)."""
    import subprocess
    import sys

    code = ("import flexai.ray as r; print(r.options(gpu_memory='1GiB')['num_gpus'], "
            "r.options(gpu_memory='1GiB', gpu_compute=30)['num_gpus'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1.0", "0.3"]
