"""A capped slice is charged the device time of its own work, not the wall time around it
(issue "Slices that hold on real drivers", item 1): a light-duty job under a cap it never
reaches is not throttled, and its charged GPU time matches its kernels. On the simulated device,
whose kernels take the device for exactly as long as they are told."""
from __future__ import annotations

import os
import subprocess

import pytest

from conftest import Run, base_env
from flexai.node.state import Node

pytestmark = pytest.mark.slow


def _high_priority() -> None:
    try:
        os.nice(-15)
    except OSError:  # not root: run as it is
        pass


def _light_job(clients, state_dir, tmp_path, cap: str, us: str, pct: str,
               ms: str) -> tuple[dict, int, int]:
    sim = tmp_path / "sim"
    sim.mkdir()
    env = base_env(state_dir, FLEXAI_SIM_STATE_DIR=str(sim), FLEXAI_GPU_COMPUTE=cap,
                   FLEXAI_SLICE="light")
    # A host thread descheduled between two driver calls leaves the device idle between events,
    # which the device's clock then counts (as on a real GPU under heavy CPU contention); the
    # test measures the shim, not the machine's load, so the job runs at a high CPU priority.
    proc = subprocess.Popen([str(clients["client"]), "--via", "dlsym", "init", "ctx", "0",
                             "module", "duty", us, pct, ms, "wait"], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=_high_priority)
    lines = []
    try:
        while True:  # the job is done and waits: read what its slice was charged
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            lines.append(line)
            if '"op":"wait"' in line:
                break
        with Node(state_dir) as node:
            light = {s.id for s in node.slices() if s.name == "light"}
            rows = [r for r in node.usage() if r.slice_id in light and r.pid == 0]
            gpu_ns = sum(r.gpu_ns for r in rows)
            throttled_ns = sum(r.throttled_ns for r in rows)
    finally:
        out, err = proc.communicate("\n", timeout=30)
    assert proc.returncode == 0, err
    run = Run(subprocess.CompletedProcess(proc.args, 0, "".join(lines) + out, err))
    return run.op("duty"), gpu_ns, throttled_ns


@pytest.mark.parametrize("us, pct", [("500", "10"), ("100", "2")])
def test_light_duty_job_is_charged_its_kernels_only(clients, state_dir, tmp_path, us, pct):
    duty, gpu_ns, throttled_ns = _light_job(clients, state_dir, tmp_path, "30", us, pct, "1500")
    assert duty["rc"] == 0 and duty["launches"] > 0
    busy_ns = duty["busy_us"] * 1000
    # Charged about its kernels' time: idle time once made it 3.5x (10% duty) and 19x (2%).
    # On an idle machine it is within 2% (benchmarks/, docs/benchmarks.md); a busy CI machine
    # adds host delays between the gate's start event and the launch, which the device's clock
    # counts as it would on a GPU, hence the margin.
    assert 0.90 * busy_ns <= gpu_ns <= 2.0 * busy_ns + 2e6, (gpu_ns, busy_ns)
    # asking 10% (or 2%) under a 30% cap, it is never held back: the time spent inside its
    # launches stays a small part of its run (it was 2.3 s of wall time when idle time counted)
    assert duty["stall_total_us"] < 0.05 * 1.5e6, duty
    # and the slice's throttled time, which `flexai ps` and the metrics show, says so too
    assert throttled_ns < 0.05 * 1.5e9, throttled_ns


def test_a_resize_below_the_job_s_need_still_throttles_it(clients, state_dir, tmp_path):
    # The other side of the mechanism: a job asking 40% under a 10% cap is held back (its
    # launches wait) and gets about its cap, not what it asks.
    duty, gpu_ns, throttled_ns = _light_job(clients, state_dir, tmp_path, "10", "500", "40",
                                            "1000")
    assert duty["fraction"] <= 0.10 + 0.05, duty
    assert duty["stall_total_us"] > 0.3 * 1e6, duty
    # the slice's throttled time counts the scheduler's holds: most of the launches' stalls
    # (the rest is waiting for queued work to drain, which is not the scheduler holding back)
    assert 0.5 * duty["stall_total_us"] * 1e3 <= throttled_ns <= 1.0e9, \
        (throttled_ns, duty)
