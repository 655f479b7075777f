"""The bound on queued work holds for graphs and kernels of mixed sizes (issue "Slices that hold
on real drivers", item 5). A scheduled slice keeps only about FX_INFLIGHT_NS (1 ms) of work
queued on the device, so that a decision (a higher priority arriving, a resize, the end of a
quantum) takes effect within about that much device time. The bound is kept by estimating the
GPU time of what was launched; counted as one small kernel, a graph of long kernels slipped
through it, and a whole training step queued ahead. On the simulated device, whose kernels
take exactly their stated time."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow

GRAPH_US, SMALL_US, SMALL_N = 1000, 5, 100  # a step: a graph of 4 x 1 ms, then 100 x 5 us


@pytest.mark.parametrize("cap", ["50", "90"])
def test_a_capped_slice_queues_about_its_bound_with_graphs_and_small_kernels(run_client,
                                                                            tmp_path, cap):
    sim = tmp_path / "sim"
    sim.mkdir()
    r = run_client("init", "ctx", "0", "module", "mixed", str(GRAPH_US), str(SMALL_US),
                   str(SMALL_N), "2000",
                   env={"FLEXAI_SIM_STATE_DIR": str(sim), "FLEXAI_GPU_COMPUTE": cap},
                   timeout=60)
    m = r.op("mixed")
    assert m["rc"] == 0 and m["sync"] == 0 and m["steps"] > 20, m
    step_us = 4 * GRAPH_US + SMALL_N * SMALL_US
    # Work queued ahead of each step's start, as the device saw it. With a graph taken for one
    # small kernel, a whole step (4.5 ms) was queued ahead (p99 4.7 ms at 0b175f8); estimated
    # per kind, the queue stays near the 1 ms bound. Host delays only shorten what is measured.
    assert m["ahead_p99_us"] < 2000 < step_us, m
    # the cap still holds with graphs (above it the slice was never held back)
    assert m["fraction"] <= int(cap) / 100 + 0.05, m
