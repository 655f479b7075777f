"""Overhead of flexai on real training steps: ResNet-50 and a small GPT, native against flexai
with no limits, with a memory limit only, and with compute at 100%.

    python benchmarks/train_overhead.py [--repeat 3] [--seconds 15] [--out results/x.json]

Variants run one at a time, interleaved over the repeats; the figure is the median step time's
change against native (target: at most 1% for every variant). Needs a GPU.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from _jobs import clean_env, flexai_env, gpu_memory_bytes, run_together  # noqa: E402

JOBS = {"resnet50-train": 64, "gpt-train": 16}


def variants(tmp: Path, total: int) -> dict[str, dict[str, str]]:
    base = clean_env()
    return {
        "native": base,
        "flexai": flexai_env(base, tmp, "ovh-plain"),
        "flexai-memory": flexai_env(base, tmp, "ovh-mem", gpu_memory=total * 9 // 10),
        "flexai-compute100": flexai_env(base, tmp, "ovh-c100", gpu_compute=100),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "train_overhead.json")
    args = ap.parse_args(argv)
    res: dict = {}
    with tempfile.TemporaryDirectory() as t:
        envs = variants(Path(t), gpu_memory_bytes())
        for job, batch in JOBS.items():
            cmd = [sys.executable, str(HERE / "pack_worker.py"), job, str(batch), str(args.seconds)]
            steps: dict[str, list[float]] = {name: [] for name in envs}
            for _ in range(args.repeat):
                for name, env in envs.items():
                    r = run_together([(cmd, env)], timeout=args.seconds * 4 + 600)[0]
                    steps[name].append(r["step_ms_median"])
            med = {name: statistics.median(v) for name, v in steps.items()}
            res[job] = {"batch": batch, "step_ms": med,
                        "overhead_pct": {n: round(100 * (m / med["native"] - 1), 2)
                                         for n, m in med.items() if n != "native"}}
            print(job, json.dumps(res[job]["overhead_pct"]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
