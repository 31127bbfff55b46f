#!/usr/bin/env bash
# deploy_sd.sh — a thin client of the sdplane controller's admin API.
#
#   deploy_sd.sh --list                 model files: detected family, size, deployed app and state
#   deploy_sd.sh FILE [--wait] [opts]   deploy FILE (relative to the models folder); prints its URL
#   deploy_sd.sh --status               deployed apps and their state
#   deploy_sd.sh --delete APP           delete an app (stops its replicas)
#   deploy_sd.sh --help
#
# Needs bash, curl and POSIX tools; uses jq when installed, plain sed otherwise
# (SDPLANE_JSON=sed forces the sed path).
# Exit codes: 0 ok, 1 usage, 2 controller unreachable, 3 controller refused (its message is
# printed), 4 the app failed while waiting, 5 timed out waiting.

set -euo pipefail

SDPLANE_URL="${SDPLANE_URL:-http://127.0.0.1:8001}"
SDPLANE_ROUTER_URL="${SDPLANE_ROUTER_URL:-http://127.0.0.1:8000}"
SDPLANE_ADMIN_TOKEN="${SDPLANE_ADMIN_TOKEN:-}"
PROG="deploy_sd.sh"

usage() {
    cat <<EOF
Usage:
  $PROG --list                       list model files (family, size, deployed app, state)
  $PROG FILE [--wait] [--timeout S]  deploy FILE (or diffusers folder) from the models folder, print its URL
        [--min-replicas N] [--max-replicas N] [--idle-timeout S]
  $PROG --status                     list deployed apps and their state
  $PROG --delete APP                 delete APP and stop its replicas
  $PROG --help                       this text

  --wait       start the app now and show load progress until it is ready
  --timeout S  give up waiting after S seconds (default 600)

Environment:
  SDPLANE_URL          controller admin API   (now: $SDPLANE_URL)
  SDPLANE_ROUTER_URL   router, for printed URLs (now: $SDPLANE_ROUTER_URL)
  SDPLANE_ADMIN_TOKEN  bearer token when the controller requires one

Exit codes: 0 ok, 1 usage, 2 controller unreachable, 3 controller refused,
            4 app failed while waiting, 5 timed out waiting.
EOF
}

die() { # code message
    echo "$PROG: $2" >&2
    exit "$1"
}

# SDPLANE_JSON=sed forces the jq-free parser (what machines without jq run).
have_jq() { [ "${SDPLANE_JSON:-}" != sed ] && command -v jq >/dev/null 2>&1; }

# json_get JSON KEY: the value of the last "KEY" in a flat JSON object (strings unescaped).
json_get() {
    if have_jq; then
        printf '%s' "$1" | jq -r --arg k "$2" '[.. | objects | select(has($k)) | .[$k]] | last // empty | tostring'
        return
    fi
    local v
    v=$(printf '%s' "$1" | sed -n 's/.*"'"$2"'":"\(\([^"\\]\|\\.\)*\)".*/\1/p')
    if [ -z "$v" ]; then
        v=$(printf '%s' "$1" | sed -n 's/.*"'"$2"'":\([^,}"]*\).*/\1/p')
        [ "$v" = "null" ] && v=""
    fi
    printf '%s' "$v" | sed 's/\\"/"/g; s/\\n/\n/g; s/\\\\/\\/g'
}

# json_objects JSON KEY: one line per object of the array under KEY.
json_objects() {
    if have_jq; then
        printf '%s' "$1" | jq -c --arg k "$2" '.[$k][]'
        return
    fi
    printf '%s\n' "$1" | sed -n 's/.*"'"$2"'":\[\(.*\)].*/\1/p' | sed 's/},{"/}\n{"/g'
}

