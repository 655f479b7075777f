"""``flexai demo``: slices sharing one GPU with their quotas enforced, shown on the real GPU when
there is one and on the bundled simulated device otherwise.

Memory: two slices (4 GiB with two processes, 2 GiB with one) allocate until the driver refuses.
Compute: two slices capped at 30% and 70% of the GPU's time run kernels back to back together.
Every process is started through ``flexai run``, as a user would. The simulated device's
environment is flexai.sim's, the node is read through NodeSnapshot; the demo must never set a
quota other than through ``flexai run``'s options.
"""
from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import sim
from ._ffi import LIB_DIR_VARIABLE, FlexaiError
from .cli._output import columns as _columns
from .cli._output import error as _error
from .cli._output import fail
from .cli.ps import render_ps
from .node.launch import without_flexai
from .node.snapshot import NodeSnapshot
from .spec import env_of, format_bytes, option_args, parse_size, variable

DEMO_SLICES = (("demo-a", "4GiB", 2), ("demo-b", "2GiB", 1))  # name, quota, processes
DEMO_CHUNK = 256 << 20
DEMO_TIMEOUT_S = 60.0
COMPUTE_SLICES = (("demo-c30", 30), ("demo-c70", 70))  # name, share in percent
COMPUTE_KERNEL_US = 500
COMPUTE_SECONDS = 2.0
# "held": at most 10 points above the share, so under 40% for the 30% slice (two uncapped slices
# split the GPU 50/50) and under 80% for the 70% one; benchmarks/compute_share.py measures closely
COMPUTE_TOLERANCE = 0.10


@dataclass
class _Client:
    slice: str
    quota: int  # bytes for memory clients, percent for compute clients
    proc: subprocess.Popen[str]
    stderr: Any
    report: dict[str, Any] = field(default_factory=dict)


def _demo_env(state_dir: str, simulated: bool) -> dict[str, str]:
    """The clients' environment: the caller's, without its flexai settings, plus the demo's."""
    env = without_flexai(os.environ, keep=(LIB_DIR_VARIABLE, variable("log").name))
    if "LD_PRELOAD" in os.environ:  # kept (e.g. a sanitizer); `flexai run` puts the shim first
        env["LD_PRELOAD"] = os.environ["LD_PRELOAD"]
    env.update(env_of(state_dir=state_dir))
    if simulated:
        env.pop("CUDA_VISIBLE_DEVICES", None)  # the simulated device has one GPU, index 0
        env = sim.sim_env(env, memory="16GiB", state_dir=os.path.join(state_dir, "sim"))
        env.update(env_of(context_memory="256MiB"))
    return env


def _spawn(env: dict[str, str], name: str, quota: int, run_args: list[str],
           client_args: list[str]) -> _Client:
    """Start one demo client through `flexai run --slice NAME RUN_ARGS -- client ARGS`."""
    client = str(Path(__file__).with_name("_demo_client.py"))
    cmd = [sys.executable, "-m", "flexai", "run", *run_args, *option_args(slice=name), "--",
           sys.executable, client, *client_args]
    err = tempfile.TemporaryFile(mode="w+")
    # cwd: `python -m` imports from the current directory first; run from a source checkout,
    # that would be the checkout's flexai/ (without its built library)
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=err, text=True, cwd=env[variable("state_dir").name])
    return _Client(name, quota, proc, err)


def _start_clients(env: dict[str, str], clients: list[_Client]) -> None:
    """Start every memory client, appending each to `clients` at once."""
    for name, quota, nprocs in DEMO_SLICES:
        quota_bytes = parse_size(quota)
        for _ in range(nprocs):
            clients.append(_spawn(env, name, quota_bytes, option_args(gpu_memory=quota),
                                  ["--chunk", str(DEMO_CHUNK), "--cap", str(2 * quota_bytes)]))


