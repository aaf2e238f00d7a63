#!/usr/bin/env bash
# The engine on GGUF files beside llama.cpp (llama-cpp-python from PyPI), in one run, on the same
# files: a random-weight 125M-parameter Llama (12 blocks of 768, 32,000-token vocabulary) written
# as Q8_0 and as Q4_K. For each: prefill tokens/s (128-token prompt), decode tokens/s (one
# stream, 64 tokens) and the resident memory the load adds, and the ratios (goal: >= 1.0x
# speed, <= 1.1x memory). Both sides run THREADS threads (default 2) and cache keys and values
# in f16; llama.cpp reads the file into memory (no mmap) as the factory does.
#
#   bench/gguf.sh
#
# Needs `cargo build --release -p factory-bench` and llama-cpp-python.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH="${CARGO_TARGET_DIR:-target}/release/gguf-bench"
THREADS="${THREADS:-2}"
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
for TYPE in q8_0 q4_k; do
  "$BENCH" --make "$DIR/model-$TYPE.gguf" --type "$TYPE" > /dev/null
  OURS=$("$BENCH" --gguf "$DIR/model-$TYPE.gguf" --threads "$THREADS")
  PEER=$(python3 bench/llama_cpp_gguf.py --model "$DIR/model-$TYPE.gguf" --threads "$THREADS")
  echo "$OURS"
  echo "$PEER"
  python3 -c "
import json, sys
ours, peer = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(json.dumps({
    'type': sys.argv[3], 'threads': ours['threads'], 'file_mib': round(ours['file_bytes'] / 2**20, 1),
    'prefill_ratio_factory_over_llama_cpp': round(ours['prefill_tokens_per_s'] / peer['prefill_tokens_per_s'], 2),
    'decode_ratio_factory_over_llama_cpp': round(ours['decode_tokens_per_s'] / peer['decode_tokens_per_s'], 2),
    'resident_ratio_factory_over_llama_cpp': round(ours['resident_added_bytes'] / peer['resident_added_bytes'], 2),
    'resident_factory_over_file': round(ours['resident_added_bytes'] / ours['file_bytes'], 2),
}))
" "$OURS" "$PEER" "$TYPE"
done
