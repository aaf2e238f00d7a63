#!/usr/bin/env bash
# The console at scale (issue 20, point 9): every page's server time with 100,000 audit records,
# 10,000 jobs and 1,000 deployments in one tenant (goal: each under 300 ms). No peer runs beside
# it: the target is the issue's own. Prints each page's p50 and p95 over 20 requests.
#
#   bench/console.sh
#
# Needs `cargo build --release -p factory` (FACTORY_BINARY names another build). bench/console_load.py
# starts the factory on a fresh data directory, trains a tiny model, restarts it as an API process
# (no workers: the 10,000 jobs stay queued), seeds it through the API (8 minutes on the debug
# build), then times the pages with a session.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 bench/console_load.py \
  --factory "${FACTORY_BINARY:-${CARGO_TARGET_DIR:-target}/release/factory}" \
  --corpus "$(cd .. && pwd)/shared/data/tinyshakespeare.txt"
