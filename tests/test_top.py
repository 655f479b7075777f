"""`flexai top`: one frame for scripts (`--once`) with slices running on the simulated device,
bad input, the pool's frame drawn from plain data, and the live view in a real terminal (tmux):
it draws, redraws when a slice appears, and exits 0 on Ctrl-C."""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.waiting_client import finish, start_client

from flexai import sim
from flexai.node.launch import without_flexai

UUID0 = "GPU-f1e5a100-0000-4000-8000-000000000000"


def top_env(state_dir: Path) -> dict[str, str]:
    """`flexai top`'s environment: the simulated device's NVML, the node's state directory."""
    env = sim.sim_env(without_flexai(os.environ, keep=("FLEXAI_LIB_DIR",)), memory="16GiB")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env.pop("COLUMNS", None)
    env["FLEXAI_STATE_DIR"] = str(state_dir)
    first = os.environ.get("FLEXAI_TEST_PRELOAD_FIRST")
    if first:
        env["LD_PRELOAD"] = first
    return env


def top(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flexai", "top", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def line_of(text: str, first: str) -> str:
    found = [line for line in text.splitlines() if line.split()[:1] == [first]]
    assert len(found) == 1, f"{first!r} in:\n{text}"
    return found[0]


def test_once_prints_one_plain_frame(clients, state_dir) -> None:
    a = start_client(clients, state_dir, "alloc", "1GiB", "alloc", "256MiB", FLEXAI_SLICE="job-a",
                     FLEXAI_GPU_MEMORY="4GiB", FLEXAI_PRIORITY="high", FLEXAI_GPU_COMPUTE="30")
    try:
        b = start_client(clients, state_dir, "alloc", "512MiB", FLEXAI_SLICE="job-b",
                         FLEXAI_GPU_MEMORY="2GiB", FLEXAI_PRIORITY="low",
                         FLEXAI_GPU_COMPUTE="20", FLEXAI_GPU_COMPUTE_BURST="60")
        try:
            res = top(["--once"], top_env(state_dir))
        finally:
            finish(b)
    finally:
        finish(a)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "\x1b" not in out, "terminal codes in a pipe"
    assert out.splitlines()[0].startswith("flexai top · node ")
    assert "1 GPU(s) · 2 slice(s)" in out.splitlines()[0]
    job_a = line_of(out, "job-a")
    assert job_a.split()[:4] == ["job-a", "high", "1", "0"]  # slice, priority, procs, GPU
    assert "1.25 GiB  4 GiB  30%" in job_a  # used, limit, compute
    job_b = line_of(out, "job-b")
    assert " low " in job_b and "512 MiB" in job_b and "2 GiB" in job_b
    assert "20% (burst 60%)" in job_b
    gpu = line_of(out, "0")
    assert UUID0 in gpu and "1.75 GiB / 16 GiB" in gpu and "6 GiB" in gpu and "50%" in gpu
    assert all(line == line.rstrip() for line in out.splitlines())


def test_once_shows_a_capped_slice_s_throttled_time(clients, state_dir) -> None:
    capped = start_client(clients, state_dir, "module", "duty", "500", "40", "1000",
                          FLEXAI_SLICE="capped", FLEXAI_GPU_COMPUTE="10")
    try:
        res = top(["--once"], top_env(state_dir))
    finally:
        finish(capped)
    assert res.returncode == 0, res.stderr
    assert "THROTTLED" in line_of(res.stdout, "SLICE")
    last = line_of(res.stdout, "capped").split()[-1]  # the THROTTLED column
    assert last.endswith("s") and float(last[:-1]) > 0.05, res.stdout


def test_once_on_an_empty_node(state_dir) -> None:
    res = top(["--once", "--state-dir", str(state_dir)], top_env(state_dir))
    assert res.returncode == 0, res.stderr
    assert "no slices" in res.stdout
    assert "1 GPU(s) · 0 slice(s)" in res.stdout.splitlines()[0]
    gpu = line_of(res.stdout, "0")  # NVML's device, nothing used or granted
    assert UUID0 in gpu and "0 B / 16 GiB  0 B" in gpu and " 0% " in gpu + " "


@pytest.mark.parametrize("interval", ["0", "soon", "-1"])
def test_bad_interval_is_a_one_line_error(state_dir, interval: str) -> None:
    res = top(["--once", "--interval", interval], top_env(state_dir))
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.count("\n") == 1 and "e.g. --interval 0.5" in res.stderr


def test_address_needs_the_pool_view(state_dir) -> None:
    res = top(["--once", "--address", "127.0.0.1:6379"], top_env(state_dir))
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.count("\n") == 1 and "flexai top --pool --address" in res.stderr


def test_unusable_state_dir(state_dir, tmp_path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    res = top(["--once", "--state-dir", str(not_a_dir)], top_env(state_dir))
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr.startswith("flexai: ") and res.stderr.count("\n") == 1


def test_pool_frame_from_plain_data() -> None:
    """The pool's frame: nodes (one down), GPUs given as the policy's free figures with the
    slices granted on them inside, the slices the nodes' state shows, and the queue."""
    from rich.console import Console

    from flexai.cli.top import render

    GiB = 1 << 30
    data = {
        "nodes": [
            {"name": "node-a", "alive": True, "gpus": [
                {"index": 0, "uuid": "GPU-a0", "model": "H100", "memory_total": 80 * GiB,
                 "memory_free": 72 * GiB, "compute_free": 70,
                 "slices": [{"job": "train-1", "priority": "high", "memory": 8 * GiB,
                             "compute": 30, "guarantee": 30},
                            {"job": "job-2", "priority": "low", "memory": 2 * GiB,
                             "compute": 10, "guarantee": 10}]}]},
            {"name": "node-b", "alive": False, "gpus": []},
            {"name": "cpu-only", "alive": True, "gpus": []}],
        "slices": [{"name": "job-2", "node": "node-a", "gpu": "GPU-a0", "priority": "low",
                    "nprocs": 2, "memory_limit": 2 * GiB, "memory_used": GiB // 2,
                    "compute": 10, "burst": 0, "gpu_seconds": 1.5,
                    "throttled_seconds": 0.25}],
        "queue": [{"job": "big-1", "priority": "normal", "memory": 96 * GiB, "compute": 50,
                   "waiting_s": 12.4, "reason": "no GPU has 96 GiB free"}],
    }
    console = Console(width=160, color_system=None)
    with console.capture() as cap:
        console.print(render(data, pool=True))
    out = cap.get()
    head = out.splitlines()[0]
    assert "pool · 3 node(s), 2 up · 1 GPU(s) · 2 slice(s) · 1 queued" in head
    gpu = next(line for line in out.splitlines() if "GPU-a0" in line)
    assert gpu.split()[:4] == ["node-a", "0", "GPU-a0", "H100"]
    assert "- / 80 GiB  8 GiB" in gpu and "30%" in gpu  # granted = total - free
    assert gpu.split()[-1] == "2"  # slices on the GPU
    # granted by the pool, not in the node's state yet: what the pool knows
    train = next(line for line in out.splitlines() if "train-1" in line)
    assert train.split()[:5] == ["node-a", "train-1", "high", "-", "0"]
    # used unknown, limit, share; no GPU time nor throttled time known
    assert train.split()[-6:] == ["-", "8", "GiB", "30%", "-", "-"]
    # in the node's state: once, with its usage
    (job2,) = [line for line in out.splitlines() if "job-2" in line]
    assert job2.split()[:5] == ["node-a", "job-2", "low", "2", "0"]
    assert "512 MiB  2 GiB  10%" in job2 and job2.split()[-2:] == ["1.50s", "0.25s"]
    big = line_of(out, "big-1")
    assert "normal" in big and "96 GiB" in big and "12s" in big and "no GPU has" in big


# ---- the live view in a real terminal ----------------------------------------------------------

class Tmux:
    """A tmux server of our own (private socket), one session running ``script``."""

    def __init__(self, tmp: Path, script: str) -> None:
        self.socket = str(tmp / "tmux.sock")
        path = tmp / "session.sh"
        path.write_text(script)
        self.cmd(["new-session", "-d", "-s", "top", "-x", "160", "-y", "50", f"sh {path}"])

    def cmd(self, args: list[str]) -> str:
        return subprocess.run(["tmux", "-S", self.socket, *args], check=True,
                              capture_output=True, text=True, timeout=15).stdout

    def screen(self) -> str:
        return self.cmd(["capture-pane", "-p", "-t", "top"])

    def wait_for(self, check, what: str, timeout: float = 45.0) -> str:
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.screen()
            if check(text):
                return text
            time.sleep(0.2)
        raise AssertionError(f"no {what} within {timeout:.0f} s; the screen:\n{text}")

    def close(self) -> None:
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True,
                       timeout=15)


@pytest.mark.skipif(shutil.which("tmux") is None,
                    reason="tmux is not installed (.ci/run installs it)")
def test_live_view_in_a_terminal(clients, state_dir, tmp_path) -> None:
    env = top_env(state_dir)
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()
                      if k.isidentifier())
    # the shell outlives Ctrl-C (a trap, not an ignore: top must get SIGINT) to report the status
    script = (f"{exports}export TERM=xterm-256color\nunset COLUMNS LINES\ntrap 'true' INT\n"
              f"{shlex.quote(sys.executable)} -m flexai top --interval 0.3\n"
              f"echo \"top exited $?\"\nsleep 120\n")
    a = start_client(clients, state_dir, "alloc", "768MiB", FLEXAI_SLICE="live-a",
                     FLEXAI_GPU_MEMORY="2GiB", FLEXAI_PRIORITY="high")
    b = None
    term = Tmux(tmp_path, script)
    try:
        first = term.wait_for(lambda s: "live-a" in s, "frame with live-a")
        assert "flexai top · node " in first
        row = next(line for line in first.splitlines() if "live-a" in line)
        assert "high" in row and "768 MiB" in row and "2 GiB" in row
        # a slice that appears later shows up in a later frame: the view is live
        b = start_client(clients, state_dir, "alloc", "256MiB", FLEXAI_SLICE="live-b",
                         FLEXAI_PRIORITY="low")
        term.wait_for(lambda s: "live-b" in s and "2 slice(s)" in s, "frame with live-b")
        (tmp_path / "screen.txt").write_text(term.screen())
        term.cmd(["send-keys", "-t", "top", "C-c"])
        after = term.wait_for(lambda s: "top exited" in s, "exit after Ctrl-C", timeout=20)
        assert "top exited 0" in after
        assert "Traceback" not in after and "KeyboardInterrupt" not in after
        assert "live-a" not in after  # the alternate screen is gone, the shell's is back
    finally:
        term.close()
        finish(a)
        if b is not None:
            finish(b)


