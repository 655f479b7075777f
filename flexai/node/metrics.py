"""Prometheus metrics of a node (and, when registered, of the pool head): a custom collector that
reads the node at scrape time, and :func:`serve` to expose it over HTTP.

What a scrape reads: the node's shared state through :class:`~flexai.node.NodeSnapshot` (slices,
their limits, usage and GPU time; never the C library directly), the devices' models and
memory through NVML (:mod:`flexai.node.devices`, the one reader of NVML; on the simulated
device the fake ``libnvidia-ml.so.1`` answers in a process started with
:func:`flexai.sim.sim_env`), and the pool's counters when the pool
head registered a :class:`PoolCounters`. The same per-node numbers are offered as plain data by
:func:`node_status` (the one-node form of ``flexai.pool.status()``, which ``flexai top`` draws).

Metrics (labels: ``gpu`` = device UUID, ``model``, ``slice``, ``priority``, ``outcome``)::

    flexai_node_up                         1 when the node's state could be read
    flexai_nvml_up                         1 when NVML answered
    flexai_gpu_memory_total_bytes          {gpu, model}  device memory (NVML)
    flexai_gpu_memory_used_bytes           {gpu, model}  memory every process holds (NVML)
    flexai_gpu_memory_granted_bytes        {gpu, model}  slice limits (usage where no limit)
    flexai_gpu_compute_granted_percent     {gpu, model}  sum of the slices' compute shares
    flexai_gpu_busy_seconds_total          {gpu, model}  GPU time of all slices
    flexai_slice_memory_limit_bytes        {slice, gpu, model, priority}  0: no limit
    flexai_slice_memory_used_bytes         {slice, gpu, model, priority}
    flexai_slice_compute_percent           {slice, gpu, model, priority}  0: no share
    flexai_slice_compute_burst_percent     {slice, gpu, model, priority}  0: hard cap
    flexai_slice_gpu_seconds_total         {slice, gpu, model, priority}
    flexai_slice_throttled_seconds_total   {slice, gpu, model, priority}  launches held back
    flexai_slice_processes                 {slice, priority}
    flexai_slices                          {priority}    slices of the node by priority
    flexai_pool_queue_length               {priority}    (pool head only)
    flexai_pool_placements_total           {outcome}     placed | queued | preempted
    flexai_pool_preemptions_total, flexai_pool_evictions_total

Throttled time is the time a slice's launches on a device waited in the gate (its cap, a
higher priority, another slice's lease), from the node's usage rows (``throttled_ns``).

The pool hook: the pool head creates one :class:`PoolCounters`, passes it to
``serve(port, pool=counters)`` (or ``MetricsCollector(pool=counters)``), and updates it as it
decides: ``counters.set_queue({"high": 1, "normal": 3})``, ``counters.count_placement("placed")``,
``counters.count_preemption()``, ``counters.count_eviction()``. Updates are thread-safe and
cost a lock and an addition; the collector reads a copy at scrape time.

This module must never change a slice, never print, and never load libflexai.so except
through :class:`~flexai.node.NodeSnapshot`.
"""
from __future__ import annotations

import socket
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from .._ffi import FlexaiError, names
from .devices import Gpu
from .devices import read_gpus as _read_gpus
from .snapshot import NodeSnapshot

#: The outcomes of a placement decision that :meth:`PoolCounters.count_placement` accepts.
OUTCOMES = ("placed", "queued", "preempted")


def read_gpus() -> list[Gpu] | None:
    """The devices NVML reports, or None when NVML does not answer (no driver, no device).

    Read through :func:`flexai.node.devices.read_gpus`, which leaves NVML initialized after
    the first read that succeeds (a scrape does not pay its start again).
    """
    gpus, why = _read_gpus(keep=True)
    return None if why else list(gpus)


