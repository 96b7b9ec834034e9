#!/usr/bin/env bash
# One short check for a machine with a CUDA GPU (about 5 minutes; each part bounded by `timeout`, 8.5 at most):
#   env               torch, CUDA, the devices, what precision "auto" picks there
#   train_throughput  training samples/s, the service's loop (build_run + fit) vs transformers' Trainer, same model
#                     (MiniLM-L6), same batch (32 x 64 tokens), bf16 on the GPU (bench/train_throughput.py --device cuda)
#   predict           POST /predict throughput, 1 and 32 clients (bench/predict.py; the API process serves on its
#                     CPU today: the figure says so, it is the baseline for serving on the GPU)
#   oom_fallback      a real CUDA out-of-memory error forced with a large batch (4096 x 512 tokens, BERT-base size):
#                     the loop must halve the micro-batch until it fits and finish its 2 steps (bench/gpu_check.py oom)
#   ddp_2_gpus        a job with resources.gpus=2 through `finetune up`; skipped with a line saying so on one GPU
# Every figure is one JSON line on stdout, also appended to $GPU_CHECK_OUT (default var/bench/gpu_check.jsonl);
# a part that fails or runs past its limit gives a line with "error" and the others still run. Progress: stderr.
#
#   bench/gpu_check.sh                  # needs the bench's packaged model and data (bench/README.md, Setup)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
OUT=${GPU_CHECK_OUT:-var/bench/gpu_check.jsonl}
mkdir -p "$(dirname "$OUT")"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1

# part NAME SECONDS COMMAND...: run it under a time limit; its JSON lines to stdout and $OUT, the rest to stderr.
part() {
    local name=$1 limit=$2 lines rc
    shift 2
    echo "== $name (at most ${limit} s): $*" >&2
    lines=$(mktemp)
    timeout --kill-after=15 "$limit" "$@" >"$lines"
    rc=$?
    grep -v '^{' "$lines" >&2
    grep '^{' "$lines" | tee -a "$OUT"
    if [ "$rc" -ne 0 ]; then
        local why="exit status $rc"
        [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && why="ran past its ${limit} s limit"
        printf '{"check": "%s", "error": "%s"}\n' "$name" "$why" | tee -a "$OUT"
    fi
    rm -f "$lines"
}

part env 60 "$PY" bench/gpu_check.py env
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo '{"check": "gpu_check", "skipped": "no CUDA device visible to torch: nothing to measure"}' | tee -a "$OUT"
    exit 0
fi
part train_throughput 120 "$PY" bench/train_throughput.py --device cuda --cases minilm --methods service,hand,trainer \
    --rounds 3 --warmup 5 --steps 30 --no-memory --no-check
part predict 120 "$PY" bench/predict.py --duration 6 --warmup 2 --slices 2 --clients 1,32
echo '{"check": "predict", "note": "the API serves /predict on its CPU: there is no setting yet that places served models on a GPU"}' | tee -a "$OUT"
part oom_fallback 90 "$PY" bench/gpu_check.py oom
part ddp_2_gpus 120 "$PY" bench/gpu_check.py ddp --timeout 90
