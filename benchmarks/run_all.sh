#!/usr/bin/env bash
# Run every benchmark, then print the results table.
#   benchmarks/run_all.sh [--quick] [--device cpu|cuda] [other options passed to every script]
# --quick (CI): tiny sizes, about 3 minutes in all, results in benchmarks/results/quick/.
# Full mode writes benchmarks/results/<benchmark>-<device>.json (tens of minutes on 2 CPU cores).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-}"
if [[ -z "$py" ]]; then
  if [[ -x "$here/../.venv/bin/python" ]]; then py="$here/../.venv/bin/python"; else py="python"; fi
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false TRANSFORMERS_VERBOSITY=error

render_args=()
for a in "$@"; do [[ "$a" == "--quick" ]] && render_args+=(--quick); done

status=0
for bench in extract_throughput storage store_ingest object_store early_exit memory_scaling probe_speed accuracy; do
  echo "== $bench $*" >&2
  start=$SECONDS
  if ! "$py" "$here/$bench.py" "$@"; then
    echo "!! $bench failed" >&2
    status=1
  fi
  echo "== $bench took $((SECONDS - start)) s" >&2
done
"$py" "$here/render_table.py" "${render_args[@]}"
exit $status
