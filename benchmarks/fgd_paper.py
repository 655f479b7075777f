"""The FGD paper's published packing results, to set beside ours (benchmarks/scheduler_trace.py
--paper).

Weng et al. (ATC'23) publish the expected results of their simulator runs as
`experiments/analysis/expected_results/analysis_allo_discrete.csv` in their simulator's
repository (hkust-adsl/kubernetes-scheduler-simulator): one row per pod list ("workload"),
policy ("sc_policy") and seed, with the cluster's GPUs ("total_gpus") and, in columns named
0, 1, ..., 130, the allocated share of GPU capacity (percent) when the arrived workload reaches
that percent of capacity. The file is the user's to fetch, like the trace; nothing of it is in
this repository.

What it must never do: print, exit, or guess: a file that is not in that format raises
ValueError naming the file, the line and what was expected.
"""
from __future__ import annotations

import csv
from pathlib import Path

#: The paper's policy names -> ours, where we have the policy.
POLICY_NAMES = {"01-Random": "random-fit", "02-DotProd": "dot-product",
                "03-GpuClustering": "gpu-clustering", "04-GpuPacking": "gpu-packing",
                "05-BestFit": "best-fit", "06-FGD": "fgd"}
EXAMPLE = "openb_pod_list_default,06-FGD,1.3,42,6212,0.25,0.99,...,95.36"


def read_results(path: str | Path, workload: str, arrived_pct: int = 130) -> dict[str, dict]:
    """The published figures for pod list `workload` (e.g. "openb_pod_list_default"), averaged
    over the seeds: ``{policy: {"allocated_at_end": share 0..1, "unallocated_gpus_at_end":
    GPUs, "seeds": count}}`` at `arrived_pct` percent of capacity arrived (130: the end of a
    1.3x replay). Policies keep the paper's names where we have no equal (``POLICY_NAMES``).
    Empty when the file has no row for `workload`."""
    path = Path(path)
    try:
        fh = path.open(newline="")
    except OSError as e:
        raise ValueError(f"{path}: cannot read the paper's results ({e.strerror}); it is "
                         "analysis_allo_discrete.csv of the FGD paper's simulator") from None
    sums: dict[str, list[float]] = {}
    with fh:
        reader = csv.DictReader(fh)
        col = str(arrived_pct)
        need = {"workload", "sc_policy", "seed", "total_gpus", col}
        missing = need - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))} (a row: "
                             f"{EXAMPLE})")
        for line, row in enumerate(reader, start=2):
            if row["workload"] != workload:
                continue
            try:
                share = float(row[col]) / 100.0
                gpus = float(row["total_gpus"])
            except (TypeError, ValueError):
                raise ValueError(f"{path}: line {line}: columns total_gpus and {col} must be "
                                 f"numbers (a row: {EXAMPLE})") from None
            if not (0.0 <= share <= 1.0 and gpus > 0):
                raise ValueError(f"{path}: line {line}: column {col} must be a percent 0..100 "
                                 f"and total_gpus > 0 (a row: {EXAMPLE})")
            s = sums.setdefault(POLICY_NAMES.get(row["sc_policy"], row["sc_policy"]),
                                [0.0, 0.0, 0])
            s[0] += share
            s[1] += gpus * (1.0 - share)
            s[2] += 1
    return {name: {"allocated_at_end": a / n, "unallocated_gpus_at_end": u / n, "seeds": n}
            for name, (a, u, n) in sums.items()}
