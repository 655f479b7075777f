"""Remote slices (issue 12): an unmodified cuda.bindings program on a "GPU-less" side runs through
flexai's client libcuda.so.1 against ``flexai remoted`` on loopback, which serves the simulated
device from a slice. Faults, fuzzing and refusals are in test_remote_faults.py.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from flexai.remote import client_library

pytest.importorskip("cuda.bindings")
from _remote import (  # noqa: E402
    client_env,
    first_line,
    run_program,
    server_env,
    slice_used,
    start_program,
)

GiB = 1 << 30
API_DEF = Path(__file__).parent.parent / "csrc" / "remote" / "api.def"


def test_client_library_is_installed_and_exports_what_api_def_lists():
    lib = client_library()
    assert lib.is_file(), f"the client library is not installed at {lib}"
    text = API_DEF.read_text()
    listed = set(re.findall(r"^FX_RENTRY\((\w+),", text, re.M))
    listed |= set(re.findall(r"^FX_RUNSUPPORTED\((\w+)\)", text, re.M))
    nm = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True, text=True,
                        check=True).stdout
    exported = {line.split()[-1] for line in nm.splitlines() if line.strip()}
    assert listed - exported == set()
    assert {name for name in exported if not name.startswith("cu")} == set()


def test_cuda_bindings_program_runs_remotely_and_sees_the_quota(remoted):
    out = run_program(remoted.address, "tour", options=("--gpu-memory", "4GiB"))
    assert out["count"] == 1
    assert out["name"] == "flexai simulated GPU"
    assert out["driver_version"] >= 12000
    assert out["total_mem"] == 4 * GiB  # the slice's quota, not the device's 16 GiB
    assert out["mem_info"][1] == 4 * GiB and out["mem_info"][0] <= 4 * GiB
    assert out["ctx_device"] == 0 and out["sm_count"] > 0
    assert out["copy_ok"]
    assert out["memset"] == [4, 3, 2, 1, 4, 3, 2, 1]
    assert out["memset_async"] == [7, 7, 7, 7]
    assert out["mem_type"] == 2  # CU_MEMORYTYPE_DEVICE
    assert out["params"] == [[0, 4]]  # sleep_us's one 4-byte parameter, from the server
    assert out["max_threads"] == 1024 and out["occupancy"] > 0
    assert out["query_running"] == 600  # CUDA_ERROR_NOT_READY while the 20 ms kernel runs
    assert out["query_done"] == 0
    assert out["elapsed_ms"] >= 19.0  # the simulated kernel's 20 ms, timed by events
    assert out["error_name"] == "CUDA_ERROR_OUT_OF_MEMORY"
    assert out["error_string"] == "out of memory"
    assert out["bad_stream"] == 400  # CUDA_ERROR_INVALID_HANDLE, decided on the client


def test_one_gib_survives_host_device_device_host(remoted):
    out = run_program(remoted.address, "roundtrip", str(GiB), options=("--gpu-memory", "4GiB"),
                      timeout=300)
    assert out["bytes"] == GiB and out["equal"]


def test_allocation_past_the_quota_is_out_of_memory(remoted):
    out = run_program(remoted.address, "alloc", str(2 * GiB), options=("--gpu-memory", "1GiB"))
    assert out["rc"] == 2  # CUDA_ERROR_OUT_OF_MEMORY
    ok = run_program(remoted.address, "alloc", str(GiB // 2), options=("--gpu-memory", "1GiB"))
    assert ok["rc"] == 0


def test_two_clients_in_one_slice_share_one_quota(remoted):
    opts = ("--gpu-memory", "3GiB", "--slice", "shared")
    first = start_program(remoted.address, "hold", str(2 * GiB), options=opts)
    try:
        held = first_line(first)
        assert held["held"] == 2 * GiB
        assert slice_used(remoted.state_dir, "remote-shared") >= 2 * GiB
        second = run_program(remoted.address, "alloc", str(2 * GiB), options=opts)
        assert second["rc"] == 2  # 2 + 2 GiB > 3 GiB: the slice's quota, shared
        assert second["info"][0] <= GiB  # cuMemGetInfo shows what the first client holds
        small = run_program(remoted.address, "alloc", str(GiB // 2), options=opts)
        assert small["rc"] == 0
    finally:
        first.stdin.close()
        first.wait(60)
    assert first.returncode == 0


def test_remoted_status_lists_sessions(remoted, tmp_path):
    first = start_program(remoted.address, "hold", str(1 << 20), options=("--slice", "st"))
    try:
        first_line(first)
        env = server_env(remoted.state_dir, tmp_path / "run")
        out = subprocess.run([sys.executable, "-m", "flexai", "remoted", "--status", "--listen",
                              remoted.address], env=env, capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        assert "1 session(s)" in out.stdout and "remote-st" in out.stdout
    finally:
        first.stdin.close()
        first.wait(60)


def test_run_remote_needs_the_token_and_a_good_address(remoted):
    cmd = [sys.executable, "-m", "flexai", "run", "--remote"]
    no_token = subprocess.run([*cmd, remoted.address, "--", "true"], env=client_env(token=None),
                              capture_output=True, text=True, timeout=60)
    assert no_token.returncode == 2 and "FLEXAI_REMOTE_TOKEN" in no_token.stderr
    bad = subprocess.run([*cmd, "nohost", "--", "true"], env=client_env(), capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "HOST:PORT" in bad.stderr


def test_unsupported_calls_say_so_once_and_return_not_supported(remoted):
    code = ("from cuda.bindings import driver as cu\n"
            "cu.cuInit(0)\n"
            "r = [int(cu.cuMemAllocManaged(1024, 1)[0]) for _ in range(3)]\n"
            "print(r)\n")
    proc = subprocess.run([sys.executable, "-m", "flexai", "run", "--remote", remoted.address,
                           "--", sys.executable, "-c", code], env=client_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[801, 801, 801]"  # CUDA_ERROR_NOT_SUPPORTED
    assert proc.stderr.count("cuMemAllocManaged is not supported") == 1


PROTOCOL_H = API_DEF.with_name("protocol.h")
TOOLKITS = [p for p in ("/usr/local/cuda/include", "/usr/include") if Path(p, "cuda.h").is_file()]


def test_python_handshake_constants_agree_with_protocol_h():
    from flexai.remote import wire

    text = PROTOCOL_H.read_text()

    def define(name: str) -> int:
        m = re.search(rf"#define {name} \(?\(?(?:uint32_t\)\()?(0x[0-9a-f]+|\d+)u?", text)
        assert m, name
        return int(m.group(1), 0)

    assert define("FX_R_MAGIC") == wire.MAGIC and define("FX_R_VERSION") == wire.VERSION
    assert define("FX_R_NONCE") == wire.NONCE and define("FX_R_MAC") == wire.MAC
    assert define("FX_R_MAX_AUTH") == wire.MAX_AUTH and define("FX_ROP_FIRST") == wire.OP_FIRST
    assert define("FX_R_HEADER") == wire.HEADER.size
    for name, value in (("HELLO", wire.HELLO), ("CHALLENGE", wire.CHALLENGE),
                        ("AUTH", wire.AUTH), ("WELCOME", wire.WELCOME), ("ERROR", wire.ERROR),
                        ("DATA", wire.DATA), ("BYE", wire.BYE)):
        assert re.search(rf"FX_RMSG_{name} = {value},", text), name
    assert f'"{wire.CLIENT_LABEL.decode()}"' in text and f'"{wire.SERVER_LABEL.decode()}"' in text


@pytest.mark.skipif(not TOOLKITS, reason="no CUDA toolkit headers here")
@pytest.mark.parametrize("source", sorted(str(p.relative_to(API_DEF.parent)) for p in
                                          API_DEF.parent.glob("*/*.c")))
def test_remote_sources_agree_with_nvidias_header(source):
    """Every prototype the client exports or the worker calls, checked by NVIDIA's cuda.h."""
    root = API_DEF.parent
    subprocess.run(["cc", "-fsyntax-only", "-std=gnu11", "-D_GNU_SOURCE", "-Werror", "-Wall",
                    "-Wextra", "-DFX_CUDA_API_FROM_TOOLKIT", f"-I{TOOLKITS[0]}", f"-I{root}",
                    f"-I{root.parent / 'cuda'}", str(root / source)], check=True)
