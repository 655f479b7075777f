"""GPU-sharing cluster traces for the scheduler benchmark: read, generate, write.

Reads the node and pod lists of Alibaba's cluster-trace-gpu-v2023 (`openb_node_list_*.csv`,
`openb_pod_list_*.csv`) and generates seeded synthetic traces with the same columns and similar
statistics, for CI and tests (benchmarks/scheduler_trace.py replays both).

Node list columns: sn, cpu_milli, memory_mib, gpu (the published files; `num_gpu` is accepted
too), model (empty or "nan" on a CPU-only node).
Pod list columns: name, cpu_milli, memory_mib, num_gpu (0..8), gpu_milli (the share of one card,
1..1000, for num_gpu == 1; 1000 for whole cards), and where the file has them (the published
multigpu* variants have only the first five): gpu_spec (empty, "nan", or models joined by "|";
absent: any model), qos (LS, Burstable, BE, Guaranteed; absent: Burstable), pod_phase,
creation_time, deletion_time, scheduled_time (seconds; empty where unknown).

What it must never do: ship or download the real trace (its terms allow research use only; the
user gives its path), print, or exit; bad input raises ValueError naming the file, the line and
the column, with an accepted example.
"""
from __future__ import annotations

import csv
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

NODE_COLUMNS = ("sn", "cpu_milli", "memory_mib", "gpu", "model")
POD_COLUMNS = ("name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli", "gpu_spec", "qos",
               "pod_phase", "creation_time", "deletion_time", "scheduled_time")
NODE_EXAMPLE = "openb-node-0026,96000,393216,8,G2"
POD_EXAMPLE = "openb-pod-0022,4000,15258,1,220,,BE,Running,9679175,9973826,9679175"
QOS = ("LS", "Burstable", "BE", "Guaranteed")
#: The qos of a pod whose file has no qos column.
QOS_ABSENT = "Burstable"


@dataclass(frozen=True)
class TraceNode:
    """One machine: CPU in milli-cores, host memory in MiB, `gpus` cards of `model`."""

    name: str
    cpu_milli: int
    memory_mib: int
    gpus: int
    model: str  # "" on a CPU-only node


@dataclass(frozen=True)
class TracePod:
    """One task. `gpu_milli` is per card: a share (< 1000) only when num_gpu == 1."""

    name: str
    cpu_milli: int
    memory_mib: int
    num_gpu: int
    gpu_milli: int
    gpu_spec: frozenset[str] | None  # None: any model
    qos: str
    phase: str = ""
    creation: int | None = None
    deletion: int | None = None
    scheduled: int | None = None

    @property
    def gpu_request(self) -> float:
        """Cards asked for, in GPU units (0.46 for a 460-milli share, 8 for eight cards)."""
        return self.num_gpu * self.gpu_milli / 1000.0


class _Rows:
    """csv.DictReader over `path` that reports errors as 'FILE line N, column C: ...'."""

    def __init__(self, path: Path, required: Sequence[str], aliases: dict[str, str],
                 example: str):
        self.path, self.example = Path(path), example
        self.required, self.aliases = required, aliases

    def __iter__(self):
        try:
            fh = open(self.path, newline="")
        except OSError as e:
            raise ValueError(f"{self.path}: cannot read ({e.strerror}); give the path of a "
                             f"CSV file whose rows look like: {self.example}") from None
        with fh:
            reader = csv.DictReader(fh)
            header = [self.aliases.get(h.strip(), h.strip()) for h in reader.fieldnames or []]
            missing = [c for c in self.required if c not in header]
            if missing:
                raise ValueError(
                    f"{self.path}: missing column(s) {', '.join(missing)}; the header must name "
                    f"{','.join(self.required)} (a row: {self.example})")
            reader.fieldnames = header
            for row in reader:
                yield reader.line_num, row

    def fail(self, line: int, column: str, value: str, want: str) -> ValueError:
        return ValueError(f"{self.path} line {line}, column {column}: {value!r} is not {want} "
                          f"(an accepted row: {self.example})")

    def int_(self, line: int, row: dict, column: str, lo: int = 0, hi: int | None = None,
             optional: bool = False) -> int | None:
        raw = (row.get(column) or "").strip()
        if optional and raw in ("", "nan", "None"):
            return None
        try:
            value = int(float(raw)) if "." in raw or "e" in raw.lower() else int(raw)
        except ValueError:
            raise self.fail(line, column, raw, "an integer") from None
        if value < lo or (hi is not None and value > hi):
            want = f"an integer in {lo}..{hi}" if hi is not None else f"an integer >= {lo}"
            raise self.fail(line, column, raw, want)
        return value


