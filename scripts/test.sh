#!/usr/bin/env bash
# Fresh machine -> the whole test suite: the workspace (core, every plugin, conformance of every
# recipe), then the out-of-tree plugin template installed alone into a separate environment with
# the core, proving that a new modality needs zero core changes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# `type -P` looks for a uv binary on PATH only (`command -v` would find this function itself).
uv() { if type -P uv >/dev/null; then command uv "$@"; else python3 -m uv "$@"; fi; }

echo "== lint and format (ruff) =="
.venv/bin/ruff check .
.venv/bin/ruff format --check .

.venv/bin/python -m pytest "$@"

echo "== out-of-tree template in a separate environment =="
template_env="$(mktemp -d)/env"
uv venv --quiet --python "$(.venv/bin/python -c 'import sys; print(sys.executable)')" "$template_env"
uv export --frozen --all-packages --no-hashes --no-emit-workspace --quiet > "$template_env.constraints.txt"
uv pip install --quiet --python "$template_env/bin/python" \
  --constraint "$template_env.constraints.txt" ./core ./examples/timeseries pytest
"$template_env/bin/omnimask" plugins --check | tee "$template_env.plugins.txt"
grep -q "^timeseries .* ok" "$template_env.plugins.txt"
"$template_env/bin/python" -m pytest -q -p no:cacheprovider examples/timeseries/tests \
  --rootdir examples/timeseries
