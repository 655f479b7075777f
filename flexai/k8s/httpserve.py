"""A small JSON-over-HTTP(S) server for the extender and the webhook: one thread per connection,
HTTP/1.1 keep-alive, TCP_NODELAY on every accepted socket (without it a kept-alive answer
waits ~40 ms for the peer's delayed ACK), each answer written in one piece.

Routes map a path to ``handler(body) -> (status, obj)`` (``obj`` is sent as JSON, or as is when
it is already ``bytes`` of JSON); a handler's exception becomes a 500 with its message. The
server keeps the time of its last 10,000 answers per route, from the request line read to the
answer ready to write (headers, JSON in, handler, JSON out: the server's own share of a round
trip), for ``GET /stats``: wall time, and the CPU time of the thread that answered
(``time.thread_time``), which waiting for a CPU on a busy machine, or for the API server, does
not inflate.
TLS is the deployment's business: pass a certificate and key to serve HTTPS.
This module must never decide anything or hold a lock around a handler.
"""
from __future__ import annotations

import json
import logging
import socket
import ssl
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional

log = logging.getLogger("flexai.k8s.http")

Handler = Callable[[Any], "tuple[int, Any]"]
MAX_BODY = 64 << 20  # a full NodeList of thousands of nodes fits


class JsonServer(ThreadingHTTPServer):
    """The server; ``routes`` are ``{("POST", "/filter"): handler}``."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], routes: dict[tuple[str, str], Handler],
                 certfile: Optional[str] = None, keyfile: Optional[str] = None) -> None:
        self.routes = dict(routes)
        self.timings: dict[str, deque] = {f"{m} {p}": deque(maxlen=10000) for m, p in routes}
        self.routes.setdefault(("GET", "/stats"), lambda b: (200, self.stats()))
        super().__init__(address, _RequestHandler)
        if certfile:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(certfile, keyfile)
            self.socket = ctx.wrap_socket(self.socket, server_side=True,
                                          do_handshake_on_connect=False)

    def get_request(self):
        conn, addr = super().get_request()
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        return conn, addr

    def stats(self) -> dict:
        """Milliseconds the server spent per answer, per route: p50, p99, max and count of the
        wall time, and ``cpu_p50``, ``cpu_p99``, ``cpu_max`` of the answering thread's CPU."""
        out = {}
        for route, times in self.timings.items():
            if not times:
                continue
            d: dict = {"n": len(times)}
            for prefix, k in (("", 0), ("cpu_", 1)):
                xs = sorted(t[k] for t in times)
                d[prefix + "p50"] = xs[len(xs) // 2] * 1e3
                d[prefix + "p99"] = xs[min(len(xs) - 1, int(len(xs) * 0.99))] * 1e3
                d[prefix + "max"] = xs[-1] * 1e3
            out[route] = d
        return out

    @property
    def port(self) -> int:
        return self.server_address[1]

    def start(self) -> threading.Thread:
        """Serve in a background thread (tests, benchmarks); ``shutdown()`` stops it."""
        t = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1},
                             name="flexai-http", daemon=True)
        t.start()
        return t


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: JsonServer

    def _answer(self, status: int, obj: Any, start: float = 0.0, route: str = "",
                cpu: float = 0.0) -> None:
        body = obj if isinstance(obj, bytes) else json.dumps(obj, separators=(",", ":")).encode()
        head = (f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
        data = head.encode() + body
        times = self.server.timings.get(route) if route else None
        if times is not None:  # up to the write: JSON in, handler, JSON out
            times.append((time.perf_counter() - start, time.thread_time() - cpu))
        self.wfile.write(data)

    def _route(self, method: str) -> None:
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        handler = self.server.routes.get((method, path))
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.close_connection = True
            return self._answer(413, {"error": f"body of {length} bytes is too large"})
        raw = self.rfile.read(length) if length else b""
        if handler is None:
            return self._answer(404, {"error": f"no {method} {path}"})
        start, cpu = self._started
        try:
            body = json.loads(raw) if raw else None
        except ValueError as exc:
            return self._answer(400, {"error": f"body is not JSON: {exc}"})
        try:
            status, obj = handler(body)
        except Exception as exc:  # a handler bug must answer, not hang the scheduler
            log.exception("%s %s failed", method, path)
            status, obj = 500, {"error": f"{type(exc).__name__}: {exc}"}
        self._answer(status, obj, start, f"{method} {path}", cpu)

    def parse_request(self) -> bool:
        # the request line has arrived: the server's own time starts here (headers included)
        self._started = (time.perf_counter(), time.thread_time())
        return super().parse_request()

    def do_POST(self) -> None:
        self._route("POST")

    def do_GET(self) -> None:
        self._route("GET")

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)
