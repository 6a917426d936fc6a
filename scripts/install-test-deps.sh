#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain. Safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pip=()
while read -r req; do
    [[ -z "$req" || "$req" == \#* ]] && continue
    need_pip+=("$req")
done < scripts/requirements-test.txt
if ((${#need_pip[@]})); then
    echo "== pip install (${#need_pip[@]} packages)"
    python3 -m pip install --quiet --disable-pip-version-check "${need_pip[@]}"
fi

# helm-sdkpy declares a newer Python than CI's; its bundled Helm library works regardless.
python3 -c 'import helm_sdkpy' 2>/dev/null \
    || python3 -m pip install --quiet --disable-pip-version-check --ignore-requires-python helm-sdkpy

command -v kubectl >/dev/null || { echo "kubectl is required on PATH" >&2; exit 1; }
for component in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$component" || rustup component add "$component"
done
