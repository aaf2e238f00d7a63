#!/usr/bin/env bash
# Decode benchmark, side by side with transformers' generate() on the same random weights, in
# one run: single-stream decode tokens/s and the ratio, then the engine's aggregate tokens/s at
# 1, 8 and 32 streams (32 streams should give at least 8x one), with the ceiling the machine's
# f32 multiply-add peak puts on that ratio (see serve-bench).
#
#   bench/serve.sh [CONFIG]        (default: shared/bench/configs/ref-small.json)
#
# Needs `cargo build --release -p factory-bench` and a Python with torch and transformers
# (TORCH_PYTHON, default ~/.cache/factory-torch-venv/bin/python); for llama.cpp, also
# llama-cpp-python, the gguf package and sentencepiece (its converter imports it) there, and
# LLAMA_CPP_DIR (see below).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED="$(cd .. && pwd)/shared"
CONFIG="${1:-$SHARED/bench/configs/ref-small.json}"
PYTHON="${TORCH_PYTHON:-$HOME/.cache/factory-torch-venv/bin/python}"
BENCH="${CARGO_TARGET_DIR:-target}/release/serve-bench"
# Every engine gets the same threads (default: every core); the count is printed with the ratios.
THREADS="${THREADS:-$(nproc)}"
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT

"$BENCH" --export "$CONFIG" --model "$DIR"
PEER=$("$PYTHON" "$SHARED/bench/peers/torch_generate.py" --model "$DIR" --prompt-tokens 32 --new-tokens 128 --threads "$THREADS")
# llama.cpp (llama-cpp-python in the same Python) when LLAMA_CPP_DIR names the llama.cpp source
# (vendor/llama.cpp of llama-cpp-python's sdist), whose converter writes the GGUF f32.
LLAMA=null
if [ -n "${LLAMA_CPP_DIR:-}" ]; then
  "$PYTHON" bench/gguf_convert.py "$LLAMA_CPP_DIR" "$DIR" "$DIR/model-f32.gguf" > "$DIR/convert.log" 2>&1
  LLAMA=$("$PYTHON" bench/llama_cpp_generate.py --model "$DIR/model-f32.gguf" --prompt-tokens 32 --new-tokens 128 --threads "$THREADS")
fi
OURS=$("$BENCH" --model "$DIR" --prompt-tokens 32 --new-tokens 128 --threads "$THREADS")
# The same streams with keys and values cached in half precision (as llama.cpp caches them).
HALF=$("$BENCH" --model "$DIR" --prompt-tokens 32 --new-tokens 128 --kv-cache f16 --threads "$THREADS")
echo "$PEER"
echo "$LLAMA"
echo "$OURS"
echo "$HALF"
python3 -c "
import json, sys
peer, llama, ours, half = (json.loads(x) for x in sys.argv[1:5])
one = ours['aggregate']['streams_1_tokens_per_s']
print(json.dumps({
    'threads': $THREADS,
    'decode_ratio_factory_over_transformers': round(ours['decode_tokens_per_s'] / peer['decode_tokens_per_s'], 2),
    'decode_ratio_factory_over_llama_cpp': round(ours['decode_tokens_per_s'] / llama['decode_tokens_per_s'], 2) if llama else None,
    # llama.cpp caches keys and values in f16 by default; ours beside it on the same terms.
    'decode_ratio_factory_f16_cache_over_llama_cpp': round(half['decode_tokens_per_s'] / llama['decode_tokens_per_s'], 2) if llama else None,
    'streams_32_over_1': round(ours['aggregate']['streams_32_tokens_per_s'] / one, 2),
    'streams_32_over_1_f16_cache': round(half['aggregate']['streams_32_tokens_per_s'] / half['aggregate']['streams_1_tokens_per_s'], 2),
    # What the machine's f32 multiply-add peak allows at all over one stream's throughput.
    'streams_over_1_ceiling_at_fma_peak': ours.get('ceiling_streams_over_1'),
}))
" "$PEER" "$LLAMA" "$OURS" "$HALF"
