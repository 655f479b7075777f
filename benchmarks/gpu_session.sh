#!/usr/bin/env bash
# Every GPU check and benchmark in one prepared run (docs/benchmarks.md, "On a lent GPU").
#
#   bash benchmarks/gpu_session.sh all        every stage below in order, each under its own
#                                             time budget (STAGES), then the summary table
#   bash benchmarks/gpu_session.sh STAGE      one stage, no budget (setup first, same machine)
#
# Stages, most important first: setup (build and install flexai into /tmp/site, record the
# machine), gpu-tests (`pytest -m gpu`: real PyTorch, CuPy, JAX, the checks of issue 8), overhead
# (shim cost on alloc/free and launches), share and share-mps (compute shares of flexai, then of
# flexai-mps and MPS, against native, driver-API kernels; share adds duty.py's light-duty
# and bursty jobs), packing and packing-mps (8 small jobs
# per GPU: co-located and flexai, then MPS and flexai-mps), train (training-step overhead),
# summary (benchmarks/summarize.py: one table against the targets). Extra stages not in `all`:
# tests (the whole suite), share-torch (compute shares with PyTorch workloads).
#
# A stage that runs out of time is interrupted (SIGINT, then SIGKILL 10 s later); what earlier
# stages wrote stays. Results: $GPU_SESSION_RESULTS, else $OUT (the device tool's folder), else
# ./gpu-out. There go session.log, summary.txt, summary.json and raw.tar.gz (every stage's JSON,
# the JUnit XML, logs; updated after each stage). With $OUT set the raw files are kept in
# /tmp/flexai-gpu-raw and only the archive goes to $OUT (the device tool brings back 8 files);
# otherwise they are in $RESULTS/raw too.
#
# Without a GPU `all` stops at once (exit 2) and says so; SIM=1 runs the parts that the
# simulated device can (overhead, compute shares), labelled simulated, with $PYTHON (default
# python3) and the flexai installed there; the GPU-only stages exit 3 (skipped). Wheels the device image lacks (cffi, pycparser) are
# installed from .whl/ by setup.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SCRIPT=$ROOT/benchmarks/gpu_session.sh
PYTHON=${PYTHON:-python3}
case $PYTHON in /*) ;; */*) PYTHON=$ROOT/$PYTHON ;; esac  # stages run from /tmp too
SIM=${SIM:-0}
SITE=/tmp/site
RESULTS=${GPU_SESSION_RESULTS:-${OUT:-$ROOT/gpu-out}}
if [ -n "${OUT:-}" ] && [ -z "${GPU_SESSION_RAW:-}" ]; then
  RAW=/tmp/flexai-gpu-raw
else
  RAW=${GPU_SESSION_RAW:-$RESULTS/raw}
fi
export GPU_SESSION_RESULTS=$RESULTS GPU_SESSION_RAW=$RAW PYTHONUNBUFFERED=1
if [ "$SIM" != 1 ]; then
  export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
fi
mkdir -p "$RESULTS" "$RAW"

# name:budget in seconds, in the order `all` runs them; the budgets add up to at most 540
# (9 minutes; tests/test_gpu_session.py checks it).
STAGES=(
  "setup:45"
  "gpu-tests:190"
  "overhead:25"
  "share:50"
  "share-mps:60"
  "packing:45"
  "packing-mps:45"
  "train:70"
  "summary:10"
)

# GPU_SESSION_STAGES="overhead:30 share:120 summary:10" runs those instead (a re-run of a part)
if [ -n "${GPU_SESSION_STAGES:-}" ]; then
  read -r -a STAGES <<< "$GPU_SESSION_STAGES"
fi

have_gpu() {
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1
}

sim_args() { [ "$SIM" = 1 ] && echo --sim; }

