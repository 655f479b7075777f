"""The handshake of flexai's remote protocol, as the Python front of ``flexai remoted`` speaks
it: frame headers, nonces and HMAC-SHA256 proofs. The rest of the protocol (operations) is the
session worker's (C); ``csrc/remote/protocol.h`` is the reference, and a test checks that the
constants here agree with it.

This module must never send or log the token, never compare MACs in variable time, and never read
a length from the wire without bounding it first.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import socket
import struct

#: The shared secret, on both sides.
TOKEN_VARIABLE = "FLEXAI_REMOTE_TOKEN"
#: The server a client library connects to (``HOST:PORT``).
ADDRESS_VARIABLE = "FLEXAI_REMOTE"
#: Where servers keep their sessions files (``flexai remoted --status`` reads them).
RUN_DIR_VARIABLE = "FLEXAI_REMOTE_RUN_DIR"
#: A session worker's id, in its environment.
SESSION_VARIABLE = "FLEXAI_REMOTE_SESSION"
#: A remote session's slice on the GPU node is named this + the job's (or session's) name; the
#: server, the node agent and the pool head all read and make such names.
SLICE_PREFIX = "remote-"


def slice_name(name: str) -> str:
    """The name of a remote session's slice for job or session ``name`` (SLICE_PREFIX once)."""
    return name if name.startswith(SLICE_PREFIX) else SLICE_PREFIX + name
#: The remote variables: flexai's, but not the slice contract's (the library never reads them).
REMOTE_VARIABLES = (TOKEN_VARIABLE, ADDRESS_VARIABLE, RUN_DIR_VARIABLE, SESSION_VARIABLE)

MAGIC = 0x52584C46
VERSION = 1
HEADER = struct.Struct("<IHHII")  # len, op, flags, a, b
NONCE = 32
MAC = 32
MAX_AUTH = 4096
MAX_PAYLOAD = 64 << 20

HELLO, CHALLENGE, AUTH, WELCOME, ERROR, DATA, BYE = 1, 2, 3, 4, 5, 6, 7
OP_FIRST = 16
FLAG_BATCH, FLAG_REPLY = 1, 2

CLIENT_LABEL = b"flexai-remote-client"
SERVER_LABEL = b"flexai-remote-server"


class HandshakeError(Exception):
    """The peer broke the handshake; ``reply`` says whether it should be told why."""

    def __init__(self, message: str, reply: bool = False) -> None:
        super().__init__(message)
        self.reply = reply


def frame(op: int, payload: bytes = b"", a: int = 0, b: int = 0, flags: int = 0) -> bytes:
    """One frame: the 16-byte header and the payload."""
    return HEADER.pack(len(payload), op, flags, a, b) + payload


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Exactly n bytes, or HandshakeError when the peer closes first."""
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(n - got)
        if not chunk:
            raise HandshakeError("connection closed during the handshake")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def recv_header(sock: socket.socket) -> tuple[int, int, int, int, int]:
    """(len, op, flags, a, b) of the next frame."""
    return HEADER.unpack(recv_exact(sock, HEADER.size))


def client_proof(token: bytes, server_nonce: bytes, client_nonce: bytes) -> bytes:
    """What the client sends to prove it holds the token."""
    return hmac.new(token, CLIENT_LABEL + server_nonce + client_nonce, hashlib.sha256).digest()


def server_proof(token: bytes, client_nonce: bytes, server_nonce: bytes) -> bytes:
    """What the server sends to prove it holds the token."""
    return hmac.new(token, SERVER_LABEL + client_nonce + server_nonce, hashlib.sha256).digest()


def accept_handshake(sock: socket.socket, token: bytes) -> tuple[dict[str, str], bytes, bytes]:
    """Run the server's side of the handshake up to (not including) WELCOME.

    Returns
    -------
    tuple
        The slice the client asked for (``FLEXAI_*`` name -> value), the client's nonce and the
        server's nonce (for :func:`server_proof`).

    Raises
    ------
    HandshakeError
        For anything else than a well-formed, authenticated request.
    """
    length, op, _flags, version, magic = recv_header(sock)
    if op != HELLO or length != NONCE or magic != MAGIC:
        raise HandshakeError("not a flexai remote client")
    client_nonce = recv_exact(sock, NONCE)
    if version != VERSION:
        sock.sendall(frame(CHALLENGE, a=0, b=MAGIC))
        raise HandshakeError(f"client speaks protocol version {version}, this server {VERSION}")
    server_nonce = os.urandom(NONCE)
    sock.sendall(frame(CHALLENGE, server_nonce, a=VERSION, b=MAGIC))
    length, op, _flags, _a, _b = recv_header(sock)
    if op != AUTH or not MAC <= length <= MAX_AUTH:
        raise HandshakeError("expected the client's proof")
    payload = recv_exact(sock, length)
    if not hmac.compare_digest(payload[:MAC], client_proof(token, server_nonce, client_nonce)):
        raise HandshakeError("authentication failed (FLEXAI_REMOTE_TOKEN differs)", reply=True)
    request: dict[str, str] = {}
    try:
        text = payload[MAC:].decode("utf-8")
    except UnicodeDecodeError:
        raise HandshakeError("the slice request is not text", reply=True) from None
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if not sep:
            raise HandshakeError(f"bad slice request line {line[:60]!r}", reply=True)
        request[name] = value
    return request, client_nonce, server_nonce
