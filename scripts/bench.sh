#!/usr/bin/env bash
# Builds the release binaries and runs the full benchmark (docs/PERFORMANCE.md): the pipeline
# against the bare JetStream ceiling and the store floor, in one run on this machine.
# Arguments go to imgfetch-bench (see --help), e.g. --sizes 64K --seconds 10.
#
# --compare REV: A/B. Builds the gateway and resolver of REV (any git revision) in a temporary
# worktree, then runs the same rows on REV's binaries (A) and this tree's (B) alternately,
# A B then B A (--rounds, default 2), each round with its own ceiling, and prints per row
# both ratios and B/A. REV's binaries are kept in target/compare/bin-<commit>, and its build directory
# (target/compare/build) is reused, so a second comparison rebuilds only what changed. The
# worktree is removed when the build ends. Example:
#   ./scripts/bench.sh --compare HEAD~1 --sizes 64K --seconds 4 --large-size 256M
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

compare=
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --compare) [ $# -ge 2 ] || { echo "bench.sh: --compare needs a revision" >&2; exit 64; }
               compare=$2; shift 2 ;;
    --compare=*) compare=${1#--compare=}; shift ;;
    *) args+=("$1"); shift ;;
  esac
done

cargo build --release --locked --bins
if [ -z "$compare" ]; then
  exec target/release/imgfetch-bench "${args[@]}"
fi

rev=$(git rev-parse --verify --quiet "${compare}^{commit}") \
  || { echo "bench.sh: $compare is not a revision of this repository" >&2; exit 64; }
bins="$PWD/target/compare/bin-$rev"
if [ ! -x "$bins/imgfetch-gateway" ] || [ ! -x "$bins/imgfetch-resolver" ]; then
  tree=$(mktemp -d "${TMPDIR:-/tmp}/imgfetch-compare.XXXXXX")
  git worktree add --quiet --detach "$tree" "$rev"
  trap 'git worktree remove --force "$tree"' EXIT
  echo "bench.sh: building $compare ($rev) in $tree" >&2
  (cd "$tree" && cargo build --release --locked -p imgfetch-gateway -p imgfetch-resolver \
     --target-dir "$OLDPWD/target/compare/build")
  mkdir -p "$bins"
  cp target/compare/build/release/imgfetch-gateway target/compare/build/release/imgfetch-resolver "$bins/"
fi
echo "bench.sh: A = $compare ($rev), B = this tree" >&2
target/release/imgfetch-bench --baseline-bin-dir "$bins" "${args[@]}"
