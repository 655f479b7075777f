"""What the driver really holds (issue 8, item 8): stream-ordered pools keep freed memory, a
released VMM handle lives on through its mappings, host-located pools are not device memory,
stream-ordered memory is the pool's device's, and every context costs its own memory.

The first tests pin the simulated driver's model of the real one (run without the shim); the
others check the slice is charged what the driver holds."""
from __future__ import annotations

import pytest
from test_memory import NATIVE, OOM, _sim_alone

MiB = 1 << 20
GiB = 1 << 30


# ---- the simulated driver's pools behave as NVIDIA's ----------------------------------------

def test_sim_pool_keeps_freed_memory_until_a_synchronization(run_client, tmp_path):
    r = run_client("init", "ctx", "0", "usepool", "default", "0", "frompool", "1GiB", "info",
                   "free", "info", "poolattr", "sync", "info", "poolattr", preload=NATIVE,
                   env=_sim_alone(tmp_path, FLEXAI_SIM_MEMORY="8GiB"))
    assert r.rcs("frompool") == [0] and r.rcs("free") == [0]
    info = [r.op("info", k)["free"] for k in range(3)]
    assert info == [7 * GiB, 7 * GiB, 8 * GiB], "freed to the pool; released at the sync"
    assert (r.op("poolattr", 0)["reserved"], r.op("poolattr", 0)["used"]) == (GiB, 0)
    assert r.op("poolattr", 1)["reserved"] == 0, "release threshold 0 by default"


def test_sim_release_threshold_keeps_memory_until_trimmed(run_client, tmp_path):
    r = run_client("init", "ctx", "0", "usepool", "default", "0", "threshold", "max",
                   "frompool", "1GiB", "free", "sync", "info", "threshold", "256MiB", "sync",
                   "info", "trim", "0", "info", preload=NATIVE,
                   env=_sim_alone(tmp_path, FLEXAI_SIM_MEMORY="8GiB"))
    info = [r.op("info", k)["free"] for k in range(3)]
    assert info == [7 * GiB, 8 * GiB - 256 * MiB, 8 * GiB]


def test_sim_pool_reuses_what_it_keeps(run_client, tmp_path):
    r = run_client("init", "ctx", "0", "usepool", "default", "0", "threshold", "max",
                   "frompool", "768MiB", "free", "frompool", "768MiB", "alloc", "512MiB",
                   preload=NATIVE, env=_sim_alone(tmp_path, FLEXAI_SIM_MEMORY="1GiB"))
    assert r.rcs("frompool") == [0, 0], "the pool's own memory serves the second allocation"
    assert r.rcs("alloc") == [OOM], "the pool holds 768 MiB of the device's 1 GiB"


def test_sim_host_pool_is_not_device_memory(run_client, tmp_path):
    r = run_client("init", "ctx", "0", "usepool", "host", "frompool", "2GiB", "touch", "info",
                   preload=NATIVE, env=_sim_alone(tmp_path, FLEXAI_SIM_MEMORY="1GiB"))
    assert r.rcs("frompool") == [0] and r.rcs("touch") == [0]
    assert r.op("info")["free"] == GiB


def test_sim_pool_memory_is_the_pools_device(run_client, tmp_path):
    r = run_client("init", "ctx", "0", "usepool", "default", "1", "frompool", "1GiB", "info",
                   "ctx", "1", "info", preload=NATIVE,
                   env=_sim_alone(tmp_path, FLEXAI_SIM_MEMORY="8GiB", FLEXAI_SIM_DEVICES="2"))
    assert r.rcs("frompool") == [0]
    assert [r.op("info", k)["free"] for k in range(2)] == [8 * GiB, 7 * GiB]


def test_sim_released_vmm_memory_lives_while_mapped(run_client, tmp_path):
    r = run_client("init", "ctx", "0", "vmm", "1GiB", "map", "free", "info", "unmap", "info",
                   preload=NATIVE, env=_sim_alone(tmp_path, FLEXAI_SIM_MEMORY="8GiB"))
    assert r.rcs("map") == [0] and r.rcs("free") == [0] and r.rcs("unmap") == [0]
    assert [r.op("info", k)["free"] for k in range(2)] == [7 * GiB, 8 * GiB]


# ---- the slice is charged what the driver holds ---------------------------------------------

def test_pool_reserve_is_charged_until_trimmed(run_client, tmp_path):
    # PyTorch's cudaMallocAsync backend: release threshold max, frees keep the memory pooled,
    # empty_cache() trims. The slice holds what the pool holds.
    r = run_client("init", "ctx", "0", "usepool", "default", "0", "threshold", "max",
                   "frompool", "3GiB", "free", "sync", "info", "alloc", "2GiB",
                   "frompool", "3GiB", "free", "trim", "0", "info", "alloc", "2GiB",
                   env=_sim_alone(tmp_path, FLEXAI_GPU_MEMORY="4GiB"))
    assert r.op("info", 0)["free"] == GiB, "the pool keeps 3 GiB: charged"
    assert r.rcs("alloc") == [OOM, 0]
    assert r.rcs("frompool") == [0, 0], "the pool's own memory is reused, not charged twice"
    assert r.op("info", 1)["free"] == 4 * GiB, "trimmed: given back"


