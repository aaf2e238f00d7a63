#!/usr/bin/env bash
# Beyond one machine, measured in one run on this host's PostgreSQL, Redis, NATS JetStream and
# Slurm (deploy/slurm/single-node.sh), every process of the factory sharing one database:
#
#  1. the cost of one shared limit decision (Redis script), p50/p99 us, beside a bare PING;
#  2. gateway requests/s at a fixed p99 (P99_MS, default 50 ms) with 1 replica keeping its limits
#     in its own memory, and 1, 2 and 3 replicas sharing them in Redis; each behind the same fast
#     mock upstream, load spread round-robin, stepping through RATES;
#  3. job start latency, queued to running and to done, of 1 ms jobs: the in-process worker pool
#     against the Slurm executor (sbatch, then the step's `factory worker --job` on the node);
#  4. events published per second from the outbox to JetStream, and the lag from a change's
#     answer to its event reaching a subscriber, at each of EVENT_RATES changes/s.
#
#   bench/cluster.sh                 RATES="500 1000 2000" P99_MS=50 SECONDS_=8 bench/cluster.sh
#
# Needs `cargo build --release -p factory -p factory-bench`. On one host every replica, the load
# generator and the upstream share the same cores, so replicas add coordination, not capacity:
# the figures show what sharing costs, not how a cluster of machines scales.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="$(cd "${CARGO_TARGET_DIR:-target}/release" && pwd)"
RATES="${RATES:-250 500 1000 1500 2000 3000}"
EVENT_RATES="${EVENT_RATES:-50 100 200}"
P99_MS="${P99_MS:-50}"
SECONDS_="${SECONDS_:-8}"
REDIS="${REDIS_URL:-redis://127.0.0.1:6379}"
NATS="${NATS_URL:-nats://127.0.0.1:4222}"
DB="factory_bench_cluster_$$"
WORK=$(mktemp -d)
DATA="$WORK/data"
PIDS=()
cleanup() {
  kill "${PIDS[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
for v in $(env | grep -o '^FACTORY_[A-Z_]*'); do unset "$v"; done
psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE $DB" >/dev/null
DATABASE_URL="postgres://postgres@127.0.0.1:5432/$DB"
export FACTORY_SERVING__UPSTREAMS='["http://127.0.0.1:9100"]'
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

# start NAME ROLE PORT [VAR=VALUE ...]: one factory process of the shared installation.
start() {
  local name=$1 role=$2 port=$3
  shift 3
  env "$@" "$BIN/factory" up --data-dir "$DATA" --database-url "$DATABASE_URL" --jurisdiction eu \
    --listen "127.0.0.1:$port" --role "$role" > "$WORK/$name.out" 2> "$WORK/$name.log" &
  PIDS+=($!)
  eval "PID_$name=$!"
  for _ in $(seq 1 120); do
    curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && return
    sleep 0.5
  done
  echo "$name did not start:"; tail -20 "$WORK/$name.log"; exit 1
}
stop() { local pid; pid=$(eval "echo \$PID_$1"); kill "$pid"; wait "$pid" 2>/dev/null || true; }

echo "== 1. one shared limit decision (Redis $REDIS)"
"$BIN/cluster-bench" decisions --redis "$REDIS" | tee "$WORK/decisions.json"

echo "== 2. gateway requests/s at p99 <= $P99_MS ms"
"$BIN/mock-upstream" --port 9100 & PIDS+=($!)
start api "api,worker" 18100
API=http://127.0.0.1:18100
ADMIN=$(cat "$DATA/admin.key")
export FACTORY_URL=$API FACTORY_API_KEY=$ADMIN
"$BIN/factory" tenant create bench --jurisdiction eu > /dev/null
APP=$("$BIN/factory" key create --tenant bench --role app | json 'd["secret"]')
ENG=$("$BIN/factory" key create --tenant bench --role engineer | json 'd["secret"]')
# Limits far above the load, so every request runs the full decision and none is refused.
curl -sf -X POST "$API/api/v1/deployments" -H "Authorization: Bearer $ENG" -H 'Content-Type: application/json' \
  -d '{"name": "gw", "variants": [{"upstream": {"url": "http://127.0.0.1:9100/v1", "model": "mock", "jurisdiction": "eu"}}],
       "limits": {"tenant_requests_per_minute": 100000000}}' > /dev/null
