"""Memory quotas through real client programs under LD_PRELOAD on the simulated device."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import Run, base_env, loads_library_in_process

MiB = 1 << 20
GiB = 1 << 30
OOM = 2  # CUDA_ERROR_OUT_OF_MEMORY

# (operation and arguments) for ~600 MiB through each allocation path
PATHS = {
    "alloc": ["alloc", "600MiB"],
    "managed": ["managed", "600MiB"],
    "async": ["async", "600MiB"],
    "pool": ["pool", "600MiB"],
    "vmm": ["vmm", "600MiB"],
    "pitch": ["pitch", "614400", "1024"],          # 600 KiB rows (a multiple of 512) x 1024
    "array": ["array", "16384", "9600"],           # float32: 16384 * 9600 * 4 = 600 MiB
    "array3d": ["array3d", "1024", "1024", "150"],  # float32: 600 MiB
    "mipmap": ["mipmap", "8192", "15360", "2"],    # float32 levels: 480 MiB + 120 MiB
}


@pytest.mark.parametrize("path", sorted(PATHS))
def test_each_allocation_path_is_charged_refused_and_released(run_client, path):
    args = PATHS[path]
    size = 600 * MiB
    # (a stream-ordered pool keeps freed memory until a synchronization: "sync")
    r = run_client("init", "ctx", "0", "info", *args, "info", *args, "free", "sync", "info",
                   "nvml", "0", env={"FLEXAI_GPU_MEMORY": "1GiB"})
    before, during, after = r.op("info", 0), r.op("info", 1), r.op("info", 2)
    assert before["total"] == GiB and before["free"] == GiB
    allocs = r.rcs(args[0])
    assert allocs == [0, OOM], f"{path}: first fits, second is over the quota"
    assert during["free"] == GiB - size
    assert r.op("free")["rc"] == 0
    assert after["free"] == GiB, "a free gives back exactly what was charged"
    nv = r.op("nvml")
    assert (nv["total"], nv["free"], nv["used"]) == (GiB, GiB, 0)


@pytest.mark.parametrize("via", ["link", "dlsym", "deepbind", "default", "next", "gpa11", "gpa12",
                                 "ptsz"])
def test_every_resolution_path_is_limited(run_client, via):
    if via == "deepbind" and os.environ.get("FLEXAI_TEST_PRELOAD_FIRST"):
        pytest.skip("sanitizer runtimes refuse RTLD_DEEPBIND")
    r = run_client("init", "ctx", "0", "info", "alloc", "1536MiB", "alloc", "512MiB", "info",
                   "async", "1GiB", via=via, env={"FLEXAI_GPU_MEMORY": "1GiB"})
    assert r.op("info", 0)["total"] == GiB
    assert r.rcs("alloc") == [OOM, 0]
    assert r.op("info", 1)["free"] == 512 * MiB
    if via != "link":  # the linked client binds only the basic calls directly
        assert r.op("async")["rc"] == OOM


def test_context_overhead_is_charged_per_context(run_client):
    # every context costs its own memory (issue 8, item 8): the primary one and a created one
    r = run_client("init", "ctx", "0", "ctx", "0", "ctxcreate", "0", "info", "fill", "64MiB",
                   env={"FLEXAI_GPU_MEMORY": "1GiB", "FLEXAI_CONTEXT_MEMORY": "256MiB"})
    assert r.op("info")["free"] == 512 * MiB, "the primary context once, the created one"
    assert r.op("fill")["bytes"] == 512 * MiB


def test_queries_agree_cuda_total_mem_and_nvml(run_client):
    r = run_client("init", "ctx", "0", "alloc", "300MiB", "info", "total", "0", "nvml", "0",
                   env={"FLEXAI_GPU_MEMORY": "2GiB"})
    info, total, nv = r.op("info"), r.op("total"), r.op("nvml")
    assert info["total"] == total["total"] == nv["total"] == nv["total2"] == 2 * GiB
    assert info["free"] == nv["free"] == nv["free2"] == 2 * GiB - 300 * MiB
    assert nv["used"] == nv["used2"] == 300 * MiB


def test_nvml_only_process_sees_quota_without_initializing_cuda(run_client):
    r = run_client("nvml", "0", env={"FLEXAI_GPU_MEMORY": "3GiB"})
    nv = r.op("nvml")
    assert nv["rc"] == 0 and nv["total"] == 3 * GiB and nv["free"] == 3 * GiB


def test_repeated_visible_device_ends_the_list_for_nvml_and_cuda_alike(run_client):
    # CUDA_VISIBLE_DEVICES=0,0: the driver sees one device (a repeated entry ends the list). The
    # NVML-only path once parsed it differently, mapped both indices to device 0 and wrote the
    # 2 GiB quota of index 1 over the 1 GiB of index 0.
    env = {"FLEXAI_SIM_DEVICES": "2", "CUDA_VISIBLE_DEVICES": "0,0",
           "FLEXAI_GPU_MEMORY": "0:1GiB,1:2GiB", "FLEXAI_SLICE": "dup"}
    nv = run_client("nvml", "0", env=env).op("nvml")
    assert nv["rc"] == 0 and nv["total"] == GiB
    assert run_client("init", "ctx", "0", "info", env=env).op("info")["total"] == GiB


def test_without_quota_calls_pass_through(run_client):
    r = run_client("init", "ctx", "0", "info", "alloc", "1GiB", "info")
    assert r.op("info", 0)["total"] == 16 * GiB
    assert r.op("alloc")["rc"] == 0


def test_free_of_unknown_pointer_never_underflows(run_client):
    r = run_client("init", "ctx", "0", "alloc", "64MiB", "free", "free", "info",
                   env={"FLEXAI_GPU_MEMORY": "1GiB"})
    assert r.rcs("free")[0] == 0
    assert r.op("info")["free"] == GiB  # not 17 TB, not negative


def test_slice_shared_by_processes(clients, state_dir):
    env = base_env(state_dir, FLEXAI_GPU_MEMORY="1GiB", FLEXAI_SLICE="shared")
    holder = subprocess.Popen([str(clients["client"]), "init", "ctx", "0", "alloc", "700MiB",
                               "wait"], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert '"op":"wait"' in _read_until(holder, '"op":"wait"')
        other = subprocess.run([str(clients["client"]), "init", "ctx", "0", "info", "fill",
                                "100MiB"], env=env, capture_output=True, text=True, timeout=30)
        r = Run(other)
        assert r.op("info")["free"] == 324 * MiB
        assert r.op("fill")["bytes"] == 300 * MiB
    finally:
        holder.communicate("go\n", timeout=30)


def _read_until(proc: subprocess.Popen, marker: str) -> str:
    seen = ""
    while marker not in seen:
        line = proc.stdout.readline()
        if not line:
            break
        seen += line
    return seen


def test_32_racing_processes_never_exceed_the_quota(clients, state_dir):
    env = base_env(state_dir, FLEXAI_GPU_MEMORY="4GiB", FLEXAI_SLICE="race")
    procs = [subprocess.Popen([str(clients["client"]), "init", "ctx", "0", "fill", "48MiB",
                               "wait"], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True) for _ in range(32)]
    try:
        outs = [_read_until(p, '"op":"wait"') for p in procs]
        got = [Run(subprocess.CompletedProcess([], 0, o, "")).op("fill")["bytes"] for o in outs]
        assert sum(got) <= 4 * GiB
        # 4 GiB is not a multiple of 48 MiB: the slack is less than one chunk
        assert sum(got) > 4 * GiB - 48 * MiB
    finally:
        for p in procs:
            p.communicate("go\n", timeout=30)


def test_sigkilled_processes_never_block_others_and_are_reclaimed(clients, state_dir):
    env = base_env(state_dir, FLEXAI_GPU_MEMORY="1GiB", FLEXAI_SLICE="kill")
    for delay in [0.005 * k for k in range(1, 21)]:
        victim = subprocess.Popen([str(clients["client"]), "init", "ctx", "0", "alloc", "256MiB",
                                   "loop", "1MiB"], env=env, stdout=subprocess.PIPE, text=True)
        _read_until(victim, '"op":"loop"')
        time.sleep(delay)  # killed somewhere inside its alloc/free loop, maybe holding the lock
        victim.send_signal(signal.SIGKILL)
        victim.wait()
    start = time.monotonic()
    r = subprocess.run([str(clients["client"]), "init", "ctx", "0", "fill", "64MiB"], env=env,
                       capture_output=True, text=True, timeout=30)
    elapsed = time.monotonic() - start
    assert elapsed < 1.0, f"a survivor waited {elapsed:.2f}s"
    assert Run(r).op("fill")["bytes"] == GiB, "the killed processes' usage is reclaimed"


def test_fork_child_allocations_are_its_own_and_reclaimed(run_client):
    r = run_client("init", "ctx", "0", "alloc", "512MiB",
                   "fork", "5", "alloc", "256MiB", "alloc", "256MiB", "info",
                   "alloc", "512MiB", "info",
                   env={"FLEXAI_GPU_MEMORY": "1GiB"})
    # parent 512 + child 256, the child's second 256 MiB would exceed 1 GiB? no: 512+256+256 = 1 GiB
    assert r.rcs("alloc")[:3] == [0, 0, 0]
    assert r.op("info", 0)["free"] == 0
    assert r.op("fork")["rc"] == 0
    # after the child exited its 512 MiB come back: the parent can take them
    assert r.rcs("alloc")[3] == 0
    assert r.op("info", 1)["free"] == 0


def test_visible_devices_subsets_and_uuids_share_one_account(clients, state_dir):
    uuid1 = "GPU-f1e5a100-0000-4000-8000-000000000001"
    common = dict(FLEXAI_SIM_DEVICES="2", FLEXAI_SLICE="uuid", FLEXAI_GPU_MEMORY="0:1GiB,1:1GiB")
    a_env = base_env(state_dir, CUDA_VISIBLE_DEVICES="1", **common)
    holder = subprocess.Popen([str(clients["client"]), "init", "ctx", "0", "alloc", "768MiB",
                               "wait"], env=a_env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        _read_until(holder, '"op":"wait"')
        b_env = base_env(state_dir, CUDA_VISIBLE_DEVICES=f"0,{uuid1}", **common)
        r = Run(subprocess.run([str(clients["client"]), "init", "ctx", "1", "info", "ctx", "0",
                                "info"], env=b_env, capture_output=True, text=True, timeout=30))
        assert r.op("info", 0)["free"] == 256 * MiB, "physical device 1 is one account"
        assert r.op("info", 1)["free"] == GiB, "physical device 0 is untouched"
    finally:
        holder.communicate("go\n", timeout=30)


@pytest.mark.parametrize("var,value", [
    ("FLEXAI_GPU_MEMORY", "8XB"),
    ("FLEXAI_GPU_MEMORY", "0"),
    ("FLEXAI_GPU_MEMORY", "0:1GiB,0:2GiB"),
    ("FLEXAI_GPU_COMPUTE", "150"),
    ("FLEXAI_PRIORITY", "urgent"),
    ("FLEXAI_SLICE", "bad name"),
    ("FLEXAI_STATE_DIR", "relative/dir"),
])
def test_malformed_variables_fail_closed_with_a_clear_message(run_client, var, value):
    r = run_client("init", "alloc", "1MiB", env={var: value})
    assert r.op("init")["rc"] == 1  # CUDA_ERROR_INVALID_VALUE, no crash, no silent "no limit"
    assert r.op("alloc")["rc"] != 0
    assert var in r.proc.stderr and "e.g." in r.proc.stderr
    assert r.proc.stdout.count("flexai") == 0, "the library never writes to stdout"


def test_missing_driver_is_an_error_code_not_a_crash(run_client):
    r = run_client("init", "alloc", "1MiB", via="link",
                   env={"FLEXAI_LIBCUDA": "/nonexistent/libcuda.so.1"})
    assert r.op("init")["rc"] == 100  # CUDA_ERROR_NO_DEVICE
    assert r.op("alloc")["rc"] == 100


def test_unusable_state_in_use_fails_closed_when_a_quota_is_set(run_client, tmp_path):
    import fcntl

    bad = tmp_path / "bad"
    bad.mkdir()
    state = bad / "state"
    state.write_bytes(b"written by another version")
    with open(state, "rb") as user:  # a process of that other version is still attached
        fcntl.flock(user, fcntl.LOCK_SH)
        r = run_client("init", "ctx", "0", "alloc", "1MiB",
                       env={"FLEXAI_GPU_MEMORY": "1GiB", "FLEXAI_STATE_DIR": str(bad)})
        assert r.op("init")["rc"] == 304  # CUDA_ERROR_OPERATING_SYSTEM: never "no limit"
        assert r.op("alloc")["rc"] == 304
        assert "state file" in r.proc.stderr
        free_run = run_client("init", "ctx", "0", "alloc", "1MiB",
                              env={"FLEXAI_STATE_DIR": str(bad)})
        assert free_run.op("alloc")["rc"] == 0, "without a quota there is nothing to enforce"
    assert state.read_bytes() == b"written by another version", "a used file is never replaced"


def test_unusable_state_nobody_uses_is_replaced(run_client, tmp_path):
    bad = tmp_path / "stale"
    bad.mkdir()
    (bad / "state").write_bytes(b"left by an older version")
    r = run_client("init", "ctx", "0", "alloc", "768MiB", "alloc", "512MiB",
                   env={"FLEXAI_GPU_MEMORY": "1GiB", "FLEXAI_STATE_DIR": str(bad)})
    assert r.rcs("alloc") == [0, OOM]
    assert "replacing it" in r.proc.stderr


def test_state_dir_that_cannot_be_created_fails_closed(run_client, tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    r = run_client("init", "alloc", "1MiB",
                   env={"FLEXAI_GPU_MEMORY": "1GiB", "FLEXAI_STATE_DIR": str(not_a_dir / "x")})
    assert r.op("init")["rc"] == 304 and "FLEXAI_STATE_DIR" in r.proc.stderr


@pytest.mark.parametrize("order", ["flexai-first", "wrapper-first"])
def test_rtld_next_of_another_preload_library_still_works(clients, state_dir, order):
    from conftest import LIBFLEXAI

    libs = [str(LIBFLEXAI), str(clients["wrap_getpid"])]
    if order == "wrapper-first":
        libs.reverse()
    sanitizer = os.environ.get("FLEXAI_TEST_PRELOAD_FIRST")  # a sanitizer runtime stays first
    env = base_env(state_dir, FLEXAI_GPU_MEMORY="1GiB")
    env["LD_PRELOAD"] = " ".join(([sanitizer] if sanitizer else []) + libs)
    proc = subprocess.run([str(clients["client"]), "getpid", "init", "ctx", "0", "alloc",
                           "2GiB"], env=env, capture_output=True, text=True, timeout=30)
    r = Run(proc)
    assert r.op("getpid")["pid"] > 0, "the wrapper's RTLD_NEXT found libc, not itself"
    assert r.op("alloc")["rc"] == OOM


def test_python_under_preload_does_not_touch_cuda(state_dir):
    env = base_env(state_dir, FLEXAI_GPU_MEMORY="1GiB")
    code = ("import ctypes, json, sqlite3, ssl, decimal;"
            "maps = open('/proc/self/maps').read();"
            "print('libcuda' in maps)")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
    assert proc.stderr == ""


HOLD_LOCK = """
import ctypes, mmap, sys, time
path, offset = sys.argv[1], int(sys.argv[2])
f = open(path, "r+b")
m = mmap.mmap(f.fileno(), 0)
lock = ctypes.c_char.from_buffer(m, offset)
libc = ctypes.CDLL(None)
assert libc.pthread_mutex_lock(ctypes.byref(lock)) == 0
print("locked", flush=True)
time.sleep(600)
"""


@loads_library_in_process
def test_holder_of_the_state_lock_killed_does_not_block_others(run_client, state_dir, tmp_path):
    import ctypes

    from conftest import LIBFLEXAI

    run_client("init", "ctx", "0", env={"FLEXAI_GPU_MEMORY": "1GiB"})  # creates the state
    lib = ctypes.CDLL(str(LIBFLEXAI))
    lib.flexai_layout_value.restype = ctypes.c_long
    offset = lib.flexai_layout_value(b"fx_region.lock")
    assert offset > 0
    script = tmp_path / "hold.py"
    script.write_text(HOLD_LOCK)
    holder = subprocess.Popen([sys.executable, str(script), str(state_dir / "state"), str(offset)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    start = time.monotonic()
    r = run_client("init", "ctx", "0", "fill", "256MiB",
                   env={"FLEXAI_GPU_MEMORY": "1GiB", "FLEXAI_LOG": "info"})
    assert time.monotonic() - start < 1.0
    assert r.op("fill")["bytes"] == GiB
    assert "recovered the state lock" in r.proc.stderr


@pytest.mark.parametrize("via", ["gpa12", "ptsz"])
def test_driver_handing_out_other_pointers_is_still_matched_by_name(run_client, via):
    # FLEXAI_SIM_PROC_THUNKS makes the simulated driver's cuGetProcAddress return addresses that
    # differ from its exported symbols (for cuGetProcAddress itself, cuMemAlloc, cuMemGetInfo)
    r = run_client("init", "ctx", "0", "info", "alloc", "2GiB", via=via,
                   env={"FLEXAI_GPU_MEMORY": "1GiB", "FLEXAI_SIM_PROC_THUNKS": "1"})
    assert r.op("info")["total"] == GiB
    assert r.op("alloc")["rc"] == OOM


_EXECVE = """
import ctypes, json, sys
path, argv, envp = json.loads(sys.argv[1])
arr = lambda items: (ctypes.c_char_p * (len(items) + 1))(*[s.encode() for s in items], None)
ctypes.CDLL(None, use_errno=True).execve(path.encode(), arr(argv), arr(envp))
sys.exit("execve failed")
"""


def test_a_variable_given_twice_takes_its_first_value(clients, state_dir):
    # getenv() and Python's os.environ take the first of two entries of one name; the shim once
    # took the last, so `python -m flexai.config` and the program disagreed about the quota.
    env = base_env(state_dir)
    envp = [f"{k}={v}" for k, v in env.items()]
    envp += ["FLEXAI_GPU_MEMORY=1GiB", "FLEXAI_GPU_MEMORY=2GiB"]
    client = str(clients["client"])
    argv = [client, "--via", "dlsym", "init", "ctx", "0", "info"]
    proc = subprocess.run([sys.executable, "-c", _EXECVE, json.dumps([client, argv, envp])],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert Run(proc).op("info")["total"] == GiB


# ---- the simulated driver frees and shares memory as NVIDIA's does --------------------------
# (run without the shim: these pin what the tests below rely on)

INVALID_VALUE = 1  # CUDA_ERROR_INVALID_VALUE
INVALID_CONTEXT = 201  # CUDA_ERROR_INVALID_CONTEXT

# How each kind of context teardown is reached: ops that make the context current, then the
# teardown, then the ops that make a context current again.
TEARDOWNS = {
    "reset": (["ctx", "0"], ["reset", "0"], []),  # still retained: used again as it is
    "release": (["ctx", "0"], ["release", "0"], ["ctx", "0"]),  # the last retain: destroyed
    "ctxdestroy": (["ctxcreate", "0"], ["ctxdestroy"], ["ctxcreate", "0"]),
}


#: LD_PRELOAD of a program run on the simulated driver without the shim (a sanitizer build's
#: runtime must still come first: the simulated driver is instrumented too).
NATIVE = os.environ.get("FLEXAI_TEST_PRELOAD_FIRST", "")


def _sim_alone(tmp_path, **extra: str) -> dict[str, str]:
    """A simulated card of this test's own (its memory is shared only by this test's processes)."""
    sim = tmp_path / "sim"
    sim.mkdir(exist_ok=True)
    return {"FLEXAI_SIM_STATE_DIR": str(sim), **extra}


@pytest.mark.parametrize("teardown", sorted(TEARDOWNS))
def test_sim_context_teardown_frees_its_memory_and_invalidates_pointers(run_client, tmp_path,
                                                                          teardown):
    make, end, again = TEARDOWNS[teardown]
    r = run_client("init", *make, "alloc", "3GiB", "info", *end, *again, "touch", "free", "info",
                   "alloc", "1GiB", "touch", "info", preload=NATIVE,
                   env=_sim_alone(tmp_path, FLEXAI_SIM_MEMORY="8GiB"))
    assert r.op("info", 0)["free"] == 5 * GiB
    assert r.op(end[0])["rc"] == 0
    assert r.rcs("touch") == [INVALID_VALUE, 0], "a pointer of a torn-down context is invalid"
    assert r.op("free")["rc"] == INVALID_VALUE, "and cannot be freed again"
    assert r.op("info", 1)["free"] == 8 * GiB, "the driver freed it"
    assert r.op("info", 2)["free"] == 7 * GiB


def test_sim_released_primary_context_is_unusable_until_retained_again(run_client, tmp_path):
    r = run_client("init", "ctx", "0", "ctx", "0", "release", "0", "alloc", "1MiB", "release",
                   "0", "alloc", "1MiB", "release", "0", "ctx", "0", "alloc", "1MiB",
                   preload=NATIVE, env=_sim_alone(tmp_path))
    assert r.rcs("release") == [0, 0, INVALID_CONTEXT]
    assert r.rcs("alloc") == [0, INVALID_CONTEXT, 0]


def test_sim_memory_is_the_nodes_every_process_sees_what_others_hold(clients, tmp_path):
    env = base_env(tmp_path, **_sim_alone(tmp_path, FLEXAI_SIM_MEMORY="8GiB"))
    env["LD_PRELOAD"] = NATIVE
    holder = subprocess.Popen([str(clients["client"]), "init", "ctx", "0", "alloc", "5GiB",
                               "wait"], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        _read_until(holder, '"op":"wait"')
        other = Run(subprocess.run([str(clients["client"]), "init", "ctx", "0", "info", "nvml",
                                    "0", "alloc", "4GiB", "alloc", "3GiB"], env=env,
                                   capture_output=True, text=True, timeout=30))
        assert other.op("info")["free"] == 3 * GiB and other.op("info")["total"] == 8 * GiB
        nv = other.op("nvml")
        assert (nv["total"], nv["free"], nv["used"]) == (8 * GiB, 3 * GiB, 5 * GiB)
        assert other.rcs("alloc") == [OOM, 0], "another process's memory is not free"
    finally:
        holder.send_signal(signal.SIGKILL)  # a killed process's memory comes back too
        holder.wait()
    after = Run(subprocess.run([str(clients["client"]), "init", "ctx", "0", "info", "nvml", "0"],
                               env=env, capture_output=True, text=True, timeout=30))
    assert after.op("info")["free"] == 8 * GiB and after.op("nvml")["used"] == 0


# ---- a context's teardown gives its memory back (issue 8, item 7) ---------------------------

@pytest.mark.parametrize("teardown", sorted(TEARDOWNS))
def test_context_teardown_gives_its_allocations_back(run_client, tmp_path, teardown):
    # Measured on a GPU: 3 GiB allocations under an 8 GiB quota returned 0, 0, then
    # out-of-memory after a cudaDeviceReset; the driver had freed the first two.
    make, end, again = TEARDOWNS[teardown]
    r = run_client("init", *make, "alloc", "3GiB", "alloc", "3GiB", *end, *again,
                   "alloc", "3GiB", "alloc", "3GiB", "info", "free", "free", "free", "info",
                   env=_sim_alone(tmp_path, FLEXAI_GPU_MEMORY="8GiB"))
    assert r.op(end[0])["rc"] == 0
    assert r.rcs("alloc") == [0, 0, 0, 0]
    assert r.op("info", 0)["free"] == 2 * GiB
    # the two allocations after the teardown free normally; the stale one is the driver's error
    assert r.rcs("free") == [0, 0, INVALID_VALUE]
    assert r.op("info", 1)["free"] == 8 * GiB, "nothing is given back twice"


@pytest.mark.parametrize("teardown", sorted(TEARDOWNS))
def test_context_overhead_comes_back_with_the_last_context_and_is_charged_again_once(
        run_client, tmp_path, teardown):
    make, end, again = TEARDOWNS[teardown]
    env = _sim_alone(tmp_path, FLEXAI_GPU_MEMORY="1GiB", FLEXAI_CONTEXT_MEMORY="256MiB")
    # a retain of the primary context again where the teardown left it retained (reset)
    again = again or ["ctx", "0"]
    r = run_client("init", *make, "alloc", "512MiB", *end, *again, *again, "fill", "64MiB",
                   env=env)
    # retaining the primary context twice is one context; creating twice makes two (item 8)
    assert r.op("fill")["bytes"] == (512 if teardown == "ctxdestroy" else 768) * MiB


def test_context_used_again_after_a_reset_is_charged_again(run_client, tmp_path):
    env = _sim_alone(tmp_path, FLEXAI_GPU_MEMORY="1GiB", FLEXAI_CONTEXT_MEMORY="256MiB")
    r = run_client("init", "ctx", "0", "alloc", "512MiB", "reset", "0", "info", "fill", "64MiB",
                   env=env)
    assert r.op("info")["free"] == GiB, "no context, nothing held"
    assert r.op("fill")["bytes"] == 768 * MiB, "the context made again by use is charged"


def test_destroying_one_of_two_contexts_keeps_the_overhead(run_client, tmp_path):
    env = _sim_alone(tmp_path, FLEXAI_GPU_MEMORY="1GiB", FLEXAI_CONTEXT_MEMORY="256MiB")
    r = run_client("init", "ctx", "0", "ctxcreate", "0", "alloc", "512MiB", "ctxdestroy",
                   "ctx", "0", "info", "alloc", "128MiB", "release", "0", "release", "0",
                   "ctx", "0", "info", env=env)
    assert r.op("info", 0)["free"] == 768 * MiB, "the primary context is still there"
    assert r.rcs("release") == [0, 0]
    assert r.op("info", 1)["free"] == 768 * MiB, "its 128 MiB died with it; charged once again"


# ---- reported free never exceeds what the device has (issue 8, item 9) ----------------------

def test_reported_free_never_exceeds_the_devices_free(clients, state_dir, tmp_path):
    # Two slices of 6 GiB on an 8 GiB card: once one holds 5 GiB, the other must not be told
    # (by cuMemGetInfo or NVML) that 6 GiB are free, or it sizes its cache (vLLM, JAX) to memory
    # the first one holds.
    sim = _sim_alone(tmp_path, FLEXAI_SIM_MEMORY="8GiB", FLEXAI_GPU_MEMORY="6GiB")
    holder = subprocess.Popen([str(clients["client"]), "init", "ctx", "0", "alloc", "5GiB",
                               "wait"], env=base_env(state_dir, FLEXAI_SLICE="a", **sim),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        _read_until(holder, '"op":"wait"')
        r = Run(subprocess.run([str(clients["client"]), "init", "ctx", "0", "info", "nvml", "0",
                                "fill", "512MiB"],
                               env=base_env(state_dir, FLEXAI_SLICE="b", **sim),
                               capture_output=True, text=True, timeout=30))
        info, nv = r.op("info"), r.op("nvml")
        assert (info["total"], info["free"]) == (6 * GiB, 3 * GiB)
        assert (nv["total"], nv["free"], nv["used"]) == (6 * GiB, 3 * GiB, 0)
        assert (nv["total2"], nv["free2"], nv["used2"]) == (6 * GiB, 3 * GiB, 0)
        assert r.op("fill")["bytes"] == 3 * GiB, "what it was told is what it gets"
    finally:
        holder.communicate("go\n", timeout=30)


def test_quota_larger_than_the_device_reports_the_device_free(run_client, tmp_path):
    r = run_client("init", "ctx", "0", "alloc", "1GiB", "info", "nvml", "0",
                   env=_sim_alone(tmp_path, FLEXAI_SIM_MEMORY="4GiB", FLEXAI_GPU_MEMORY="8GiB"))
    info, nv = r.op("info"), r.op("nvml")
    assert (info["total"], info["free"]) == (8 * GiB, 3 * GiB)
    assert (nv["total"], nv["free"], nv["used"]) == (8 * GiB, 3 * GiB, GiB)


# ---- a resize sticks when another process joins (issue 8, item 10) --------------------------

_SET_LIMIT = """
import ctypes, sys
lib_path, state_dir, slice_name, uuid, size = sys.argv[1:]
lib = ctypes.CDLL(lib_path)
node, err = ctypes.c_void_p(), ctypes.create_string_buffer(4 + 256)
assert lib.flexai_node_open(state_dir.encode(), ctypes.byref(node), err) == 0, err.raw[4:]
rc = lib.flexai_node_set_memory_limit(node, slice_name.encode(), uuid.encode(),
                                      ctypes.c_uint64(int(size)), err)
