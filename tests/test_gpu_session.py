"""The prepared GPU run (benchmarks/gpu_session.sh, benchmarks/summarize.py; issue 8, item 15),
checked without a GPU: the script parses, its stage budgets fit in 9 minutes, it stops at once
where there is no GPU, a stage over its budget is cut while the others go on, and the summary
table reads the stages' files (fixtures here) and judges each figure against its target.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_session.sh"
SUMMARIZE = ROOT / "benchmarks" / "summarize.py"
NINE_MINUTES = 540


def _summarize_module():
    spec = importlib.util.spec_from_file_location("summarize", SUMMARIZE)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["summarize"] = mod  # dataclasses look the module up by name
    spec.loader.exec_module(mod)
    return mod


def _stages() -> list[tuple[str, int]]:
    text = SCRIPT.read_text()
    block = re.search(r"^STAGES=\(\n(.*?)^\)", text, flags=re.M | re.S)
    assert block, "gpu_session.sh lists its stages in STAGES=( ... )"
    return [(name, int(budget)) for name, budget in
            re.findall(r'^\s*"([a-z-]+):(\d+)"\s*$', block.group(1), flags=re.M)]


def _session(env: dict[str, str], *args: str, timeout: float = 120):
    e = {k: v for k, v in os.environ.items() if k not in ("OUT", "SIM", "GPU_SESSION_STAGES")}
    e.update(env)
    return subprocess.run(["bash", str(SCRIPT), *args], env=e, capture_output=True, text=True,
                          timeout=timeout)


def test_the_script_parses():
    p = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_stage_budgets_add_up_to_at_most_nine_minutes():
    stages = _stages()
    names = [n for n, _ in stages]
    assert sum(b for _, b in stages) <= NINE_MINUTES, stages
    assert all(b > 0 for _, b in stages)
    assert names[0] == "setup" and names[-1] == "summary"
    # most important first: the GPU tests, then overhead, shares, packing and training
    order = ["gpu-tests", "overhead", "share", "share-mps", "packing", "packing-mps", "train"]
    assert [n for n in names if n in order] == order
    handled = {name for names in re.findall(r"^  ([a-z|-]+)\)$", SCRIPT.read_text(), flags=re.M)
               for name in names.split("|")}
    assert set(names) <= handled, "every stage of `all` is a stage of the script"


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has nvidia-smi")
def test_without_a_gpu_all_stops_at_once_and_says_so(tmp_path):
    start = time.monotonic()
    p = _session({"GPU_SESSION_RESULTS": str(tmp_path)}, "all", timeout=30)
    assert time.monotonic() - start < 10
    assert p.returncode == 2
    assert "no NVIDIA GPU here" in p.stderr and "nothing was run" in p.stderr
    assert "SIM=1" in p.stderr, "it says how to run the simulated parts"
    assert not (tmp_path / "raw" / "stages.jsonl").exists()


def test_a_stage_over_its_budget_is_cut_and_the_rest_goes_on(tmp_path):
    """On the simulated device: compute shares get 3 s (they need a minute): the stage is
    interrupted, recorded as a timeout, and the summary still runs and says so."""
    p = _session({"GPU_SESSION_RESULTS": str(tmp_path), "SIM": "1", "PYTHON": sys.executable,
                  "GPU_SESSION_STAGES": "setup:30 share:3 summary:20"}, "all", timeout=90)
    stages = [json.loads(line) for line in (tmp_path / "raw" / "stages.jsonl").read_text()
              .splitlines()]
    assert [(s["stage"], s["status"]) for s in stages] == [
        ("setup", "ok"), ("share", "timeout"), ("summary", "ok")], p.stdout[-3000:]
    assert p.returncode == 1, "a stage did not finish"
    summary = (tmp_path / "summary.txt").read_text()
    assert "SIMULATED DEVICE" in summary
    assert "no data (share: timeout)" in summary
    assert (tmp_path / "raw.tar.gz").is_file() and (tmp_path / "session.log").is_file()


# ---- the summary table ---------------------------------------------------------------------------

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="0" failures="1" skipped="2" tests="10" time="99.0">
<testcase classname="tests.test_gpu" name="test_cupy_is_limited" time="3.0"/>
<testcase classname="tests.test_gpu" name="test_item7_a_device_reset_uncharges_what_it_freed"
 time="2.0"><failure message="assert ...">AssertionError</failure></testcase>
</testsuite></testsuites>
"""

