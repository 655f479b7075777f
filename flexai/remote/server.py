"""``flexai remoted``'s engine: accept TCP connections, authenticate each client (HMAC over fresh
nonces, :mod:`.wire`), validate the slice it asks for with the library's own parser, and hand
the connection to a session worker process (``flexai-remote-session FD``, csrc/remote/server)
that runs under libflexai.so in that slice and reaches the driver through ``FLEXAI_LIBCUDA``.
Also the sessions file that ``flexai remoted --status`` reads.

The front never serves CUDA calls itself, so a hostile or broken session can only end its own
worker. It must never block on one client (each handshake has a deadline and runs on its own
thread, and their number is bounded), never pass the token to a worker, and never listen beyond
loopback unless the caller asked for another address.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .._ffi import FlexaiError
from ..node.launch import slice_env, without_flexai
from ..spec import parse_config, variable, variables
from . import wire
from .client import client_dir
from .wire import slice_name

log = logging.getLogger("flexai.remote")

HANDSHAKE_TIMEOUT_S = 5.0
MAX_HANDSHAKES = 32


def worker_path() -> Path:
    """The session worker executable installed with the package."""
    return client_dir() / "flexai-remote-session"


def run_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where servers keep their sessions files (``FLEXAI_REMOTE_RUN_DIR``, else a per-user
    directory under ``XDG_RUNTIME_DIR`` or /tmp)."""
    env = os.environ if env is None else env
    if env.get(wire.RUN_DIR_VARIABLE):
        return Path(env[wire.RUN_DIR_VARIABLE])
    base = env.get("XDG_RUNTIME_DIR") or "/tmp"
    return Path(base) / f"flexai-remoted-{os.getuid()}"


def sessions_file(host: str, port: int, env: Mapping[str, str] | None = None) -> Path:
    """The sessions file of the server listening on host:port."""
    safe = "".join(c if c.isalnum() or c in ".-" else "_" for c in host)
    return run_dir(env) / f"{safe}_{port}.json"


@dataclass
class Session:
    """One client session: its worker process and what it asked for."""

    id: str
    pid: int
    peer: str
    slice: str
    request: dict[str, str]
    started: float = field(default_factory=time.time)


def slice_variables(request: Mapping[str, str], session_id: str) -> dict[str, str]:
    """The ``FLEXAI_*`` values of a session's worker from what its client asked for.

    Only per-slice variables may be asked for; the slice name gets the ``remote-`` prefix, so a
    remote client can never join a slice of local processes (two remote clients naming the same
    slice share it). Without a name the session has a slice of its own.

    Raises
    ------
    ValueError
        For a variable a client may not set.
    """
    allowed = {v.name for v in variables() if v.per_slice}
    bad = sorted(set(request) - allowed)
    if bad:
        raise ValueError(f"{bad[0]}: a remote client may only ask for "
                         f"{', '.join(sorted(allowed))}")
    out = dict(request)
    slice_var = variable("slice").name
    name = out.get(slice_var) or session_id
    out[slice_var] = slice_name(name)
    return out


