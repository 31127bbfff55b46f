#!/usr/bin/env bash
# Load: many concurrent clients against one warm app (tiny random-weight SD1.5, one replica with
# a bounded queue) through `sdplane up`'s router. Reports admitted throughput, rejection rate and
# whether every rejection carries Retry-After, p50/p99 latency of the 200s, and checks nothing
# accepted is lost (every 200 carries a PNG of the requested size). Prints one markdown table.
#
# Env: CLIENTS (64), DURATION (30 s), STEPS (2), SIZE (64), UP_ARGS (extra `sdplane up` flags,
#      e.g. the replica queue bound), SDPLANE_BIN.
source "$(dirname "$0")/common.sh"

CLIENTS="${CLIENTS:-64}"
DURATION="${DURATION:-30}"
STEPS="${STEPS:-2}"
SIZE="${SIZE:-64}"
WORK="$OUT_DIR/load"
RESULTS="$WORK/results.jsonl"
MODEL="$WORK/models/sd15-tiny.safetensors"
REQUEST="{\"prompt\":\"load test\",\"num_inference_steps\":$STEPS,\"width\":$SIZE,\"height\":$SIZE,\"seed\":3}"

trap bench_cleanup EXIT
rm -rf "$WORK"; mkdir -p "$WORK/models"; : >"$RESULTS"
require_sdplane
"$SDPLANE_BIN" make-test-model --family sd15 --out "$MODEL"

# shellcheck disable=SC2086 # UP_ARGS is a list of flags
start_up "$WORK/models" "$WORK/up.log" ${UP_ARGS:-}
APP=$(deploy_app '{"model":"sd15-tiny.safetensors","min_replicas":1,"max_replicas":1}')
wait_app_state "$APP" ready 300
# One request first so the app's first-request costs are not in the numbers.
curl -s -f -o /dev/null -X POST -H 'content-type: application/json' -d "$REQUEST" "$ROUTER_URL/$APP/v1/generate" \
  || bench_die "first request failed: $(curl -s -X POST -H 'content-type: application/json' -d "$REQUEST" "$ROUTER_URL/$APP/v1/generate")"

HEADER="$(machine_header)"
python3 "$BENCH_DIR/load.py" "$ROUTER_URL" "$APP" "$REQUEST" "$CLIENTS" "$DURATION" "$(basename "$MODEL")" \
  >>"$RESULTS" || { tail -30 "$WORK/up.log" >&2; bench_die "load client failed"; }

python3 "$BENCH_DIR/tables.py" load "$RESULTS" "$HEADER" \
  "bench/load.sh (CLIENTS=$CLIENTS DURATION=$DURATION STEPS=$STEPS SIZE=$SIZE UP_ARGS='${UP_ARGS:-}')" \
  | tee "$OUT_DIR/load.md"