FIXTURES = {
    "stages.jsonl": "\n".join(json.dumps(s) for s in [
        {"stage": "setup", "status": "ok", "rc": 0, "seconds": 30, "budget": 45},
        {"stage": "gpu-tests", "status": "ok", "rc": 0, "seconds": 150, "budget": 200},
        {"stage": "overhead", "status": "ok", "rc": 0, "seconds": 20, "budget": 25},
        {"stage": "share", "status": "ok", "rc": 0, "seconds": 80, "budget": 90},
        {"stage": "packing", "status": "timeout", "rc": 124, "seconds": 70, "budget": 70},
        {"stage": "train", "status": "failed", "rc": 1, "seconds": 5, "budget": 80},
    ]) + "\n",
    "machine.txt": "started 2026-11-30T10:00:00Z\ndevice: NVIDIA H200, 143771 MiB, 580.159.03\n",
    "tests.xml": JUNIT,
    "checks.jsonl": "\n".join(json.dumps(c) for c in [
        {"metric": "item1_light_stall_p99_ms", "value": 0.4},
        {"metric": "item1_duty80_cap50_pct", "value": 55.0},
        {"metric": "item8_mapping_charged", "value": False},
        {"metric": "item4_other_thread_s", "value": 0.2},
        {"metric": "item9_free_over_real_gib", "value": 0.01},
    ]) + "\n" + '{"metric": "item2_torch_capt',  # a line cut short by an interrupted stage
    "overhead.json": {"device": "real GPU", "added_ns": {
        "flexai": {"alloc_free_ns": 150.0, "launch_ns": 80.0, "launch_sync_ns": 90.0},
        "flexai_memory_quota": {"alloc_free_ns": 1500.0, "launch_ns": 95.0,
                                "launch_sync_ns": 100.0}}},
    "compute_share.json": {
        "device": "real GPU, backend driver, 1.0s per run",
        "summary": {"flexai": {"mae_points": 1.2, "max_points": 4.0, "min_pair_sum": 0.97},
                    "mps": {"mae_points": 9.0, "max_points": 17.0, "min_pair_sum": 0.99}},
        "c": {"alone": {"steps": 400, "p50_ms": 0.2, "p99_ms": 0.3},
              "native (no priority)": {"steps": 400, "p50_ms": 1.6, "p99_ms": 2.9}},
        "d": {"spin500": {"share_100": 0.99, "no_limit": 1.0}}},
    "duty.json": {  # benchmarks/duty.py, run by the share stage
        "device": "real GPU, 1.0s per run, 1 run(s) per scenario (median)",
        "e": {"light10_cap30": {"stall_p99_ms": 0.3, "stall_max_ms": 2.0, "vs_alone": 0.99,
                                "charged_vs_kernels": 1.02},
              "light2_cap30": {"stall_p99_ms": 1.5, "vs_alone": 0.9,
                               "charged_vs_kernels": None}},
        "f": {"duty80_cap50": {"achieved_pct": 50.5, "charged_vs_kernels": 1.01},
              "bursty_cap30_beside_70": {"on_pct": 26.0, "neighbour_pct": 70.2,
                                         "overall_pct": 14.0, "charged_vs_kernels": 1.0}}},
}


def _rows(text: str) -> dict[str, list[str]]:
    """The summary's table rows by metric: [stage, measured, target, verdict]."""
    rows = {}
    for line in text.splitlines():
        cols = re.split(r"\s{2,}", line.strip())
        if len(cols) == 5 and cols[0] != "stage" and not cols[0].startswith("-"):
            rows[cols[1]] = [cols[0], cols[2], cols[3], cols[4]]
    return rows


