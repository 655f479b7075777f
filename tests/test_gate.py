"""The compute gate under work that waits on the host (issue "Slices that hold on real drivers",
item 4): a kernel queued behind a host function (a data loader's callback, NCCL's proxy) keeps
the process's marks from completing for as long as the host holds the stream. The gate must
neither hold its lock while it waits (the process's other launching threads would stall) nor
wait without a bound (the process would hang). On the simulated device, whose host functions
run on the stream's worker like a GPU's."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow

HOLD_MS = 6000


def test_work_waiting_on_the_host_neither_stalls_other_threads_nor_hangs(run_client, tmp_path):
    sim = tmp_path / "sim"
    sim.mkdir()
    r = run_client("init", "ctx", "0", "module", "hostblock", "200", str(HOLD_MS), "1500",
                   env={"FLEXAI_SIM_STATE_DIR": str(sim), "FLEXAI_GPU_COMPUTE": "50"},
                   timeout=60)
    hb = r.op("hostblock")
    assert hb["rc"] == 0 and hb["other_rc"] == 0 and hb["sync"] == 0, hb
    assert hb["other_launches"] > 0, hb
    # the other thread's launches never waited out the host's hold (they did, on the gate's lock)
    assert hb["other_max_us"] < HOLD_MS * 1000 / 3, hb
    # nor did the blocked stream's own launches: the gate stops waiting for marks that make no
    # progress after 200 ms each time (it once waited the whole hold, and for ever for a host
    # that never lets go); 50 launches then take at most about ten such waits
    assert hb["a_launch_us"] < HOLD_MS * 1000 / 2, hb
