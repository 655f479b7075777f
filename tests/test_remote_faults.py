"""Remote slices under faults (issue 12): a client killed mid-transfer, a server killed under a
client, 10,000 fuzzed frames (random, truncated, oversized, wrong versions, unknown calls) with
another session running, and clients without the token. The server is ``flexai remoted`` on
loopback serving the simulated device (tests/_remote.py).
"""
from __future__ import annotations

import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import flexai
from flexai.remote import wire

pytest.importorskip("cuda.bindings")
from _remote import (  # noqa: E402
    PROGRAM,
    TOKEN,
    client_env,
    first_line,
    slice_used,
    start_program,
    wait_for,
)

MiB = 1 << 20
API_DEF = Path(__file__).parent.parent / "csrc" / "remote" / "api.def"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# ---- a minimal client speaking the protocol from Python -------------------------------------

def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def authenticated(address: str, token: str = TOKEN) -> socket.socket:
    """A connection past the handshake (a session worker serves it)."""
    s = socket.create_connection(host_port(address), timeout=10)
    cn = os.urandom(wire.NONCE)
    s.sendall(wire.frame(wire.HELLO, cn, a=wire.VERSION, b=wire.MAGIC))
    length, op, _f, version, _b = wire.recv_header(s)
    assert op == wire.CHALLENGE and version == wire.VERSION and length == wire.NONCE
    sn = wire.recv_exact(s, wire.NONCE)
    s.sendall(wire.frame(wire.AUTH, wire.client_proof(token.encode(), sn, cn)))
    length, op, _f, status, _b = wire.recv_header(s)
    payload = wire.recv_exact(s, length)
    assert op == wire.WELCOME and status == 0, payload
    assert payload[:wire.MAC] == wire.server_proof(token.encode(), cn, sn)
    return s


def wire_ops() -> dict[str, tuple[int, bool]]:
    """api.def's wire operations: name -> (number, batched)."""
    import re

    ops = re.findall(r"^FX_RWIRE\((\w+), (SYNC|BATCH)\)", API_DEF.read_text(), re.M)
    return {name: (wire.OP_FIRST + i, mode == "BATCH") for i, (name, mode) in enumerate(ops)}


# ---- faults ----------------------------------------------------------------------------------

def test_client_killed_mid_transfer_frees_its_memory_within_a_second(remoted):
    prog = start_program(remoted.address, "stream", str(256 * MiB),
                         options=("--gpu-memory", "2GiB", "--slice", "victim"))
    try:
        assert first_line(prog)["streaming"] == 256 * MiB
        wait_for(lambda: slice_used(remoted.state_dir, "remote-victim") >= 256 * MiB, 30)
        time.sleep(0.3)  # copies of 256 MiB are under way
        prog.send_signal(signal.SIGKILL)
        t0 = time.monotonic()
        prog.wait(10)
        freed = wait_for(lambda: slice_used(remoted.state_dir, "remote-victim") == 0, 10)
        elapsed = time.monotonic() - t0
    finally:
        if prog.poll() is None:
            prog.kill()
    print(f"session memory freed {elapsed:.3f} s after the client was killed")
    assert freed >= 0 and elapsed < 1.0
    wait_for(lambda: remoted.workers() == [], 10)


def test_server_killed_client_calls_fail_soon_without_hanging(remoted):
    prog = start_program(remoted.address, "calls", "120")
    try:
        assert first_line(prog)["calling"]
        remoted.kill()
        t0 = time.monotonic()
        out, err = prog.communicate(timeout=30)
        elapsed = time.monotonic() - t0
    finally:
        if prog.poll() is None:
            prog.kill()
    result = json.loads(out.strip().splitlines()[-1])
    assert result == {"rc": 46, "then": 46}  # CUDA_ERROR_DEVICES_UNAVAILABLE, and it stays
    assert "connection to the server lost" in err
    assert elapsed < 10


