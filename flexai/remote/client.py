"""The client side of remote slices: where flexai's client ``libcuda.so.1`` is installed, and the
environment that makes a program load it and reach a server (``flexai run --remote``, and a job
launcher that places work on a remote slice).

This module must never load the client library into the calling process, never preload
libflexai.so for a remote program (the quota is enforced on the GPU node), and never put the
token anywhere but the environment it is given.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from .._ffi import BadValueError, lib_dir, library_path
from .wire import ADDRESS_VARIABLE, TOKEN_VARIABLE

#: The port ``flexai remoted`` listens on unless told otherwise.
DEFAULT_PORT = 7470
_EXAMPLE = "gpu-node-3:7470"


def client_dir() -> Path:
    """The directory holding the client ``libcuda.so.1`` (and the session worker)."""
    return lib_dir() / "remote"


def client_library() -> Path:
    """The client library's path (it exists when the package was built with it)."""
    return client_dir() / "libcuda.so.1"


def parse_address(text: str, default_host: str | None = None,
                  any_port: bool = False) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6; ``:PORT`` when a default host is given) as a
    (host, port) pair; port 0 (a free port, for a server) only with ``any_port``.

    Raises
    ------
    BadValueError
        For anything else, with an accepted example.
    """
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or (not host and default_host is None) or not port.isdigit() \
            or not (0 if any_port else 1) <= int(port) < 65536:
        raise BadValueError(f"{text!r}: expected HOST:PORT, e.g. {_EXAMPLE}")
    return host or str(default_host), int(port)


def remote_env(base: Mapping[str, str], address: str,
               variables: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a program whose CUDA driver calls run on a remote slice.

    Parameters
    ----------
    base : Mapping[str, str]
        The environment to start from; it must hold ``FLEXAI_REMOTE_TOKEN``.
    address : str
        The server, ``HOST:PORT``.
    variables : Mapping[str, str], optional
        ``FLEXAI_*`` slice values the client asks the server for (quota, slice name, ...).

    Returns
    -------
    dict
        ``base`` with the client library's directory first on ``LD_LIBRARY_PATH``,
        ``FLEXAI_REMOTE`` set, the slice values, and libflexai.so out of ``LD_PRELOAD``.

    Raises
    ------
    BadValueError
        For a bad address, or when the token is missing.
    """
    parse_address(address)
    env = {**base, **(variables or {})}
    if not env.get(TOKEN_VARIABLE):
        raise BadValueError(f"{TOKEN_VARIABLE} is not set: the secret shared with the server, "
                            f"e.g. export {TOKEN_VARIABLE}=$(cat ~/.flexai-token)")
    lib = str(client_dir())
    rest = [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p and p != lib]
    env["LD_LIBRARY_PATH"] = ":".join([lib] + rest)
    env[ADDRESS_VARIABLE] = address
    shim = str(library_path())
    preload = [p for p in env.get("LD_PRELOAD", "").replace(" ", ":").split(":")
               if p and p != shim]
    if preload:
        env["LD_PRELOAD"] = ":".join(preload)
    else:
        env.pop("LD_PRELOAD", None)
    return env


def token_from_env(env: Mapping[str, str] | None = None) -> bytes:
    """The shared secret as bytes.

    Raises
    ------
    BadValueError
        When it is not set.
    """
    value = (os.environ if env is None else env).get(TOKEN_VARIABLE, "")
    if not value:
        raise BadValueError(f"{TOKEN_VARIABLE} is not set: both sides need the same secret, "
                            f"e.g. export {TOKEN_VARIABLE}=$(openssl rand -hex 32)")
    return value.encode()
