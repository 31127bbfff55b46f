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
#      ROUTER_BIN: a binary that takes the router's flags itself (the release router-only example,
#        `cargo build --release -p sdplane-router --example router_only` →
#        target/release/examples/router_only) instead of `$SDPLANE_BIN router`; used by default
#        when no release `sdplane` exists but that example does,
#      EXTRA_ROUTERS="name=/path/to/router_only ...": more router builds measured in the same run
#        (not with SKIP_SDPLANE=1)
#        (A/B comparisons on a shared machine); they appear in a second table with every target
#        and the CPU time per request of each proxy (CPU_TABLE=1 prints that table without them),
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
if [[ -z "${ROUTER_BIN:-}" && ! -x "$ROOT/target/release/sdplane" && -x "$ROOT/target/release/examples/router_only" ]]; then
  ROUTER_BIN="$ROOT/target/release/examples/router_only"
fi
if [[ "${SKIP_SDPLANE:-0}" != 1 && -z "${ROUTER_BIN:-}" ]]; then require_sdplane; fi

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
BACKEND_PID=$!
BACKEND="http://127.0.0.1:$BACKEND_PORT"
wait_http "$BACKEND/" 10 $!

# The reverse proxy gets as many workers as the router gets runtime threads (one per core).
PROXY_PORT=$(free_port)
nginx_conf proxy "$(nproc)" "upstream backend { server 127.0.0.1:$BACKEND_PORT; keepalive 128; }
  server { listen 127.0.0.1:$PROXY_PORT;
    location /bench/ { proxy_pass http://backend/; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
nginx -c "$WORK/proxy.conf" -e "$WORK/proxy.err" &
bench_track $!
PROXY_PID=$!
wait_http "http://127.0.0.1:$PROXY_PORT/bench/" 10 $!

TARGETS=("direct|$BACKEND/v1/generate")
# CPU of the proxy under test per request (the backend's for `direct`): a cost measure that,
# unlike latency, hardly moves when other work shares the cores. Process ids per target.
declare -A CPU_PIDS=([direct]="$BACKEND_PID" [nginx]="$PROXY_PID")
if [[ "${SKIP_SDPLANE:-0}" != 1 ]]; then
  CONTROLLER_PORT=$(free_port)
  python3 "$BENCH_DIR/fake_controller.py" "$CONTROLLER_PORT" "$BACKEND" >"$WORK/fake_controller.log" 2>&1 &
  bench_track $!
  wait_http "http://127.0.0.1:$CONTROLLER_PORT/healthz" 10 $!

  # start_router NAME CMD...: run one router on a free port against the fake controller and
  # wait until it proxies a request to the backend; sets ROUTER_PORT and ROUTER_PID.
  start_router() {
    local name="$1"; shift
    ROUTER_PORT=$(free_port)
    "$@" --listen "127.0.0.1:$ROUTER_PORT" --controller-url "http://127.0.0.1:$CONTROLLER_PORT" \
      >"$WORK/$name.log" 2>&1 &
    ROUTER_PID=$!
    bench_track $ROUTER_PID
    # Ready when the route table has arrived and a request reaches the backend.
    local deadline=$(( $(date +%s) + 30 ))
    until [[ "$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'content-type: application/json' \
              -d "$BODY" "http://127.0.0.1:$ROUTER_PORT/bench/v1/generate" || true)" == 200 ]]; do
      kill -0 $ROUTER_PID 2>/dev/null || { tail -20 "$WORK/$name.log" >&2; bench_die "$name exited"; }
      (( $(date +%s) < deadline )) || { tail -20 "$WORK/$name.log" "$WORK/fake_controller.log" >&2; bench_die "$name never proxied to the backend"; }
      sleep 0.2
    done
  }
  for extra in ${EXTRA_ROUTERS:-}; do
    start_router "${extra%%=*}" "${extra#*=}"
    TARGETS+=("${extra%%=*}|http://127.0.0.1:$ROUTER_PORT/bench/v1/generate")
    CPU_PIDS[${extra%%=*}]=$ROUTER_PID
  done
  if [[ -n "${ROUTER_BIN:-}" ]]; then
    SDPLANE_BIN="$ROUTER_BIN"
    start_router router "$ROUTER_BIN"
  else
    start_router router "$SDPLANE_BIN" router
  fi
  TARGETS+=("sdplane|http://127.0.0.1:$ROUTER_PORT/bench/v1/generate")
  CPU_PIDS[sdplane]=$ROUTER_PID
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

# cpu_ns PID...: CPU time in ns of the processes and their child processes (nginx workers),
# summed over every thread (/proc/<pid>/task/<tid>/schedstat, first field).
cpu_ns() {
  local pids=("$@") p
  for p in "$@"; do pids+=($(ps -o pid= --ppid "$p" 2>/dev/null || true)); done
  for p in "${pids[@]}"; do cat /proc/"$p"/task/*/schedstat 2>/dev/null || true; done \
    | awk '{ s += $1 } END { printf "%.0f\n", s }'
}

HEADER="$(machine_header)"
for c in $CONCURRENCY; do
  for t in "${TARGETS[@]}"; do
    name="${t%%|*}"; url="${t#*|}"
    threads=$(( c < WRK_THREADS ? c : WRK_THREADS ))
    # 2 s warm-up (connections, caches, JIT in Ray's Python), not recorded.
    WRK_BODY="$BODY" wrk -t"$threads" -c"$c" -d2s --timeout 5s -s "$BENCH_DIR/wrk_report.lua" "$url" >/dev/null
    pids="${CPU_PIDS[$name]:-}"
    cpu0=$( [[ -n "$pids" ]] && cpu_ns $pids || echo 0 )
    line=$(WRK_BODY="$BODY" wrk -t"$threads" -c"$c" -d"${DURATION}s" --timeout 5s -s "$BENCH_DIR/wrk_report.lua" "$url" \
           | sed -n 's/^WRKJSON //p')
    [[ -n "$line" ]] || bench_die "wrk printed no result for $name c=$c"
    cpu1=$( [[ -n "$pids" ]] && cpu_ns $pids || echo 0 )
    echo "{\"target\":\"$name\",\"concurrency\":$c,\"cpu_ns\":$(( cpu1 - cpu0 )),\"wrk\":$line}" | tee -a "$RESULTS" >&2
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

if [[ -n "${EXTRA_ROUTERS:-}" || "${CPU_TABLE:-0}" == 1 ]]; then
  # Every target of this run side by side (tables.py only knows the standard four).
  python3 - "$RESULTS" <<'PY' | tee -a "$OUT_DIR/router_overhead.md"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {(r["target"], r["concurrency"]): r["wrk"] for r in rows}
cpu = {(r["target"], r["concurrency"]): r.get("cpu_ns", 0) for r in rows}
print("\n| path | conc | req/s | p50 ms | p99 ms | p50 ÷ direct | p99 ÷ direct | CPU µs/req | errors |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for (t, c), w in by.items():
    d = by.get(("direct", c))
    rps = w["requests"] / (w["duration_us"] / 1e6)
    err = sum(w[k] for k in ("connect", "read", "write", "status", "timeout"))
    r50 = f'{w["p50_us"] / d["p50_us"]:.2f}' if d else "–"
    r99 = f'{w["p99_us"] / d["p99_us"]:.2f}' if d else "–"
    us = cpu[(t, c)] / 1000 / w["requests"] if w["requests"] and cpu[(t, c)] else None
    us = f"{us:.1f}" if us else "–"
    print(f'| {t} | {c} | {rps:,.0f} | {w["p50_us"] / 1000:.3f} | {w["p99_us"] / 1000:.3f} | {r50} | {r99} | {us} | {err} |')
PY
fi
