#!/usr/bin/env bash
# Runs every check CI runs: installs what the tests need, then fmt, clippy and all tests.
# Idempotent: a second run reuses installed packages and the build cache.
set -euo pipefail
cd "$(dirname "$0")/.."

# One build cache outside the clone, so CI's fresh clones and local runs share compiled deps.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${HOME:-/root}/.cache/aigc-operator/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

scripts/install-test-deps.sh

# Tests find their files through the path compiled into them (`CARGO_MANIFEST_DIR`), and
# cargo reuses the workspace's artifacts across checkouts when they are newer than the
# sources. After a run from another checkout (CI's clean clone shares this cache), rebuild
# the workspace's own crates so that their tests read this checkout, not that one.
checkout_stamp="$CARGO_TARGET_DIR/.checkout"
if [ -f "$checkout_stamp" ] && [ "$(cat "$checkout_stamp")" != "$PWD" ]; then
    echo "== the cache was last used from $(cat "$checkout_stamp"): rebuilding the workspace crates"
    members=$(cargo metadata --no-deps --format-version 1 --locked \
        | python3 -c 'import json, sys; print(" ".join("-p " + p["name"] for p in json.load(sys.stdin)["packages"]))')
    # shellcheck disable=SC2086
    cargo clean $members
fi
mkdir -p "$CARGO_TARGET_DIR"
echo "$PWD" > "$checkout_stamp"

echo "== cargo fmt"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked --no-fail-fast
