#!/usr/bin/env bash
# Router overhead: one trivial HTTP backend (nginx `return 200`) reached
#   (a) directly, (b) through `sdplane router`, (c) through nginx as a reverse proxy,
#   (d) a trivial Ray Serve deployment through Ray Serve's HTTP proxy,
# with wrk at fixed concurrency levels on 127.0.0.1 only. Prints one markdown table with
# requests/s, p50 and p99 latency and their ratios to (a).
#
# `sdplane router` gets its route table from bench/fake_controller.py, a stand-in for the
# controller's internal API (wire/src/admin.rs) whose one ready app `bench` points at the
# trivial backend: the real controller only routes to replicas it started itself.
#
# Env: DURATION (s, default 10), CONCURRENCY (default "1 16 64"), WRK_THREADS (default 1),
#      SKIP_RAY=1 / SKIP_SDPLANE=1 to leave Ray Serve / sdplane out, SDPLANE_BIN,
#      PROFILE=1 to record `perf` of the router during an extra run at the highest concurrency
#      (top symbols written to bench/.out/router_overhead/perf-top.txt).
source "$(dirname "$0")/common.sh"

DURATION="${DURATION:-10}"
CONCURRENCY="${CONCURRENCY:-1 16 64}"
WRK_THREADS="${WRK_THREADS:-1}"
WORK="$OUT_DIR/router_overhead"
RESULTS="$WORK/results.jsonl"
BODY='{"prompt":"a beautiful landscape","num_inference_steps":2,"seed":1}'

trap bench_cleanup EXIT
rm -rf "$WORK"; mkdir -p "$WORK/tmp"; : >"$RESULTS"

ensure_apt wrk wrk
ensure_apt nginx nginx-light
[[ "${SKIP_RAY:-0}" == 1 ]] || ensure_venv "ray[serve]"
[[ "${SKIP_SDPLANE:-0}" == 1 ]] || require_sdplane

# nginx without the system config: foreground, our own pid/log/temp paths.
nginx_conf() { # nginx_conf NAME WORKERS SERVER_BLOCK
  cat >"$WORK/$1.conf" <<CONF
worker_processes $2;
daemon off;
pid $WORK/$1.pid;
error_log $WORK/$1.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/tmp/$1-body;
  proxy_temp_path $WORK/tmp/$1-proxy;
  fastcgi_temp_path $WORK/tmp/$1-fcgi;
  uwsgi_temp_path $WORK/tmp/$1-uwsgi;
  scgi_temp_path $WORK/tmp/$1-scgi;
  keepalive_requests 10000000;
  $3
}
CONF
}

BACKEND_PORT=$(free_port)
nginx_conf backend 1 "server { listen 127.0.0.1:$BACKEND_PORT; location / { default_type text/plain; return 200 \"ok\n\"; } }"
nginx -c "$WORK/backend.conf" -e "$WORK/backend.err" &
bench_track $!
BACKEND="http://127.0.0.1:$BACKEND_PORT"
wait_http "$BACKEND/" 10 $!

