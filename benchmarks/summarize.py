"""One table of a GPU session's figures against their targets (benchmarks/gpu_session.sh).

    python benchmarks/summarize.py RAW_DIR [--out DIR]

Reads what the stages left in RAW_DIR; any file may be missing (a stage that ran out of time
leaves nothing), and the table then says "no data" with the stage's status:

    stages.jsonl        one line per stage: status (ok, timeout, failed), seconds, budget
    machine.txt         the device line ("device: ..."; SIMULATED on the simulated device)
    tests.xml           JUnit XML of `pytest -m gpu`
    checks.jsonl        figures the GPU tests recorded ({"metric": ..., "value": ...})
    overhead.json       benchmarks/overhead.py
    compute_share.json  benchmarks/compute_share.py: flexai (compute_share-mps.json: flexai-mps
                        and MPS; compute_share-torch.json: PyTorch workloads, if there)
    duty.json           benchmarks/duty.py (share stage): light-duty and bursty jobs under caps
    packing.json        benchmarks/packing.py: co-located, flexai (packing-mps.json: MPS,
                        flexai-mps)
    train_overhead.json benchmarks/train_overhead.py

Prints the table and writes summary.txt and summary.json to --out. The targets are listed once,
here (TARGETS), each with where it comes from. Exit status 0: this is a report; whether a
figure met its target is in the table (ok / MISS / ref: shown without a target / no data).
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import re
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Target:
    """A target for the metrics whose names match `pattern` (fnmatch; the first match wins).

    op: "<", "<=", ">=" against `bound`; "in" a (low, high) range; "true" for a check that
    passed; "ref" for a figure shown without a target."""

    pattern: str
    op: str
    bound: Any
    why: str


TARGETS: tuple[Target, ...] = (
    Target("item1_light_stall_p99_ms", "<", 1.0,
           "issue 8 #1: a light job's launch stalls, p99 under 1 ms"),
    Target("item1_light_vs_alone", ">=", 0.95,
           "#1: a 10%-duty job under a 30% cap runs as alone (never throttled below its ask)"),
    Target("item1_charged_vs_kernels", "in", (0.95, 1.05),
           "#1: charged time within 5% of its kernels' time"),
    Target("item1_duty80_cap50_pct", "in", (48.0, 52.0), "#1: a 50% cap at 80% duty gets 50 +- 2"),
    Target("item2_torch_captures_ok", "true", None,
           "#2: global-mode captures while another thread launches under a cap"),
    Target("item2_cupy_blocking_capture_ok", "true", None,
           "#2: captures on a blocking stream under a cap"),
    Target("item3_lifetimes_ok", "true", None, "#3: destroyed streams, ended threads, reset"),
    Target("item4_not_blocked", "true", None, "#4: no lock across waits"),
    Target("item4_*", "ref", None, "#4: seconds taken"),
    Target("item5_graphs_share100_vs_native", ">=", 0.95, "#5: graph replays at a 100% share"),
    Target("item5_graphs_share50_pct", "in", (45.0, 55.0), "#5: graph replays at a 50% share"),
    Target("item7_reset_uncharges", "true", None, "#7: a device reset uncharges what it freed"),
    Target("item8_pool_reserve_charged", "true", None,
           "#8: a stream-ordered pool is charged what it keeps"),
    Target("item8_mapping_charged", "true", None,
           "#8: released but mapped memory stays charged until unmapped"),
    Target("item9_free_over_real_gib", "<=", 0.25,
           "#9: cuMemGetInfo free minus real free (GiB; readings 0.25 GiB apart allowed)"),
    Target("item9_nvml_free_over_real_gib", "<=", 0.25, "#9: the same through NVML"),
    Target("item9_jax_started", "true", None, "#9: JAX starts in a slice packed beside another"),
    Target("overhead.*.launch_added_ns", "<=", 200.0, "#6 / docs: at most 0.2 us per launch"),
    Target("overhead.*.alloc_added_ns", "<=", 1000.0, "docs: at most 1 us per alloc+free pair"),
    Target("overhead.*", "ref", None, "launches including the final synchronize"),
    Target("share*.mae_points", "<=", 2.0, "mean error of achieved against asked share (points)"),
    Target("share*.max_points", "<=", 5.0, "10%-granular slicing: every point within 5"),
    Target("share*.min_pair_sum", ">=", 0.95, "two capped jobs together use the whole GPU"),
    Target("share*.d.*.share100_vs_native", ">=", 0.98, "near-native speed at a 100% share"),
    Target("share.e.*.stall_p99_ms", "<", 1.0,
           "#1 / duty.py (e): a light job's launch stalls under a 30% cap, p99 under 1 ms"),
    Target("share.e.*.vs_alone", ">=", 0.95,
           "#1 / duty.py (e): a 10% or 2% job under a 30% cap runs as it does alone"),
    Target("share.e.*.charged_vs_kernels", "in", (0.95, 1.05),
           "#1 / duty.py (e): charged time within 5% of its kernels' time"),
    Target("share.f.duty80_cap50.pct", "in", (48.0, 52.0),
           "#1 / duty.py (f): a 50% cap at 80% duty gets 50 +- 2"),
    Target("share.f.bursty.on_pct", "in", (28.0, 32.0),
           "duty.py (f): a bursty job capped at 30% gets 30 +- 2 while it runs, beside 70%"),
    Target("share.f.bursty.neighbour_pct", "in", (68.0, 72.0),
           "duty.py (f): its saturating neighbour keeps its 70 +- 2"),
    Target("share.f.*.charged_vs_kernels", "in", (0.95, 1.05),
           "duty.py (f): charged time within 5% of its kernels' time"),
    Target("share*", "ref", None, "(c) a high-priority small job's step time, ms; duty.py"),
    Target("packing.*.flexai.n8.speedup", ">=", 3.0,
           "Flex:ai's claim: > 3x aggregate throughput over one job per card"),
    Target("packing-mps.*.flexai-mps.n8.speedup", ">=", 3.0, "the same, spatial (flexai-mps)"),
    Target("packing*", "ref", None, "aggregate over one job alone"),
    Target("train.*.overhead_pct", "<=", 1.0, "train_overhead.py: at most 1% per variant"),
)

#: Which stage produces a metric, by its name's start.
STAGE_OF = (("item", "gpu-tests"), ("overhead.", "overhead"), ("share-torch.", "share-torch"),
            ("share-mps.", "share-mps"), ("share.", "share"), ("packing-mps.", "packing-mps"),
            ("packing.", "packing"), ("train.", "train"))


#: The order of the stages in gpu_session.sh, for the table.
STAGE_ORDER = ("gpu-tests", "overhead", "share", "share-mps", "share-torch", "packing",
               "packing-mps", "train")


def stage_of(metric: str) -> str:
    """The stage that produces `metric` (a name or a target's pattern)."""
    plain = metric.replace("*", "")
    for prefix, stage in STAGE_OF:
        if plain.startswith(prefix):
            return stage
    return "?"


def target_of(metric: str) -> Target | None:
    for t in TARGETS:
        if fnmatch.fnmatchcase(metric, t.pattern):
            return t
    return None


def _key(text: str) -> str:
    """A metric name part: lower case, no spaces or brackets."""
    return re.sub(r"[^a-z0-9:._-]+", "-", str(text).lower()).strip("-")


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _lines(path: Path) -> list[dict]:
    try:
        text = path.read_text()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line cut short by an interrupted stage
    return out


# ---- reading the stages' files ------------------------------------------------------------------

def metrics_of(raw: Path) -> dict[str, Any]:
    """Every figure the session produced, by metric name."""
    m: dict[str, Any] = {}
    for line in _lines(raw / "checks.jsonl"):
        if "metric" in line:
            m[str(line["metric"])] = line.get("value")
    ovh = _load(raw / "overhead.json")
    if isinstance(ovh, dict):
        for variant, added in (ovh.get("added_ns") or {}).items():
            for k, name in (("launch_ns", "launch_added_ns"), ("alloc_free_ns", "alloc_added_ns"),
                            ("launch_sync_ns", "launch_sync_added_ns")):
                if k in added:
                    m[f"overhead.{_key(variant)}.{name}"] = added[k]
    for prefix, file in (("share", "compute_share.json"), ("share-mps", "compute_share-mps.json"),
                         ("share-torch", "compute_share-torch.json")):
        cs = _load(raw / file)
        if not isinstance(cs, dict):
            continue
        for mech, s in (cs.get("summary") or {}).items():
            for k in ("mae_points", "max_points", "min_pair_sum"):
                if k in s:
                    m[f"{prefix}.{_key(mech)}.{k}"] = s[k]
        for workload, d in (cs.get("d") or {}).items():
            if "share_100" in d:
                m[f"{prefix}.d.{_key(workload)}.share100_vs_native"] = d["share_100"]
        for name, c in (cs.get("c") or {}).items():
            if isinstance(c, dict) and "p99_ms" in c:
                m[f"{prefix}.c.{_key(name)}.p99_ms"] = c["p99_ms"]
    duty = _load(raw / "duty.json")
    if isinstance(duty, dict):  # duty.py, run by the share stage: (e) light, (f) bursty jobs
        for name, e in (duty.get("e") or {}).items():
            for k in ("stall_p99_ms", "stall_max_ms", "vs_alone", "charged_vs_kernels"):
                if isinstance(e, dict) and e.get(k) is not None:
                    m[f"share.e.{_key(name)}.{k}"] = e[k]
        f = duty.get("f") or {}
        d80 = f.get("duty80_cap50") or {}
        if d80.get("achieved_pct") is not None:
            m["share.f.duty80_cap50.pct"] = d80["achieved_pct"]
        if d80.get("charged_vs_kernels") is not None:
            m["share.f.duty80_cap50.charged_vs_kernels"] = d80["charged_vs_kernels"]
        bz = f.get("bursty_cap30_beside_70") or {}
        for k in ("on_pct", "neighbour_pct", "overall_pct", "charged_vs_kernels"):
            if bz.get(k) is not None:
                m[f"share.f.bursty.{k}"] = bz[k]
    for prefix, file in (("packing", "packing.json"), ("packing-mps", "packing-mps.json")):
        pk = _load(raw / file)
        if not isinstance(pk, dict):
            continue
        for spec, job in (pk.get("jobs") or {}).items():
            for mode, by_n in (job.get("modes") or {}).items():
                for n, r in by_n.items():
                    if "speedup" in r:
                        m[f"{prefix}.{_key(spec)}.{_key(mode)}.n{n}.speedup"] = r["speedup"]
    tr = _load(raw / "train_overhead.json")
    if isinstance(tr, dict):
        for job, r in tr.items():
            for variant, pct in (r.get("overhead_pct") or {}).items():
                m[f"train.{_key(job)}.{_key(variant)}.overhead_pct"] = pct
    return m


def tests_of(raw: Path) -> dict[str, Any] | None:
    """Counts of the JUnit file, and the failed tests' names (None: no file)."""
    try:
        root = ET.parse(raw / "tests.xml").getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    total = failures = errors = skipped = 0
    failed: list[str] = []
    for s in suites:
        total += int(s.get("tests", 0))
        failures += int(s.get("failures", 0))
        errors += int(s.get("errors", 0))
        skipped += int(s.get("skipped", 0))
        for case in s.iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                failed.append(case.get("name", "?"))
    return {"passed": total - failures - errors - skipped, "failed": failures, "errors": errors,
            "skipped": skipped, "failed_names": failed}


def device_of(raw: Path) -> str:
    try:
        text = (raw / "machine.txt").read_text()
    except OSError:
        return "unknown (no machine.txt: setup did not run)"
    devices = [line.split(":", 1)[1].strip() for line in text.splitlines()
               if line.startswith("device:")]
    return "; ".join(devices) or "unknown"


# ---- judging -------------------------------------------------------------------------------------

def verdict(value: Any, t: Target | None) -> str:
    if value is None:
        return "no data"
    if t is None or t.op == "ref":
        return "ref"
    if t.op == "true":
        return "ok" if value is True else "MISS"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "MISS"
    ok = {"<": lambda: value < t.bound, "<=": lambda: value <= t.bound,
          ">=": lambda: value >= t.bound,
          "in": lambda: t.bound[0] <= value <= t.bound[1]}[t.op]()
    return "ok" if ok else "MISS"


def target_text(t: Target | None) -> str:
    if t is None or t.op == "ref":
        return "-"
    if t.op == "true":
        return "passes"
    if t.op == "in":
        return f"{t.bound[0]:g} .. {t.bound[1]:g}"
    return f"{t.op} {t.bound:g}"


def value_text(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def build(raw: Path) -> dict[str, Any]:
    """The summary as data: device, stages, tests, rows (metric, value, target, verdict)."""
    stages = {s["stage"]: s for s in _lines(raw / "stages.jsonl") if "stage" in s}
    metrics = metrics_of(raw)
    rows = []
    for name in sorted(metrics):
        t = target_of(name)
        rows.append({"stage": stage_of(name), "metric": name, "value": metrics[name],
                     "target": target_text(t), "verdict": verdict(metrics[name], t),
                     "why": t.why if t else ""})
    # targets that nothing measured: say so, with the stage's fate
    for t in TARGETS:
        if t.op == "ref" or any(target_of(k) is t for k in metrics):
            continue
        stage = stage_of(t.pattern)
        fate = stages.get(stage, {}).get("status", "not run")
        rows.append({"stage": stage, "metric": t.pattern, "value": None,
                     "target": target_text(t), "verdict": f"no data ({stage}: {fate})",
                     "why": t.why})
    order = [stage for _, stage in STAGE_OF]
    order.sort(key=STAGE_ORDER.index)
    rows.sort(key=lambda r: order.index(r["stage"]) if r["stage"] in order else len(order))
    simulated = "SIMULATED" in device_of(raw).upper() or any(
        "simulated" in str((_load(raw / f) or {}).get("device", "")).lower()
        for f in ("overhead.json", "compute_share.json", "duty.json"))
    return {"device": device_of(raw), "simulated": simulated,
            "stages": list(stages.values()), "tests": tests_of(raw), "rows": rows}


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render(s: dict[str, Any]) -> str:
    out = [f"flexai GPU session - device: {s['device']}"]
    if s["simulated"]:
        out.append("SIMULATED DEVICE: these figures check the mechanism, not a GPU")
    out.append("")
    if s["stages"]:
        out.append(_table([["stage", "status", "seconds", "budget"]] +
                          [[st["stage"], st["status"], str(st.get("seconds", "?")),
                            str(st.get("budget", "?"))] for st in s["stages"]]))
        out.append("")
    t = s["tests"]
    if t is None:
        out.append("gpu tests: no results (tests.xml missing)")
    else:
        ok = t["failed"] == 0 and t["errors"] == 0 and t["passed"] > 0
        out.append(f"gpu tests: {t['passed']} passed, {t['failed']} failed, {t['errors']} errors,"
                   f" {t['skipped']} skipped - {'ok' if ok else 'MISS'}")
        out += [f"  failed: {name}" for name in t["failed_names"]]
    out.append("")
    rows = [["stage", "metric", "measured", "target", "verdict"]]
    rows += [[r["stage"], r["metric"], value_text(r["value"]), r["target"], r["verdict"]]
             for r in s["rows"]]
    out.append(_table(rows))
    misses = sum(r["verdict"] == "MISS" for r in s["rows"])
    met = sum(r["verdict"] == "ok" for r in s["rows"])
    missing = sum(r["verdict"].startswith("no data") for r in s["rows"])
    out.append("")
    out.append(f"targets met: {met}, missed: {misses}, without data: {missing}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("raw", type=Path, help="the stages' results (gpu_session.sh's raw folder)")
    ap.add_argument("--out", type=Path, default=None,
                    help="write summary.txt and summary.json here")
    args = ap.parse_args(argv)
    if not args.raw.is_dir():
        print(f"summarize.py: {args.raw} is not a directory", file=sys.stderr)
        return 2
    s = build(args.raw)
    text = render(s)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "summary.txt").write_text(text + "\n")
        (args.out / "summary.json").write_text(json.dumps(s, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
