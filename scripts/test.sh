#!/usr/bin/env bash
# Runs every check imgfetch has: formatting, lints, unit and end-to-end tests against a real
# nats-server and a real S3 server, and the web viewer in headless Chromium (all three installed
# here when missing), then the Helm chart, offline (scripts/check-deploy.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
IMGFETCH_SETUP_BROWSER=1 source scripts/setup.sh

cargo fmt --all -- --check
# No two modules of a crate import each other (the layout in each crate's lib.rs).
python3 scripts/module-graph.py
cargo clippy --workspace --all-targets --locked -- -D warnings
# The suite takes a few minutes; a test that hangs fails the run here, with the test named in
# cargo's "has been running for over 60 seconds" line, instead of using up CI's 90 minutes.
TEST_LIMIT="${IMGFETCH_TEST_LIMIT:-40m}"
status=0
timeout --kill-after=30s "$TEST_LIMIT" cargo test --workspace --locked || status=$?
if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
    echo "test.sh: cargo test did not finish within $TEST_LIMIT; a test above is stuck" >&2
fi
[ "$status" -eq 0 ] || exit "$status"
scripts/check-deploy.sh
