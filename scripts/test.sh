#!/usr/bin/env bash
# The whole test suite: installs its tools, builds once (dev profile, dependencies optimised),
# runs every Rust test (unit, HTTP over loopback, real child processes, Prometheus scraping) and
# the Kubernetes manifest and chart checks.
set -euo pipefail
cd "$(dirname "$0")/.."

tools_bin=$(scripts/test-tools.sh | tail -n 1)
export PATH="$tools_bin:$PATH"
# Tests that need promtool, prometheus or schemathesis fail instead of skipping when this is set.
export SDPLANE_REQUIRE_TEST_TOOLS=1

cargo test --workspace --all-targets --no-fail-fast
cargo test --workspace --doc

if [ -f tests/k8s/validate_objects.py ]; then
  python3 tests/k8s/validate_objects.py
fi
if [ -f tests/k8s/lint_chart.py ]; then
  python3 tests/k8s/lint_chart.py
fi
echo "scripts/test.sh: all test stages passed"