def _start_compute_clients(env: dict[str, str], clients: list[_Client]) -> None:
    """Start one kernel-launching client per compute slice."""
    for name, share in COMPUTE_SLICES:
        clients.append(_spawn(env, name, share, option_args(gpu_compute=share),
                              ["--compute", str(COMPUTE_KERNEL_US),
                               "--seconds", str(COMPUTE_SECONDS)]))


def _compute_verdicts(clients: list[_Client]) -> list[dict[str, Any]]:
    """A cap is held when the slice's kernels took no more than its share (plus the tolerance) of
    the GPU's time. Less is no failure of the cap (a client that waits for a busy CPU launches
    fewer kernels, for one); the verdict says so."""
    out = []
    for c in clients:
        got = c.report.get("fraction")
        if "error" in c.report or got is None:
            verdict = "failed: " + c.report.get("error", "no report from the client")
        elif got > c.quota / 100 + COMPUTE_TOLERANCE:
            verdict = f"NOT held: asked {c.quota}%, got {100 * got:.1f}%"
        elif got < c.quota / 100 - COMPUTE_TOLERANCE:
            verdict = f"held (got under its {c.quota}%)"
        else:
            verdict = "held"
        out.append({"slice": c.slice, "share_percent": c.quota, "achieved": got,
                    "verdict": verdict, "held": verdict.startswith("held")})
    return out


def _read_report(c: _Client, deadline: float) -> None:
    """Read the client's next JSON line; a client that dies or stays silent gets an error."""
    out = c.proc.stdout
    if "error" in c.report or out is None:
        return
    ready, _, _ = select.select([out], [], [], max(0.0, deadline - time.monotonic()))
    line = out.readline() if ready else ""
    try:
        c.report = json.loads(line)
    except ValueError:
        c.report = {**c.report, "error": "no report from the client"}


def _send(c: _Client, line: str) -> None:
    try:
        assert c.proc.stdin is not None  # started with stdin=PIPE
        c.proc.stdin.write(line + "\n")
        c.proc.stdin.flush()
    except OSError:
        pass  # the client has exited; its report says why


def _run_clients(clients: list[_Client]) -> None:
    """Barrier 1: every client holds a context. Barrier 2: every client has hit its quota."""
    deadline = time.monotonic() + DEMO_TIMEOUT_S
    for c in clients:
        _read_report(c, deadline)
    for c in clients:
        if "error" not in c.report:
            _send(c, "allocate")
    for c in clients:
        _read_report(c, deadline)


def _release(clients: list[_Client]) -> None:
    """Let the clients free their memory and exit; collect what they wrote to stderr."""
    for c in clients:
        try:
            c.proc.communicate("free\n", timeout=DEMO_TIMEOUT_S)
        except (subprocess.TimeoutExpired, OSError, ValueError):
            c.proc.kill()
            c.proc.wait()
        if "error" in c.report:
            c.stderr.seek(0)
            tail = " | ".join(c.stderr.read().strip().splitlines()[-3:])
            c.report["error"] += f" (exit status {c.proc.returncode}{': ' + tail if tail else ''})"
        c.stderr.close()


def _verdicts(clients: list[_Client], snap: NodeSnapshot) -> list[dict[str, Any]]:
    charged = {s.name: sum(d.used_bytes for d in s.devices) for s in snap.slices}
    out = []
    for name, _, _ in DEMO_SLICES:
        mine = [c for c in clients if c.slice == name]
        total = sum(c.report.get("allocated", 0) for c in mine)
        quota = mine[0].quota
        if any("error" in c.report for c in mine):
            verdict = "failed: " + next(c.report["error"] for c in mine if "error" in c.report)
        elif total > quota or charged.get(name, 0) > quota:
            verdict = "NOT enforced: the slice got more than its quota"
        elif not all(c.report.get("oom") for c in mine):
            verdict = "NOT enforced: no out-of-memory error"
        else:
            verdict = "enforced"
        out.append({"slice": name, "quota_bytes": quota, "allocated_bytes": total,
                    "charged_bytes": charged.get(name, 0), "verdict": verdict,
                    "enforced": verdict == "enforced"})
    return out


