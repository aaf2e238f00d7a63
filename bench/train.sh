#!/usr/bin/env bash
# Training benchmark, side by side with PyTorch + transformers on the same config, batch,
# sequence length, optimizer and thread count, in one run. Prints both JSON lines and the ratio.
#
#   bench/train.sh [CONFIG] [BATCH] [SEQ]     (default: shared/bench/configs/ref-small.json 8 256)
#
# Both sides get THREADS threads (default: every core) and train on one fixed batch; the thread
# counts are printed with the ratio.
#
# Needs `cargo build --release -p factory-bench` and a Python with torch and transformers
# (TORCH_PYTHON, default ~/.cache/factory-torch-venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED="$(cd .. && pwd)/shared"
CONFIG="${1:-$SHARED/bench/configs/ref-small.json}"
BATCH="${2:-8}"
SEQ="${3:-256}"
PYTHON="${TORCH_PYTHON:-$HOME/.cache/factory-torch-venv/bin/python}"
BENCH="${CARGO_TARGET_DIR:-target}/release/train-bench"
THREADS="${THREADS:-$(nproc)}"

PEER=$("$PYTHON" "$SHARED/bench/peers/torch_train.py" --config "$CONFIG" --batch "$BATCH" --seq "$SEQ" --steps 20 --threads "$THREADS")
OURS=$("$BENCH" --config "$CONFIG" --batch "$BATCH" --seq "$SEQ" --steps 20 --threads "$THREADS")
echo "$PEER"
echo "$OURS"
python3 -c "
import json, sys
peer, ours = json.loads(sys.argv[1]), json.loads(sys.argv[2])
assert peer['params'] == ours['params'], (peer['params'], ours['params'])
assert peer['threads'] == ours['threads'], (peer['threads'], ours['threads'])
print(json.dumps({'tokens_per_s_ratio_factory_over_pytorch': round(ours['tokens_per_s'] / peer['tokens_per_s'], 2),
                  'threads': ours['threads'], 'batch': ours['batch'], 'seq': ours['seq']}))
" "$PEER" "$OURS"
