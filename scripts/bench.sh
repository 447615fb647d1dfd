#!/usr/bin/env bash
# Builds the release binaries and runs the full benchmark (docs/PERFORMANCE.md): the pipeline
# against the bare JetStream ceiling and the store floor, in one run on this machine.
# Arguments go to imgfetch-bench (see --help), e.g. --sizes 64K --seconds 10.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --release --locked --bins
exec target/release/imgfetch-bench "$@"