def test_the_summary_judges_each_figure_against_its_target(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for name, content in FIXTURES.items():
        (raw / name).write_text(content if isinstance(content, str) else json.dumps(content))
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, str(SUMMARIZE), str(raw), "--out", str(out)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    text = p.stdout
    assert text.startswith("flexai GPU session - device: NVIDIA H200, 143771 MiB")
    assert "SIMULATED" not in text
    assert "gpu tests: 7 passed, 1 failed, 0 errors, 2 skipped - MISS" in text
    assert "  failed: test_item7_a_device_reset_uncharges_what_it_freed" in text
    rows = _rows(text)
    expect = {
        "item1_light_stall_p99_ms": ["gpu-tests", "0.4", "< 1", "ok"],
        "item1_duty80_cap50_pct": ["gpu-tests", "55", "48 .. 52", "MISS"],
        "item8_mapping_charged": ["gpu-tests", "no", "passes", "MISS"],
        "item4_other_thread_s": ["gpu-tests", "0.2", "-", "ref"],
        "item9_free_over_real_gib": ["gpu-tests", "0.01", "<= 0.25", "ok"],
        "item2_torch_captures_ok": ["gpu-tests", "-", "passes", "no data (gpu-tests: ok)"],
        "overhead.flexai.launch_added_ns": ["overhead", "80", "<= 200", "ok"],
        "overhead.flexai.alloc_added_ns": ["overhead", "150", "<= 1000", "ok"],
        "overhead.flexai_memory_quota.alloc_added_ns": ["overhead", "1500", "<= 1000", "MISS"],
        "share.flexai.max_points": ["share", "4", "<= 5", "ok"],
        "share.mps.max_points": ["share", "17", "<= 5", "MISS"],
        "share.flexai.min_pair_sum": ["share", "0.97", ">= 0.95", "ok"],
        "share.d.spin500.share100_vs_native": ["share", "0.99", ">= 0.98", "ok"],
        "share.c.native-no-priority.p99_ms": ["share", "2.9", "-", "ref"],
        "share.e.light10_cap30.stall_p99_ms": ["share", "0.3", "< 1", "ok"],
        "share.e.light10_cap30.stall_max_ms": ["share", "2", "-", "ref"],
        "share.e.light10_cap30.charged_vs_kernels": ["share", "1.02", "0.95 .. 1.05", "ok"],
        "share.e.light2_cap30.stall_p99_ms": ["share", "1.5", "< 1", "MISS"],
        "share.e.light2_cap30.vs_alone": ["share", "0.9", ">= 0.95", "MISS"],
        "share.f.duty80_cap50.pct": ["share", "50.5", "48 .. 52", "ok"],
        "share.f.bursty.on_pct": ["share", "26", "28 .. 32", "MISS"],
        "share.f.bursty.neighbour_pct": ["share", "70.2", "68 .. 72", "ok"],
        "share.f.bursty.overall_pct": ["share", "14", "-", "ref"],
        "packing.*.flexai.n8.speedup": ["packing", "-", ">= 3", "no data (packing: timeout)"],
        "packing-mps.*.flexai-mps.n8.speedup": ["packing-mps", "-", ">= 3",
                                                "no data (packing-mps: not run)"],
        "train.*.overhead_pct": ["train", "-", "<= 1", "no data (train: failed)"],
    }
    for metric, row in expect.items():
        assert rows.get(metric) == row, (metric, rows.get(metric), text)
    stages_in_order = [r[0] for r in rows.values()]
    assert stages_in_order == sorted(stages_in_order, key=_summarize_module().STAGE_ORDER.index)
    assert re.search(r"^packing\s+timeout\s+70\s+70$", text, flags=re.M)
    assert (out / "summary.txt").read_text().strip() == text.strip()
    data = json.loads((out / "summary.json").read_text())
    assert data["tests"]["failed"] == 1 and not data["simulated"]
    assert {r["metric"]: r["verdict"] for r in data["rows"]}["share.mps.max_points"] == "MISS"


def test_the_summary_of_a_session_that_left_nothing(tmp_path):
    p = subprocess.run([sys.executable, str(SUMMARIZE), str(tmp_path)], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "gpu tests: no results (tests.xml missing)" in p.stdout
    verdicts = [r[3] for r in _rows(p.stdout).values()]
    assert verdicts and all(v.endswith("not run)") for v in verdicts), verdicts


def _recorded_metrics() -> set[str]:
    tree = ast.parse((ROOT / "tests" / "test_gpu.py").read_text())
    return {kw.arg for node in ast.walk(tree) if isinstance(node, ast.Call)
            and getattr(node.func, "id", None) == "record" for kw in node.keywords if kw.arg}


def test_every_figure_the_gpu_tests_record_has_a_target_and_back():
    summarize = _summarize_module()
    recorded = _recorded_metrics()
    assert len(recorded) >= 15
    untargeted = sorted(m for m in recorded if summarize.target_of(m) is None)
    assert not untargeted, untargeted
    exact = {t.pattern for t in summarize.TARGETS
             if t.pattern.startswith("item") and "*" not in t.pattern}
    assert exact <= recorded, f"targets no test records: {sorted(exact - recorded)}"


def test_the_docs_list_the_same_stages_and_budgets():
    text = (ROOT / "docs" / "benchmarks.md").read_text()
    section = text[text.index("## On a lent GPU"):]
    documented = [(name, int(budget)) for name, budget in
                  re.findall(r"^\| ([a-z-]+) \| (\d+) s \|", section, flags=re.M)]
    assert documented == _stages()
