#!/usr/bin/env bash
# Training benchmark, side by side with PyTorch + transformers on equal work, in one run: the
# same config, initial weights, batches (step by step), loss, optimizer, learning rate, clipping
# and thread count (train-bench writes the weights and batches; bench/torch_train.py trains on
# them). Prints both sides' loss curves, fails when they part by more than TOLERANCE (relative,
# at any step; default 0.02), then the tokens/s ratio and both peak RSS.
#
#   bench/train.sh [CONFIG] [BATCH] [SEQ]     (default: shared/bench/configs/ref-small.json 8 256)
#
# THREADS (default: every core), STEPS (20) and WARMUP (3) apply to both sides.
#
# Needs `cargo build --release -p factory-bench` and a Python with torch, transformers and
# safetensors (TORCH_PYTHON, default ~/.cache/factory-torch-venv/bin/python, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED="$(cd .. && pwd)/shared"
CONFIG="${1:-$SHARED/bench/configs/ref-small.json}"
BATCH="${2:-8}"
SEQ="${3:-256}"
PYTHON="${TORCH_PYTHON:-$HOME/.cache/factory-torch-venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
BENCH="${CARGO_TARGET_DIR:-target}/release/train-bench"
THREADS="${THREADS:-$(nproc)}"
STEPS="${STEPS:-20}"
WARMUP="${WARMUP:-3}"
TOLERANCE="${TOLERANCE:-0.02}"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

OURS=$("$BENCH" --config "$CONFIG" --batch "$BATCH" --seq "$SEQ" --steps "$STEPS" --warmup "$WARMUP" \
  --threads "$THREADS" --share "$WORK")
PEER=$("$PYTHON" bench/torch_train.py --config "$CONFIG" --weights "$WORK/init.safetensors" \
  --batches "$WORK/batches.u32" --batch "$BATCH" --seq "$SEQ" --steps "$STEPS" --warmup "$WARMUP" --threads "$THREADS")
echo "$PEER"
echo "$OURS"
python3 - "$PEER" "$OURS" "$TOLERANCE" <<'EOF'
import json, sys
peer, ours, tolerance = json.loads(sys.argv[1]), json.loads(sys.argv[2]), float(sys.argv[3])
assert peer["params"] == ours["params"], (peer["params"], ours["params"])
assert peer["threads"] == ours["threads"], (peer["threads"], ours["threads"])
print("step  pytorch   factory")
for step, (p, o) in enumerate(zip(peer["losses"], ours["losses"]), 1):
    print(f"{step:4}  {p:8.4f}  {o:8.4f}")
parted = max(abs(p - o) / abs(p) for p, o in zip(peer["losses"], ours["losses"]))
if len(peer["losses"]) != len(ours["losses"]) or parted > tolerance:
    sys.exit(f"unequal work: the loss curves part by {parted:.4f} (relative), more than {tolerance}")
print(json.dumps({
    "tokens_per_s_ratio_factory_over_pytorch": round(ours["tokens_per_s"] / peer["tokens_per_s"], 2),
    "factory_tokens_per_s": ours["tokens_per_s"], "pytorch_tokens_per_s": peer["tokens_per_s"],
    "peak_rss_mb": {"factory": ours["peak_rss_mb"], "pytorch": peer["peak_rss_mb"]},
    "loss_curves_part_by": round(parted, 5), "threads": ours["threads"], "batch": ours["batch"], "seq": ours["seq"],
}))
EOF