def _spec(raw: str) -> frozenset[str] | None:
    raw = (raw or "").strip()
    if raw in ("", "nan", "None"):
        return None
    return frozenset(m.strip() for m in raw.split("|") if m.strip())


def read_nodes(path: str | Path) -> list[TraceNode]:
    """Read an `openb_node_list_*.csv` file (GPU nodes, and CPU-only nodes if it lists them)."""
    rows = _Rows(Path(path), NODE_COLUMNS, {"num_gpu": "gpu"}, NODE_EXAMPLE)
    nodes: list[TraceNode] = []
    for line, row in rows:
        gpus = rows.int_(line, row, "gpu", 0, 64)
        model = (row.get("model") or "").strip()
        model = "" if model in ("nan", "None") else model
        if gpus and not model:
            raise rows.fail(line, "model", model, "a GPU model name for a node with GPUs")
        nodes.append(TraceNode(row["sn"].strip(), rows.int_(line, row, "cpu_milli"),
                               rows.int_(line, row, "memory_mib"), gpus, model))
    if not nodes:
        raise ValueError(f"{path}: no nodes (a row: {NODE_EXAMPLE})")
    return nodes


def read_pods(path: str | Path) -> list[TracePod]:
    """Read an `openb_pod_list_*.csv` file, in file order."""
    rows = _Rows(Path(path), POD_COLUMNS[:5], {}, POD_EXAMPLE)
    pods: list[TracePod] = []
    for line, row in rows:
        if "qos" not in row:
            row["qos"] = QOS_ABSENT
        num_gpu = rows.int_(line, row, "num_gpu", 0, 64)
        milli = rows.int_(line, row, "gpu_milli", 0, 1000)
        if num_gpu and not milli:
            raise rows.fail(line, "gpu_milli", row["gpu_milli"], "1..1000 for a GPU task")
        if num_gpu > 1 and milli != 1000:
            raise rows.fail(line, "gpu_milli", row["gpu_milli"],
                            "1000 for a task of several GPUs (whole cards)")
        qos = (row.get("qos") or "").strip()
        if qos not in QOS:
            raise rows.fail(line, "qos", qos, "one of " + ", ".join(QOS))
        pods.append(TracePod(
            row["name"].strip(), rows.int_(line, row, "cpu_milli"),
            rows.int_(line, row, "memory_mib"), num_gpu, milli if num_gpu else 0,
            _spec(row.get("gpu_spec", "")), qos, (row.get("pod_phase") or "").strip(),
            rows.int_(line, row, "creation_time", optional=True),
            rows.int_(line, row, "deletion_time", optional=True),
            rows.int_(line, row, "scheduled_time", optional=True)))
    if not pods:
        raise ValueError(f"{path}: no pods (a row: {POD_EXAMPLE})")
    return pods


def _opt(v: int | None) -> str:
    return "" if v is None else str(v)


