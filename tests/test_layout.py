"""The shared region is a versioned fixed-width layout: these numbers change only together with
FX_LAYOUT_VERSION (csrc/shm.h), because processes of different builds map the same file."""
from __future__ import annotations

import ctypes

import pytest

from conftest import LIBFLEXAI

# name -> value for layout version 1
LAYOUT_V1 = {
    "version": 1,
    "fx_dev": 40,
    "fx_slice": 464,
    "fx_proc": 152,
    "fx_region.lock": 32,
    "fx_region.devs": 96,
    "fx_region.slices": 736,
    "fx_slice.mem_limit": 80,
    "fx_slice.mem_used": 208,
    "fx_proc.mem_used": 16,
}


@pytest.fixture(scope="module")
def layout():
    lib = ctypes.CDLL(str(LIBFLEXAI))
    lib.flexai_layout_value.restype = ctypes.c_long
    lib.flexai_layout_value.argtypes = [ctypes.c_char_p]
    return lambda name: lib.flexai_layout_value(name.encode())


@pytest.mark.parametrize("name", sorted(LAYOUT_V1))
def test_layout_v1(layout, name):
    assert layout(name) == LAYOUT_V1[name]


def test_region_size_is_the_sum_of_its_tables(layout):
    procs = layout("fx_region.procs")
    assert procs == layout("fx_region.slices") + 128 * layout("fx_slice")
    assert layout("fx_region") == procs + 1024 * layout("fx_proc")
    assert layout("no.such.field") == -1