json_string() { # escape a shell string as a JSON string literal
    local s=${1//\\/\\\\}
    s=${s//\"/\\\"}
    printf '"%s"' "$s"
}

# api METHOD PATH [BODY] → sets CODE and BODY; exits 2 when the controller cannot be reached.
api() {
    local args=(-sS -X "$1" --max-time 30 -w '\n%{http_code}')
    if [ -n "$SDPLANE_ADMIN_TOKEN" ]; then
        args+=(-H "Authorization: Bearer $SDPLANE_ADMIN_TOKEN")
    fi
    if [ $# -ge 3 ]; then
        args+=(-H 'Content-Type: application/json' --data "$3")
    fi
    local out
    if ! out=$(curl "${args[@]}" "${SDPLANE_URL%/}$2" 2>&1); then
        local reason
        reason=$(printf '%s\n' "$out" | sed -n 's/^curl: //p' | head -n 1)
        die 2 "the controller is not reachable at $SDPLANE_URL (is \`sdplane up\` running?): $reason"
    fi
    CODE=${out##*$'\n'}
    BODY=${out%$'\n'*}
}

# Exit 3 with the controller's own message unless CODE is 2xx.
check() {
    case "$CODE" in
    2??) return 0 ;;
    esac
    local msg
    msg=$(json_get "$BODY" message)
    [ -n "$msg" ] || msg=$BODY
    die 3 "the controller answered $CODE: $msg"
}

human_size() {
    awk -v b="$1" 'BEGIN { split("B KiB MiB GiB TiB", u, " "); i = 1; while (b >= 1024 && i < 5) { b /= 1024; i++ }
        if (i == 1) printf "%d %s", b, u[i]; else printf "%.1f %s", b, u[i] }'
}

cmd_list() {
    api GET /v1/models
    check
    printf '%-40s %-18s %10s  %-28s %s\n' FILE FAMILY SIZE APP STATE
    local found=0 line file family size app state err
    while IFS= read -r line; do
        [ -n "$line" ] || continue
        found=1
        file=$(json_get "$line" file)
        family=$(json_get "$line" family_label)
        err=$(json_get "$line" error)
        [ -n "$family" ] || family="unusable"
        size=$(human_size "$(json_get "$line" size_bytes)")
        app=$(json_get "$line" deployed_app)
        state=$(json_get "$line" app_state)
        if [ -z "$app" ]; then
            app="($(json_get "$line" app_name))"
            state="not deployed"
        fi
        printf '%-40s %-18s %10s  %-28s %s\n' "$file" "$family" "$size" "$app" "$state"
        if [ -n "$err" ]; then
            printf '    %s\n' "$err"
        fi
    done < <(json_objects "$BODY" models)
    if [ "$found" = 0 ]; then
        echo "(no .safetensors files or diffusers folders in $(json_get "$BODY" models_dir))"
    fi
}

cmd_status() {
    api GET /v1/apps
    check
    printf '%-28s %-15s %-8s %-10s %s\n' APP STATE READY IDLE MODEL
    local found=0 line name state ready total idle reason
    while IFS= read -r line; do
        [ -n "$line" ] || continue
        found=1
        name=$(json_get "$line" name)
        state=$(json_get "$line" state)
        ready=$(json_get "$line" replicas_ready)
        total=$(json_get "$line" replicas_total)
        idle=$(json_get "$line" idle_seconds)
        [ -n "$idle" ] && idle=$(printf '%.0fs' "$idle") || idle="-"
        printf '%-28s %-15s %-8s %-10s %s\n' "$name" "$state" "$ready/$total" "$idle" "$(json_get "$line" model)"
        reason=$(json_get "$line" reason)
        if [ -n "$reason" ]; then
            printf '    %s\n' "$reason"
        fi
    done < <(json_objects "$BODY" apps)
    if [ "$found" = 0 ]; then
        echo "(no apps deployed; deploy one with: $PROG FILE)"
    fi
}

cmd_delete() {
    api DELETE "/v1/apps/$1"
    check
    echo "deleted $1"
}

progress_bar() { # fraction label
    awk -v p="$1" -v label="$2" 'BEGIN { if (p < 0) p = 0; if (p > 1) p = 1; n = int(p * 30 + 0.5);
        bar = ""; for (i = 0; i < 30; i++) bar = bar (i < n ? "#" : "-");
        printf "\r[%s] %3d%% %-20s", bar, p * 100, label }' >&2
}

wait_ready() { # app timeout_seconds
    local app=$1 timeout=$2 start state progress reason
    # Waking the app is the router's job on a request; here the same internal call starts it.
    api POST "/internal/v1/apps/$app/activate"
    check
    start=$(date +%s)
    while :; do
        api GET "/v1/apps/$app"
        check
        state=$(json_get "$BODY" state)
        progress=$(json_get "$BODY" progress)
        case "$state" in
        ready)
            progress_bar 1 ready
            echo >&2
            return 0
            ;;
        failed)
            echo >&2
            reason=$(json_get "$BODY" reason)
            die 4 "app $app failed to start: $reason"
            ;;
        loading) progress_bar "${progress:-0}" loading ;;
        *) progress_bar 0 "$state" ;;
        esac
        if [ $(($(date +%s) - start)) -ge "$timeout" ]; then
            echo >&2
            die 5 "app $app not ready after ${timeout}s (state: $state)"
        fi
        sleep 0.5
    done
}

