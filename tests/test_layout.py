"""The shared region is a versioned fixed-width layout: these numbers change only together with
FX_LAYOUT_VERSION (csrc/core/shm.h), because processes of different builds map the same file."""
from __future__ import annotations

import ctypes

import pytest

from conftest import LIBFLEXAI

# name -> value for layout version 5 (1 had no compute fields, 2 no slice owner, 3 packed
# each device into 80 bytes, so one holder's lease writes slowed every launch on the node, 4 no
# throttled time)
LAYOUT = {
    "version": 5,
    "fx_dev": 128,
    "fx_slice": 1296,
    "fx_proc": 152,
    "fx_region.lock": 32,
    "fx_region.devs": 128,
    "fx_region.slices": 2176,
    "fx_slice.mem_limit": 80,
    "fx_slice.mem_used": 208,
    "fx_slice.compute": 336,
    "fx_slice.tokens_ns": 464,
    "fx_slice.gpu_ns": 976,
    "fx_slice.throttled_ns": 1104,
    "fx_proc.mem_used": 16,
    "fx_dev.lease_pid": 64,
    "fx_dev.lease_until_ns": 80,
    "fx_dev.sched_until_ns": 24,
}


@pytest.fixture(scope="module")
def layout():
    lib = ctypes.CDLL(str(LIBFLEXAI))
    lib.flexai_layout_value.restype = ctypes.c_long
    lib.flexai_layout_value.argtypes = [ctypes.c_char_p]
    return lambda name: lib.flexai_layout_value(name.encode())


@pytest.mark.parametrize("name", sorted(LAYOUT))
def test_layout(layout, name):
    assert layout(name) == LAYOUT[name]


def test_region_size_is_the_sum_of_its_tables(layout):
    procs = layout("fx_region.procs")
    assert procs == layout("fx_region.slices") + 128 * layout("fx_slice")
    assert layout("fx_region") == procs + 1024 * layout("fx_proc")
    assert layout("no.such.field") == -1