def write_nodes(path: str | Path, nodes: Iterable[TraceNode]) -> None:
    """Write nodes in the published column order."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(NODE_COLUMNS)
        for n in nodes:
            w.writerow((n.name, n.cpu_milli, n.memory_mib, n.gpus, n.model))


def write_pods(path: str | Path, pods: Iterable[TracePod]) -> None:
    """Write pods in the published column order."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(POD_COLUMNS)
        for p in pods:
            spec = "|".join(sorted(p.gpu_spec)) if p.gpu_spec else ""
            w.writerow((p.name, p.cpu_milli, p.memory_mib, p.num_gpu, p.gpu_milli, spec, p.qos,
                        p.phase, _opt(p.creation), _opt(p.deletion), _opt(p.scheduled)))


# ---- synthetic traces ---------------------------------------------------------------------------

#: Node shapes (cpu_milli, memory_mib, gpus, model) and their share of the nodes, shaped after the
#: published GPU node list: mostly 8-card machines of one model, many 2-card T4 machines, a few
#: small P100/V100 ones.
NODE_SHAPES: tuple[tuple[float, tuple[int, int, int, str]], ...] = (
    (0.45, (96000, 393216, 8, "G2")),
    (0.35, (104000, 524288, 2, "T4")),
    (0.10, (16000, 122880, 2, "P100")),
    (0.04, (128000, 786432, 8, "G3")),
    (0.03, (96000, 786432, 8, "V100M32")),
    (0.03, (32000, 131072, 4, "V100M16")),
)

#: Pod kinds and their share of the pods: (share, kind). Kinds: "cpu" (no GPU), "share" (a part
#: of one card), "one" (one whole card), "multi" (2, 4 or 8 whole cards). Rounded from a
#: 2,034-pod sample (nine 16 kB pages spread over the file) of openb_pod_list_default.csv:
#: 13.7% CPU-only, 37.4% sharing, 47.4% one card, 1.5% several.
POD_MIX: tuple[tuple[float, str], ...] = (
    (0.13, "cpu"), (0.38, "share"), (0.47, "one"), (0.02, "multi"))
#: Synthetic stand-ins for the published variants of the pod list (when the user has not got
#: them): "gpushare" for openb_pod_list_gpushare100.csv (every GPU task shares one card),
#: "multigpu" for openb_pod_list_multigpu50.csv (the default tasks plus multi-GPU ones until
#: these ask for about half the GPUs: here 12% of the tasks ask for 52% of the GPUs).
MIXES: dict[str, tuple[tuple[float, str], ...]] = {
    "default": POD_MIX,
    "gpushare": ((0.13, "cpu"), (0.87, "share")),
    "multigpu": ((0.12, "cpu"), (0.34, "share"), (0.42, "one"), (0.12, "multi")),
}
#: The published file of each variant.
VARIANT_FILES = {"default": "openb_pod_list_default.csv",
                 "gpushare": "openb_pod_list_gpushare100.csv",
                 "multigpu": "openb_pod_list_multigpu50.csv"}
#: Common shares of one card (milli), with weights.
SHARES: tuple[tuple[int, float], ...] = (
    (50, 1), (110, 2), (160, 2), (220, 4), (230, 2), (250, 2), (320, 4), (440, 2), (460, 6),
    (470, 4), (500, 3), (550, 2), (650, 1), (810, 2))
#: qos shares (the same sample: 56% LS, 42.5% BE, 1.7% Burstable, 0.1% Guaranteed).
QOS_MIX: tuple[tuple[float, str], ...] = ((0.56, "LS"), (0.02, "Burstable"), (0.42, "BE"))


def _pick(rng: random.Random, table: Sequence[tuple[float, object]]):
    x, acc = rng.random() * sum(w for w, _ in table), 0.0
    for w, item in table:
        acc += w
        if x < acc:
            return item
    return table[-1][1]


