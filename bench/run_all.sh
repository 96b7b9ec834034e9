#!/usr/bin/env bash
# Run every bench in turn (not part of CI). Each prints one JSON line per figure, then a summary table.
# Usage: bench/run_all.sh [OUT_DIR]        (default: var/bench/results/<timestamp>)
# Environment: PYTHON (default .venv/bin/python if present, else python), BENCH_QUICK=1 for a short smoke pass,
#              FINETUNE_BENCH_THREADS (default: all cores). A `make bench` target can simply call this script.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
OUT="${1:-var/bench/results/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if [ "${BENCH_QUICK:-0}" = "1" ]; then
  THROUGHPUT_ARGS="--rounds 1 --warmup 1 --steps 3 --no-memory"
  ACCURACY_ARGS="--hp {\"max_steps\":5}"
  METRICS_ARGS="--requests 20"
  STREAMS_ARGS="--levels 0,100 --healthz 20"
  PREDICT_ARGS="--duration 3 --warmup 1"
  SMALL_DATA_ARGS="--text-sizes 100 --image-per-class 10 --methods defaults"
  WARM_SWAP_ARGS="--rounds 2 --steady 5"
else
  THROUGHPUT_ARGS="" ACCURACY_ARGS="" METRICS_ARGS="" PREDICT_ARGS="" SMALL_DATA_ARGS="" STREAMS_ARGS=""
  WARM_SWAP_ARGS=""
fi

"$PY" -c "import accelerate, psutil" 2>/dev/null || echo "note: train_throughput needs 'pip install accelerate psutil'" >&2

failed=()
run() {  # run NAME ARGS...: stdout (JSON lines + table) to OUT/NAME.txt, stderr (progress) to OUT/NAME.log
  local name=$1; shift
  echo "== $name: $PY $*" >&2
  local start=$SECONDS
  if "$PY" "$@" > >(tee "$OUT/$name.txt") 2> "$OUT/$name.log"; then
    echo "== $name done in $((SECONDS - start)) s" >&2
  else
    echo "== $name FAILED (see $OUT/$name.log)" >&2
    failed+=("$name")
  fi
}

uptime > "$OUT/load.txt"
run metrics_api bench/metrics_api.py $METRICS_ARGS
# shellcheck disable=SC2086
run streams bench/streams.py $STREAMS_ARGS
# shellcheck disable=SC2086
run train_throughput bench/train_throughput.py $THROUGHPUT_ARGS
# shellcheck disable=SC2086
run accuracy bench/accuracy.py $ACCURACY_ARGS
# shellcheck disable=SC2086
run small_data bench/small_data.py $SMALL_DATA_ARGS
if [ -f bench/predict.py ]; then
  # shellcheck disable=SC2086
  run predict bench/predict.py $PREDICT_ARGS
fi
# shellcheck disable=SC2086
run warm_swap bench/warm_swap.py $WARM_SWAP_ARGS
uptime >> "$OUT/load.txt"

cat "$OUT"/*.txt | grep '^{' > "$OUT/all.jsonl" || true
echo "results in $OUT (all.jsonl: every figure)" >&2
[ ${#failed[@]} -eq 0 ] || { echo "failed: ${failed[*]}" >&2; exit 1; }
