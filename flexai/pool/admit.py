"""Admission: a submitted job's spec becomes the policy's ``Request``, or a one-line error when
it can never run in this pool (an unknown GPU model, more memory than any GPU has, a GPU job
kept to a node without a GPU). A job that could run but not now is admitted: it waits.

Pure: this module must never talk to Ray or the agents (the head hands it the views it has).
"""
from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from . import placement as pl
from .member import model_key


def _gib(n: int) -> str:
    return f"{n / 2**30:.3g}GiB"


def admit(spec: Mapping[str, Any], views: Mapping[str, Mapping[str, Any]],
          members: Collection[str]) -> Any:
    """The request for ``spec`` (argv, memory, compute, gpus, priority, models, origin, where).

    Parameters
    ----------
    views : mapping
        Live node name -> the agent's ``view()`` dict.
    members : collection of str
        Every node the head knows (an origin outside them is ignored).

    Raises
    ------
    ValueError
        One line naming the option and an accepted example.
    """
    memory, compute = int(spec.get("memory") or 0), int(spec.get("compute") or 0)
    gpus = int(spec.get("gpus", 1 if (memory or compute) else 0))
    if gpus > 1 or (gpus == 1 and not compute):
        compute = 100  # whole GPUs; or a slice without a share may use the whole card's time
    origin = spec.get("origin")
    if origin is not None and origin not in members:
        origin = None
    where = spec.get("where") or "prefer-local"
    if where == "local-only":
        if origin is None:
            raise ValueError("--local-only: this machine is not a member of the pool (join it "
                             "with flexai pool join ADDRESS, or submit without --local-only)")
        views = {origin: views[origin]} if origin in views else {}
    candidates = [g for v in views.values() for g in v.get("gpus", ())]
    models = spec.get("models")
    if models:
        known = {g["model"]: g["model"] for g in candidates}
        known.update({model_key(m): m for m in list(known)})
        unknown = [m for m in models if m not in known]
        if unknown:
            have = ", ".join(sorted({g["model"] for g in candidates})) or "none"
            raise ValueError(f"--gpu-model {unknown[0]!r}: no such GPU model in the pool "
                             f"(models: {have}; e.g. --gpu-model '{have.split(', ')[0]}')")
        models = frozenset(known[m] for m in models)
        candidates = [g for g in candidates if g["model"] in models]
    if gpus >= 1:
        where_txt = f"node {origin}" if where == "local-only" else "the pool"
        if not candidates:
            raise ValueError(f"{where_txt} has no GPU (submit without --local-only, or without "
                             "--gpu-memory/--gpu-compute for a CPU-only job)")
        largest = max(g["memory_total"] for g in candidates)
        if memory > largest:
            raise ValueError(f"--gpu-memory {_gib(memory)} is more than any GPU in {where_txt} "
                             f"has (largest {_gib(largest)}; e.g. --gpu-memory "
                             f"{max(1, largest // 2**31)}GiB)")
        if gpus > 1 and not any(len(v.get("gpus", ())) >= gpus for v in views.values()):
            raise ValueError(f"--gpus {gpus}: no node in {where_txt} has that many GPUs "
                             "(e.g. --gpus 1)")
    return pl.Request(memory=memory, compute=compute, gpus=gpus,
                      priority=spec.get("priority") or "normal", models=models or None,
                      origin=origin, where=where)
