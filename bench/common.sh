# shellcheck shell=bash
# Shared helpers for the benchmark scripts in bench/: where the binary is, the machine header,
# free loopback ports, bounded readiness waits, the local Python virtualenv, and cleanup of
# every process a script started (by PID, never by name). Sourced, not run.

set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
OUT_DIR="$BENCH_DIR/.out"
MODELS_DIR="$BENCH_DIR/.models"
VENV="$BENCH_DIR/.venv"
mkdir -p "$OUT_DIR" "$MODELS_DIR"

# The release binary when one was built, else the dev one; SDPLANE_BIN overrides.
if [[ -z "${SDPLANE_BIN:-}" ]]; then
  if [[ -x "$ROOT/target/release/sdplane" ]]; then
    SDPLANE_BIN="$ROOT/target/release/sdplane"
  else
    SDPLANE_BIN="$ROOT/target/debug/sdplane"
  fi
fi

BENCH_PIDS=()

# Remember a background process so `bench_cleanup` stops it.
bench_track() { BENCH_PIDS+=("$1"); }

# Stop every tracked process: SIGTERM, up to 10 s grace, then SIGKILL. Only our own PIDs.
bench_cleanup() {
  local pid
  for pid in "${BENCH_PIDS[@]:-}"; do
    [[ -n "$pid" ]] && kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${BENCH_PIDS[@]:-}"; do
    [[ -z "$pid" ]] && continue
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
  done
  BENCH_PIDS=()
}

bench_die() { echo "bench: $*" >&2; exit 1; }

# A free TCP port on 127.0.0.1 (the kernel picks it; tiny race before our server binds it).
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# wait_http URL SECONDS [PID]: poll until URL answers any HTTP status, bounded; fail early if PID died.
wait_http() {
  local url="$1" limit="$2" pid="${3:-}" deadline
  deadline=$(( $(date +%s) + limit ))
  while (( $(date +%s) < deadline )); do
    if curl -s -o /dev/null --max-time 2 "$url"; then return 0; fi
    if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
      echo "bench: process $pid exited before $url answered" >&2; return 1
    fi
    sleep 0.2
  done
  echo "bench: $url did not answer within ${limit}s" >&2
  return 1
}

# The header every table starts with: when, where, and how busy the machine was.
machine_header() {
  local cpu
  cpu="$(lscpu | sed -n 's/^Model name: *//p' | head -1)"
  echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "- machine: $(nproc) cores ($cpu), memory $(free -g | awk '/^Mem:/ {print $2}') GiB total / $(free -g | awk '/^Mem:/ {print $7}') GiB available"
  echo "- load: $(uptime | sed 's/.*load average: /load average /')"
  echo "- sdplane: $SDPLANE_BIN (git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'), working tree may differ)"
}

# Require the sdplane binary and that SUBCOMMAND is built (not the skeleton's "not built yet").
require_sdplane() {
  [[ -x "$SDPLANE_BIN" ]] || bench_die "no binary at $SDPLANE_BIN: run \`cargo build\` (or set SDPLANE_BIN)"
}

# Create bench/.venv once and install the named PyPI packages into it (idempotent).
ensure_venv() {
  if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV"
  fi
  local missing=()
  local spec name
  for spec in "$@"; do
    name="${spec%%[\[<>=]*}"
    "$VENV/bin/python" -m pip show -q "$name" >/dev/null 2>&1 || missing+=("$spec")
  done
  if (( ${#missing[@]} )); then
    echo "bench: installing ${missing[*]} into $VENV" >&2
    "$VENV/bin/python" -m pip install -q "${missing[@]}"
  fi
}

# ensure_apt PROGRAM PACKAGE...: install Debian packages when PROGRAM is missing.
ensure_apt() {
  local prog="$1"; shift
  command -v "$prog" >/dev/null 2>&1 && return 0
  echo "bench: installing $* from Debian" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# start_up MODELS_DIR LOG [EXTRA_ARGS...]: run `sdplane up` on free loopback ports with JSON logs;
# sets ROUTER_URL, ADMIN_URL and UP_PID, and returns once the admin API answers.
start_up() {
  local models="$1" log="$2"; shift 2
  local router_port admin_port
  router_port=$(free_port); admin_port=$(free_port)
  ROUTER_URL="http://127.0.0.1:$router_port"
  ADMIN_URL="http://127.0.0.1:$admin_port"
  "$SDPLANE_BIN" --log-format json up --models "$models" --listen "127.0.0.1:$router_port" \
    --admin-listen "127.0.0.1:$admin_port" "$@" >"$log" 2>&1 &
  UP_PID=$!
  bench_track "$UP_PID"
  wait_http "$ADMIN_URL/v1/apps" 60 "$UP_PID" || { tail -20 "$log" >&2; bench_die "sdplane up did not start"; }
}

# deploy_app SPEC_JSON: POST /v1/apps and print the app's name.
deploy_app() {
  local answer
  answer=$(curl -s -f -X POST -H 'content-type: application/json' -d "$1" "$ADMIN_URL/v1/apps") \
    || bench_die "deploy failed: $(curl -s -X POST -H 'content-type: application/json' -d "$1" "$ADMIN_URL/v1/apps")"
  python3 -c 'import json,sys; print(json.loads(sys.argv[1])["name"])' "$answer"
}

# wait_app_state APP STATE SECONDS: poll GET /v1/apps/APP until its state is STATE, bounded.
wait_app_state() {
  local app="$1" want="$2" limit="$3" deadline state
  deadline=$(( $(date +%s) + limit ))
  while (( $(date +%s) < deadline )); do
    state=$(curl -s "$ADMIN_URL/v1/apps/$app" | python3 -c 'import json,sys
try: print(json.load(sys.stdin).get("state",""))
except Exception: print("")')
    [[ "$state" == "$want" ]] && return 0
    [[ "$state" == failed ]] && bench_die "app $app failed: $(curl -s "$ADMIN_URL/v1/apps/$app")"
    kill -0 "$UP_PID" 2>/dev/null || bench_die "sdplane up exited"
    sleep 0.5
  done
  bench_die "app $app not $want within ${limit}s (last: $state)"
}
