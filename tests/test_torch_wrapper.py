"""flexai.torch: the program puts itself into a slice (re-executing under the shim when needed)
and reads its slice's usage. Runs without PyTorch: the wrapper never imports it for these."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import types

import pytest

import flexai
import flexai.torch as ft
from conftest import LIBFLEXAI, SIM_DIR, base_env

PROGRAM = textwrap.dedent("""
    import json, os, sys
    import flexai.torch
    print("start", os.getpid(), flush=True)
    spec = flexai.torch.use_slice(memory="1GiB", compute=40, slice="wrapped")
    maps = open("/proc/self/maps").read()
    print(json.dumps({"pid": os.getpid(), "argv": sys.argv[1:], "preloaded": "libflexai.so" in maps,
                      "memory": os.environ.get("FLEXAI_GPU_MEMORY"),
                      "slice": os.environ.get("FLEXAI_SLICE"),
                      "reexec": os.environ.get("FLEXAI_TORCH_REEXEC")}))
""")


def run_program(tmp_path, env, *args):
    script = tmp_path / "prog.py"
    script.write_text(PROGRAM)
    return subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True,
                          text=True, timeout=60)


def test_use_slice_reexecutes_under_the_shim_keeping_arguments(tmp_path, state_dir):
    env = base_env(state_dir)
    del env["LD_PRELOAD"]
    r = run_program(tmp_path, env, "--epochs", "3")
    assert r.returncode == 0, r.stderr
    starts = [line for line in r.stdout.splitlines() if line.startswith("start")]
    assert len(starts) == 2, "ran once without the shim, then once more under it"
    out = json.loads(r.stdout.splitlines()[-1])
    assert out["preloaded"] and out["reexec"] == "1"
    assert out["argv"] == ["--epochs", "3"]
    assert (out["memory"], out["slice"]) == ("1GiB", "wrapped")


def test_use_slice_under_the_shim_only_sets_the_variables(tmp_path, state_dir):
    r = run_program(tmp_path, base_env(state_dir))
    assert r.returncode == 0, r.stderr
    assert len([x for x in r.stdout.splitlines() if x.startswith("start")]) == 1
    out = json.loads(r.stdout.splitlines()[-1])
    assert out["preloaded"] and out["reexec"] is None and out["memory"] == "1GiB"


def test_bad_values_fail_before_anything_runs():
    with pytest.raises(flexai.ConfigError, match="FLEXAI_GPU_MEMORY"):
        ft.use_slice(memory="lots")


def test_refuses_once_cuda_is_initialized(monkeypatch):
    fake_torch = types.SimpleNamespace(cuda=types.SimpleNamespace(is_initialized=lambda: True))
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    with pytest.raises(ft.SliceError, match="before CUDA is initialized"):
        ft.use_slice(memory="1GiB")


CLIENT = textwrap.dedent("""
    import ctypes, json
    import flexai.torch
    cuda = ctypes.CDLL("libcuda.so.1")
    dev, ctx, ptr = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_uint64()
    assert cuda.cuInit(0) == 0 and cuda.cuDeviceGet(ctypes.byref(dev), 0) == 0
    assert cuda.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev) == 0
    assert cuda.cuCtxSetCurrent(ctx) == 0
    assert cuda.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(300 << 20)) == 0
    big = cuda.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(1 << 30))
    print(json.dumps({"stats": flexai.torch.memory_stats(), "oom": big,
                      "hint": flexai.torch.explain_oom(1 << 30)}))
""")


def test_memory_stats_and_oom_explanation_inside_a_slice(tmp_path, state_dir):
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    env = base_env(state_dir, FLEXAI_GPU_MEMORY="1GiB", FLEXAI_SLICE="stats",
                   FLEXAI_GPU_COMPUTE="50")
    r = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    assert out["oom"] == 2
    (uuid, s), = out["stats"].items()
    assert uuid.startswith("GPU-")
    assert s["slice"] == "stats" and s["limit_bytes"] == 1 << 30 and s["compute"] == 50
    assert s["used_bytes"] == s["process_used_bytes"] == 300 << 20
    assert "slice 'stats' is at its memory quota" in out["hint"] and "1 GiB" in out["hint"]


def test_not_in_a_slice_means_no_stats(state_dir):
    assert ft.memory_stats(str(state_dir)) == {}
    assert ft.explain_oom(state_dir=str(state_dir)) == ""


def test_the_library_and_simulated_device_exist():
    assert LIBFLEXAI.exists() and (SIM_DIR / "libcuda.so.1").exists()
