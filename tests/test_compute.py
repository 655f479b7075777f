"""Compute shares, burst, priorities and resize, on the simulated device: its kernels last as
long as they are told and take the device for that time, one at a time across processes (a GPU
time-slicing between processes). Timing-based, with tolerances wide enough for a busy 2-core CI
machine; the precise figures come from benchmarks/compute_share.py on a real GPU."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from conftest import Run, base_env, loads_library_in_process

pytestmark = pytest.mark.slow
KERNEL_US = "500"


@pytest.fixture
def sim_env(state_dir, tmp_path):
    sim_state = tmp_path / "sim"
    sim_state.mkdir()

    def make(**extra: str) -> dict[str, str]:
        return base_env(state_dir, FLEXAI_SIM_STATE_DIR=str(sim_state), **extra)

    return make


def start(clients, env, *ops: str, via: str = "dlsym") -> subprocess.Popen:
    return subprocess.Popen([str(clients["client"]), "--via", via, *ops], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 60) -> Run:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return Run(subprocess.CompletedProcess(proc.args, 0, out, err))


def saturate(clients, env, ms: int, kind: str = "kernel", us: str = KERNEL_US) -> subprocess.Popen:
    return start(clients, env, "init", "ctx", "0", "module", "saturate", kind, us, str(ms))


@pytest.mark.parametrize("share", [20, 50, 80])
def test_hard_cap_alone(clients, sim_env, share):
    r = finish(saturate(clients, sim_env(FLEXAI_GPU_COMPUTE=str(share)), 1500))
    assert r.op("saturate")["fraction"] == pytest.approx(share / 100, abs=0.06)


@pytest.mark.parametrize("kind,via", [("ex", "dlsym"), ("coop", "dlsym"), ("graph", "dlsym"),
                                      ("kernel", "ptsz"), ("graph", "ptsz"), ("kernel", "gpa11")])
def test_every_launch_path_is_capped(clients, sim_env, kind, via):
    proc = start(clients, sim_env(FLEXAI_GPU_COMPUTE="30"), "init", "ctx", "0", "module",
                 "saturate", kind, "250", "1500", via=via)
    assert finish(proc).op("saturate")["fraction"] == pytest.approx(0.30, abs=0.06)


@loads_library_in_process
def test_uncapped_alone_runs_at_full_speed_without_scheduling(clients, sim_env, state_dir):
    r = finish(saturate(clients, sim_env(FLEXAI_SLICE="free"), 800))
    assert r.op("saturate")["fraction"] > 0.9
    import flexai

    with flexai.Node(state_dir) as node:
        assert all(row.gpu_ns == 0 for row in node.usage()), "no lease was ever taken"


def test_two_capped_slices_split_30_70(clients, sim_env):
    a = saturate(clients, sim_env(FLEXAI_GPU_COMPUTE="30", FLEXAI_SLICE="a"), 2000)
    b = saturate(clients, sim_env(FLEXAI_GPU_COMPUTE="70", FLEXAI_SLICE="b"), 2000)
    fa, fb = finish(a).op("saturate")["fraction"], finish(b).op("saturate")["fraction"]
    assert fa == pytest.approx(0.30, abs=0.07)
    assert fb == pytest.approx(0.70, abs=0.07)
    assert fa + fb > 0.88


def test_burst_uses_idle_time_and_keeps_its_guarantee(clients, sim_env):
    alone = finish(saturate(clients, sim_env(FLEXAI_GPU_COMPUTE="30",
                                             FLEXAI_GPU_COMPUTE_BURST="100"), 800))
    assert alone.op("saturate")["fraction"] > 0.85, "idle time is used up to the burst"
    # an unlimited job already runs (its queue full), then the guaranteed one arrives: after the
    # queue that was submitted before scheduling started has drained, the guarantee holds
    # no share: takes what is left; runs well past the other's last phase
    b = saturate(clients, sim_env(FLEXAI_SLICE="greedy"), 4000)
    time.sleep(0.3)
    a = start(clients, sim_env(FLEXAI_GPU_COMPUTE="30", FLEXAI_GPU_COMPUTE_BURST="100",
                               FLEXAI_SLICE="g"),
              "init", "ctx", "0", "module", "phases", "kernel", KERNEL_US, "500", "5")
    phases = [p["fraction"] for p in finish(a).lines if p["op"] == "phase"]
    fb = finish(b).op("saturate")["fraction"]
    settled = (phases[-1] + phases[-2]) / 2
    assert settled == pytest.approx(0.30, abs=0.08), f"guaranteed under contention: {phases}"
    assert fb > 0.5


def test_high_priority_kernels_start_quickly_and_low_resumes(clients, sim_env):
    low = saturate(clients, sim_env(FLEXAI_PRIORITY="low", FLEXAI_SLICE="low"), 3000)
    time.sleep(0.3)
    high = start(clients, sim_env(FLEXAI_PRIORITY="high", FLEXAI_SLICE="high"),
                 "init", "ctx", "0", "module", "latency", "100", "300", "2000")
    h = finish(high).op("latency")
    lo = finish(low).op("saturate")
    # the low job's kernels last 500 us: a high one waits at most for the one running
    assert h["p99_us"] < 1500, h
    assert lo["fraction"] > 0.5, "the low job resumes whenever the high one idles"


def test_resize_takes_effect_while_running(clients, sim_env, state_dir):
    proc = start(clients, sim_env(FLEXAI_GPU_COMPUTE="20", FLEXAI_SLICE="rs"),
                 "init", "ctx", "0", "module", "phases", "kernel", KERNEL_US, "500", "6")
    time.sleep(1.1)
    resized = subprocess.run([sys.executable, "-m", "flexai", "resize", "rs", "--gpu-compute", "70",
                              "--state-dir", str(state_dir)], capture_output=True, text=True,
                             env=sim_env())
    assert resized.returncode == 0, resized.stderr
    phases = [p["fraction"] for p in finish(proc).lines if p["op"] == "phase"]
    assert phases[0] == pytest.approx(0.20, abs=0.07)
    assert phases[-1] == pytest.approx(0.70, abs=0.08)


@loads_library_in_process
def test_resize_is_effective_within_100_ms(clients, sim_env, state_dir):
    import flexai

    proc = start(clients, sim_env(FLEXAI_GPU_COMPUTE="10", FLEXAI_SLICE="fast"),
                 "init", "ctx", "0", "module", "phases", "kernel", "200", "100", "12")
    time.sleep(0.6)
    flexai.resize("fast", compute=90, state_dir=str(state_dir))
    resized_at = time.monotonic()  # CLOCK_MONOTONIC, as the client's phase start times
    phases = [p for p in finish(proc).lines if p["op"] == "phase"]
    before = [p["fraction"] for p in phases if p["start_s"] + 0.1 < resized_at]
    after = [p for p in phases if p["start_s"] >= resized_at + 0.1]
    assert before and max(before) < 0.2
    assert after and after[0]["fraction"] > 0.75, (resized_at, phases)


def test_a_killed_lease_holder_never_blocks_the_others(clients, sim_env):
    survivor = saturate(clients, sim_env(FLEXAI_GPU_COMPUTE="50", FLEXAI_SLICE="survivor"), 2500)
    for delay in (0.13, 0.21, 0.17, 0.3):
        victim = saturate(clients, sim_env(FLEXAI_GPU_COMPUTE="50", FLEXAI_SLICE="victim"), 5000)
        time.sleep(delay)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
    r = finish(survivor, timeout=30).op("saturate")
    assert r["rc"] == 0 and r["fraction"] > 0.3


def test_spatial_sharing_runs_slices_together_and_keeps_caps(clients, sim_env):
    # with MPS (simulated: kernels of different processes overlap) there is no exclusive lease;
    # each slice's own device time is measured and capped
    env = dict(FLEXAI_SHARING="spatial", FLEXAI_SIM_MPS="1")
    a = saturate(clients, sim_env(FLEXAI_GPU_COMPUTE="30", FLEXAI_SLICE="sa", **env), 2000)
    b = saturate(clients, sim_env(FLEXAI_GPU_COMPUTE="60", FLEXAI_SLICE="sb", **env), 2000)
    fa, fb = finish(a).op("saturate")["fraction"], finish(b).op("saturate")["fraction"]
    assert fa == pytest.approx(0.30, abs=0.06)
    assert fb == pytest.approx(0.60, abs=0.06)


def test_spatial_sharing_low_priority_yields(clients, sim_env):
    env = dict(FLEXAI_SHARING="spatial", FLEXAI_SIM_MPS="1")
    low = saturate(clients, sim_env(FLEXAI_PRIORITY="low", FLEXAI_SLICE="sl", **env), 2000)
    time.sleep(0.2)
    high = saturate(clients, sim_env(FLEXAI_PRIORITY="high", FLEXAI_SLICE="sh", **env), 1000)
    fh = finish(high).op("saturate")["fraction"]
    fl = finish(low).op("saturate")["fraction"]
    assert fh > 0.9
    assert fl < 0.75, "the low job stopped while the high one ran"