# The reverse proxy gets as many workers as the router gets runtime threads (one per core).
PROXY_PORT=$(free_port)
nginx_conf proxy "$(nproc)" "upstream backend { server 127.0.0.1:$BACKEND_PORT; keepalive 128; }
  server { listen 127.0.0.1:$PROXY_PORT;
    location /bench/ { proxy_pass http://backend/; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
nginx -c "$WORK/proxy.conf" -e "$WORK/proxy.err" &
bench_track $!
wait_http "http://127.0.0.1:$PROXY_PORT/bench/" 10 $!

TARGETS=("direct|$BACKEND/v1/generate")
if [[ "${SKIP_SDPLANE:-0}" != 1 ]]; then
  CONTROLLER_PORT=$(free_port)
  python3 "$BENCH_DIR/fake_controller.py" "$CONTROLLER_PORT" "$BACKEND" >"$WORK/fake_controller.log" 2>&1 &
  bench_track $!
  wait_http "http://127.0.0.1:$CONTROLLER_PORT/healthz" 10 $!

  ROUTER_PORT=$(free_port)
  "$SDPLANE_BIN" router --listen "127.0.0.1:$ROUTER_PORT" --controller-url "http://127.0.0.1:$CONTROLLER_PORT" \
    >"$WORK/router.log" 2>&1 &
  ROUTER_PID=$!
  bench_track $ROUTER_PID
  # Ready when the route table has arrived and a request reaches the backend.
  deadline=$(( $(date +%s) + 30 ))
  until [[ "$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'content-type: application/json' \
            -d "$BODY" "http://127.0.0.1:$ROUTER_PORT/bench/v1/generate" || true)" == 200 ]]; do
    kill -0 $ROUTER_PID 2>/dev/null || { tail -20 "$WORK/router.log" >&2; bench_die "sdplane router exited"; }
    (( $(date +%s) < deadline )) || { tail -20 "$WORK/router.log" "$WORK/fake_controller.log" >&2; bench_die "router never proxied to the backend"; }
    sleep 0.2
  done
  TARGETS+=("sdplane|http://127.0.0.1:$ROUTER_PORT/bench/v1/generate")
fi
TARGETS+=("nginx|http://127.0.0.1:$PROXY_PORT/bench/v1/generate")

if [[ "${SKIP_RAY:-0}" != 1 ]]; then
  RAY_PORT=$(free_port)
  "$VENV/bin/python" "$BENCH_DIR/ray_app.py" "$RAY_PORT" >"$WORK/ray.log" 2>&1 &
  RAY_PID=$!
  bench_track $RAY_PID
  deadline=$(( $(date +%s) + 180 ))
  until grep -q '^READY' "$WORK/ray.log"; do
    kill -0 $RAY_PID 2>/dev/null || { tail -30 "$WORK/ray.log" >&2; bench_die "Ray Serve exited"; }
    (( $(date +%s) < deadline )) || bench_die "Ray Serve not ready in 180 s"
    sleep 0.5
  done
  TARGETS+=("ray_serve|http://127.0.0.1:$RAY_PORT/bench/v1/generate")
fi

for t in "${TARGETS[@]}"; do
  name="${t%%|*}"; url="${t#*|}"
  code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'content-type: application/json' -d "$BODY" "$url")
  [[ "$code" == 200 ]] || bench_die "$name answered $code at $url"
done

HEADER="$(machine_header)"
for c in $CONCURRENCY; do
  for t in "${TARGETS[@]}"; do
    name="${t%%|*}"; url="${t#*|}"
    threads=$(( c < WRK_THREADS ? c : WRK_THREADS ))
    # 2 s warm-up (connections, caches, JIT in Ray's Python), not recorded.
    WRK_BODY="$BODY" wrk -t"$threads" -c"$c" -d2s --timeout 5s -s "$BENCH_DIR/wrk_report.lua" "$url" >/dev/null
    line=$(WRK_BODY="$BODY" wrk -t"$threads" -c"$c" -d"${DURATION}s" --timeout 5s -s "$BENCH_DIR/wrk_report.lua" "$url" \
           | sed -n 's/^WRKJSON //p')
    [[ -n "$line" ]] || bench_die "wrk printed no result for $name c=$c"
    echo "{\"target\":\"$name\",\"concurrency\":$c,\"wrk\":$line}" | tee -a "$RESULTS" >&2
  done
done

if [[ "${PROFILE:-0}" == 1 && -n "${ROUTER_PID:-}" ]]; then
  ensure_apt perf linux-perf
  c="${CONCURRENCY##* }"
  perf record -F 999 -g -o "$WORK/perf.data" -p "$ROUTER_PID" -- sleep "$DURATION" 2>"$WORK/perf-record.err" &
  perf_pid=$!
  WRK_BODY="$BODY" wrk -t"$WRK_THREADS" -c"$c" -d"${DURATION}s" --timeout 5s -s "$BENCH_DIR/wrk_report.lua" \
    "http://127.0.0.1:$ROUTER_PORT/bench/v1/generate" >/dev/null
  wait "$perf_pid" || true
  perf report -i "$WORK/perf.data" --no-children --percent-limit 1 --stdio 2>/dev/null \
    | grep -E '^ +[0-9]' | head -40 >"$WORK/perf-top.txt" || true
  echo "bench: router profile at c=$c: $WORK/perf-top.txt" >&2
fi

HEADER+=$'\n'"- load after the runs: $(uptime | sed 's/.*load average: /load average /')"
python3 "$BENCH_DIR/tables.py" overhead "$RESULTS" "$HEADER" "wrk -t$WRK_THREADS -c{1,16,64} -d${DURATION}s, POST $BODY" \
  | tee "$OUT_DIR/router_overhead.md"
