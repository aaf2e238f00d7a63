#!/usr/bin/env bash
# Agent-ready serving, each feature against the same engine without it, in one run:
#  - time to first token for a 1,000-token shared system prompt, cache cold vs warm
#    (goal: warm <= 0.2x cold);
#  - decode tokens/s under a JSON schema vs unconstrained (goal: >= 0.9x).
#
#   bench/agent.sh [CONFIG]        (default: shared/bench/configs/ref-small.json)
#
# Needs `cargo build --release -p factory-bench`.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED="$(cd .. && pwd)/shared"
CONFIG="${1:-$SHARED/bench/configs/ref-small.json}"
BENCH="${CARGO_TARGET_DIR:-target}/release/agent-bench"
OURS=$("$BENCH" --config "$CONFIG")
echo "$OURS"
python3 -c "
import json, sys
r = json.loads(sys.argv[1])
p, j = r['prefix_cache'], r['json_schema']
print(f\"first token, {p['system_tokens']}-token system prompt: cold {p['cold_first_token_s']:.4f} s, warm {p['warm_first_token_s']:.4f} s \"
      f\"({p['cached_tokens']} cached): warm/cold {p['warm_over_cold']:.3f}x (goal <= 0.2x)\")
print(f\"decode under a JSON schema: {j['constrained_tokens_per_s']} tokens/s vs {j['unconstrained_tokens_per_s']} unconstrained: \"
      f\"{j['constrained_over_unconstrained']:.3f}x (goal >= 0.9x)\")
" "$OURS"
