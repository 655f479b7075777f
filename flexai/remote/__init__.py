"""Remote slices: a program on a machine without a GPU runs CUDA driver-API calls on a slice of a
GPU elsewhere. flexai's client library is loaded there as ``libcuda.so.1`` (:mod:`.client`,
``flexai run --remote HOST:PORT``) and talks TCP to ``flexai remoted`` (:mod:`.server`) on the
GPU node, which runs each session in a worker process under libflexai.so in a slice.

The wire format lives in ``csrc/remote/protocol.h``; :mod:`.wire` restates only the handshake,
which the Python front speaks. Importing this package opens nothing and starts nothing.
"""
from __future__ import annotations

from .client import DEFAULT_PORT, client_dir, client_library, parse_address, remote_env
from .wire import TOKEN_VARIABLE

__all__ = [
    "DEFAULT_PORT",
    "TOKEN_VARIABLE",
    "client_dir",
    "client_library",
    "parse_address",
    "remote_env",
]