cmd_deploy() {
    local file=$1
    shift
    local wait=0 timeout=600 extra=""
    while [ $# -gt 0 ]; do
        case "$1" in
        --wait) wait=1 ;;
        --timeout)
            [ $# -ge 2 ] || die 1 "--timeout needs a number of seconds"
            timeout=$2
            shift
            ;;
        --min-replicas | --max-replicas | --idle-timeout)
            [ $# -ge 2 ] || die 1 "$1 needs a value"
            case "$2" in '' | *[!0-9]*) die 1 "$1 takes a whole number, not '$2'" ;; esac
            case "$1" in
            --min-replicas) extra="$extra,\"min_replicas\":$2" ;;
            --max-replicas) extra="$extra,\"max_replicas\":$2" ;;
            --idle-timeout) extra="$extra,\"idle_timeout_s\":$2" ;;
            esac
            shift
            ;;
        *) die 1 "unknown option '$1' (see --help)" ;;
        esac
        shift
    done
    case "$timeout" in '' | *[!0-9]*) die 1 "--timeout takes whole seconds, not '$timeout'" ;; esac
    api POST /v1/apps "{\"model\":$(json_string "$file")$extra}"
    check
    local app path verb
    app=$(json_get "$BODY" name)
    path=$(json_get "$BODY" url_path)
    if [ "$CODE" = 201 ]; then verb="deployed"; else verb="already deployed (spec updated)"; fi
    echo "$verb $file as app $app (state: $(json_get "$BODY" state))"
    if [ "$wait" = 1 ]; then
        wait_ready "$app" "$timeout"
    fi
    local url="${SDPLANE_ROUTER_URL%/}$path"
    echo "URL: $url"
    echo "Try:"
    echo "  curl -X POST $url -H 'Content-Type: application/json' -H 'Prefer: wait=120' \\"
    echo "       -d '{\"prompt\": \"a beautiful landscape\", \"num_inference_steps\": 20}'"
}

main() {
    [ $# -gt 0 ] || {
        usage >&2
        exit 1
    }
    command -v curl >/dev/null 2>&1 || die 1 "curl is required"
    case "$1" in
    -h | --help) usage ;;
    --list)
        [ $# -eq 1 ] || die 1 "--list takes no arguments"
        cmd_list
        ;;
    --status)
        [ $# -eq 1 ] || die 1 "--status takes no arguments"
        cmd_status
        ;;
    --delete)
        [ $# -eq 2 ] || die 1 "--delete takes one app name"
        cmd_delete "$2"
        ;;
    -*) die 1 "unknown option '$1' (see --help)" ;;
    *) cmd_deploy "$@" ;;
    esac
}

main "$@"
