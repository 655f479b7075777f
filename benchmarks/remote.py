"""Cost of remote slices: the same driver-API client run locally (simulated device under
libflexai.so) and remotely (flexai's client libcuda.so.1 -> `flexai remoted` on loopback -> the
same device in a slice), beside a bare TCP socket doing the same shapes.

    python benchmarks/remote.py [--out benchmarks/results/remote-sim.json] [--quick]

Measures (remote_bench.c): synchronous call round trip p50/p99 against a 16-byte TCP ping-pong;
empty kernel launches per second, batched (launches, then one synchronize) and unbatched (a
query after each launch forces it out alone); host<->device bandwidth from 4 KiB to 1 GiB against
loopback TCP bandwidth measured in the same run. Targets (issue 12): round trip <= 1.5x the TCP
ping-pong, >= 100,000 launches/s batched, bandwidth >= 70% of loopback TCP. Writes JSON and,
with matplotlib, a plot beside it. It must never decide pass or fail for the test suite.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flexai import sim
from flexai._ffi import library_path
from flexai.node.launch import without_flexai
from flexai.remote import client_dir

HERE = Path(__file__).parent
TOKEN = "benchmark-token"
SIZES = [4 << 10, 64 << 10, 1 << 20, 16 << 20, 256 << 20, 1 << 30]


def build(out: Path) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        sys.exit("remote.py: a C compiler (cc) is needed")
    exe = out / "remote_bench"
    subprocess.run([cc, "-O2", str(HERE / "remote_bench.c"), "-o", str(exe), "-ldl"], check=True)
    return exe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(exe: Path, env: dict[str, str], *args: object) -> dict:
    out = subprocess.run([str(exe), *map(str, args)], env=env, capture_output=True, text=True,
                         timeout=600)
    if out.returncode != 0:
        sys.exit(f"remote_bench {' '.join(map(str, args))} failed: {out.stderr}")
    return json.loads(out.stdout)


def tcp(exe: Path, env: dict[str, str], mode: str, *args: object) -> dict:
    port = free_port()
    server = subprocess.Popen([str(exe), "tcp-serve", str(port)], env=env)
    try:
        return run(exe, env, mode, port, *args)
    finally:
        server.wait(60)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(HERE / "results" / "remote-sim.json"))
    p.add_argument("--quick", action="store_true", help="fewer calls and sizes (a smoke run)")
    args = p.parse_args()
    calls, launches = (2000, 20000) if args.quick else (20000, 200000)
    sizes = SIZES[:4] if args.quick else SIZES
    tmp = Path(tempfile.mkdtemp(prefix="flexai-remote-bench-"))
    exe = build(tmp)
    state = tmp / "state"
    state.mkdir()
    base = without_flexai(os.environ, keep=("FLEXAI_LIB_DIR",))
    node = sim.sim_env(base, memory="16GiB")
    node.update(FLEXAI_STATE_DIR=str(state), FLEXAI_CONTEXT_MEMORY="0",
                FLEXAI_REMOTE_TOKEN=TOKEN, FLEXAI_REMOTE_RUN_DIR=str(tmp / "run"))
    local = {**node, "LD_PRELOAD": str(library_path()), "FLEXAI_SLICE": "bench-local"}
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "flexai", "remoted", "--listen",
                               f"127.0.0.1:{port}"], env=node, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    remote = {**base, "LD_LIBRARY_PATH": str(client_dir()), "FLEXAI_REMOTE": f"127.0.0.1:{port}",
              "FLEXAI_REMOTE_TOKEN": TOKEN}
    try:
        for _ in range(100):  # wait for the port
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        result: dict = {"device": "simulated", "machine": platform.machine(),
                        "cpus": os.cpu_count(), "rtt": {}, "launch": {}, "bandwidth": []}
        result["rtt"]["local"] = run(exe, local, "rtt", calls)
        result["rtt"]["remote"] = run(exe, remote, "rtt", calls)
        result["rtt"]["tcp"] = tcp(exe, base, "tcp-rtt", calls)
        for where, env in (("local", local), ("remote", remote)):
            result["launch"][where] = {
                "batched": run(exe, env, "launch", launches, "batched"),
                "unbatched": run(exe, env, "launch", launches // 10, "unbatched")}
        for size in sizes:
            repeat = max(3, min(200, (64 << 20) // size))
            row = {"bytes": size, "local": run(exe, local, "bw", size, repeat),
                   "remote": run(exe, remote, "bw", size, repeat),
                   "tcp": tcp(exe, base, "tcp-bw", size, repeat)}
            result["bandwidth"].append(row)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
    rtt, tcp_rtt = result["rtt"]["remote"], result["rtt"]["tcp"]
    big = result["bandwidth"][-1]
    result["summary"] = {
        "rtt_p50_ratio_to_tcp": round(rtt["p50_us"] / tcp_rtt["p50_us"], 2),
        "rtt_p99_ratio_to_tcp": round(rtt["p99_us"] / tcp_rtt["p99_us"], 2),
        "launches_per_s_batched": result["launch"]["remote"]["batched"]["launches_per_s"],
        "launches_per_s_unbatched": result["launch"]["remote"]["unbatched"]["launches_per_s"],
        "largest_bytes": big["bytes"],
        "h2d_fraction_of_tcp": round(big["remote"]["h2d_gbps"] / big["tcp"]["up_gbps"], 2),
        "d2h_fraction_of_tcp": round(big["remote"]["d2h_gbps"] / big["tcp"]["down_gbps"], 2),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result["summary"], indent=1))
    plot(result, out.with_suffix(".png"))
    return 0


def plot(result: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("remote.py: no matplotlib; no plot", file=sys.stderr)
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    rows = result["bandwidth"]
    x = [r["bytes"] for r in rows]
    for key, label in (("h2d_gbps", "remote H2D"), ("d2h_gbps", "remote D2H")):
        a.plot(x, [r["remote"][key] for r in rows], marker="o", label=label)
    a.plot(x, [r["tcp"]["up_gbps"] for r in rows], marker="s", ls="--", label="TCP up")
    a.plot(x, [r["tcp"]["down_gbps"] for r in rows], marker="s", ls="--", label="TCP down")
    a.plot(x, [r["local"]["h2d_gbps"] for r in rows], marker="^", ls=":", label="local H2D")
    a.set_xscale("log", base=2)
    a.set_xlabel("bytes per copy")
    a.set_ylabel("GB/s")
    a.set_title("copy bandwidth (simulated device)")
    a.legend()
    rtt = result["rtt"]
    names = ["local", "remote", "tcp"]
    b.bar([f"{n}\np50" for n in names], [rtt[n]["p50_us"] for n in names])
    b.bar([f"{n}\np99" for n in names], [rtt[n]["p99_us"] for n in names])
    b.set_ylabel("us per synchronous call")
    b.set_title("round trip (cuStreamQuery vs 16-byte TCP ping-pong)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    sys.exit(main())
