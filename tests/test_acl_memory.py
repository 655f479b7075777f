"""Memory quotas on Ascend NPUs: the memory tests of the CUDA side (test_memory.py) through the
ACL client on the stand-in runtime, under LD_PRELOAD, by direct calls and through
dlopen("libascendcl.so") + dlsym. Verified on the stand-in only (docs/ascend.md)."""
from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

pytest.register_assert_rewrite("acl_support")
pytest_plugins = ["acl_support"]  # the fixtures acl_client and run_acl

from acl_support import OOM, acl_env  # noqa: E402
from test_memory import _read_until  # noqa: E402

from conftest import LIBFLEXAI, SIM_DIR, Run  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
ACL_HOOKS_DEF = Path(__file__).parent.parent / "csrc" / "acl" / "acl_hooks.def"


def _mb2(n: int) -> int:
    return -(-n // (2 * MiB)) * 2 * MiB


# path -> (operation, what the runtime takes for 600 MiB: acl_sizes.h)
PATHS = {
    "alloc": ("alloc", 600 * MiB + 32),        # aclrtMalloc: rounded to 32, plus 32
    "cached": ("cached", 600 * MiB + 32),      # aclrtMallocCached
    "cfg": ("cfg", 600 * MiB + 32),            # aclrtMallocWithCfg
    "align32": ("align32", 600 * MiB),         # aclrtMallocAlign32: rounded only
    "huge": ("huge", _mb2(600 * MiB + 32)),    # a huge-page policy: whole 2 MiB pages
    "phys": ("phys", 600 * MiB),               # reserve + aclrtMallocPhysical + map
    "physonly": ("physonly", 600 * MiB),       # aclrtMallocPhysical alone
}


@pytest.mark.parametrize("path", sorted(PATHS))
def test_each_allocation_path_is_charged_refused_and_released(run_acl, path):
    op, charged = PATHS[path]
    r = run_acl("init", "dev", "0", "info", op, "600MiB", "info", op, "600MiB", "free", "info",
                env={"FLEXAI_GPU_MEMORY": "1GiB"})
    before, during, after = r.op("info", 0), r.op("info", 1), r.op("info", 2)
    assert before["total"] == GiB and before["free"] == GiB
    assert r.rcs(op) == [0, OOM], f"{path}: the first fits, the second is over the quota"
    assert during["free"] == GiB - charged
    assert r.op("free")["rc"] == 0
    assert after["free"] == GiB, "a free gives back exactly what was charged"


@pytest.mark.parametrize("via", ["link", "dlsym", "default"])
def test_every_resolution_path_is_limited(run_acl, via):
    r = run_acl("init", "dev", "0", "info", "alloc", "1536MiB", "align32", "512MiB", "info",
                "phys", "1GiB", via=via, env={"FLEXAI_GPU_MEMORY": "1GiB"})
    assert r.op("info", 0)["total"] == GiB
    assert r.rcs("alloc") == [OOM] and r.rcs("align32") == [0]
    assert r.op("info", 1)["free"] == 512 * MiB
    assert r.op("phys")["rc"] == OOM


def test_without_quota_calls_pass_through(run_acl):
    r = run_acl("init", "dev", "0", "info", "alloc", "1GiB", "info",
                env={"FLEXAI_SIM_MEMORY": "16GiB"})
    assert r.op("info", 0)["total"] == 16 * GiB
    assert r.op("alloc")["rc"] == 0
    assert r.op("info", 1)["free"] == 15 * GiB - 32


def test_mem_info_never_reports_more_than_the_npu_has(acl_client, state_dir):
    # two slices of 12 GiB on a 16 GiB NPU: while one holds 10 GiB, the other may not size a
    # cache to memory the first holds (the stand-in's memory is the node's, shared)
    env_a = acl_env(state_dir, FLEXAI_GPU_MEMORY="12GiB", FLEXAI_SLICE="a")
    holder = subprocess.Popen([str(acl_client), "init", "dev", "0", "align32", "10GiB", "wait"],
                              env=env_a, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert '"op":"wait"' in _read_until(holder, '"op":"wait"')
        env_b = acl_env(state_dir, FLEXAI_GPU_MEMORY="12GiB", FLEXAI_SLICE="b")
        r = Run(subprocess.run([str(acl_client), "init", "dev", "0", "info"], env=env_b,
                               capture_output=True, text=True, timeout=30))
        assert r.op("info")["total"] == 12 * GiB
        assert r.op("info")["free"] == 6 * GiB
    finally:
        holder.communicate("go\n", timeout=30)


def test_context_overhead_is_charged_while_the_device_is_set(run_acl):
    r = run_acl("init", "dev", "0", "info", "dev", "0", "info", "reset", "0", "reset", "0",
                "dev", "0", "info",
                env={"FLEXAI_GPU_MEMORY": "1GiB", "FLEXAI_CONTEXT_MEMORY": "256MiB"})
    assert r.op("info", 0)["free"] == 768 * MiB, "the device's context, once"
    assert r.op("info", 1)["free"] == 768 * MiB, "set twice: still once"
    assert r.rcs("reset") == [0, 0]
    assert r.op("info", 2)["free"] == 768 * MiB, "the last reset gave it back, the set again"


def test_slice_shared_by_processes(acl_client, state_dir):
    env = acl_env(state_dir, FLEXAI_GPU_MEMORY="1GiB", FLEXAI_SLICE="shared")
    holder = subprocess.Popen([str(acl_client), "init", "dev", "0", "align32", "700MiB", "wait"],
                              env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        _read_until(holder, '"op":"wait"')
        r = Run(subprocess.run([str(acl_client), "init", "dev", "0", "info"], env=env,
                               capture_output=True, text=True, timeout=30))
        assert r.op("info")["free"] == 324 * MiB
    finally:
        holder.communicate("go\n", timeout=30)


@pytest.mark.parametrize("via", ["link", "dlsym"])
def test_32_racing_processes_never_exceed_the_quota(acl_client, state_dir, via):
    env = acl_env(state_dir, FLEXAI_GPU_MEMORY="4GiB", FLEXAI_SLICE="race")
    procs = [subprocess.Popen([str(acl_client), "--via", via, "init", "dev", "0", "fill",
                               "48MiB", "wait"], env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(32)]
    try:
        outs = [_read_until(p, '"op":"wait"') for p in procs]
        got = [Run(subprocess.CompletedProcess([], 0, o, "")).op("fill")["bytes"] for o in outs]
        chunk = 48 * MiB + 32  # what each aclrtMalloc of 48 MiB takes
        taken = sum(got) // (48 * MiB) * chunk
        assert taken <= 4 * GiB
        assert taken > 4 * GiB - chunk, "the slack is less than one chunk"
    finally:
        for p in procs:
            p.communicate("go\n", timeout=30)


@pytest.mark.parametrize("via", ["link", "dlsym"])
def test_sigkilled_processes_never_block_others_and_are_reclaimed(acl_client, state_dir, via):
    env = acl_env(state_dir, FLEXAI_GPU_MEMORY="1GiB", FLEXAI_SLICE="kill")
    for delay in [0.005 * k for k in range(1, 21)]:
        victim = subprocess.Popen([str(acl_client), "--via", via, "init", "dev", "0", "align32",
                                   "256MiB", "loop", "1MiB"], env=env, stdout=subprocess.PIPE,
                                  text=True)
        _read_until(victim, '"op":"loop"')
        time.sleep(delay)  # killed somewhere inside its alloc/free loop, maybe holding the lock
        victim.send_signal(signal.SIGKILL)
        victim.wait()
    start = time.monotonic()
    r = subprocess.run([str(acl_client), "--via", via, "init", "dev", "0", "fill", "64MiB"],
                       env=env, capture_output=True, text=True, timeout=30)
    elapsed = time.monotonic() - start
    assert elapsed < 1.0, f"a survivor waited {elapsed:.2f}s"
    chunks = GiB // (64 * MiB + 32)  # 15: each aclrtMalloc of 64 MiB takes 32 bytes more
    assert Run(r).op("fill")["bytes"] == chunks * 64 * MiB, "the killed processes' usage is back"


def test_visible_devices_subsets_share_one_account(acl_client, state_dir):
    common = dict(FLEXAI_SIM_DEVICES="2", FLEXAI_SLICE="npus", FLEXAI_GPU_MEMORY="0:1GiB,1:1GiB")
    a_env = acl_env(state_dir, ASCEND_RT_VISIBLE_DEVICES="1", **common)
    holder = subprocess.Popen([str(acl_client), "init", "count", "dev", "0", "align32", "768MiB",
                               "wait"], env=a_env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        seen = _read_until(holder, '"op":"wait"')
        assert '"count":1' in seen
        b_env = acl_env(state_dir, ASCEND_RT_VISIBLE_DEVICES="0,1", **common)
        r = Run(subprocess.run([str(acl_client), "init", "count", "dev", "1", "info", "dev", "0",
                                "info"], env=b_env, capture_output=True, text=True, timeout=30))
        assert r.op("count")["count"] == 2
        assert r.op("info", 0)["free"] == 256 * MiB, "physical NPU 1 is one account"
        assert r.op("info", 1)["free"] == GiB, "physical NPU 0 is untouched"
    finally:
        holder.communicate("go\n", timeout=30)


def _exports(lib: Path) -> set[str]:
    out = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True,
                         text=True, check=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


def test_every_listed_function_exists_in_the_stand_in():
    text = ACL_HOOKS_DEF.read_text()
    listed = set(re.findall(r"^FX_ACL_(?:HOOK|REAL)\((\w+)\)", text, flags=re.M))
    aclnn = set(re.findall(r"^FX_ACLNN_HOOK\((\w+)\)", text, flags=re.M))
    optional = {"aclmdlRICaptureGetInfo"}  # a runtime without graph capture: never capturing
    assert listed - optional - _exports(SIM_DIR / "libascendcl.so") == set()
    assert aclnn - _exports(SIM_DIR / "libopapi.so") == set()
    assert listed - optional <= _exports(SIM_DIR / "libascendcl.so")
    assert {n for n in _exports(LIBFLEXAI) if n.startswith("acl")} == (
        set(re.findall(r"^FX_ACL_HOOK\((\w+)\)", text, flags=re.M)) | aclnn)
