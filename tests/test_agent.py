"""The node agent (flexai.agent.NodeAgent, ``flexai agent``) on a simulated two-GPU node.

Each test runs the agent in a process of its own started with the simulated device's
environment (NVML is found through LD_LIBRARY_PATH, read when a process starts), and calls it
through pipes: every argument and answer is pickled, as it is when the pool calls the agent as a
Ray actor. Jobs are the test client (tests/clients/client.c) or small shell/Python programs.
No verdict depends on timing: waits have deadlines far beyond what they need.
"""
from __future__ import annotations

import importlib.util
import os
import pickle
import re
import select
import signal
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import flexai
from conftest import LIBFLEXAI, loads_library_in_process
from flexai import sim
from flexai.node.launch import without_flexai

# The agent process loads libflexai.so (through cffi) to read the node's state.
pytestmark = loads_library_in_process

GiB = 1 << 30
UUIDS = ["GPU-a9e00000-0000-4000-8000-00000000000a", "GPU-a9e00000-0000-4000-8000-00000000000b"]
MODEL = "H100-TEST 80GB"

# The agent's side of the pipe: length-prefixed pickles, one answer per call.
SERVER = r"""
import os, pickle, struct, sys, threading
from flexai.agent import NodeAgent
inp, out = sys.stdin.buffer, sys.stdout.buffer
sys.stdout = sys.stderr

def read():
    head = inp.read(8)
    if len(head) < 8:
        return None
    return pickle.loads(inp.read(struct.unpack("<Q", head)[0]))

def write(obj):
    data = pickle.dumps(obj)
    out.write(struct.pack("<Q", len(data)) + data)
    out.flush()

agent = NodeAgent(**read())
write((True, None))
while (msg := read()) is not None:
    name, args, kw = msg
    try:
        if name == "_threads":
            result = [t.name for t in threading.enumerate()]
        else:
            result = getattr(agent, name)(*args, **kw)
        write((True, result))
    except Exception as exc:
        write((False, exc))
    if name == "close":
        break
"""


def node_env(state_dir: Path, **knobs: object) -> dict[str, str]:
    """The environment of a simulated node: two 16 GiB GPUs of model MODEL."""
    env = without_flexai(os.environ, keep=("FLEXAI_LIB_DIR",))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    settings = {"devices": 2, "memory": "16GiB", "uuids": ",".join(UUIDS), "name": MODEL}
    env = sim.sim_env(env, **{**settings, **knobs})
    env.update(FLEXAI_STATE_DIR=str(state_dir), FLEXAI_CONTEXT_MEMORY="0")
    return env


