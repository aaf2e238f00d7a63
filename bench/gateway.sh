#!/usr/bin/env bash
# Gateway overhead, side by side in one run: a fast mock upstream called directly, through the
# factory (a deployment whose variant is that upstream), and through LiteLLM's proxy
# (shared/bench/peers/litellm_gateway.sh), with the same fixed-rate load, each gateway's
# requests interleaved with direct ones; prints p50/p99 latency, each gateway's overhead over
# direct, and the factory's RSS idle and under load.
#
#   bench/gateway.sh [RATE] [SECONDS]        (default 50 requests/s for 10 s)
#
# Needs `cargo build --release -p factory -p factory-bench`, and a Python with httpx and
# litellm[proxy] (TORCH_PYTHON's venv, default ~/.cache/factory-torch-venv).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED="$(cd .. && pwd)/shared"
RATE="${1:-50}"
SECONDS_="${2:-10}"
VENV="$(dirname "$(dirname "${TORCH_PYTHON:-$HOME/.cache/factory-torch-venv/bin/python}")")"
PY="$VENV/bin/python"
BIN="${CARGO_TARGET_DIR:-target}/release"
DATA=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null; rm -rf "$DATA"' EXIT
for v in $(env | grep -o '^FACTORY_[A-Z_]*'); do unset "$v"; done

"$BIN/mock-upstream" --port 9100 & PIDS+=($!)
FACTORY_SERVING__UPSTREAMS='["http://127.0.0.1:9100"]' "$BIN/factory" up --data-dir "$DATA" --listen 127.0.0.1:18090 > "$DATA/out" 2> "$DATA/log" & PIDS+=($!)
FACTORY_PID=$!
# WITH_LITELLM=0 leaves the peer out (a quick look at our own overhead; no ratio is claimed then).
if [ "${WITH_LITELLM:-1}" = 1 ]; then
  PATH="$VENV/bin:$PATH" "$SHARED/bench/peers/litellm_gateway.sh" http://127.0.0.1:9100/v1 4000 > "$DATA/litellm.log" 2>&1 & PIDS+=($!)
fi
for _ in $(seq 1 120); do
  curl -sf http://127.0.0.1:18090/healthz >/dev/null \
    && { [ "${WITH_LITELLM:-1}" != 1 ] || curl -sf http://127.0.0.1:4000/health/liveliness >/dev/null; } && break
  sleep 1
done
export FACTORY_URL=http://127.0.0.1:18090 FACTORY_API_KEY="$(cat "$DATA/admin.key")"
"$BIN/factory" tenant create bench --jurisdiction local > /dev/null
APP=$("$BIN/factory" key create --tenant bench --role app | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["secret"])')
ENG=$("$BIN/factory" key create --tenant bench --role engineer | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["secret"])')
curl -sf -X POST http://127.0.0.1:18090/api/v1/deployments -H "Authorization: Bearer $ENG" -H 'Content-Type: application/json' \
  -d '{"name": "gw", "variants": [{"upstream": {"url": "http://127.0.0.1:9100/v1", "model": "mock", "jurisdiction": "local"}}]}' > /dev/null
rss() { awk '/VmRSS/ {print $2 / 1024}' "/proc/$FACTORY_PID/status"; }
IDLE=$(rss)
# Each gateway beside the upstream called directly, their requests interleaved in one window
# (each at RATE), so the difference is the gateway's and not the minute's.
DIRECT_URL=http://127.0.0.1:9100/v1/chat/completions
PAIR=$("$PY" bench/gateway_load.py $DIRECT_URL none mock http://127.0.0.1:18090/v1/chat/completions "$APP" gw \
  --rate "$RATE" --seconds "$SECONDS_")
LOADED=$(rss)
PEER_PAIR='null
null'
if [ "${WITH_LITELLM:-1}" = 1 ]; then
  PEER_PAIR=$("$PY" bench/gateway_load.py $DIRECT_URL none mock http://127.0.0.1:4000/v1/chat/completions sk-none mock \
    --rate "$RATE" --seconds "$SECONDS_")
fi
echo "$PAIR"; echo "$PEER_PAIR"
"$PY" -c "
import json, sys
d, f = (json.loads(x) for x in sys.argv[1].splitlines())
e, l = (json.loads(x) for x in sys.argv[2].splitlines())
# None when a side has no figure (its peer left out, or every request failed).
over = lambda g, direct, k: round(g[k] - direct[k], 3) if g and g[k] is not None and direct[k] is not None else None
print(json.dumps({'factory_overhead_p50_ms': over(f, d, 'p50_ms'), 'factory_overhead_p99_ms': over(f, d, 'p99_ms'),
                  'litellm_overhead_p50_ms': over(l, e, 'p50_ms'), 'litellm_overhead_p99_ms': over(l, e, 'p99_ms'),
                  'factory_rss_idle_mib': float(sys.argv[3]), 'factory_rss_loaded_mib': float(sys.argv[4])}))
" "$PAIR" "$PEER_PAIR" "$IDLE" "$LOADED"