def node_status(state_dir: str | None = None, *, snapshot: NodeSnapshot | None = None,
                gpus: list[Gpu] | None = None, nvml: bool = True,
                name: str | None = None) -> dict[str, Any]:
    """The node as plain data, in the shape of ``flexai.pool.status()`` for one node.

    Parameters
    ----------
    state_dir : str, optional
        The node's state directory (default ``$FLEXAI_STATE_DIR`` or the library's default).
    snapshot, gpus : optional
        Already read views (the collector reads each once per scrape); read here when None.
    nvml : bool
        Ask NVML for the devices' models and memory (when ``gpus`` is None).
    name : str, optional
        The node's name (default: the host name).

    Returns
    -------
    dict
        ``{"nodes": [{"name", "alive", "gpus": [{"index", "uuid", "model", "memory_total",
        "memory_used", "memory_granted", "compute_granted", "busy_seconds"}]}],
        "slices": [{"name", "node", "gpu", "priority", "nprocs", "memory_limit",
        "memory_used", "compute", "burst", "gpu_seconds", "throttled_seconds"}],
        "queue": []}``; sizes in bytes,
        compute in percent, ``gpu`` the device UUID. A device NVML does not know (or every
        device, without NVML) has index -1, model "" and memory_total 0.

    Raises
    ------
    FlexaiError
        When the node's state cannot be read.
    """
    snap = snapshot if snapshot is not None else NodeSnapshot.read(state_dir)
    if gpus is None and nvml:
        gpus = read_gpus()
    node = name or socket.gethostname()
    rows: dict[str, dict[str, Any]] = {}
    for g in gpus or ():
        rows[g.uuid.lower()] = _gpu_row(g.uuid, g.index, g.model, g.memory_total,
                                        g.memory_used)
    for d in sorted(snap.devices, key=lambda d: d.id):
        rows.setdefault(d.uuid.lower(), _gpu_row(d.uuid))
    slices = []
    for s in snap.slices:
        for d in s.devices:
            gpu = rows.setdefault(d.device.lower(), _gpu_row(d.device))
            gpu["memory_granted"] += d.limit_bytes or d.used_bytes
            gpu["compute_granted"] += d.compute
            gpu["busy_seconds"] += d.gpu_seconds
            if gpus is None:  # without NVML, the slices' usage is all that is known
                gpu["memory_used"] += d.used_bytes
            slices.append({"name": s.name, "node": node, "gpu": d.device,
                           "priority": s.priority, "nprocs": s.nprocs,
                           "memory_limit": d.limit_bytes, "memory_used": d.used_bytes,
                           "compute": d.compute, "burst": d.burst,
                           "gpu_seconds": d.gpu_seconds,
                           "throttled_seconds": d.throttled_ns / 1e9})
        if not s.devices:
            slices.append({"name": s.name, "node": node, "gpu": "", "priority": s.priority,
                           "nprocs": s.nprocs, "memory_limit": 0, "memory_used": 0,
                           "compute": 0, "burst": 0, "gpu_seconds": 0.0,
                           "throttled_seconds": 0.0})
    ordered = sorted(rows.values(), key=lambda g: (g["index"] < 0, g["index"], g["uuid"]))
    return {"nodes": [{"name": node, "alive": True, "gpus": ordered}], "slices": slices,
            "queue": []}


def _gpu_row(uuid: str, index: int = -1, model: str = "", total: int = 0,
             used: int = 0) -> dict[str, Any]:
    """A GPU of :func:`node_status`, nothing granted yet (index -1: NVML does not know it)."""
    return {"index": index, "uuid": uuid, "model": model, "memory_total": total,
            "memory_used": used, "memory_granted": 0, "compute_granted": 0,
            "busy_seconds": 0.0}