class AgentProcess:
    """A NodeAgent in a process of its own; ``agent.<method>(...)`` calls it there."""

    def __init__(self, env: dict[str, str], **kwargs: object) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._send(kwargs)
        self._receive(60)

    def _send(self, obj: object) -> None:
        data = pickle.dumps(obj)
        assert self.proc.stdin is not None
        self.proc.stdin.write(struct.pack("<Q", len(data)) + data)
        self.proc.stdin.flush()

    def _read(self, n: int, deadline: float) -> bytes:
        assert self.proc.stdout is not None
        fd, buf = self.proc.stdout.fileno(), b""
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError("the agent process did not answer")
            chunk = os.read(fd, n - len(buf))
            if not chunk:
                raise EOFError(f"the agent process ended ({self.proc.wait(10)})")
            buf += chunk
        return buf

    def _receive(self, timeout: float) -> object:
        deadline = time.monotonic() + timeout
        size = struct.unpack("<Q", self._read(8, deadline))[0]
        ok, value = pickle.loads(self._read(size, deadline))
        if not ok:
            raise value
        return value

    def call(self, name: str, *args: object, timeout: float = 60, **kw: object) -> object:
        self._send((name, args, kw))
        return self._receive(timeout)

    def __getattr__(self, name: str):
        return lambda *args, **kw: self.call(name, *args, **kw)

    def shutdown(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call("close")
            except (EOFError, OSError, TimeoutError):
                pass
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def agent(state_dir, tmp_path):
    a = AgentProcess(node_env(state_dir), name="node-a", log_dir=str(tmp_path / "logs"))
    yield a
    a.shutdown()


def wait_for(check, what: str, timeout: float = 30):
    """Call ``check`` until it returns something true; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def log_lines(agent: AgentProcess, job: str, stream: str = "stdout") -> list[str]:
    return agent.read_logs(job, stream, 0, 1 << 20)[0].decode().splitlines()


def gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (absent, or a zombie of someone else's)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def gpu(view: dict, index: int) -> dict:
    return next(g for g in view["gpus"] if g["index"] == index)


# ---- the node's facts ---------------------------------------------------------------------------

def test_info_reports_the_gpus_by_uuid_and_model(agent):
    info = agent.info()
    assert info["name"] == "node-a"
    assert info["version"] == flexai.__version__
    assert info["nvml_error"] == ""
    assert info["cpus"] >= 1 and info["host_memory"] > 0
    assert info["devices"] == [
        {"index": i, "uuid": UUIDS[i], "model": MODEL, "memory_total": 16 * GiB}
        for i in range(2)]
    view = agent.view()
    assert view["name"] == "node-a"
    assert [(g["model"], g["memory_free"], g["compute_free"], g["slices"])
            for g in view["gpus"]] == [(MODEL, 16 * GiB, 100, [])] * 2


def test_nvml_found_through_the_contract_variable(state_dir):
    """A process started without the simulated directory on LD_LIBRARY_PATH (a Ray worker's)
    still finds the simulated NVML through the driver variable of the contract."""
    env = node_env(state_dir, name="L40S")
    env["LD_LIBRARY_PATH"] = ""
    a = AgentProcess(env, name="node-b")
    try:
        assert [(d["uuid"], d["model"]) for d in a.info()["devices"]] == [
            (u, "L40S") for u in UUIDS]
    finally:
        a.shutdown()


def test_a_node_without_nvml_has_no_gpu(state_dir, tmp_path):
    if sim.real_gpu_present():
        pytest.skip("a real NVIDIA driver answers here")
    env = without_flexai(os.environ, keep=("FLEXAI_LIB_DIR",))
    env.update(FLEXAI_STATE_DIR=str(state_dir), LD_LIBRARY_PATH="")
    a = AgentProcess(env, name="cpu-only")
    try:
        info = a.info()
        assert info["devices"] == [] and info["nvml_error"]
        assert a.view()["gpus"] == []
        with pytest.raises(ValueError, match="no GPU 0 on node cpu-only"):
            a.start("job-1", ["true"], gpus=[0])
        with pytest.raises(ValueError, match="needs a GPU"):
            a.start("job-1", ["true"], memory=GiB)
        pid = a.start("job-cpu", [sys.executable, "-c", "print('cpu job')"])
        assert pid > 0
        wait_for(lambda: a.poll()[0]["state"] == "exited", "the CPU job's exit")
        assert log_lines(a, "job-cpu") == ["cpu job"]
    finally:
        a.shutdown()


NAME_PROBE = """
import ctypes
cuda = ctypes.CDLL("libcuda.so.1")
rc = cuda.cuInit(0)
name = ctypes.create_string_buffer(100)
print(rc, cuda.cuDeviceGetName(name, 100, 0), name.value.decode())
"""


@pytest.mark.parametrize("name, expected", [
    (None, "0 0 flexai simulated GPU"), ("A100 80GB", "0 0 A100 80GB"),
    ("x" * 64, "1 3 "), ("bad\tname", "1 3 ")])
def test_simulated_model_name_in_the_cuda_driver(name, expected):
    env = sim.sim_env(without_flexai(os.environ, keep=("FLEXAI_LIB_DIR",)), name=name)
    run = subprocess.run([sys.executable, "-c", NAME_PROBE], env=env, capture_output=True,
                         text=True, timeout=60)
    assert run.stdout.rstrip("\n") == expected.rstrip("\n"), run.stderr
    if expected.startswith("1"):  # the fake driver refuses to start, and says why
        assert "FLEXAI_SIM_NAME" in run.stderr and "e.g. H100-80GB" in run.stderr


def test_the_agent_imports_neither_ray_nor_the_pool():
    probe = ("import sys, flexai.agent, flexai.cli.agent; "
             "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('flexai.pool')))")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == "[]", run.stderr


def test_view_of_made_up_node():
    """gpu_views on a made-up snapshot: what each kind of slice holds."""
    from types import SimpleNamespace

    from flexai.agent.devices import Gpu
    from flexai.agent.view import gpu_views
    from flexai.node import DeviceInfo, NodeSnapshot, SliceDevice, SliceUsage

    gpus = [Gpu(i, UUIDS[i], MODEL, 16 * GiB) for i in range(2)]

    def on(i, limit, used, compute=0):
        uuid = UUIDS[i].upper()  # matched to NVML's whatever the case
        return SliceDevice(uuid, i, limit, used, compute, 0, 0)

    snap = NodeSnapshot("/x", tuple(DeviceInfo(i, UUIDS[i]) for i in range(2)), (
        SliceUsage(1, "limited", "high", 1, (on(0, 4 * GiB, GiB, 20),)),
        SliceUsage(2, "unlimited", "low", 2, (on(0, 0, 3 * GiB),)),
        SliceUsage(3, "idle", "normal", 0, (on(1, 8 * GiB, 0, 50),)),
        SliceUsage(4, "mine", "low", 1, (on(1, 2 * GiB, GiB, 10),)),
    ))
    jobs = [SimpleNamespace(job_id="mine", gpus=(1,), priority="best-effort", memory=GiB,
                            compute=30, guarantee=0),
            SimpleNamespace(job_id="pending", gpus=(0, 1), priority="normal", memory=GiB,
                            compute=5, guarantee=5)]
    g0, g1 = gpu_views(gpus, snap, jobs)
    assert g0["slices"] == [
        {"job": "limited", "priority": "high", "memory": 4 * GiB, "compute": 20,
         "guarantee": 20},
        {"job": "unlimited", "priority": "low", "memory": 3 * GiB, "compute": 0,
         "guarantee": 0},
        {"job": "pending", "priority": "normal", "memory": GiB, "compute": 5, "guarantee": 5}]
    assert (g0["memory_free"], g0["compute_free"]) == (8 * GiB, 75)
    assert g1["slices"] == [
        {"job": "mine", "priority": "best-effort", "memory": 2 * GiB, "compute": 30,
         "guarantee": 0},
        {"job": "pending", "priority": "normal", "memory": GiB, "compute": 5, "guarantee": 5}]
    assert (g1["memory_free"], g1["compute_free"]) == (13 * GiB, 65)
    full = [SimpleNamespace(job_id="big", gpus=(0,), priority="high", memory=20 * GiB,
                            compute=100, guarantee=100)]
    assert gpu_views(gpus, snap, full)[0]["memory_free"] == 0  # never negative


# ---- jobs in slices -----------------------------------------------------------------------------

def test_job_quota_shows_in_view_and_snapshot(agent, clients, state_dir):
    view = agent.view()  # nothing yet
    # a job that never attaches (no CUDA) counts with what it asked for, on both its GPUs
    agent.start("gang", ["sleep", "60"], memory=16 * GiB, compute=100, gpus=[0, 1],
                priority="low")
    view = agent.view()
    for i in (0, 1):
        assert gpu(view, i)["memory_free"] == 0 and gpu(view, i)["compute_free"] == 0
        assert gpu(view, i)["slices"] == [{"job": "gang", "priority": "low", "memory": 16 * GiB,
                                           "compute": 100, "guarantee": 100}]
    agent.stop("gang", grace_s=5, reason="cancelled")
    assert [(j["job_id"], j["state"], j["reason"]) for j in agent.poll()] == [
        ("gang", "killed", "cancelled")]

    # a CUDA job on GPU 1 under a 2 GiB quota: 1 GiB fits, 4 GiB more is refused
    argv = [str(clients["client"]), "init", "ctx", "0", "alloc", "1GiB", "alloc", "4GiB",
            "sleep", "60000"]
    pid = agent.start("job-1", argv, memory=2 * GiB, compute=30, gpus=[1], priority="high")
    before = gpu(agent.view(), 1)
    assert (before["memory_free"], before["compute_free"]) == (14 * GiB, 70)
    lines = wait_for(lambda: [x for x in log_lines(agent, "job-1") if '"alloc"' in x][1:],
                     "the job's second allocation")
    allocs = [x for x in log_lines(agent, "job-1") if '"alloc"' in x]
    assert allocs == ['{"op":"alloc","rc":0}', '{"op":"alloc","rc":2}'], lines  # OUT_OF_MEMORY

    snap = agent.snapshot()
    job = snap.slice("job-1")
    assert job is not None and job.priority == "high"
    [dev] = job.devices
    assert (dev.device, dev.limit_bytes, dev.used_bytes, dev.compute) == (
        UUIDS[1], 2 * GiB, GiB, 30)
    assert [p.pid for p in dev.processes] == [pid]

    # another slice on GPU 0, started without the agent and without a limit: its use counts
    env = node_env(state_dir)
    env.update(LD_PRELOAD=str(LIBFLEXAI), FLEXAI_SLICE="outside", CUDA_VISIBLE_DEVICES=UUIDS[0])
    out_log = state_dir.parent / "outside.out"
    with open(out_log, "w") as out:
        outside = subprocess.Popen([str(clients["client"]), "init", "ctx", "0", "alloc",
                                    "3GiB", "sleep", "60000"], env=env, stdout=out)
    try:
        wait_for(lambda: '"alloc"' in out_log.read_text(), "the outside client's allocation")
        assert out_log.read_text().count('"rc":0') == 3, out_log.read_text()
        view = agent.view()
        assert gpu(view, 0)["memory_free"] == 13 * GiB and gpu(view, 0)["compute_free"] == 100
        assert gpu(view, 0)["slices"] == [{"job": "outside", "priority": "normal",
                                           "memory": 3 * GiB, "compute": 0, "guarantee": 0}]
        after = gpu(view, 1)
        assert after["memory_free"] == 14 * GiB and after["compute_free"] == 70
        assert after["slices"] == [{"job": "job-1", "priority": "high", "memory": 2 * GiB,
                                    "compute": 30, "guarantee": 30}]
    finally:
        outside.kill()
        outside.wait(10)

    resized = agent.resize("job-1", compute=50)
    assert resized["compute"] == 50
    assert agent.snapshot().slice("job-1").devices[0].compute == 50
    assert gpu(agent.view(), 1)["compute_free"] == 50

    assert agent.poll()[-1]["state"] == "running"
    agent.stop("job-1", grace_s=5, reason="evicted")
    last = agent.poll()[-1]
    assert (last["job_id"], last["state"], last["returncode"], last["reason"]) == (
        "job-1", "killed", -signal.SIGTERM, "evicted")
    assert gone(pid)
    view = agent.view()
    assert gpu(view, 1)["memory_free"] == 16 * GiB and gpu(view, 1)["slices"] == []


def test_logs_stream_and_exit_status(agent):
    script = "echo one; sleep 0.5; echo two >&2; echo three; exit 3"
    pid = agent.start("job-sh", ["sh", "-c", script])
    out, offset, chunks = b"", 0, 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        data, offset, finished = agent.read_logs("job-sh", "stdout", offset, 3)
        assert len(data) <= 3
        out += data
        chunks += bool(data)
        if finished:
            break
        time.sleep(0.02)
    else:
        pytest.fail("the job's stdout never finished")
    assert out == b"one\nthree\n" and offset == len(out) and chunks >= 4
    assert agent.read_logs("job-sh", "stderr") == (b"two\n", 4, True)
    assert agent.read_logs("job-sh", "stdout", 4) == (b"three\n", 10, True)
    [job] = agent.poll()
    assert (job["job_id"], job["pid"], job["state"], job["returncode"]) == (
        "job-sh", pid, "exited", 3)
    assert job["ended_at"] >= job["started_at"] and job["reason"] == ""
    assert gone(pid)  # reaped: no zombie left


def test_leftovers_of_an_ended_job_are_killed(agent):
    pid = agent.start("job-bg", ["sh", "-c", "sleep 120 & echo $!"])
    wait_for(lambda: agent.poll()[0]["state"] == "exited", "the job's exit")
    [child] = log_lines(agent, "job-bg")
    wait_for(lambda: gone(int(child)), "the job's background process to die")
    assert gone(pid)


def test_stop_kills_a_job_that_ignores_sigterm(agent):
    ignore = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
              "print('ready', flush=True); time.sleep(120)")
    pid = agent.start("stubborn", [sys.executable, "-c", ignore], priority="best-effort")
    wait_for(lambda: log_lines(agent, "stubborn") == ["ready"], "the job to start")
    agent.stop("stubborn", grace_s=0.5, reason="evicted")
    [job] = agent.poll()
    assert (job["state"], job["returncode"], job["reason"]) == ("killed", -signal.SIGKILL,
                                                                 "evicted")
    assert gone(pid)
    agent.stop("stubborn")  # stopping an ended job changes nothing
    assert agent.poll()[0]["reason"] == "evicted"
    assert agent.read_logs("stubborn")[2] is True
    # without waiting: stop() returns at once, the first call after the grace kills
    agent.start("stubborn-2", [sys.executable, "-c", ignore])
    wait_for(lambda: log_lines(agent, "stubborn-2") == ["ready"], "the second job to start")
    agent.stop("stubborn-2", grace_s=0.5, reason="cancelled", wait=False)
    assert agent.poll()[-1]["state"] == "running"  # SIGTERM is ignored, the grace runs
    last = wait_for(lambda: agent.poll()[-1]["state"] != "running" and agent.poll()[-1],
                    "the SIGKILL after the grace")
    assert (last["job_id"], last["returncode"], last["reason"]) == (
        "stubborn-2", -signal.SIGKILL, "cancelled")
    # no thread of the agent's own is left behind by starting, reaping or stopping
    assert agent.call("_threads") == ["MainThread"]


def test_close_stops_every_job(state_dir):
    a = AgentProcess(node_env(state_dir), name="node-c")
    try:
        pids = [a.start(f"job-{i}", ["sleep", "120"]) for i in range(3)]
        log_dir = Path(a.info()["log_dir"])
        assert log_dir.is_dir()
        assert a.heartbeat()["running"] == 3
        a.close(grace_s=5)
        assert a.proc.wait(30) == 0
        for pid in pids:
            assert gone(pid)
        assert not log_dir.exists()  # the agent made it, the agent removes it
    finally:
        a.shutdown()


# ---- bad input ----------------------------------------------------------------------------------

def test_bad_input_is_refused_with_an_example(agent):
    bad = [
        (dict(job_id="a/b"), "FLEXAI_SLICE.*job-42"),
        (dict(job_id="x" * 64), "1..63"),
        (dict(gpus=[2]), r"no GPU 2 on node node-a \(GPUs: 0..1; expected e.g. gpus=\[0\]\)"),
        (dict(gpus=[-1]), "no GPU -1"),
        (dict(gpus=[0, 0]), "twice"),
        (dict(priority="urgent"), "priority 'urgent'.*expected e.g. high"),
        (dict(memory="8XB"), "8XB"),
        (dict(memory=-1), "expected e.g."),
        (dict(compute=101), "FLEXAI_GPU_COMPUTE"),
        (dict(compute="30"), "compute '30' is not a percent"),
        (dict(compute=30, burst=20), "FLEXAI_GPU_COMPUTE_BURST"),
        (dict(argv=[]), "empty command"),
    ]
    for change, message in bad:
        call = {"job_id": "job-1", "argv": ["true"], "gpus": [0], **change}
        with pytest.raises(ValueError, match=message):
            agent.start(call.pop("job_id"), call.pop("argv"), **call)
    assert agent.poll() == []
    with pytest.raises(FileNotFoundError):
        agent.start("job-1", ["/nonexistent/command"])
    agent.start("job-1", ["sleep", "60"], gpus=[0])
    with pytest.raises(ValueError, match="already running"):
        agent.start("job-1", ["sleep", "60"])
    with pytest.raises(LookupError, match="no job 'job-2'.*job-1"):
        agent.read_logs("job-2")
    with pytest.raises(LookupError, match="no job 'job-2'"):
        agent.stop("job-2")
    with pytest.raises(ValueError, match="stream 'stdin'"):
        agent.read_logs("job-1", "stdin")
    with pytest.raises(ValueError, match="offset -1"):
        agent.read_logs("job-1", "stdout", -1)


# ---- flexai agent -------------------------------------------------------------------------------

def test_flexai_agent_serves_metrics_and_stops_on_sigterm(state_dir):
    has_metrics = importlib.util.find_spec("flexai.node.metrics") is not None
    cmd = [sys.executable, "-m", "flexai", "agent", "--state-dir", str(state_dir), "--name",
           "node-m"] + (["--metrics-port", "0"] if has_metrics else [])
    proc = subprocess.Popen(cmd, env=node_env(state_dir), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert select.select([proc.stdout], [], [], 60)[0], "flexai agent printed nothing"
        line = proc.stdout.readline()
        assert line.startswith(f"flexai agent node-m: 2 GPU(s) ({MODEL}), state {state_dir}")
        if has_metrics:
            url = re.search(r"metrics on (http://\S+/metrics)", line).group(1)
            text = urllib.request.urlopen(url, timeout=30).read().decode()
            assert (f'flexai_gpu_memory_total_bytes{{gpu="{UUIDS[1]}",model="{MODEL}"}} '
                    in text)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert proc.stderr.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_flexai_agent_bad_port_exits_2(state_dir):
    env = node_env(state_dir)
    cmd = [sys.executable, "-m", "flexai", "agent", "--state-dir", str(state_dir)]
    bad = subprocess.run(cmd + ["--metrics-port", "http"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "not a TCP port 0..65535 (e.g. 9464)" in bad.stderr
    if importlib.util.find_spec("flexai.node.metrics") is None:
        return
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        used = subprocess.run(cmd + ["--metrics-port", str(port)], env=env,
                              capture_output=True, text=True, timeout=60)
    assert used.returncode == 2, used.stderr
    assert len(used.stderr.strip().splitlines()) == 1 and "e.g. --metrics-port" in used.stderr
