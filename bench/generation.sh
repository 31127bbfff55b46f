#!/usr/bin/env bash
# Generation: the same full-size random-weight SD1.5 checkpoint run by `sdplane generate` and by
# diffusers (torch, CPU, `from_single_file` offline) at the same size, steps, guidance, scheduler
# (DDIM) and starting noise. Each runs as its own process under /usr/bin/time -v (peak RSS).
# Prints one markdown table: load, text encode, mean UNet step, VAE decode, generation total,
# process wall, peak RSS, and sdplane ÷ diffusers.
#
# Env: STEPS (default 2), GUIDANCE (7.5), SIZE (512), SDPLANE_BIN,
#      PROFILE=1 to also record `perf` of one 256×256 one-step `sdplane generate` (top symbols in
#      bench/.out/generation/perf-top.txt).
source "$(dirname "$0")/common.sh"

STEPS="${STEPS:-2}"
GUIDANCE="${GUIDANCE:-7.5}"
SIZE="${SIZE:-512}"
PROMPT="a photograph of an astronaut riding a horse"
MODEL="$MODELS_DIR/sd15-full.safetensors"
WORK="$OUT_DIR/generation"
RESULTS="$WORK/results.jsonl"
BPE="$(ls ~/.cargo/registry/src/*/instant-clip-tokenizer-*/bpe_simple_vocab_16e6.txt 2>/dev/null | head -1)"

rm -rf "$WORK"; mkdir -p "$WORK"; : >"$RESULTS"
ensure_apt /usr/bin/time time
ensure_venv torch diffusers transformers accelerate safetensors numpy
require_sdplane
[[ -n "$BPE" ]] || bench_die "instant-clip-tokenizer's BPE file not found under ~/.cargo/registry (run cargo build first)"

if [[ ! -f "$MODEL" ]]; then
  "$SDPLANE_BIN" make-test-model --family sd15 --full-size --out "$MODEL"
fi

# The same unit-variance starting noise for both (diffusers' `latents` meaning).
"$VENV/bin/python" - "$WORK/latents.npy" "$SIZE" <<'PY'
import sys, numpy as np
side = int(sys.argv[2]) // 8
np.save(sys.argv[1], np.random.default_rng(42).standard_normal((1, 4, side, side), dtype=np.float32))
PY

# peak_rss FILE: "Maximum resident set size (kbytes)" of /usr/bin/time -v, in MiB.
peak_rss() { awk -F': ' '/Maximum resident set size/ {printf "%.1f", $2/1024}' "$1"; }
wall_s() { awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; print s}' "$1"; }

# Page the file in once so neither side pays the first disk read.
cat "$MODEL" >/dev/null
HEADER="$(machine_header)"

echo "bench: sdplane generate ..." >&2
/usr/bin/time -v -o "$WORK/sdplane.time" \
  "$SDPLANE_BIN" --log-format json generate --model "$MODEL" --prompt "$PROMPT" --negative-prompt "" \
  --steps "$STEPS" --guidance "$GUIDANCE" --width "$SIZE" --height "$SIZE" --scheduler ddim --seed 42 \
  --init-latents "$WORK/latents.npy" --out "$WORK/sdplane.png" >"$WORK/sdplane.out" 2>"$WORK/sdplane.log" \
  || { tail -20 "$WORK/sdplane.log" >&2; bench_die "sdplane generate failed"; }
python3 "$BENCH_DIR/sdplane_phases.py" "$WORK/sdplane.out" "$(peak_rss "$WORK/sdplane.time")" \
  "$(wall_s "$WORK/sdplane.time")" >>"$RESULTS"

echo "bench: diffusers ..." >&2
/usr/bin/time -v -o "$WORK/diffusers.time" \
  "$VENV/bin/python" "$BENCH_DIR/diffusers_generate.py" "$MODEL" "$BPE" "$WORK/diffusers-config" \
  --steps "$STEPS" --guidance "$GUIDANCE" --width "$SIZE" --height "$SIZE" --latents "$WORK/latents.npy" \
  --prompt "$PROMPT" --out "$WORK/diffusers.png" >"$WORK/diffusers.log" 2>&1 \
  || { tail -20 "$WORK/diffusers.log" >&2; bench_die "diffusers failed"; }
sed -n 's/^RESULT //p' "$WORK/diffusers.log" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
r["peak_rss_mb"], r["wall_s"] = float(sys.argv[1]), float(sys.argv[2])
print(json.dumps(r))' "$(peak_rss "$WORK/diffusers.time")" "$(wall_s "$WORK/diffusers.time")" >>"$RESULTS"

if [[ "${PROFILE:-0}" == 1 ]]; then
  ensure_apt perf linux-perf
  perf record -F 49 -g -o "$WORK/perf.data" -- "$SDPLANE_BIN" generate --model "$MODEL" --prompt "$PROMPT" \
    --steps 1 --guidance "$GUIDANCE" --width 256 --height 256 --scheduler ddim --seed 42 \
    --out "$WORK/profile.png" >"$WORK/profile.out" 2>"$WORK/perf-record.err"
  perf report -i "$WORK/perf.data" --no-children --percent-limit 0.5 --stdio 2>/dev/null \
    | grep -E '^ +[0-9]' | head -40 >"$WORK/perf-top.txt" || true
  echo "bench: sdplane generate profile: $WORK/perf-top.txt" >&2
fi

python3 "$BENCH_DIR/tables.py" generation "$RESULTS" "$HEADER" \
  "bench/generation.sh (STEPS=$STEPS GUIDANCE=$GUIDANCE SIZE=$SIZE, DDIM, same init latents)" \
  | tee "$OUT_DIR/generation.md"
