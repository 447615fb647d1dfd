#!/usr/bin/env bash
# The long suite: what the everyday run (scripts/test.sh) leaves out because it takes minutes.
# First the tests marked `#[ignore = "long suite: ..."]` (images of 50 and 300 MB through every
# path), in a release build; then the full fault suite (scripts/faults.sh, about 12 minutes),
# which takes the fault suite's options, e.g. --fault gateway-kill; then the benchmark's
# leaf-zone rows over a slow link (0, 10 and 50 ms added, 1, 64 and 512 clients, one 256 MiB
# image; about 3 minutes; figures, not pass or fail: docs/PERFORMANCE.md reads them); then, as
# root, the Helm chart's rendering run from the images with podman (scripts/run-chart.sh, about
# 8 minutes with the images built; docs/DEPLOY.md, "Running the chart without a cluster").
#
#   ./scripts/long-tests.sh                # all four
#   IMGFETCH_LONG_SKIP_FAULTS=1 ./scripts/long-tests.sh   # without the fault suite
#   IMGFETCH_LONG_SKIP_LEAF_BENCH=1 ./scripts/long-tests.sh   # without the leaf rows
#   IMGFETCH_LONG_SKIP_CHART=1 ./scripts/long-tests.sh   # without the chart run
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

cargo test --release --workspace --locked -- --ignored
if [ -z "${IMGFETCH_LONG_SKIP_FAULTS:-}" ]; then
    scripts/faults.sh "$@"
fi
if [ -z "${IMGFETCH_LONG_SKIP_LEAF_BENCH:-}" ]; then
    cargo build --release --locked --bins
    target/release/imgfetch-bench --leaf-only --leaf-delays 0,10,50 --leaf-concurrency 1,64,512 \
        --sizes 64K --seconds 4 --warmup 1 --large-size 256M --json target/imgfetch-bench-leaf.json
fi
if [ -z "${IMGFETCH_LONG_SKIP_CHART:-}" ]; then
    scripts/run-chart.sh all
fi
