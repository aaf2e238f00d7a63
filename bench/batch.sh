#!/usr/bin/env bash
# The Batch API against the same requests sent one by one, in one run on one factory:
#  - 10,000 chat requests (16 tokens each) as one batch (a JSONL file through /v1/files and
#    /v1/batches) vs the same requests over HTTP at the same concurrency (2 x batch.concurrency
#    outstanding): wall time and the ratio (goal: the batch no slower, >= 1.0x);
#  - interactive latency while a batch keeps the engine full vs idle (goal: near 1x: batch work
#    never starves interactive requests).
#
#   bench/batch.sh [REQUESTS]        (default 10000)
#
# Needs `cargo build --release -p factory` and a Python with the `openai` package
# (OPENAI_PYTHON, default python3). bench/batch_load.py starts the factory, trains the small
# model it serves, and drives both sides.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${OPENAI_PYTHON:-python3}" bench/batch_load.py \
  --factory "${CARGO_TARGET_DIR:-target}/release/factory" \
  --corpus "$(cd .. && pwd)/shared/data/tinyshakespeare.txt" \
  --requests "${1:-10000}"