start local gateway 18101
for i in 1 2 3; do start "shared$i" gateway "1810$((i + 1))" "FACTORY_SERVING__SHARED_STATE=$REDIS"; done
# The highest offered rate whose answers all came back with p99 within the bound.
best_rate() {
  local best=0 line
  for rate in $RATES; do
    line=$("$BIN/cluster-bench" load "$@" --key "$APP" --model gw --rate "$rate" --seconds "$SECONDS_")
    echo "   $line" >&2
    if python3 -c "import json,sys; d=json.loads(sys.argv[1]); sys.exit(0 if d['errors']==0 and d['p99_ms']<=$P99_MS else 1)" "$line"; then
      best=$rate
    else
      break
    fi
  done
  echo "$best"
}
LOCAL=$(best_rate --target http://127.0.0.1:18101)
echo "1 replica, limits in memory: $LOCAL req/s"
SHARED1=$(best_rate --target http://127.0.0.1:18102)
echo "1 replica, limits in Redis: $SHARED1 req/s"
SHARED2=$(best_rate --target http://127.0.0.1:18102 --target http://127.0.0.1:18103)
echo "2 replicas, limits in Redis: $SHARED2 req/s"
SHARED3=$(best_rate --target http://127.0.0.1:18102 --target http://127.0.0.1:18103 --target http://127.0.0.1:18104)
echo "3 replicas, limits in Redis: $SHARED3 req/s"
for name in local shared1 shared2 shared3; do stop "$name"; done

echo "== 3. job start latency, 1 ms jobs"
LOCAL_JOBS=$("$BIN/cluster-bench" job-start --api "$API" --key "$ENG" --tenant bench --n "${JOBS:-10}")
echo "in-process worker: $LOCAL_JOBS"
SLURM_JOBS=null
if sinfo -h -p factory -o %a 2>/dev/null | grep -q up; then
  # The API alone, so only the Slurm executor's worker claims the jobs.
  stop api
  start api api 18100
  start slurm worker 18105 FACTORY_COMPUTE__EXECUTOR=slurm FACTORY_COMPUTE__SLURM__PARTITION=factory \
    FACTORY_COMPUTE__SLURM__CPUS=1 FACTORY_COMPUTE__SLURM__MEMORY_MB=1000 'FACTORY_COMPUTE__SLURM__KINDS=["platform.sleep"]'
  SLURM_JOBS=$("$BIN/cluster-bench" job-start --api "$API" --key "$ENG" --tenant bench --n "${JOBS:-10}")
  echo "Slurm executor:    $SLURM_JOBS"
  stop slurm
else
  echo "Slurm: SKIPPED (no partition 'factory' up; see deploy/slurm/single-node.sh)"
fi

echo "== 4. outbox events to JetStream ($NATS)"
stop api
STREAM="FACTORY_BENCH_$$"
PREFIX="fbench$$"
start api "api,worker" 18100 "FACTORY_EVENTS__NATS_URL=$NATS" "FACTORY_EVENTS__STREAM=$STREAM" "FACTORY_EVENTS__SUBJECT_PREFIX=$PREFIX"
EVENT_LINES=()
for rate in $EVENT_RATES; do
  line=$("$BIN/cluster-bench" events --api "$API" --key "$ADMIN" --tenant bench --nats "$NATS" \
    --subject-prefix "$PREFIX" --rate "$rate" --seconds "$SECONDS_")
  echo "$line"
  EVENT_LINES+=("$line")
done
"$BIN/cluster-bench" delete-stream --nats "$NATS" --stream "$STREAM"

echo "== summary"
python3 - "$LOCAL" "$SHARED1" "$SHARED2" "$SHARED3" "$(cat "$WORK/decisions.json")" "$LOCAL_JOBS" "$SLURM_JOBS" "${EVENT_LINES[@]}" <<'EOF'
import json, sys
local, s1, s2, s3 = (float(x) for x in sys.argv[1:5])
decisions = json.loads(sys.argv[5])
local_jobs, slurm_jobs = json.loads(sys.argv[6]), json.loads(sys.argv[7])
events = [json.loads(x) for x in sys.argv[8:]]
d = decisions["decision_us"]
print(f"shared limit decision: p50 {d['p50']:.0f} us, p99 {d['p99']:.0f} us (PING p50 {decisions['ping_us']['p50']:.0f} us); "
      f"{decisions['concurrent_decisions_per_s']:.0f} decisions/s from {decisions['concurrency']} callers")
ratio = lambda x: f"{x / local:.2f}x" if local else "n/a"
print(f"gateway req/s at the p99 bound: in memory {local:.0f}; Redis 1 replica {s1:.0f} ({ratio(s1)}), "
      f"2 {s2:.0f} ({ratio(s2)}), 3 {s3:.0f} ({ratio(s3)})")
print(f"job start (queued to running), p50: in-process {local_jobs['to_running_ms']['p50']:.0f} ms", end="")
print(f", Slurm {slurm_jobs['to_running_ms']['p50']:.0f} ms" if slurm_jobs else ", Slurm skipped")
for e in events:
    print(f"events at {e['offered_per_s']:.0f} changes/s: {e['published_per_s']:.0f} published/s, "
          f"lag p50 {e['lag_ms']['p50']:.1f} ms p99 {e['lag_ms']['p99']:.1f} ms, missing {e['missing']}")
EOF
