"""`flexai mps` drives NVIDIA's MPS control program; here a stand-in with the same command-line
protocol plays it (the real daemon is exercised by benchmarks/compute_share.py on a GPU).
FLEXAI_SHARING=auto switches the shim to spatial sharing where the daemon's pipe exists."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from conftest import Run

STUB = """#!/bin/sh
# stand-in for nvidia-cuda-mps-control: -d starts (creates the control pipe), stdin commands
echo "$@" >> "$CUDA_MPS_PIPE_DIRECTORY/../calls"
if [ "$1" = "-d" ]; then touch "$CUDA_MPS_PIPE_DIRECTORY/control"; exit 0; fi
read cmd
case "$cmd" in
  get_server_list) echo 4242 ;;
  quit) rm -f "$CUDA_MPS_PIPE_DIRECTORY/control" ;;
  *) echo "unknown command" >&2; exit 1 ;;
esac
"""


def flexai_mps(tmp_path: Path, *args: str, stub: bool = True) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if stub:
        exe = bin_dir / "nvidia-cuda-mps-control"
        exe.write_text(STUB)
        exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    env = dict(os.environ, PATH=f"{bin_dir}:/usr/bin:/bin",
               CUDA_MPS_PIPE_DIRECTORY=str(tmp_path / "pipe"),
               CUDA_MPS_LOG_DIRECTORY=str(tmp_path / "log"))
    return subprocess.run([sys.executable, "-m", "flexai", "mps", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def test_start_status_stop(tmp_path):
    assert "not running" in flexai_mps(tmp_path, "status").stdout
    started = flexai_mps(tmp_path, "start")
    assert started.returncode == 0, started.stderr
    assert "running" in started.stdout and "not running" not in started.stdout
    assert "4242" in flexai_mps(tmp_path, "status").stdout
    assert flexai_mps(tmp_path, "start").returncode == 0  # already running: nothing to do
    stopped = flexai_mps(tmp_path, "stop")
    assert stopped.returncode == 0 and "not running" in stopped.stdout
    calls = (tmp_path / "calls").read_text().split("\n")
    assert calls.count("-d") == 1, calls


def test_missing_control_program_is_a_clear_error(tmp_path):
    r = flexai_mps(tmp_path, "start", stub=False)
    assert r.returncode == 1
    assert "nvidia-cuda-mps-control not found" in r.stderr


def test_auto_sharing_turns_spatial_where_the_daemon_runs(run_client, tmp_path):
    pipe = tmp_path / "mps-pipe"
    pipe.mkdir()
    env = {"FLEXAI_GPU_COMPUTE": "50", "FLEXAI_LOG": "info", "CUDA_MPS_PIPE_DIRECTORY": str(pipe)}
    r: Run = run_client("init", env=env)
    assert "spatial sharing" not in r.proc.stderr
    (pipe / "control").touch()
    r = run_client("init", env=env)
    assert "spatial sharing" in r.proc.stderr
    r = run_client("init", env={**env, "FLEXAI_SHARING": "time"})
    assert "spatial sharing" not in r.proc.stderr
