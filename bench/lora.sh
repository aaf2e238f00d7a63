#!/usr/bin/env bash
# LoRA fine-tuning on a quantized base, side by side with PyTorch + peft on the f32 model, in one
# run: a random-weight 125M-parameter Llama (12 blocks of 768, 32,000-token vocabulary) written
# as a GGUF file of TYPE (default q8_0; the factory trains on it frozen in its blocks) and as an
# f32 Hugging Face checkpoint of the same weights (peft trains on that). Same adapters (rank
# RANK on every projection), optimizer, tokens, batch, sequence length and threads. Prints both
# JSON lines (with their loss curves) and the ratios of tokens/s and resident peak; fails when
# the first losses differ by more than 2 % (the two bases must be the same model) or the last
# ones by more than 10 % (both must learn alike), since speed only counts on equal work.
#
#   bench/lora.sh
#
# Needs `cargo build --release -p factory-bench` and Python with torch, transformers and peft.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH="${CARGO_TARGET_DIR:-target}/release/gguf-bench"
THREADS="${THREADS:-2}"
TYPE="${TYPE:-q8_0}"
RANK="${RANK:-8}"
ARGS=(--rank "$RANK" --batch "${BATCH:-4}" --seq "${SEQ:-128}" --steps "${STEPS:-10}" --threads "$THREADS")
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
"$BENCH" --make "$DIR/model.gguf" --type "$TYPE" --hf "$DIR/hf" > /dev/null
OURS=$("$BENCH" --lora "$DIR/model.gguf" "${ARGS[@]}")
PEER=$(python3 bench/peft_lora.py --hf "$DIR/hf" "${ARGS[@]}")
echo "$OURS"
echo "$PEER"
python3 -c "
import json, sys
ours, peer = json.loads(sys.argv[1]), json.loads(sys.argv[2])
assert ours['trainable_params'] == peer['trainable_params'], (ours['trainable_params'], peer['trainable_params'])
first = abs(ours['losses'][0] - peer['losses'][0]) / peer['losses'][0]
last = abs(ours['losses'][-1] - peer['losses'][-1]) / peer['losses'][-1]
print(json.dumps({
    'type': sys.argv[3], 'threads': ours['threads'], 'rank': ours['rank'],
    'tokens_per_s_ratio_factory_over_peft': round(ours['tokens_per_s'] / peer['tokens_per_s'], 2),
    'peak_resident_ratio_factory_over_peft': round(ours['peak_resident_bytes'] / peer['peak_resident_bytes'], 2),
    'peak_resident_mib': {'factory': ours['peak_resident_bytes'] >> 20, 'peft': peer['peak_resident_bytes'] >> 20},
    'first_loss_gap': round(first, 4), 'last_loss_gap': round(last, 4),
}))
assert first <= 0.02, 'the two sides start from different models'
assert last <= 0.10, 'the two sides did not learn alike: speed does not count'
" "$OURS" "$PEER" "$TYPE"