def test_wrong_token_and_no_token_are_refused(remoted):
    env = client_env(token="not-the-token", FLEXAI_LOG="info")
    proc = subprocess.run([sys.executable, "-m", "flexai", "run", "--remote", remoted.address,
                           "--", sys.executable, str(PROGRAM), "alloc", "1024"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "refused the session: authentication failed" in proc.stderr
    assert "CUDA_ERROR_NO_DEVICE" in proc.stderr
    # Without any token the client library does not even connect.
    env = client_env(token=None, FLEXAI_REMOTE=remoted.address)
    env["LD_LIBRARY_PATH"] = str(flexai.remote.client_dir())
    proc = subprocess.run([sys.executable, str(PROGRAM), "alloc", "1024"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "FLEXAI_REMOTE_TOKEN is not set" in proc.stderr
    assert remoted.workers() == []


def test_the_token_never_crosses_the_wire(tmp_path):
    """A recording server: what the client library sends holds no trace of the token."""
    token = "very-secret-token-0123456789"
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    received = bytearray()

    def serve():
        conn, _ = listener.accept()
        conn.settimeout(10)

        class Recorder:
            def recv(self, n):
                data = conn.recv(n)
                received.extend(data)
                return data

            def sendall(self, data):
                conn.sendall(data)

        try:
            request, cn, sn = wire.accept_handshake(Recorder(), token.encode())
            conn.sendall(wire.frame(wire.WELCOME, b"no sessions here", a=1))
        finally:
            conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    env = client_env(token=token, FLEXAI_REMOTE=f"127.0.0.1:{listener.getsockname()[1]}",
                     FLEXAI_GPU_MEMORY="1GiB")
    env["LD_LIBRARY_PATH"] = str(flexai.remote.client_dir())
    proc = subprocess.run([sys.executable, str(PROGRAM), "alloc", "1024"], env=env,
                          capture_output=True, text=True, timeout=60)
    t.join(10)
    listener.close()
    assert b"FLEXAI_GPU_MEMORY=1GiB" in received  # the recorder saw the whole request
    assert token.encode() not in received and token.encode().hex().encode() not in received
    assert "no sessions here" in proc.stderr


# ---- fuzzing ---------------------------------------------------------------------------------

def _drain(s: socket.socket) -> None:
    try:
        while s.recv(65536):
            pass
    except OSError:
        pass


def _fuzz_frame(rng: random.Random, ops: list[tuple[int, bool]]) -> tuple[bytes, bool]:
    """One hostile frame, and whether it is well-formed enough to keep the session open."""
    kind = rng.random()
    op, batch = rng.choice(ops)
    flags = wire.FLAG_BATCH if batch else 0
    if kind < 0.85:  # a known operation, random arguments (the driver judges them)
        payload = rng.randbytes(rng.choice([0, 8, 16, 40, 48, 64, 200]))
        return wire.frame(op, payload, a=rng.choice([0, 1, 128, rng.getrandbits(32)]),
                          flags=flags), True
    if kind < 0.88:  # unknown operation
        return wire.frame(rng.choice([0, 8, 15, 200, 65535]), rng.randbytes(8)), False
    if kind < 0.91:  # oversized length
        return struct.pack("<IHHII", rng.choice([wire.MAX_PAYLOAD + 1, 0xFFFFFFFF]), op, 0, 0,
                           0), False
    if kind < 0.94:  # wrong batch flag, or unknown flags
        return wire.frame(op, rng.randbytes(40), flags=rng.choice([flags ^ 1, 0x80])), False
    if kind < 0.97:  # a handshake message or a wrong-version hello in the middle
        return wire.frame(rng.choice([wire.HELLO, wire.AUTH, wire.WELCOME]), rng.randbytes(32),
                          a=99), False
    # truncated: a header promising more than is sent, then the connection ends
    return struct.pack("<IHHII", 1000, op, flags, 0, 0) + rng.randbytes(10), False


def test_ten_thousand_fuzzed_frames_leave_the_server_and_other_sessions_fine(remoted):
    rng = random.Random(20240612)
    ops = list(wire_ops().values())
    init = wire_ops()["INIT"][0]
    other = start_program(remoted.address, "echo", options=("--slice", "bystander"))
    try:
        assert first_line(other)["ready"]
        host, port = host_port(remoted.address)
        sent = 0
        baseline = None
        # Before the handshake: garbage, truncated and wrong-version hellos to the front.
        for i in range(3000):
            with socket.create_connection((host, port), timeout=10) as s:
                choice = i % 4
                if choice == 0:
                    data = rng.randbytes(rng.randint(1, 64))
                elif choice == 1:
                    data = wire.frame(wire.HELLO, os.urandom(32), a=rng.randint(2, 9),
                                      b=wire.MAGIC)
                elif choice == 2:
                    data = struct.pack("<IHHII", 0xFFFFFFFF, wire.HELLO, 0, 1, wire.MAGIC)
                else:
                    data = wire.frame(wire.HELLO, os.urandom(32), a=1, b=wire.MAGIC)[:20]
                try:
                    s.sendall(data)
                    s.shutdown(socket.SHUT_WR)
                except OSError:
                    pass  # refused before all of it went: fine
                _drain(s)
            sent += 1
            if i == 500:
                baseline = rss_kib(remoted.proc.pid)
        # After the handshake: sessions fed hostile frames until their worker gives up.
        sessions = 0
        while sent < 10_000:
            s = authenticated(remoted.address)
            sessions += 1
            drain = threading.Thread(target=_drain, args=(s,), daemon=True)
            drain.start()
            try:
                s.sendall(wire.frame(init, struct.pack("<II", 0, 0)))
                sent += 1
                for _ in range(rng.randint(1, 80)):
                    frame, keeps = _fuzz_frame(rng, ops)
                    s.sendall(frame)
                    sent += 1
                    if not keeps:
                        break
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the worker closed first: that is the point
            drain.join(30)
            s.close()
        wait_for(lambda: len(remoted.workers()) == 1, 30)  # only the bystander's is left
        grown = rss_kib(remoted.proc.pid) - baseline
        other.stdin.write("check\n")
        other.stdin.flush()
        echo = first_line(other)
    finally:
        other.stdin.close()
        other.wait(60)
    print(f"{sent} fuzzed frames over {sessions} sessions; front RSS grew {grown} KiB")
    assert remoted.proc.poll() is None, remoted.log
    crashed = [line for line in remoted.lines if "worker exit -" in line]
    assert crashed == [], crashed[:5]  # hostile frames end a session, never crash its worker
    assert echo == {"rcs": [0, 0], "equal": True}
    assert grown < 16 * 1024
    assert other.returncode == 0