def test_pool_memory_comes_back_at_a_synchronization(run_client, tmp_path):
    r = run_client("init", "ctx", "0", "async", "600MiB", "free", "info", "sync", "info",
                   env=_sim_alone(tmp_path, FLEXAI_GPU_MEMORY="1GiB"))
    assert r.op("info", 0)["free"] == GiB - 600 * MiB, "freed into the pool, still held"
    assert r.op("info", 1)["free"] == GiB, "released at the synchronization"


def test_quota_refusal_first_looks_at_what_pools_gave_back(run_client, tmp_path):
    # the driver released the pool at the sync; the slice learns it before refusing
    r = run_client("init", "ctx", "0", "async", "600MiB", "free", "sync", "alloc", "900MiB",
                   env=_sim_alone(tmp_path, FLEXAI_GPU_MEMORY="1GiB"))
    assert r.rcs("alloc") == [0]


def test_host_pool_is_not_charged(run_client, tmp_path):
    r = run_client("init", "ctx", "0", "usepool", "host", "frompool", "2GiB", "info",
                   env=_sim_alone(tmp_path, FLEXAI_GPU_MEMORY="1GiB"))
    assert r.rcs("frompool") == [0]
    assert r.op("info")["free"] == GiB


def test_pool_allocation_is_charged_to_the_pools_device(run_client, tmp_path):
    env = _sim_alone(tmp_path, FLEXAI_SIM_DEVICES="2", FLEXAI_GPU_MEMORY="0:1GiB,1:4GiB")
    r = run_client("init", "ctx", "0", "usepool", "default", "1", "frompool", "2GiB", "info",
                   "ctx", "1", "info", env=env)
    assert r.rcs("frompool") == [0]
    assert [r.op("info", k)["free"] for k in range(2)] == [GiB, 2 * GiB]


def test_async_allocation_is_charged_to_the_streams_device(run_client, tmp_path):
    env = _sim_alone(tmp_path, FLEXAI_SIM_DEVICES="2", FLEXAI_GPU_MEMORY="0:4GiB,1:1GiB")
    r = run_client("init", "ctx", "0", "stream", "ctx", "1", "async", "2GiB", "info", "ctx", "0",
                   "info", env=env)
    assert r.rcs("async") == [0], "the stream is device 0's"
    assert [r.op("info", k)["free"] for k in range(2)] == [GiB, 2 * GiB]


def test_released_vmm_handle_stays_charged_while_mapped(run_client, tmp_path):
    # helper-7's GPU check saw `mapped: 0`: cuMemRelease gave the charge back while the
    # mapping kept the memory alive
    r = run_client("init", "ctx", "0", "vmm", "600MiB", "map", "free", "info", "vmm", "600MiB",
                   "unmap", "info", "vmm", "600MiB",
                   env=_sim_alone(tmp_path, FLEXAI_GPU_MEMORY="1GiB"))
    assert r.rcs("map") == [0] and r.rcs("unmap") == [0]
    assert r.op("info", 0)["free"] == GiB - 600 * MiB, "released but mapped: still held"
    assert r.rcs("vmm") == [0, OOM, 0]
    assert r.op("info", 1)["free"] == GiB, "the last unmap frees it"


def test_unmapping_a_handle_still_held_keeps_its_charge(run_client, tmp_path):
    r = run_client("init", "ctx", "0", "vmm", "600MiB", "map", "unmap", "info", "free", "info",
                   env=_sim_alone(tmp_path, FLEXAI_GPU_MEMORY="1GiB"))
    assert [r.op("info", k)["free"] for k in range(2)] == [GiB - 600 * MiB, GiB]


@pytest.mark.parametrize("second", ["ctxcreate", "primary-first"])
def test_a_second_context_on_a_device_is_charged_like_the_first(run_client, tmp_path, second):
    ops = (["ctx", "0", "ctxcreate", "0"] if second == "primary-first"
           else ["ctxcreate", "0", "ctxcreate", "0"])
    r = run_client("init", *ops, "info", "ctxdestroy", "info",
                   env=_sim_alone(tmp_path, FLEXAI_GPU_MEMORY="1GiB",
                                  FLEXAI_CONTEXT_MEMORY="256MiB"))
    assert r.op("info", 0)["free"] == 512 * MiB, "two contexts, two overheads"
    assert r.op("info", 1)["free"] == 768 * MiB, "the destroyed one's comes back"
