#!/usr/bin/env bash
# Run every benchmark in the order least to most CPU-hungry and collect their tables into
# bench/.out/ALL.md (what BENCHMARKS.md quotes). A benchmark that fails is reported and the rest
# still run; the exit status says whether all passed. Env is passed through to each script.
set -uo pipefail
BENCH_DIR="$(cd "$(dirname "$0")" && pwd)"
ALL="$BENCH_DIR/.out/ALL.md"
mkdir -p "$BENCH_DIR/.out"
: >"$ALL"
failed=0
for name in router_overhead load cold_start generation; do
  echo "== $name" >&2
  if bash "$BENCH_DIR/$name.sh" >"$BENCH_DIR/.out/$name.stdout" 2>"$BENCH_DIR/.out/$name.stderr"; then
    cat "$BENCH_DIR/.out/$name.md" >>"$ALL"
  else
    failed=1
    { echo "### $name: FAILED"; echo; echo '```'; tail -15 "$BENCH_DIR/.out/$name.stderr"; echo '```'; } >>"$ALL"
  fi
  echo >>"$ALL"
done
cat "$ALL"
exit "$failed"
