#!/usr/bin/env bash
# Cold start: one request to a scaled-to-zero app until its first 200 (`Prefer: wait`), broken
# into process start, weight load, warm-up and generation (app health transitions polled through
# the router, the replica's `load_seconds`/`warm_up_seconds` log fields, and the response's
# compute_metrics), compared with reading the model file from the page cache plus one warm
# generation of the same request. Prints one markdown table.
#
# Env: MODEL (default: the full-size SD1.5 of generation.sh), STEPS (2), SIZE (256: one generation stays under a minute on 2 CPU cores),
#      LIMIT_S (900, the whole wait for the first 200), SDPLANE_BIN.
source "$(dirname "$0")/common.sh"

MODEL="${MODEL:-$MODELS_DIR/sd15-full.safetensors}"
STEPS="${STEPS:-2}"
SIZE="${SIZE:-256}"
LIMIT_S="${LIMIT_S:-900}"
WORK="$OUT_DIR/cold_start"
RESULTS="$WORK/results.jsonl"
REQUEST="{\"prompt\":\"a lighthouse at dusk\",\"num_inference_steps\":$STEPS,\"width\":$SIZE,\"height\":$SIZE,\"seed\":7,\"scheduler\":\"ddim\"}"

trap bench_cleanup EXIT
rm -rf "$WORK"; mkdir -p "$WORK/models"; : >"$RESULTS"
require_sdplane
if [[ ! -f "$MODEL" ]]; then
  "$SDPLANE_BIN" make-test-model --family sd15 --full-size --out "$MODEL"
fi
# A models folder holding only this file (a hard link: same inode, same page-cache pages).
ln -f "$MODEL" "$WORK/models/$(basename "$MODEL")" 2>/dev/null || cp "$MODEL" "$WORK/models/"
FILE="$WORK/models/$(basename "$MODEL")"

start_up "$WORK/models" "$WORK/up.log" --max-wait "$((LIMIT_S))s"
APP=$(deploy_app "{\"model\":\"$(basename "$MODEL")\",\"min_replicas\":0,\"max_replicas\":1}")
wait_app_state "$APP" scaled_to_zero 30

# The read time to beat: the file from the page cache (a first read warms it).
cat "$FILE" >/dev/null
cat_s=$( { TIMEFORMAT=%R; time cat "$FILE" >/dev/null; } 2>&1 )
echo "bench: page-cache read (cat): ${cat_s}s" >&2

HEADER="$(machine_header)"
python3 "$BENCH_DIR/cold_start.py" "$ROUTER_URL" "$APP" "$REQUEST" 600 "$LIMIT_S" "$WORK/up.log" "$FILE" "$cat_s" \
  >>"$RESULTS" || { tail -30 "$WORK/up.log" >&2; bench_die "cold start client failed"; }

python3 "$BENCH_DIR/tables.py" cold_start "$RESULTS" "$HEADER" \
  "bench/cold_start.sh (STEPS=$STEPS SIZE=$SIZE; POST /$APP/v1/generate with Prefer: wait=600)" \
  | tee "$OUT_DIR/cold_start.md"
