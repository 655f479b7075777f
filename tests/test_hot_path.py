"""The launch of a process that nothing schedules stays a few loads (issue "Slices that hold on
real drivers", item 6): no clock read and no look at the device the driver calls current while
no device the process sees is engaged. Measured in ns in benchmarks/overhead.py; here counted,
which no load on the machine changes: the clock reads libflexai.so makes per launch, through a
second preload library that wraps clock_gettime (tests/clients/wrap_clock.c)."""
from __future__ import annotations

import json

import pytest

from conftest import LIBFLEXAI


def _clock_reads(run_client, clients, tmp_path, env: dict[str, str]) -> tuple[int, int]:
    sim = tmp_path / "sim"
    sim.mkdir(exist_ok=True)
    r = run_client("init", "ctx", "0", "module", "saturate", "kernel", "0", "300",
                   env={"FLEXAI_SIM_STATE_DIR": str(sim), **env},
                   preload=f"{LIBFLEXAI}:{clients['wrap_clock']}")
    sat = r.op("saturate")
    assert sat["rc"] == 0 and sat["units"] > 1000, sat
    reads = [json.loads(line) for line in r.proc.stderr.splitlines()
             if line.startswith('{"op":"clock_reads"')]
    assert len(reads) == 1, r.proc.stderr  # the wrapper was loaded and reported
    return reads[0]["n"], sat["units"]


@pytest.mark.parametrize("env", [{}, {"FLEXAI_GPU_MEMORY": "1GiB"}], ids=["plain", "memory"])
def test_an_unscheduled_launch_reads_no_clock(run_client, clients, tmp_path, env):
    reads, launches = _clock_reads(run_client, clients, tmp_path, env)
    # once a launch (or more) before the lazy clock; now a few reads in all, from start-up
    assert reads < launches / 100, (reads, launches)


def test_the_counter_sees_the_reads_of_a_scheduled_launch(run_client, clients, tmp_path):
    # the same count where the gate is engaged: the wrapper does see libflexai.so's reads
    reads, launches = _clock_reads(run_client, clients, tmp_path, {"FLEXAI_GPU_COMPUTE": "50"})
    assert reads >= launches, (reads, launches)
