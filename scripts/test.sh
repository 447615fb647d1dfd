#!/usr/bin/env bash
# Runs every check imgfetch has: formatting, lints, unit and end-to-end tests against a real
# nats-server and a real S3 server (both installed here when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
