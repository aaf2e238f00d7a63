#!/usr/bin/env bash
# Property tests at length (issue 16, point 22): every crate's `proptests` module (the parsers
# of outside bytes: ingest, bundles, model files, configuration, pipelines, chat templates,
# request bodies, egress URLs), in release mode with overflow checks kept on, as the debug
# build that CI runs has them. Prints, per crate, the properties and cases run and pass or
# FAIL; a failure shows proptest's minimal failing input, a crash (abort, out of memory) the
# end of the test's output.
#
#   bench/fuzz.sh                    (CASES=20000 per property, every crate with properties)
#   CASES=200000 bench/fuzz.sh server registry
#
# MEMORY_GB (default 8) caps each test process's address space, so that a memory bomb a
# property finds aborts that process rather than the machine. Ignored tests (known gaps,
# which abort by design) are not run. Exits 1 when any crate failed.
set -uo pipefail
cd "$(dirname "$0")/.."
CASES="${CASES:-20000}"
MEMORY_GB="${MEMORY_GB:-8}"
export CARGO_PROFILE_RELEASE_OVERFLOW_CHECKS=true

if [ "$#" -gt 0 ]; then
  CRATES=("$@")
else
  CRATES=()
  for module in crates/*/src/proptests.rs; do
    CRATES+=("$(basename "$(dirname "$(dirname "$module")")")")
  done
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# Build everything first, so that the timings below are the tests' own.
for crate in "${CRATES[@]}"; do
  package=$(sed -n 's/^name = "\(.*\)"/\1/p' "crates/$crate/Cargo.toml" | head -1)
  if ! cargo test --release -p "$package" --lib --no-run > "$WORK/$crate.build" 2>&1; then
    echo "$crate: does not build"; tail -20 "$WORK/$crate.build"; exit 1
  fi
done

failed=0
printf '%-10s %10s %8s %12s  %-6s %8s\n' crate properties cases "cases run" result seconds
for crate in "${CRATES[@]}"; do
  package=$(sed -n 's/^name = "\(.*\)"/\1/p' "crates/$crate/Cargo.toml" | head -1)
  # The properties are the tests inside the `proptest!` block; the module's plain tests run once.
  properties=$(awk '/^proptest! \{/ {inside = 1} inside && /#\[test\]/ {n++} inside && /^\}/ {inside = 0} END {print n + 0}' \
    "crates/$crate/src/proptests.rs")
  log="$WORK/$crate.log"
  started=$(date +%s.%N)
  (
    ulimit -v $((MEMORY_GB * 1024 * 1024))
    FACTORY_PROPTEST_CASES="$CASES" cargo test --release -p "$package" --lib proptests:: > "$log" 2>&1
  )
  status=$?
  seconds=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
  if [ "$status" -eq 0 ] && grep -q '^test result: ok' "$log"; then
    printf '%-10s %10s %8s %12s  %-6s %8s\n' "$crate" "$properties" "$CASES" "$((properties * CASES))" pass "$seconds"
  else
    failed=1
    printf '%-10s %10s %8s %12s  %-6s %8s\n' "$crate" "$properties" "$CASES" "-" FAIL "$seconds"
    if grep -q 'minimal failing input' "$log"; then
      # Each failing property: what it asserted and proptest's shrunk input.
      awk '/^---- / {print "    " $0} /Test failed:/ {show = 1} show {print "    " $0} /successes:/ {show = 0}' "$log"
    else
      # No shrunk input: the process died (a signal, out of memory) or did not finish.
      grep -E 'signal|memory allocation|panicked' "$log" | head -5 | sed 's/^/    /'
      tail -15 "$log" | sed 's/^/    /'
    fi
  fi
done
exit "$failed"
