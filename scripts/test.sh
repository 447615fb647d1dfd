#!/usr/bin/env bash
# Runs every check imgfetch has: formatting, lints, unit and end-to-end tests against a real
# nats-server and a real S3 server, and the web viewer in headless Chromium (all three installed
# here when missing), then the Helm chart, offline (scripts/check-deploy.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
IMGFETCH_SETUP_BROWSER=1 source scripts/setup.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
scripts/check-deploy.sh
