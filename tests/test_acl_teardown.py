"""Memory the Ascend runtime frees behind the program's back, and stream-ordered pools, on the
stand-in runtime: the last aclrtResetDevice of a device (or aclrtResetDeviceForce) releases the
device's default context and aclrtDestroyContext an explicit one, each with the device memory
allocated in it (CANN: a context "manages the lifetime of its objects (streams, events, device
memory)"), so their charges must go back, as CUDA's context teardowns do (test_memory.py). A
pool (aclrtMemPoolMallocAsync) keeps freed memory: the slice is charged what the pool holds.
Verified on the stand-in only (docs/ascend.md)."""
from __future__ import annotations

import pytest

pytest.register_assert_rewrite("acl_support")
pytest_plugins = ["acl_support"]  # the fixture run_acl

from acl_support import OOM  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
TAKEN_3G = 3 * GiB + 32  # what aclrtMalloc of 3 GiB takes (acl_sizes.h)


def test_the_stand_in_frees_a_contexts_memory_with_it(run_acl):
    # the runtime's documented behaviour, without a quota: the NPU's memory comes back
    r = run_acl("init", "dev", "0", "dev", "0", "alloc", "3GiB", "reset", "0", "info",
                "reset", "0", "reset", "0", "dev", "0", "info", "ctx", "0", "alloc", "2GiB",
                "dctx", "0", "dev", "0", "info", env={"FLEXAI_SIM_MEMORY": "8GiB"})
    assert r.op("info", 0)["free"] == 8 * GiB - TAKEN_3G, "one reset of two: nothing freed"
    assert r.rcs("reset")[:2] == [0, 0]
    assert r.rcs("reset")[2] != 0, "a reset with nothing left to reset fails"
    assert r.op("info", 1)["free"] == 8 * GiB, "the last reset freed the default context's"
    assert r.op("info", 2)["free"] == 8 * GiB, "destroying a context freed what it held"


def test_memory_freed_by_the_last_reset_is_given_back(run_acl):
    # 3 GiB under an 8 GiB quota, then a reset, three times: each allocation fits because the
    # reset gave the previous one back (before the fix the third was refused: 9 GiB charged).
    # The sizes differ by a few MiB so that no allocation gets its predecessor's address (a
    # reused address tells flexai that the old one was freed, which would hide the bug).
    ops = ["init"]
    for k in range(3):
        ops += ["dev", "0", "info", "alloc", f"{3072 + 4 * k}MiB", "reset", "0", "forget"]
    r = run_acl(*ops, "dev", "0", "info",
                env={"FLEXAI_GPU_MEMORY": "8GiB", "FLEXAI_CONTEXT_MEMORY": "512MiB"})
    assert r.rcs("alloc") == [0, 0, 0]
    assert r.rcs("reset") == [0, 0, 0]
    for k in range(4):
        assert r.op("info", k)["free"] == 8 * GiB - 512 * MiB, f"round {k}: nothing left over"


def test_only_the_last_reset_frees(run_acl):
    r = run_acl("init", "dev", "0", "dev", "0", "alloc", "3GiB", "reset", "0", "info",
                "alloc", "3GiB", "alloc", "3GiB", env={"FLEXAI_GPU_MEMORY": "8GiB"})
    assert r.op("info")["free"] == 8 * GiB - TAKEN_3G, "still set once: still held"
    assert r.rcs("alloc") == [0, 0, OOM]


def test_reset_device_force_frees_at_once(run_acl):
    r = run_acl("init", "dev", "0", "dev", "0", "alloc", "3GiB", "alloc", "3GiB",
                "resetforce", "0", "forget", "dev", "0", "info", "alloc", "6GiB",
                env={"FLEXAI_GPU_MEMORY": "8GiB"})
    assert r.rcs("resetforce") == [0]
    assert r.op("info")["free"] == 8 * GiB
    assert r.rcs("alloc") == [0, 0, 0]


def test_destroying_a_context_gives_its_memory_back_and_only_its(run_acl):
    r = run_acl("init", "dev", "0", "alloc", "1GiB", "ctx", "0", "alloc", "3GiB", "info",
                "dctx", "0", "dev", "0", "info", "alloc", "3GiB", "alloc", "3GiB",
                env={"FLEXAI_GPU_MEMORY": "8GiB"})
    assert r.op("info", 0)["free"] == 8 * GiB - (GiB + 32) - TAKEN_3G
    assert r.rcs("dctx") == [0]
    assert r.op("info", 1)["free"] == 8 * GiB - (GiB + 32), "the default context's stays"
    assert r.rcs("alloc") == [0, 0, 0, 0]


def test_a_context_made_without_set_device_costs_the_device_memory(run_acl):
    r = run_acl("init", "ctx", "0", "info",
                env={"FLEXAI_GPU_MEMORY": "2GiB", "FLEXAI_CONTEXT_MEMORY": "512MiB"})
    assert r.rcs("ctx") == [0]
    assert r.op("info")["free"] == 2 * GiB - 512 * MiB


def test_a_memory_pool_is_charged_what_it_holds(run_acl):
    r = run_acl("init", "dev", "0", "pool", "0", "palloc", "600MiB", "info", "pfree", "info",
                "palloc", "600MiB", "info", "palloc", "600MiB", "pfree", "ptrim", "0", "info",
                "palloc", "300MiB", "pfree", "pdestroy", "info", env={"FLEXAI_GPU_MEMORY": "1GiB"})
    assert r.rcs("pool") == [0]
    assert r.rcs("palloc") == [0, 0, OOM, 0]
    assert r.op("info", 0)["free"] == GiB - 600 * MiB
    assert r.op("info", 1)["free"] == GiB - 600 * MiB, "a free keeps the memory in the pool"
    assert r.op("info", 2)["free"] == GiB - 600 * MiB, "served from what the pool kept"
    assert r.op("info", 3)["free"] == GiB, "trimmed: the pool gave it back"
    assert r.op("info", 4)["free"] == GiB, "a destroyed pool holds nothing"


def test_a_pool_never_grows_past_the_quota(run_acl):
    r = run_acl("init", "dev", "0", "pool", "0", *(["palloc", "100MiB"] * 12), "info",
                env={"FLEXAI_GPU_MEMORY": "1GiB"})
    assert r.rcs("palloc") == [0] * 10 + [OOM, OOM]
    assert r.op("info")["free"] == GiB - 1000 * MiB
