#!/usr/bin/env bash
# Builds the release binaries and runs the whole fault suite (docs/RELIABILITY.md#fault-suite):
# real nats-server, gateway, resolver and s3s-fs processes killed, restarted and starved under a
# steady websocket load, every request counted. About 12 minutes; exits non-zero if a request
# was lost or answered twice. Arguments go to imgfetch-faults (see --help), e.g.
# --fault gateway-kill, or --smoke for the two-minute version.
# Writes target/imgfetch-faults.json and target/imgfetch-faults.md. Fault archive-full mounts a
# small tmpfs, which needs root (or CAP_SYS_ADMIN).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --release --locked --bins
if [ $# -eq 0 ]; then
  set -- --all
fi
exec target/release/imgfetch-faults --json target/imgfetch-faults.json \
  --markdown target/imgfetch-faults.md "$@"
