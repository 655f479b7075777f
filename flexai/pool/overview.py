"""The pool as plain data: what ``flexai.pool.status()`` returns, ``flexai pool status``
prints and ``flexai top --pool`` draws, built by the head from its members, their agents'
reports and its job table.

Shape (sizes in bytes, compute in percent)::

    {"pool": {"address", "policy", "flexai_version", "metrics_port"},
     "nodes": [{"name", "alive", "state", "reason", "hostname", "cpus", "last_seen_s",
                "metrics_port",
                "gpus": [{"index", "uuid", "model", "memory_total", "memory_free",
                          "compute_free", "memory_used", "memory_granted", "compute_granted",
                          "busy_seconds", "slices": [{"job", "priority", "memory",
                                                      "compute", "guarantee"}]}],
                "slices_by_priority": {priority: n}}],
     "slices": [{"name", "node", "gpu", "priority", "nprocs", "memory_limit", "memory_used",
                 "compute", "burst", "gpu_seconds"}],
     "queue": [{"job", "priority", "memory", "compute", "gpus", "waiting_s", "reason",
                "argv"}],
     "jobs": [job records, see flexai.pool.Job],
     "counters": {"queue": {priority: n}, "placements": {outcome: n}, "preemptions",
                  "evictions", "lost", "started"}}

This module must never talk to Ray or the agents: the head hands it what it has read.
"""
from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any


def build_status(address: str, nodes: Iterable[Any], details: Mapping[str, Any],
                 jobs: list[dict[str, Any]], counters: Mapping[str, Any],
                 stats: Mapping[str, int], policy: str,
                 metrics_port: int | None = None) -> dict[str, Any]:
    """Assemble the status dict (see the module's docstring).

    Parameters
    ----------
    nodes : iterable
        The head's member entries (``name``, ``state``, ``reason``, ``info``, ``view``,
        ``last_seen``).
    details : mapping
        Node name -> the agent's ``status()`` (``flexai.node.metrics.node_status``), or None
        where the agent did not answer.
    """
    from .. import __version__

    now = time.monotonic()
    out_nodes, slices = [], []
    for n in nodes:
        detail = details.get(n.name) or {}
        per_uuid = {g["uuid"].lower(): g for d in detail.get("nodes", ())
                    for g in d.get("gpus", ()) if g.get("uuid")}
        devices = {d["index"]: d for d in n.info.get("devices", ())}
        gpus = []
        for g in (n.view or {}).get("gpus", ()):
            dev = devices.get(g["index"], {})
            more = per_uuid.get(str(dev.get("uuid", "")).lower(), {})
            gpus.append({
                "index": g["index"], "uuid": dev.get("uuid", ""), "model": g["model"],
                "memory_total": g["memory_total"], "memory_free": g["memory_free"],
                "compute_free": g["compute_free"],
                "memory_used": more.get("memory_used", 0),
                "memory_granted": g["memory_total"] - g["memory_free"],
                "compute_granted": 100 - g["compute_free"],
                "busy_seconds": more.get("busy_seconds", 0.0),
                "slices": [dict(s) for s in g["slices"]]})
        by_priority = Counter(s["priority"] for g in gpus for s in g["slices"])
        out_nodes.append({
            "name": n.name, "alive": n.state == "alive", "state": n.state,
            "reason": n.reason, "hostname": n.info.get("hostname", ""),
            "cpus": n.info.get("cpus", 0), "last_seen_s": round(now - n.last_seen, 3),
            "metrics_port": n.info.get("metrics_port"), "gpus": gpus,
            "slices_by_priority": dict(by_priority)})
        slices.extend(detail.get("slices", ()))
    wall = time.time()
    queue = [{"job": j["id"], "priority": j["priority"], "memory": j["memory"],
              "compute": j["compute"], "gpus": j["gpus_wanted"],
              "waiting_s": round(wall - j["submitted_at"], 3), "reason": j["wait_reason"],
              "argv": list(j["argv"])}
             for j in jobs if j["state"] == "queued"]
    return {"pool": {"address": address, "policy": policy, "flexai_version": __version__,
                     "metrics_port": metrics_port},
            "nodes": out_nodes, "slices": slices, "queue": queue,
            "jobs": [public_job(j) for j in jobs],
            "counters": {**counters, **stats}}


def public_job(job: Mapping[str, Any]) -> dict[str, Any]:
    """A job record without the head's private fields (environment, flags)."""
    return {k: v for k, v in job.items() if k not in ("env", "cancel", "preempting")}
