#!/usr/bin/env bash
# The GPU checks and benchmarks in a few device calls (see docs/benchmarks.md, "On a lent GPU").
#   bash benchmarks/gpu_session.sh setup      build and install flexai into /tmp/site
#   bash benchmarks/gpu_session.sh tests      the whole suite, `gpu` tests included
#   bash benchmarks/gpu_session.sh overhead   shim overhead on alloc/free and launches
#   bash benchmarks/gpu_session.sh share      compute shares: flexai, flexai-mps, MPS
#   bash benchmarks/gpu_session.sh packing    N small jobs per GPU
#   bash benchmarks/gpu_session.sh train      training-step overhead
# Each stage after `setup` expects setup's install (same machine) and writes under $OUT
# (default ./gpu-out). Wheels that the device image lacks (cffi, pycparser) come from .whl/.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
SITE=/tmp/site
mkdir -p "$OUT"
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
stage=${1:-setup}

case "$stage" in
setup)
  if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl
  fi
  python3 -m pip install -q --no-build-isolation --no-deps --target "$SITE" .
  nvidia-smi > "$OUT/nvidia-smi.txt"
  python3 -c "import torch, flexai; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'flexai', flexai.__version__, flexai.library_path())" | tee "$OUT/versions.txt"
  ;;
tests)
  (cd /tmp && python3 -m pytest -q -rs -p no:cacheprovider "$OLDPWD/tests") 2>&1 | tee "$OUT/tests.log"
  ;;
overhead)
  python3 benchmarks/overhead.py --repeat 5 --out "$OUT/overhead-h100.json"
  ;;
share)
  python3 benchmarks/compute_share.py --seconds 3 --out "$OUT/compute_share-h100.json"
  ;;
packing)
  python3 benchmarks/packing.py --seconds 6 --out "$OUT/packing-h100.json"
  ;;
train)
  python3 benchmarks/train_overhead.py --repeat 3 --seconds 10 --out "$OUT/train_overhead-h100.json"
  ;;
*)
  echo "usage: $0 setup|tests|overhead|share|packing|train" >&2
  exit 2
  ;;
esac
