#!/usr/bin/env bash
# Builds the workspace (the same build the tests use) and starts sesam-stack:
# the whole pipeline in one process, on embedded defaults. Arguments are passed
# to sesam-stack (`./scripts/stack.sh --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
cargo build "${SESAM_BUILD_ARGS[@]}"
exec "$CARGO_TARGET_DIR/release/sesam-stack" "$@"
