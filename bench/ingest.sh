#!/usr/bin/env bash
# Ingest benchmark, side by side with the pyarrow peer on the same file and machine:
# JSONL -> zstd Parquet. The factory also checks every row, scans for PII, profiles and
# deduplicates; pyarrow only converts. Prints one JSON line per side and the ratio.
#
#   bench/ingest.sh [MB]        (default 200; the issue's memory check uses 2000)
#   QUERY='format=jsonl&text_column=text&dedup=flag' bench/ingest.sh 1000
#
# QUERY is the ingest's query string (default: the PII scan and profiles only, as the issue's
# figure asks; add text_column and dedup for the full pipeline).
# Needs a release build (cargo build --release) and python3; pyarrow is installed into a
# virtual environment under ~/.cache the first time.
set -euo pipefail
cd "$(dirname "$0")/.."
MB="${1:-200}"
QUERY="${QUERY:-format=jsonl}"
SHARED="$(cd .. && pwd)/shared"
FACTORY="${CARGO_TARGET_DIR:-target}/release/factory"
WORK="$(mktemp -d)"
trap 'kill "$SERVER" 2>/dev/null || true; rm -rf "$WORK"' EXIT

VENV="$HOME/.cache/factory-bench-venv"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check pyarrow
fi

INPUT="$WORK/input.jsonl"
python3 "$SHARED/bench/gen/jsonl_gen.py" --mb "$MB" --seed 1 > "$INPUT"
BYTES=$(stat -c %s "$INPUT")

# Peer: pyarrow, under /usr/bin/time for its peak RSS.
PEER_JSON=$(/usr/bin/time -f '%M' -o "$WORK/peer.rss" "$VENV/bin/python" "$SHARED/bench/peers/pyarrow_ingest.py" "$INPUT" "$WORK/peer.parquet")
PEER_RSS_MB=$(( $(cat "$WORK/peer.rss") / 1024 ))

# The factory: a fresh server, one tenant, one dataset, the upload streamed over HTTP.
"$FACTORY" up --data-dir "$WORK/data" --listen 127.0.0.1:0 > "$WORK/up.log" 2> "$WORK/server.log" &
SERVER=$!
for _ in $(seq 100); do grep -q "factory listening on" "$WORK/up.log" && break; sleep 0.1; done
URL=$(sed -n 's/^factory listening on //p' "$WORK/up.log")
ADMIN=$(cat "$WORK/data/admin.key")
curl -sf -X POST "$URL/api/v1/tenants" -H "Authorization: Bearer $ADMIN" -H 'content-type: application/json' \
  -d '{"name":"bench","jurisdictions":["local"]}' > /dev/null
curl -sf -X POST "$URL/api/v1/datasets?tenant=bench" -H "Authorization: Bearer $ADMIN" -H 'content-type: application/json' \
  -d '{"name":"big","classification":"internal"}' > /dev/null
BEFORE_KB=$(awk '/VmRSS/ {print $2}' "/proc/$SERVER/status")
START=$(date +%s.%N)
curl -sf -X POST "$URL/api/v1/datasets/big/versions?tenant=bench&$QUERY" \
  -H "Authorization: Bearer $ADMIN" -X POST -T "$INPUT" -o "$WORK/report.json"
END=$(date +%s.%N)
PEAK_KB=$(awk '/VmHWM/ {print $2}' "/proc/$SERVER/status")
ROWS=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['rows'])" "$WORK/report.json")
SECONDS_TAKEN=$(python3 -c "print(round($END - $START, 3))")

python3 - "$PEER_JSON" "$BYTES" "$ROWS" "$SECONDS_TAKEN" "$PEAK_KB" "$BEFORE_KB" "$PEER_RSS_MB" "$QUERY" <<'PY'
import json, sys
peer = json.loads(sys.argv[1])
size, rows, seconds, peak_kb, before_kb, peer_rss = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
ours = {"side": "factory", "query": sys.argv[8], "rows": rows, "input_bytes": size, "seconds": seconds,
        "mb_per_s": round(size / seconds / 1e6, 1), "peak_rss_mb": peak_kb // 1024, "idle_rss_mb": before_kb // 1024}
peer.update({"side": "pyarrow", "peak_rss_mb": peer_rss})
print(json.dumps(peer))
print(json.dumps(ours))
print(json.dumps({"throughput_ratio_factory_over_pyarrow": round(ours["mb_per_s"] / peer["mb_per_s"], 2),
                  "peak_rss_ratio_factory_over_pyarrow": round(ours["peak_rss_mb"] / max(peer_rss, 1), 2)}))
PY
