#!/usr/bin/env bash
# Installs what the test suite drives besides cargo, idempotently:
#   - Debian `prometheus` (promtool validates /metrics; a real server scrapes in the e2e test)
#   - a Python venv (.venv-test) with schemathesis (API fuzzing), kubernetes-validate and helm-sdkpy (chart lint)
# Prints the venv's bin folder on the last line so callers can put it on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
  echo "test-tools: need root (or sudo) to run: $*" >&2; return 1; fi; }

if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  echo "test-tools: installing Debian package prometheus" >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus curl >&2
fi

# Debian ships `python3 -m venv` in a separate package.
if ! command -v python3 >/dev/null || ! python3 -m venv --help >/dev/null 2>&1; then
  echo "test-tools: installing python3 and python3-venv" >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-venv >&2
fi

venv=.venv-test
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" >&2
fi
stamp="$venv/.installed-v1"
if [ ! -f "$stamp" ]; then
  echo "test-tools: installing Python test tools into $venv" >&2
  "$venv/bin/pip" install -q --upgrade pip >&2
  "$venv/bin/pip" install -q schemathesis kubernetes-validate pyyaml >&2
  # helm-sdkpy declares Python >= 3.12 but works on 3.11 (its Helm engine is a bundled Go library).
  "$venv/bin/pip" install -q --ignore-requires-python helm-sdkpy >&2
  touch "$stamp"
fi
echo "$(pwd)/$venv/bin"