def _render_compute(compute: list[dict[str, Any]]) -> str:
    rows = [["SLICE", "SHARE", "ACHIEVED", "VERDICT"]]
    rows += [[v["slice"], f"{v['share_percent']}%",
              f"{100 * v['achieved']:.1f}%" if v["achieved"] is not None else "-", v["verdict"]]
             for v in compute]
    return (f"compute: two slices capped at 30% and 70% each launch {COMPUTE_KERNEL_US} us "
            f"kernels back to back for {COMPUTE_SECONDS:g} s, together;\nACHIEVED is the share "
            "of the GPU's time their kernels took:\n" + _columns(rows))


def _render_demo(device: str, clients: list[_Client], snap: NodeSnapshot,
                 verdicts: list[dict[str, Any]]) -> str:
    rows = [["SLICE", "QUOTA", "PID", "cuMemGetInfo TOTAL / FREE", "GOT BEFORE OOM"]]
    for c in clients:
        r = c.report
        info = f"{format_bytes(r['total'])} / {format_bytes(r['free'])}" if "total" in r else "-"
        got = format_bytes(r["allocated"]) if "allocated" in r else "-"
        rows.append([c.slice, format_bytes(c.quota), str(r.get("pid", c.proc.pid)), info,
                     got if r.get("oom") or "allocated" not in r else got + " (no OOM)"])
    summary = [["SLICE", "QUOTA", "SLICE TOTAL", "CHARGED BY FLEXAI", "VERDICT"]]
    summary += [[v["slice"], format_bytes(v["quota_bytes"]), format_bytes(v["allocated_bytes"]),
                 format_bytes(v["charged_bytes"]), v["verdict"]] for v in verdicts]
    return "\n\n".join([
        f"flexai demo: slices share one GPU, each under its quotas\n{device}",
        "each process allocates 256 MiB chunks until the driver says out of memory:\n"
        + _columns(rows),
        "what `flexai ps` sees while the processes hold their memory:\n" + render_ps(snap),
        "CHARGED BY FLEXAI includes each process's CUDA context.\n" + _columns(summary)])


def run_demo(simulated: bool = False, as_json: bool = False) -> int:
    """Run the demo; returns the exit status (0 only when every quota held)."""
    forced = simulated
    simulated = simulated or not sim.real_gpu_present()
    if simulated:
        why = "--simulated" if forced else "no GPU found"
        if not sim.available():
            return _error(f"{why}, and there is no simulated device in {sim.sim_dir()}", 1)
        device = (f"simulated device ({why}): flexai's fake CUDA driver from {sim.sim_dir()}, "
                  "16 GiB, 256 MiB charged per CUDA context")
    else:
        device = "real GPU: device 0 of libcuda.so.1"
    clients: list[_Client] = []
    workers: list[_Client] = []
    with tempfile.TemporaryDirectory(prefix="flexai-demo-") as state_dir:
        env = _demo_env(state_dir, simulated)
        try:
            _start_clients(env, clients)
            _run_clients(clients)
            snap = NodeSnapshot.read(state_dir)
        except FlexaiError as exc:
            return fail(exc)
        finally:
            _release(clients)
        try:
            _start_compute_clients(env, workers)
            _run_clients(workers)
        finally:
            _release(workers)
    verdicts = _verdicts(clients, snap)
    compute = _compute_verdicts(workers)
    ok = all(v["enforced"] for v in verdicts) and all(v["held"] for v in compute)
    if as_json:
        print(json.dumps({"simulated": simulated, "device": device,
                          "clients": [{"slice": c.slice, **c.report} for c in clients],
                          "ps": snap.to_dict(), "slices": verdicts, "compute": compute, "ok": ok},
                         indent=2))
    else:
        print(_render_demo(device, clients, snap, verdicts) + "\n\n" + _render_compute(compute))
    return 0 if ok else 1


