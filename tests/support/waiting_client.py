"""A test client (tests/clients/client.c) held in a slice on the simulated device: it runs its
operations, then waits for its stdin to close, so a test can look at the slice while it lives
(test_metrics, test_top).

Every wait here is bounded; a client it started must never be left running by
:func:`finish`.
"""
from __future__ import annotations

import os
import selectors
import subprocess

from conftest import base_env


def start_client(clients, state_dir, *ops: str, **env: str) -> subprocess.Popen:
    """A client in a slice that runs ``ops`` then waits for its stdin to close; returned once it
    waits, every operation having succeeded (rc 0)."""
    proc = subprocess.Popen([str(clients["client"]), "init", "ctx", "0", *ops, "wait"],
                            env=base_env(state_dir, **env), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = b""
    with selectors.DefaultSelector() as sel:  # raw reads: no buffer hides a line from select
        sel.register(proc.stdout, selectors.EVENT_READ)
        while b'"op":"wait"' not in out:
            if not sel.select(30):
                finish(proc)
                raise AssertionError(f"client silent for 30 s; so far {out!r}")
            chunk = os.read(proc.stdout.fileno(), 4096)
            assert chunk, f"client exited: {out!r} {proc.stderr.read()!r}"
            out += chunk
    lines = out.decode().splitlines()
    assert all('"rc":0' in line for line in lines), lines
    return proc


def finish(proc: subprocess.Popen) -> None:
    """Let the client go on past its wait (to its exit) and reap it."""
    proc.stdin.close()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
