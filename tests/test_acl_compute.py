"""Compute shares, priorities and resize on Ascend NPUs: the compute tests of the CUDA side
(test_compute.py) through the ACL client on the stand-in runtime, whose work takes the NPU for
its simulated duration, one piece at a time across processes. Every launch path goes through the
same gate as CUDA kernels: aclrtLaunchKernel and its V2, WithConfig and WithHostArgs forms,
aclopExecuteV2, offline models (aclmdlExecute, synchronous, and aclmdlExecuteAsync), captured
model run instances (aclmdlRIExecuteAsync), and the aclnn operators' second phase (by name when
linked, and through the wrappers made for dlsym lookups).

As in test_compute.py, pass/fail must not depend on an idle machine: upper bounds (a cap holds)
are tight, lower bounds loose or relative. The exact figures (30/70 and 50/50 within 2 points, a
priority step's p99, the resize delay) come from benchmarks/acl_compute.py. Verified on the
stand-in only (docs/ascend.md)."""
from __future__ import annotations

import subprocess
import time

import pytest

pytest.register_assert_rewrite("acl_support")
pytest_plugins = ["acl_support"]  # the fixture acl_client

from acl_support import acl_env  # noqa: E402
from test_compute import assert_capped  # noqa: E402

from conftest import Run, loads_library_in_process  # noqa: E402

pytestmark = pytest.mark.slow
US = "500"


@pytest.fixture
def npu_env(state_dir, tmp_path):
    sim_state = tmp_path / "sim"
    sim_state.mkdir()

    def make(**extra: str) -> dict[str, str]:
        # aclopExecuteV2 operators last FLEXAI_SIM_KERNEL_US on the stand-in
        return acl_env(state_dir, FLEXAI_SIM_STATE_DIR=str(sim_state), FLEXAI_SIM_KERNEL_US=US,
                       **extra)

    return make


def start(acl_client, env, *ops: str, via: str = "link") -> subprocess.Popen:
    return subprocess.Popen([str(acl_client), "--via", via, "init", "dev", "0", *ops], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 60) -> Run:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return Run(subprocess.CompletedProcess(proc.args, 0, out, err))


def saturate(acl_client, env, ms: int, kind: str = "kernel", via: str = "link"):
    return start(acl_client, env, "saturate", kind, US, str(ms), via=via)


@pytest.mark.parametrize("kind,via", [("kernel", "link"), ("op", "link"), ("aclnn", "link"),
                                      ("kernel", "dlsym"), ("op", "dlsym"), ("aclnn", "dlsym"),
                                      ("kernelv2", "link"), ("kernelcfg", "link"),
                                      ("kernelhost", "link"), ("model", "link"),
                                      ("modelasync", "link"), ("ri", "link"),
                                      ("kernelcfg", "dlsym"), ("model", "dlsym")])
def test_every_launch_path_is_capped(acl_client, npu_env, kind, via):
    r = finish(saturate(acl_client, npu_env(FLEXAI_GPU_COMPUTE="30"), 1500, kind, via))
    assert r.op("saturate")["rc"] == 0 and r.op("saturate")["sync"] == 0
    assert_capped(r.op("saturate")["fraction"], 0.30, f"{kind} via {via}")


@loads_library_in_process
def test_uncapped_runs_at_full_speed_and_measured_time_is_charged(acl_client, npu_env,
                                                                   state_dir):
    r = finish(saturate(acl_client, npu_env(FLEXAI_SLICE="free"), 800))
    assert r.op("saturate")["fraction"] > 0.5  # about 0.95 when idle
    capped = finish(saturate(acl_client, npu_env(FLEXAI_GPU_COMPUTE="50", FLEXAI_SLICE="half"),
                             1500, "aclnn", "dlsym"))
    import flexai

    with flexai.Node(state_dir) as node:
        ids = {s.name: s.id for s in node.slices()}
        rows = [row for row in node.usage() if row.pid == 0]
    assert not any(r.gpu_ns for r in rows if r.slice_id == ids.get("free")), "no lease taken"
    half = [r.gpu_ns for r in rows if r.slice_id == ids["half"]]
    units = capped.op("saturate")["units"]
    # the NPU time charged, measured with ACL events, is the operators' device time (what the
    # last lease used before the process exited may be missing)
    assert half and 0.7 * units * 500e3 < half[0] < 1.3 * units * 500e3, (half, units)


def test_two_capped_slices_split_30_70(acl_client, npu_env):
    a = saturate(acl_client, npu_env(FLEXAI_GPU_COMPUTE="30", FLEXAI_SLICE="a"), 2000)
    b = saturate(acl_client, npu_env(FLEXAI_GPU_COMPUTE="70", FLEXAI_SLICE="b"), 2000, "aclnn",
                 "dlsym")
    fa, fb = finish(a).op("saturate")["fraction"], finish(b).op("saturate")["fraction"]
    assert_capped(fa, 0.30, "a")
    assert_capped(fb, 0.70, "b")
    assert fb > 1.5 * fa, "the larger share gets clearly more of the NPU (7/3 when idle)"


def test_two_slices_split_50_50(acl_client, npu_env):
    a = saturate(acl_client, npu_env(FLEXAI_GPU_COMPUTE="50", FLEXAI_SLICE="a"), 2000, "op")
    b = saturate(acl_client, npu_env(FLEXAI_GPU_COMPUTE="50", FLEXAI_SLICE="b"), 2000)
    fa, fb = finish(a).op("saturate")["fraction"], finish(b).op("saturate")["fraction"]
    assert_capped(fa, 0.50, "a")
    assert_capped(fb, 0.50, "b")
    assert max(fa, fb) < 2 * min(fa, fb), f"equal shares get comparable time: {fa} {fb}"


def test_high_priority_work_starts_quickly_and_low_resumes(acl_client, npu_env):
    low = saturate(acl_client, npu_env(FLEXAI_PRIORITY="low", FLEXAI_SLICE="low"), 3000)
    time.sleep(0.3)
    high = start(acl_client, npu_env(FLEXAI_PRIORITY="high", FLEXAI_SLICE="high"),
                 "latency", "aclnn", "100", "300", "2000", via="dlsym")
    h = finish(high).op("latency")
    lo = finish(low).op("saturate")
    # the low job's work lasts 500 us: a high step waits at most for the piece running (p50
    # checked; p99 is measured by benchmarks/acl_compute.py, it also holds CPU waits)
    assert h["rc"] == 0 and h["p50_us"] < 1500, h
    assert lo["fraction"] > 0.25, "the low job resumes whenever the high one idles"


@loads_library_in_process
def test_resize_is_effective_within_100_ms(acl_client, npu_env, state_dir):
    import flexai

    proc = start(acl_client, npu_env(FLEXAI_GPU_COMPUTE="10", FLEXAI_SLICE="fast"),
                 "phases", "kernel", "200", "100", "12")
    time.sleep(0.6)
    flexai.resize("fast", compute=90, state_dir=str(state_dir))
    resized_at = time.monotonic()  # CLOCK_MONOTONIC, as the client's phase start times
    phases = [p for p in finish(proc).lines if p["op"] == "phase"]
    before = [p["fraction"] for p in phases if p["start_s"] + 0.1 < resized_at]
    after = [p for p in phases if p["start_s"] >= resized_at + 0.1]
    assert before and max(before) < 0.2
    # the first phase starting 100 ms after the resize runs far above the old cap
    assert after and after[0]["fraction"] > 0.3, (resized_at, [p["fraction"] for p in phases])