class PoolCounters:
    """The pool head's counters: queue length by priority, placement decisions by outcome,
    preemptions and evictions. Thread-safe; the collector reads :meth:`values` at scrape time.

    Examples
    --------
    >>> counters = PoolCounters()
    >>> counters.set_queue({"high": 0, "normal": 2})
    >>> counters.count_placement("queued")
    >>> counters.values()["placements"]["queued"]
    1
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: dict[str, int] = {}
        self._placements: Counter[str] = Counter({o: 0 for o in OUTCOMES})
        self._preemptions = 0
        self._evictions = 0

    def set_queue(self, by_priority: Mapping[str, int]) -> None:
        """Set the number of waiting requests per priority (priorities not named keep theirs;
        name them with 0 when their queue empties)."""
        with self._lock:
            self._queue.update({str(p): int(n) for p, n in by_priority.items()})

    def count_placement(self, outcome: str, n: int = 1) -> None:
        """Count ``n`` placement decisions with ``outcome`` (one of :data:`OUTCOMES`).

        Raises
        ------
        ValueError
            For another outcome, e.g. ``"lost"`` (expected e.g. ``"placed"``).
        """
        if outcome not in OUTCOMES:
            raise ValueError(f"placement outcome: {outcome!r} is not one of "
                             f"{', '.join(OUTCOMES)} (expected e.g. 'placed')")
        with self._lock:
            self._placements[outcome] += n

    def count_preemption(self, n: int = 1) -> None:
        """Count ``n`` preemptions (a running job shrunk or evicted for another)."""
        with self._lock:
            self._preemptions += n

    def count_eviction(self, n: int = 1) -> None:
        """Count ``n`` evictions (a running job stopped to make room)."""
        with self._lock:
            self._evictions += n

    def values(self) -> dict[str, Any]:
        """A copy: ``{"queue": {priority: n}, "placements": {outcome: n}, "preemptions": n,
        "evictions": n}``."""
        with self._lock:
            return {"queue": dict(self._queue), "placements": dict(self._placements),
                    "preemptions": self._preemptions, "evictions": self._evictions}


class MetricsCollector:
    """A prometheus-client collector of the node (and optionally the pool head's counters).

    Parameters
    ----------
    state_dir : str, optional
        The node's state directory (default ``$FLEXAI_STATE_DIR`` or the library's default).
    node : bool
        Export the node's devices and slices (False: only the pool's counters).
    nvml : bool
        Ask NVML for the devices' models and memory.
    pool : PoolCounters, optional
        The pool head's counters; may also be set later through the ``pool`` attribute.

    Examples
    --------
    >>> from prometheus_client import CollectorRegistry, generate_latest
    >>> registry = CollectorRegistry()
    >>> registry.register(MetricsCollector("/tmp/flexai-state"))   # doctest: +SKIP
    >>> print(generate_latest(registry).decode())                  # doctest: +SKIP
    """

    def __init__(self, state_dir: str | None = None, *, node: bool = True, nvml: bool = True,
                 pool: PoolCounters | None = None) -> None:
        self.state_dir = state_dir
        self.node = node
        self.nvml = nvml
        self.pool = pool

    def describe(self) -> list:
        """Nothing: the registry must not scrape the node when the collector is registered."""
        return []

    def collect(self) -> Iterator[Any]:
        """Read the node (and the pool's counters) and yield the metric families."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        if self.node:
            yield from self._node_families(GaugeMetricFamily, CounterMetricFamily)
        if self.pool is not None:
            yield from _pool_families(self.pool.values(), GaugeMetricFamily,
                                      CounterMetricFamily)

    def _node_families(self, gauge: Any, counter: Any) -> Iterator[Any]:
        gpus = read_gpus() if self.nvml else None
        yield gauge("flexai_nvml_up", "1 when NVML answered", value=int(gpus is not None))
        try:
            status = node_status(self.state_dir, gpus=gpus, nvml=False)
        except FlexaiError:
            yield gauge("flexai_node_up", "1 when the node's state could be read", value=0)
            return
        yield gauge("flexai_node_up", "1 when the node's state could be read", value=1)
        gl = ["gpu", "model"]
        total = gauge("flexai_gpu_memory_total_bytes", "Device memory", labels=gl)
        used = gauge("flexai_gpu_memory_used_bytes", "Device memory every process holds",
                     labels=gl)
        granted = gauge("flexai_gpu_memory_granted_bytes",
                        "Memory granted to slices (limits; usage where no limit)", labels=gl)
        compute = gauge("flexai_gpu_compute_granted_percent",
                        "Sum of the slices' compute shares", labels=gl)
        busy = counter("flexai_gpu_busy_seconds", "GPU time used by all slices", labels=gl)
        models = {}
        for g in status["nodes"][0]["gpus"]:
            key = [g["uuid"], g["model"]]
            models[g["uuid"].lower()] = g["model"]
            if g["index"] >= 0:  # NVML knows the device
                total.add_metric(key, g["memory_total"])
                used.add_metric(key, g["memory_used"])
            granted.add_metric(key, g["memory_granted"])
            compute.add_metric(key, g["compute_granted"])
            busy.add_metric(key, g["busy_seconds"])
        yield from (total, used, granted, compute, busy)

        sl = ["slice", "gpu", "model", "priority"]
        limit = gauge("flexai_slice_memory_limit_bytes", "Slice memory quota (0: none)",
                      labels=sl)
        mem = gauge("flexai_slice_memory_used_bytes", "Memory charged to the slice", labels=sl)
        share = gauge("flexai_slice_compute_percent", "Slice compute share (0: none)",
                      labels=sl)
        burst = gauge("flexai_slice_compute_burst_percent",
                      "Slice compute burst (0: the share is a hard cap)", labels=sl)
        seconds = counter("flexai_slice_gpu_seconds", "GPU time the slice used", labels=sl)
        throttled = counter("flexai_slice_throttled_seconds",
                            "Time the slice's launches were held back (cap, priority, lease)",
                            labels=sl)
        procs = gauge("flexai_slice_processes", "Live processes of the slice",
                      labels=["slice", "priority"])
        by_priority = Counter({p: 0 for p in names("FLEXAI_PRIORITY_").values()})
        seen = set()
        for s in status["slices"]:
            if s["name"] not in seen:
                seen.add(s["name"])
                by_priority[s["priority"]] += 1
                procs.add_metric([s["name"], s["priority"]], s["nprocs"])
            if not s["gpu"]:
                continue
            key = [s["name"], s["gpu"], models.get(s["gpu"].lower(), ""), s["priority"]]
            limit.add_metric(key, s["memory_limit"])
            mem.add_metric(key, s["memory_used"])
            share.add_metric(key, s["compute"])
            burst.add_metric(key, s["burst"])
            seconds.add_metric(key, s["gpu_seconds"])
            throttled.add_metric(key, s["throttled_seconds"])
        yield from (limit, mem, share, burst, seconds, throttled, procs)
        slices = gauge("flexai_slices", "Slices of the node by priority", labels=["priority"])
        for p, n in sorted(by_priority.items()):
            slices.add_metric([p], n)
        yield slices


def _pool_families(v: dict[str, Any], gauge: Any, counter: Any) -> Iterator[Any]:
    queue = gauge("flexai_pool_queue_length", "Requests waiting, by priority",
                  labels=["priority"])
    for p, n in sorted(v["queue"].items()):
        queue.add_metric([p], n)
    placements = counter("flexai_pool_placements", "Placement decisions by outcome",
                         labels=["outcome"])
    for o, n in sorted(v["placements"].items()):
        placements.add_metric([o], n)
    yield queue
    yield placements
    yield counter("flexai_pool_preemptions", "Preemptions", value=v["preemptions"])
    yield counter("flexai_pool_evictions", "Evictions", value=v["evictions"])


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        """No request log: library code does not write to the terminal."""


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    """One daemon thread per scrape, so a slow scrape never holds up the next."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Silent: a broken scrape connection is the scraper's business."""


def serve(port: int, addr: str = "127.0.0.1", *, state_dir: str | None = None,
          node: bool = True, nvml: bool = True,
          pool: PoolCounters | None = None) -> WSGIServer:
    """Serve the metrics at ``http://addr:port/metrics`` from a daemon thread.

    Parameters
    ----------
    port : int
        TCP port; 0 picks a free one (read it from ``server.server_port``).
    addr : str
        Address to listen on (default loopback; ``"0.0.0.0"`` for a Prometheus elsewhere).
    state_dir, node, nvml, pool
        As for :class:`MetricsCollector`. The process's own CPU and memory
        (``process_*``) are exported too.

    Returns
    -------
    wsgiref.simple_server.WSGIServer
        The running server; ``server.shutdown(); server.server_close()`` stops it.

    Raises
    ------
    OSError
        When the address cannot be bound (e.g. the port is in use).
    """
    from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app

    registry = CollectorRegistry()
    registry.register(MetricsCollector(state_dir, node=node, nvml=nvml, pool=pool))
    ProcessCollector(registry=registry)
    server = make_server(addr, port, make_wsgi_app(registry), _ThreadingServer,
                         handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="flexai-metrics", daemon=True).start()
    return server
