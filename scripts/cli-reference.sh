#!/usr/bin/env bash
# Regenerates docs/CLI.md from `sdplane <subcommand> --help` (tests/cli_reference.rs checks it).
set -euo pipefail
cd "$(dirname "$0")/.."
SDPLANE_UPDATE_DOCS=1 cargo test --test cli_reference docs_cli_reference_matches_the_binary_help -q
echo "wrote docs/CLI.md"
