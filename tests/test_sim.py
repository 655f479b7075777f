"""The simulated driver itself: it reads sizes and CUDA_VISIBLE_DEVICES with the shim's parsers
(so both agree on what "16G" means), it exports exactly the entry points of its one list
(tests/fake_driver/fake_cuda.def), and its header agrees with NVIDIA's where a toolkit is
installed."""
from __future__ import annotations

import glob
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import SIM_DIR

ROOT = Path(__file__).parent.parent
FAKE_DIR = ROOT / "tests" / "fake_driver"
GiB = 1 << 30
INVALID_VALUE = 1  # CUDA_ERROR_INVALID_VALUE
INVALID_DEVICE = 101  # CUDA_ERROR_INVALID_DEVICE


def _device_sizes(r) -> set[int]:
    """Every total the client saw: cuMemGetInfo, cuDeviceTotalMem and both NVML queries."""
    nv = r.op("nvml")
    return {r.op("info")["total"], r.op("total")["total"], nv["total"], nv["total2"]}


@pytest.mark.parametrize("text, size", [("16G", 16 * 10**9), ("16GiB", 16 * GiB),
                                        ("1.5GiB", 3 * GiB // 2), ("4096M", 4096 * 10**6)])
def test_sim_memory_uses_the_shims_units(run_client, text, size):
    r = run_client("init", "ctx", "0", "info", "total", "0", "nvml", "0",
                   env={"FLEXAI_SIM_MEMORY": text}, preload="")
    assert _device_sizes(r) == {size}, f"FLEXAI_SIM_MEMORY={text}"
    assert r.op("info")["free"] == size


def test_shim_and_sim_agree_on_16G(run_client):
    # The same text for the device and for the quota: one parser, so the quota is the whole
    # device, no more (device 16 GiB, quota 16 * 10^9) and no less.
    env = {"FLEXAI_SIM_MEMORY": "16G", "FLEXAI_GPU_MEMORY": "16G"}
    native = run_client("init", "ctx", "0", "info", "total", "0", "nvml", "0", env=env,
                        preload="")
    sliced = run_client("init", "ctx", "0", "info", "total", "0", "nvml", "0", env=env)
    assert _device_sizes(native) == {16 * 10**9}
    assert sliced.op("info")["total"] == 16 * 10**9
    assert sliced.op("nvml")["total"] == sliced.op("nvml")["total2"] == 16 * 10**9
    assert sliced.op("info")["free"] == native.op("info")["free"]


@pytest.mark.parametrize("text", ["16X", "0", "G", "-1G", "16 GiB"])
def test_a_bad_sim_memory_fails_cuinit_and_says_why(run_client, text):
    r = run_client("init", env={"FLEXAI_SIM_MEMORY": text}, preload="")
    assert r.op("init")["rc"] == INVALID_VALUE
    assert "FLEXAI_SIM_MEMORY" in r.proc.stderr and "16GiB" in r.proc.stderr


def _default_uuid(physical: int) -> str:
    """The simulated driver's UUID of physical device N (fake_common.c), as 32 hex digits."""
    return f"f1e5a100000040008000{physical:012x}"


@pytest.mark.parametrize("visible, seen", [
    ("1", [1]), ("2,0", [2, 0]), (" 2 , 1 ", [2, 1]), ("1,1,0", [1]), ("0,7,1", [0]),
    ("0,x,1", [0]), ("", []),
    ("GPU-f1e5a100-0000-4000-8000-000000000002,0", [2, 0]),
    ("gpu-f1e5a100-0000-4000-8000-000000000002", []),  # "GPU-" is case-sensitive
    ("GPU-F1E5A100-0000-4000-8000-000000000001", [1]),  # the hex digits are not
    ("1,GPU-f1e5a100-0000-4000-8000-000000000001", [1]),  # the same device twice ends the list
    ("GPU-f1e5a100,1", []),  # a prefix of every device's UUID is ambiguous: the list ends there
])
def test_visible_devices_follow_the_shared_parser(run_client, visible, seen):
    # The list ends at the first invalid, unknown, ambiguous or repeated entry (fx_visible_parse,
    # the shim's parser; NVIDIA's driver does the same).
    env = {"FLEXAI_SIM_DEVICES": "3", "CUDA_VISIBLE_DEVICES": visible}
    r = run_client("init", *[arg for k in range(4) for arg in ("uuid", str(k))], env=env,
                   preload="")
    if not seen:
        assert r.op("init")["rc"] == 100  # CUDA_ERROR_NO_DEVICE
        return
    assert r.op("init")["rc"] == 0
    uuids = [line["uuid"] for line in r.lines if line["op"] == "uuid" and line["rc"] == 0]
    assert uuids == [_default_uuid(p) for p in seen]
    assert r.rcs("uuid")[len(seen):] == [INVALID_DEVICE] * (4 - len(seen))


def _def_entries() -> set[str]:
    text = (FAKE_DIR / "fake_cuda.def").read_text()
    names = set(re.findall(r"^FAKE_(?:FN|VER)\(\w+, (\w+)", text, flags=re.M))
    names |= {n + "_ptsz" for n in re.findall(r"^FAKE_PTSZ\(\w+, (\w+)", text, flags=re.M)}
    return names


def test_the_sim_exports_exactly_its_list():
    out = subprocess.run(["nm", "-D", "--defined-only", str(SIM_DIR / "libcuda.so.1")],
                         capture_output=True, text=True, check=True).stdout
    exported = {line.split()[-1] for line in out.splitlines() if line.strip()}
    listed = _def_entries()
    assert len(listed) > 100
    assert exported == listed, {"unlisted": sorted(exported - listed),
                                "missing": sorted(listed - exported)}


def test_ptsz_twins_resolve_and_work(run_client):
    # Through cuGetProcAddress with the per-thread flag the client gets the generated twins.
    r = run_client("init", "ctx", "0", "module", "async", "1MiB", "free", "saturate", "graph",
                   "10", "20", via="ptsz", preload="")
    assert r.rcs("async") == [0] and r.op("free")["rc"] == 0
    sat = r.op("saturate")
    assert sat["rc"] == 0 and sat["sync"] == 0 and sat["units"] > 0


TOOLKITS = sorted(glob.glob("/usr/local/cuda*/include/cuda.h"))


@pytest.mark.skipif(not TOOLKITS or not shutil.which("cc"), reason="no CUDA toolkit headers here")
@pytest.mark.parametrize("source", sorted(p.name for p in FAKE_DIR.glob("fake_*.c")) +
                         ["client.c", "driver_bench.c"])
def test_header_agrees_with_nvidias(source):
    # With FX_CUDA_API_FROM_TOOLKIT the CUDA types come from cuda.h, so every prototype of
    # csrc/cuda/cuda_api.h that disagrees with NVIDIA's is a compile error.
    clients = {"client.c": ROOT / "tests" / "clients" / "client.c",
               "driver_bench.c": ROOT / "benchmarks" / "driver_bench.c"}
    path = clients.get(source, FAKE_DIR / source)
    flags = [] if source in clients else ["-D_GNU_SOURCE"]  # as CMakeLists.txt builds the sim
    inc = Path(TOOLKITS[-1]).parent
    subprocess.run(["cc", "-fsyntax-only", "-std=gnu11", *flags, "-Werror", "-Wall", "-Wextra",
                    "-DFX_CUDA_API_FROM_TOOLKIT", f"-I{inc}", f"-I{FAKE_DIR}",
                    f"-I{ROOT / 'csrc' / 'cuda'}", f"-I{ROOT / 'csrc' / 'core'}",
                    f"-I{ROOT / 'include'}", str(path)], check=True)
