#!/usr/bin/env bash
# Decode benchmark, side by side with transformers' generate() on the same random weights, in
# one run: single-stream decode tokens/s and the ratio, then the engine's aggregate tokens/s at
# 1, 8 and 32 streams (32 streams should give at least 8x one).
#
#   bench/serve.sh [CONFIG]        (default: shared/bench/configs/ref-small.json)
#
# Needs `cargo build --release -p factory-bench` and a Python with torch and transformers
# (TORCH_PYTHON, default ~/.cache/factory-torch-venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED="$(cd .. && pwd)/shared"
CONFIG="${1:-$SHARED/bench/configs/ref-small.json}"
PYTHON="${TORCH_PYTHON:-$HOME/.cache/factory-torch-venv/bin/python}"
BENCH="${CARGO_TARGET_DIR:-target}/release/serve-bench"
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT

"$BENCH" --export "$CONFIG" --model "$DIR"
PEER=$("$PYTHON" "$SHARED/bench/peers/torch_generate.py" --model "$DIR" --prompt-tokens 32 --new-tokens 128 --threads 2)
OURS=$("$BENCH" --model "$DIR" --prompt-tokens 32 --new-tokens 128)
echo "$PEER"
echo "$OURS"
python3 -c "
import json, sys
peer, ours = json.loads(sys.argv[1]), json.loads(sys.argv[2])
one = ours['aggregate']['streams_1_tokens_per_s']
print(json.dumps({
    'decode_ratio_factory_over_transformers': round(ours['decode_tokens_per_s'] / peer['decode_tokens_per_s'], 2),
    'streams_32_over_1': round(ours['aggregate']['streams_32_tokens_per_s'] / one, 2),
}))
" "$PEER" "$OURS"