class RemoteServer:
    """Accepts clients on one TCP address and starts a session worker for each.

    Parameters
    ----------
    host, port : str, int
        Where to listen (``port`` 0: any free port, see :attr:`address`).
    token : bytes
        The shared secret.
    base_env : Mapping[str, str], optional
        The environment workers start from (node settings such as ``FLEXAI_LIBCUDA``,
        ``FLEXAI_STATE_DIR``; per-slice values there are defaults a client may override).
    max_sessions : int
        Clients served at once; more are refused with a reason.
    """

    def __init__(self, host: str, port: int, token: bytes, *,
                 base_env: Mapping[str, str] | None = None, max_sessions: int = 64) -> None:
        self.token = token
        self.max_sessions = max_sessions
        env = dict(os.environ if base_env is None else base_env)
        env.pop(wire.TOKEN_VARIABLE, None)
        self.base_env = without_flexai(env, keep=[k for k in env if k.startswith("FLEXAI_")])
        self.sessions: dict[int, Session] = {}
        self._procs: dict[int, subprocess.Popen] = {}
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(MAX_HANDSHAKES)
        self._stop = threading.Event()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(128)
        self.host, self.port = host, self.sock.getsockname()[1]
        self.status_path = sessions_file(self.host, self.port)

    @property
    def address(self) -> str:
        """``HOST:PORT`` the server listens on."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    # ---- serving ---------------------------------------------------------------------------

    def serve_forever(self) -> None:
        """Accept clients until :meth:`stop` (or SIGTERM/SIGINT in the main thread)."""
        reaper = threading.Thread(target=self._reap, name="flexai-remoted-reaper", daemon=True)
        reaper.start()
        self._write_status()
        self.sock.settimeout(0.5)
        try:
            while not self._stop.is_set():
                try:
                    conn, peer = self.sock.accept()
                except socket.timeout:
                    continue
                except OSError:
                    if self._stop.is_set():
                        break
                    raise
                if not self._slots.acquire(blocking=False):
                    conn.close()  # too many handshakes in flight: a flood, not a client
                    continue
                threading.Thread(target=self._welcome, args=(conn, peer), daemon=True,
                                 name="flexai-remoted-handshake").start()
        finally:
            self.shutdown()

    def stop(self) -> None:
        """Ask :meth:`serve_forever` to return."""
        self._stop.set()

    def shutdown(self) -> None:
        """Stop listening, end every worker, remove the sessions file."""
        self._stop.set()
        try:
            self.sock.close()
        except OSError:
            pass
        with self._lock:
            procs = list(self._procs.values())
        for p in procs:
            try:
                p.send_signal(signal.SIGTERM)
            except OSError:
                pass
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        try:
            self.status_path.unlink()
        except OSError:
            pass

    def _welcome(self, conn: socket.socket, peer: tuple) -> None:
        try:
            conn.settimeout(HANDSHAKE_TIMEOUT_S)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._handshake_and_start(conn, f"{peer[0]}:{peer[1]}")
        except wire.HandshakeError as exc:
            log.info("client %s:%s refused: %s", peer[0], peer[1], exc)
            if exc.reply:
                try:
                    conn.sendall(wire.frame(wire.WELCOME, str(exc).encode()[:1024], a=1))
                except OSError:
                    pass
        except OSError as exc:
            log.info("client %s:%s gone: %s", peer[0], peer[1], exc)
        finally:
            conn.close()
            self._slots.release()

    def _handshake_and_start(self, conn: socket.socket, peer: str) -> None:
        request, client_nonce, server_nonce = wire.accept_handshake(conn, self.token)
        session_id = secrets.token_hex(4)
        try:
            with self._lock:
                if len(self._procs) >= self.max_sessions:
                    raise ValueError(f"the server is full ({self.max_sessions} sessions)")
            variables_ = slice_variables(request, session_id)
            env = slice_env(self.base_env, variables_)
            parse_config(env)
        except (ValueError, FlexaiError) as exc:
            conn.sendall(wire.frame(wire.WELCOME, str(exc).encode()[:1024], a=1))
            raise wire.HandshakeError(str(exc)) from None
        env[wire.SESSION_VARIABLE] = session_id
        proof = wire.server_proof(self.token, client_nonce, server_nonce)
        conn.settimeout(None)
        proc = subprocess.Popen([str(worker_path()), str(conn.fileno())], env=env,
                                pass_fds=(conn.fileno(),), stdin=subprocess.DEVNULL)
        session = Session(session_id, proc.pid, peer, variables_[variable("slice").name],
                          request)
        with self._lock:
            self._procs[proc.pid] = proc
            self.sessions[proc.pid] = session
        self._write_status()
        conn.sendall(wire.frame(wire.WELCOME, proof + session_id.encode()))
        log.info("session %s for %s in slice %s (worker %d)", session_id, peer, session.slice,
                 proc.pid)

    def _reap(self) -> None:
        while not self._stop.is_set():
            changed = False
            with self._lock:
                for pid, proc in list(self._procs.items()):
                    if proc.poll() is not None:
                        del self._procs[pid]
                        session = self.sessions.pop(pid, None)
                        changed = True
                        if session is not None:
                            log.info("session %s ended (worker exit %s)", session.id,
                                     proc.returncode)
            if changed:
                self._write_status()
            self._stop.wait(0.05)

    # ---- status ----------------------------------------------------------------------------

    def _write_status(self) -> None:
        with self._lock:
            data = {"pid": os.getpid(), "listen": self.address,
                    "sessions": [asdict(s) for s in self.sessions.values()]}
        path = self.status_path
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=1))
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot write %s: %s", path, exc)


def read_status(host: str, port: int, env: Mapping[str, str] | None = None) -> dict | None:
    """The sessions of the server on host:port as it last wrote them, or None when no server
    runs there (no file, or its process is gone)."""
    path = sessions_file(host, port, env)
    try:
        data = json.loads(path.read_text())
        os.kill(int(data["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return data