# ---- the pool's view of a real pool -------------------------------------------------------------

@pytest.mark.slow
def test_pool_once_on_a_real_pool(clients, request) -> None:
    """`flexai top --pool --once` on the pool tests' Ray cluster (tests/test_pool.py: n0 "Sim T4",
    n1 2 x "Sim A100", n2 without GPU; one cluster per session, whoever asks first builds it):
    a job submitted through the pool shows on the node it runs on, with its slice's usage."""
    pytest.importorskip("ray")
    import test_pool
    from support import raycluster

    cluster = raycluster.shared(request, test_pool._start)
    job = cluster.popen("n0", "submit", "--gpu-memory", "2GiB", "--gpu-compute", "20",
                        "--priority", "high", "--gpu-model", "Sim A100", "--",
                        str(clients["client"]), "init", "ctx", "0", "alloc", "512MiB",
                        "sleep", "120000", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline, out, row = time.monotonic() + 90, "", None
        while row is None and time.monotonic() < deadline:
            res = cluster.flexai("n0", "top", "--pool", "--once", timeout=60)
            assert res.returncode == 0, res.stderr
            out = res.stdout
            row = next((line for line in out.splitlines()  # a slice row, not the GPU's
                        if line.split()[:1] == ["n1"] and line.split()[1].startswith("job-")
                        and "512 MiB" in line), None)
            if row is None:
                time.sleep(1)
        assert row is not None, f"no slice with 512 MiB on n1 within 90 s:\n{out}"
        node, name, priority, procs, gpu = row.split()[:5]
        assert priority == "high" and procs == "1" and gpu in ("0", "1")
        assert "512 MiB  2 GiB  20%" in row
        assert "\x1b" not in out and out.splitlines()[0].startswith("flexai top · pool · ")
        gpus = [line for line in out.splitlines() if "GPU-" in line]  # the GPUs table
        assert any(line.startswith("n0 ") and "Sim T4" in line for line in gpus), out
        assert sum(line.startswith("n1 ") and "Sim A100" in line for line in gpus) == 2, out
    finally:
        job.send_signal(signal.SIGINT)  # Ctrl-C cancels the job on its node
        try:
            job.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            job.kill()
            job.communicate()