assert rc == 0, err.raw[4:]
lib.flexai_node_close(node)
"""


def test_resize_sticks_when_another_process_joins(clients, state_dir, tmp_path):
    # Measured: a slice at 8 GiB resized to 4 GiB was back at 8 GiB once one more process with
    # FLEXAI_GPU_MEMORY=8GiB called cuInit. The slice's settings belong to the slice.
    from conftest import LIBFLEXAI

    env = base_env(state_dir, FLEXAI_GPU_MEMORY="8GiB", FLEXAI_SLICE="keep",
                   **_sim_alone(tmp_path))
    holder = subprocess.Popen([str(clients["client"]), "init", "ctx", "0", "info", "wait",
                               "info"], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    seen = ""
    try:
        seen = _read_until(holder, '"op":"wait"')
        resize_env = {**env, "LD_PRELOAD": NATIVE}
        # the C API the CLI and flexai.resize use, from the library under test
        subprocess.run([sys.executable, "-c", _SET_LIMIT, str(LIBFLEXAI), str(state_dir), "keep",
                        "GPU-f1e5a100-0000-4000-8000-000000000000", str(4 * GiB)],
                       env=resize_env, check=True, timeout=30)
        joiner = Run(subprocess.run([str(clients["client"]), "init", "ctx", "0", "info"],
                                    env=env, capture_output=True, text=True, timeout=30))
        assert joiner.op("info")["total"] == 4 * GiB, "the joiner gets the slice's quota"
        assert "the slice's settings apply" in joiner.proc.stderr
    finally:
        rest, _ = holder.communicate("go\n", timeout=30)
    held = Run(subprocess.CompletedProcess([], 0, seen + rest, ""))
    assert held.op("info", 0)["total"] == 8 * GiB
    assert held.op("info", 1)["total"] == 4 * GiB, "and the resize still holds for the slice"
