#!/usr/bin/env bash
# The long suite: what the everyday run (scripts/test.sh) leaves out because it takes minutes.
# First the tests marked `#[ignore = "long suite: ..."]` (images of 50 and 300 MB through every
# path), in a release build; then the full fault suite (scripts/faults.sh, about 9 minutes),
# which takes the fault suite's options, e.g. --fault gateway-kill.
#
#   ./scripts/long-tests.sh                # both
#   IMGFETCH_LONG_SKIP_FAULTS=1 ./scripts/long-tests.sh   # the long tests only
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

cargo test --release --workspace --locked -- --ignored
if [ -z "${IMGFETCH_LONG_SKIP_FAULTS:-}" ]; then
    scripts/faults.sh "$@"
fi
