#!/usr/bin/env bash
# Runs every check CI runs: installs what the tests need, then fmt, clippy and all tests.
# Idempotent: a second run reuses installed packages and the build cache.
set -euo pipefail
cd "$(dirname "$0")/.."

# One build cache outside the clone, so CI's fresh clones and local runs share compiled deps.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${HOME:-/root}/.cache/aigc-operator/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

scripts/install-test-deps.sh

echo "== cargo fmt"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked --no-fail-fast
