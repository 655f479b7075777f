"""A pool head's node record for tests of its rounds without Ray (flexai.pool.dispatch,
flexai.pool.head): the node's agent handle only records the ``stop`` / ``resize`` calls the
round makes on it (``handle.stop.remote(...)``), in order, as ``(method, args, kwargs)``.

It must never reach a real agent, nor start anything.
"""
from __future__ import annotations

from typing import Any


class RecordedMethod:
    """An agent method as Ray exposes it: ``.remote(*args, **kwargs)`` appends
    ``(name, args, kwargs)`` to ``calls``."""

    def __init__(self, calls: list, name: str) -> None:
        self.calls, self.name = calls, name

    def remote(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append((self.name, args, kwargs))


class FakeHandle:
    """An agent handle whose ``stop`` and ``resize`` are recorded in ``calls``."""

    def __init__(self, calls: list | None = None) -> None:
        self.calls = [] if calls is None else calls
        self.stop = RecordedMethod(self.calls, "stop")
        self.resize = RecordedMethod(self.calls, "resize")


class FakeNode:
    """A live node named ``name`` with the head's ``view`` of it; the calls made on its handle
    are in ``calls`` (the same list as ``handle.calls``)."""

    def __init__(self, name: str, view: dict | None = None) -> None:
        self.name, self.alive, self.view = name, True, view
        self.handle = FakeHandle()
        self.calls = self.handle.calls