def synthetic_nodes(count: int, seed: int = 0, uniform: tuple[int, str] | None = None
                    ) -> list[TraceNode]:
    """`count` nodes shaped like the published list (NODE_SHAPES), or all alike:
    `uniform=(8, "G2")` gives `count` 8-card G2 machines (the 1,000 x 8 latency cluster)."""
    if count < 1:
        raise ValueError(f"synthetic_nodes: count must be >= 1, not {count} (e.g. 100)")
    rng = random.Random(seed)
    nodes = []
    for i in range(count):
        if uniform is not None:
            cpu, mem, gpus, model = 96000, 393216, uniform[0], uniform[1]
        else:
            cpu, mem, gpus, model = _pick(rng, tuple((w, s) for w, s in NODE_SHAPES))
        nodes.append(TraceNode(f"syn-node-{i:04d}", cpu, mem, gpus, model))
    return nodes


def synthetic_pods(count: int, seed: int = 0, models: Sequence[str] = ("G2", "T4", "P100"),
                   spec_share: float = 0.1, mix: Sequence[tuple[float, str]] = POD_MIX,
                   mean_gap_s: float = 60.0, mean_life_s: float = 3600.0) -> list[TracePod]:
    """`count` pods in creation order: kinds by `mix`, shares by SHARES, qos by QOS_MIX; a
    fraction `spec_share` of the GPU pods is bound to one or two of `models`. Arrivals are a
    Poisson process (mean gap `mean_gap_s`), lifetimes log-normal around `mean_life_s`."""
    if count < 1:
        raise ValueError(f"synthetic_pods: count must be >= 1, not {count} (e.g. 1000)")
    rng = random.Random(seed)
    pods, now = [], 0.0
    sigma = 1.0
    mu = math.log(mean_life_s) - sigma * sigma / 2
    for i in range(count):
        kind = _pick(rng, mix)
        if kind == "cpu":
            num_gpu, milli = 0, 0
            cpu, mem = rng.choice((4000, 8000, 16000, 32000)), rng.choice((8192, 16384, 65536))
        elif kind == "share":
            num_gpu, milli = 1, _pick(rng, tuple((w, m) for m, w in SHARES))
            cpu, mem = rng.choice((4000, 6000, 8000)), rng.choice((12288, 15258, 30517))
        elif kind == "one":
            num_gpu, milli = 1, 1000
            cpu, mem = rng.choice((4000, 8000, 12000, 16000)), rng.choice((16384, 32768, 65536))
        else:
            num_gpu, milli = _pick(rng, ((0.35, 2), (0.25, 4), (0.40, 8))), 1000
            cpu, mem = 11000 * num_gpu, 40960 * num_gpu
        spec = None
        if num_gpu and models and rng.random() < spec_share:
            spec = frozenset(rng.sample(list(models), min(len(models), rng.choice((1, 2)))))
        now += rng.expovariate(1.0 / mean_gap_s)
        start = int(now)
        life = max(1, int(rng.lognormvariate(mu, sigma)))
        pods.append(TracePod(f"syn-pod-{i:05d}", cpu, mem, num_gpu, milli, spec,
                             _pick(rng, QOS_MIX), "Succeeded", start, start + life, start))
    return pods


def summary(nodes: Sequence[TraceNode], pods: Sequence[TracePod]) -> dict:
    """Counts that say what a trace is: nodes, GPUs, pods by kind and qos, GPUs asked."""
    kinds = {"cpu": 0, "share": 0, "one": 0, "multi": 0}
    for p in pods:
        kinds["cpu" if p.num_gpu == 0 else "multi" if p.num_gpu > 1 else
              "share" if p.gpu_milli < 1000 else "one"] += 1
    qos: dict[str, int] = {}
    for p in pods:
        qos[p.qos] = qos.get(p.qos, 0) + 1
    return {"nodes": len(nodes), "gpu_nodes": sum(1 for n in nodes if n.gpus),
            "gpus": sum(n.gpus for n in nodes), "pods": len(pods), "pod_kinds": kinds,
            "qos": qos, "with_gpu_spec": sum(1 for p in pods if p.gpu_spec),
            "gpus_requested": round(sum(p.gpu_request for p in pods), 2)}
