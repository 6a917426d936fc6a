#!/usr/bin/env bash
# Training throughput, candle (aigc-worker) vs PyTorch CPU, same models, batch and threads.
# Not part of CI. Needs torch in the Python given by $PYTHON (default python3):
#   python3 -m venv target/torch-venv && target/torch-venv/bin/pip install torch
#   PYTHON=target/torch-venv/bin/python scripts/bench-train.sh [STEPS] [THREADS]
set -euo pipefail
cd "$(dirname "$0")/.."
steps="${1:-200}"
threads="${2:-$(nproc)}"
python="${PYTHON:-python3}"
"$python" -c 'import torch' 2>/dev/null || { echo "torch is not importable by $python; see the header of $0" >&2; exit 1; }
cargo build --release -p aigc-worker --example train_bench
bin="${CARGO_TARGET_DIR:-target}/release/examples/train_bench"
echo "== candle ($threads threads)"
RAYON_NUM_THREADS="$threads" "$bin" "$steps"
echo "== pytorch ($threads threads)"
OMP_NUM_THREADS="$threads" "$python" inference-worker/benches/train_torch.py "$steps" "$threads"