stage() {
  case "$1" in
  setup)
    {
      date -u +"started %Y-%m-%dT%H:%M:%SZ"
      if [ "$SIM" = 1 ]; then
        echo "device: SIMULATED (flexai's fake driver, no GPU): figures check the mechanism only"
      else
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
          | sed 's/^/device: /'
      fi
    } | tee "$RAW/machine.txt"
    if [ "$SIM" != 1 ]; then
      if ls .whl/*.whl >/dev/null 2>&1; then
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" \
          .whl/*.whl || return
      fi
      "$PYTHON" -m pip install -q --no-build-isolation --no-deps --target "$SITE" . || return
      nvidia-smi > "$RAW/nvidia-smi.txt"
    fi
    (cd /tmp && "$PYTHON" - <<'EOF') | tee -a "$RAW/machine.txt"
import importlib
import flexai
print("flexai", flexai.__version__, flexai.library_path())
for name in ("torch", "cupy", "jax"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as exc:  # not installed, or broken: the checks skip it
        print(name, "not available:", type(exc).__name__)
EOF
    ;;
  gpu-tests)
    if [ "$SIM" = 1 ]; then echo "gpu-tests: skipped (simulated device)"; return 3; fi
    local timeout_opt=()
    "$PYTHON" -c "import pytest_timeout" 2>/dev/null && timeout_opt=(--timeout 150)
    # the checks record what they measure in $GPU_SESSION_CHECKS/checks.jsonl (tests/test_gpu.py)
    (cd /tmp && GPU_SESSION_CHECKS=$RAW "$PYTHON" -m pytest -q -rs -p no:cacheprovider -m gpu \
      "${timeout_opt[@]}" --junitxml="$RAW/tests.xml" "$ROOT/tests") 2>&1 \
      | tee "$RAW/gpu-tests.log"
    ;;
  tests)
    (cd /tmp && "$PYTHON" -m pytest -q -rs -p no:cacheprovider --junitxml="$RAW/tests-all.xml" \
      "$ROOT/tests") 2>&1 | tee "$RAW/tests.log"
    ;;
  overhead)
    "$PYTHON" benchmarks/overhead.py $(sim_args) --repeat 3 --out "$RAW/overhead.json"
    ;;
  share|share-mps)
    # driver-API kernels (500 us and 20 us): no framework start-up per run, so the comparison
    # fits its budget (`share-torch` runs the PyTorch workloads). The MPS mechanisms run on
    # their own: where MPS fails, flexai's figures are kept.
    local mechs=flexai out=compute_share.json rc=0
    [ "$1" = share-mps ] && mechs=flexai-mps,mps out=compute_share-mps.json
    "$PYTHON" benchmarks/compute_share.py $(sim_args) --backend driver --quick --seconds 1 \
      --mechanisms "$mechs" --out "$RAW/$out" || rc=$?
    # (e) light-duty and (f) bursty jobs under caps (issue 8 item 1: stalls, charged time,
    # 50% cap at 80% duty); duty.json is rewritten after each scenario, so a cut keeps some
    if [ "$1" = share ]; then
      "$PYTHON" benchmarks/duty.py $(sim_args) --seconds 1 --out "$RAW/duty.json" || rc=$?
    fi
    return $rc
    ;;
  share-torch)
    "$PYTHON" benchmarks/compute_share.py --backend torch --quick --seconds 2 \
      --mechanisms flexai,flexai-mps,mps --out "$RAW/compute_share-torch.json"
    ;;
  packing|packing-mps)
    if [ "$SIM" = 1 ]; then echo "$1: skipped (needs a GPU)"; return 3; fi
    local modes=colocated,flexai out=packing.json
    [ "$1" = packing-mps ] && modes=mps,flexai-mps out=packing-mps.json
    "$PYTHON" benchmarks/packing.py --n 8 --jobs resnet18:1 --seconds 3 --modes "$modes" \
      --out "$RAW/$out"
    ;;
  train)
    if [ "$SIM" = 1 ]; then echo "train: skipped (needs a GPU)"; return 3; fi
    "$PYTHON" benchmarks/train_overhead.py --repeat 1 --seconds 2 \
      --out "$RAW/train_overhead.json"
    ;;
  summary)
    "$PYTHON" benchmarks/summarize.py "$RAW" --out "$RESULTS"
    ;;
  *)
    echo "usage: $0 all|setup|gpu-tests|tests|overhead|share|share-mps|share-torch|packing|" \
      "packing-mps|train|summary" >&2
    return 2
    ;;
  esac
}

pack() {  # the raw results as one archive beside the summary (the device tool brings 8 files)
  tar czf "$RESULTS/raw.tar.gz.part" -C "$RAW" . 2>/dev/null \
    && mv "$RESULTS/raw.tar.gz.part" "$RESULTS/raw.tar.gz"
}

run_budgeted() {  # NAME BUDGET: one stage in a child, interrupted when its budget is spent
  local name=$1 budget=$2 start=$SECONDS rc status
  echo "=== $name (budget ${budget}s) ==="
  timeout --signal=INT --kill-after=10 "$budget" bash "$SCRIPT" "$name"
  rc=$?
  case $rc in
    0) status=ok ;;
    3) status=skipped ;;    # a GPU-only stage on the simulated device
    124|137) status=timeout ;;
    *) status=failed ;;
  esac
  printf '{"stage": "%s", "status": "%s", "rc": %d, "seconds": %d, "budget": %d}\n' \
    "$name" "$status" "$rc" "$((SECONDS - start))" "$budget" >> "$RAW/stages.jsonl"
  echo "=== $name: $status after $((SECONDS - start))s ==="
  pack
  [ "$status" = ok ] || [ "$status" = skipped ]
}

all() {
  # results of an earlier run must not pass for this one's
  rm -f "$RAW"/{stages.jsonl,checks.jsonl,tests.xml,tests-all.xml,machine.txt,nvidia-smi.txt} \
    "$RAW"/*.json "$RAW"/*.png "$RAW"/*.log "$RESULTS"/summary.{txt,json} "$RESULTS/raw.tar.gz"
  [ "$SIM" = 1 ] && echo "SIMULATED DEVICE: no GPU; GPU-only stages are skipped"
  local entry name budget failed=0
  for entry in "${STAGES[@]}"; do
    name=${entry%%:*}
    budget=${entry##*:}
    if [ "$name" = setup ] || [ "$name" = summary ]; then
      run_budgeted "$name" "$budget" || { failed=1; [ "$name" = setup ] && break; }
    else
      run_budgeted "$name" "$budget" || failed=1
    fi
  done
  if [ "$name" != summary ]; then  # setup failed: still say what happened
    run_budgeted summary 10 || true
  fi
  return $failed
}

if [ "${1:-}" = all ]; then
  if [ "$SIM" != 1 ] && ! have_gpu; then
    echo "gpu_session.sh: no NVIDIA GPU here (nvidia-smi is missing or sees no device):" \
      "nothing was run. Run it on a machine with a GPU (docs/benchmarks.md, 'On a lent GPU')," \
      "or SIM=1 PYTHON=.venv/bin/python bash benchmarks/gpu_session.sh all for the" \
      "simulated-device parts." >&2
    exit 2
  fi
  all 2>&1 | tee "$RESULTS/session.log"
  exit "${PIPESTATUS[0]}"
fi
stage "${1:-}"
