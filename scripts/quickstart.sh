#!/usr/bin/env bash
# One command from a fresh clone to a running sdplane on this machine:
#   builds the binary, puts a tiny random-weight demo model in models/ when it holds no
#   checkpoint, starts `sdplane up` (router :8000, controller admin API 127.0.0.1:8001,
#   replicas as local child processes), deploys every model file, shows one cold request
#   (202 + Retry-After) and its retry (200 + compute_metrics), then keeps serving until Ctrl-C.
# Environment: SDPLANE_LISTEN (default 127.0.0.1:8000), SDPLANE_ADMIN_LISTEN (127.0.0.1:8001),
# SDPLANE_IDLE_TIMEOUT (300s), CARGO_PROFILE (dev; use "release" for real checkpoints).
set -euo pipefail
cd "$(dirname "$0")/.."

profile=${CARGO_PROFILE:-dev}
listen=${SDPLANE_LISTEN:-127.0.0.1:8000}
admin=${SDPLANE_ADMIN_LISTEN:-127.0.0.1:8001}
idle=${SDPLANE_IDLE_TIMEOUT:-300s}

command -v curl >/dev/null || { echo "quickstart: curl is needed (apt-get install curl)" >&2; exit 1; }
echo "==> building sdplane ($profile profile; the first build compiles candle and takes ~10 min on 2 cores)"
cargo build --profile "$profile"
dir=$([ "$profile" = dev ] && echo debug || echo "$profile")
bin="target/$dir/sdplane"

mkdir -p models
if ! find models -name '*.safetensors' -print -quit | grep -q .; then
  echo "==> models/ has no checkpoint: writing a tiny random-weight SD 1.5 demo model"
  "$bin" make-test-model --family sd15 --out models/demo-tiny-sd15.safetensors
fi

echo "==> starting sdplane up (router http://$listen, admin http://$admin)"
"$bin" up --models models --listen "$listen" --admin-listen "$admin" --idle-timeout "$idle" &
up_pid=$!
trap 'kill -TERM $up_pid 2>/dev/null; wait $up_pid 2>/dev/null' EXIT INT TERM
for _ in $(seq 1 100); do
  curl -fsS "http://$admin/v1/apps" >/dev/null 2>&1 && break
  kill -0 $up_pid 2>/dev/null || { echo "quickstart: sdplane up exited" >&2; exit 1; }
  sleep 0.2
done

export SDPLANE_URL="http://$admin" SDPLANE_ROUTER_URL="http://$listen"
./deploy_sd.sh --list
first_app=""
while IFS= read -r file; do
  rel=${file#models/}
  app=$(./deploy_sd.sh "$rel" | sed -n 's#.*/\(sd-[a-z0-9-]*\)/v1/generate.*#\1#p' | head -n 1) || true
  [ -z "$first_app" ] && first_app=$app
done < <(find models -name '*.safetensors' | sort)

if [ -n "$first_app" ]; then
  url="http://$listen/$first_app/v1/generate"
  # 256² keeps the tiny demo model quick on a laptop CPU; real models default to their native size.
  body='{"prompt": "a lighthouse at dawn", "num_inference_steps": 4, "width": 256, "height": 256, "seed": 42}'
  echo "==> POST $url (the app is scaled to zero, so the first answer is 202)"
  curl -sS -i -X POST "$url" -H 'content-type: application/json' -d "$body" | sed -n '1p;/^[Rr]etry-[Aa]fter/p;$p'
  echo
  echo "==> retrying with Prefer: wait=600 (held until the model is loaded)"
  curl -sS -X POST "$url" -H 'content-type: application/json' -H 'Prefer: wait=600' -d "$body" \
    | sed -E 's/"image":"data:image\/png;base64,[^"]{20}[^"]*"/"image":"data:image\/png;base64,…"/; s/"images":\[[^]]*\]/"images":[…]/'
  echo
fi
echo "==> sdplane is serving. Try: ./deploy_sd.sh --status   |   Ctrl-C stops it."
wait $up_pid
