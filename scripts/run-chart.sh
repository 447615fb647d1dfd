#!/usr/bin/env bash
# Runs what the Helm chart renders, for real, on this machine with podman and no cluster
# (docs/DEPLOY.md, "Running the chart without a cluster"):
#   run       helm template with deploy/helm/values-two-zones.yaml and values-secure.yaml (client
#             tokens, TLS to NATS, bcrypt passwords), then every rendered pod started from the
#             images scripts/images.sh builds, NATS from deploy/nats-values.yaml's settings, S3
#             from s3s-fs; then HTTP, NATS-CLI-style and websocket fetches on both zones, the
#             probes, the metrics ports, the archive, TLS on every NATS connection, and a rolling
#             replacement of every Deployment and StatefulSet under load with nothing lost;
#   creds     the same with nats.auth.mode=creds: NATS in operator mode, every binary logging in
#             with a .creds file carrying its user's permissions;
#   leaf      deploy/helm/values-leaf-zone.yaml: a zone behind a leaf node that dials the hub
#             over TLS, fetches on both zones, and the rolling replacement, leaf node included;
#   upgrade   the previous release's chart and images (PREVIOUS_RELEASE below) started the same
#             way, then today's applied on the same NATS and stores under load: nothing lost,
#             the stream and consumers keep their data;
#   all       all four (the default).
#
#   scripts/run-chart.sh [run|creds|leaf|upgrade|all]
#
# Run it as root, in a shell where cargo is on PATH (`sudo -i`, not `sudo scripts/...`, whose
# reset PATH has no ~/.cargo/bin), after scripts/images.sh (it runs that itself when this version's images are
# missing). The first upgrade run also builds the previous release's images from git (a release
# build of that commit in target/previous-release, about 10 minutes once). Part of the long
# suite (scripts/long-tests.sh), not of scripts/test.sh. Stops everything it started, whatever
# happens (every podman object of a run is labelled imgfetch-run=<id> and removed by that label);
# IMGFETCH_RUN_CHART_KEEP=1 keeps the work directory (pods' logs, renderings, reports).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
what=${1:-all}
case "$what" in run | creds | leaf | upgrade | all) ;; *) echo "usage: $0 [run|creds|leaf|upgrade|all]" >&2; exit 2 ;; esac

# The release before this one: its chart and images are what `upgrade` starts from.
PREVIOUS_RELEASE=09dad67
PREVIOUS_VERSION=0.1.0

say() { echo "run-chart: $*" >&2; }
die() { say "FAILED: $*"; exit 1; }
t0=$(date +%s)
[[ $(id -u) -eq 0 ]] || die "run as root (the root containers store, as scripts/images.sh)"

work=$(mktemp -d /var/tmp/imgfetch-run-chart.XXXXXX)
# Names and labels every podman pod, container and network of this run (imgfetch-run=<id>).
run_id=imgfetch-run-$$
prev_tree=
py_pid=
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  # The runner stops its pods itself (SIGTERM unwinds it); then whatever it could not, by label.
  if [[ -n "$py_pid" ]]; then kill -TERM "$py_pid" 2>/dev/null || true; wait "$py_pid" 2>/dev/null || true; fi
  local pods
  pods=$(podman pod ps -q --filter "label=imgfetch-run=$run_id" 2>/dev/null || true)
  if [[ -n "$pods" ]]; then
    say "removing pods a run left behind: $(echo "$pods" | wc -l)"
    # shellcheck disable=SC2086
    podman pod rm -f -t 5 $pods >/dev/null 2>&1 || true
  fi
  podman network rm -f "$run_id" >/dev/null 2>&1 || true
  rm -rf "/dev/shm/$run_id"
  if [[ -n "$prev_tree" ]]; then git worktree remove --force "$prev_tree" >/dev/null 2>&1 || true; fi
  if [[ "${IMGFETCH_RUN_CHART_KEEP:-0}" == 1 ]]; then say "kept $work"; else rm -rf "$work"; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# nats-server and s3s-fs (and openssl), as the tests use them.
# shellcheck source=scripts/setup.sh
source scripts/setup.sh
# helm and PyYAML under .local/tools; the chart's offline checks pass first.
scripts/check-deploy.sh >"$work/check-deploy.log" 2>&1 || { tail -n 30 "$work/check-deploy.log" >&2; die "scripts/check-deploy.sh failed"; }
export PYTHONPATH="$root/.local/tools/python${PYTHONPATH:+:$PYTHONPATH}"
HELM=$root/.local/tools/layer/helm/helm

version=$(cargo metadata --no-deps --format-version 1 --locked |
  python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "imgfetch-gateway"))')
if ! podman image exists "localhost/imgfetch-gateway:$version" || ! podman image exists "localhost/imgfetch-resolver:$version"; then
  say "no images of $version yet: scripts/images.sh"
  scripts/images.sh
fi

# podman's default runtime may not run here (scripts/images.sh says why); the same fallback,
# for every container of the run, through a containers.conf of the run's own.
if ! probe=$(podman run --rm --network none localhost/imgfetch-base:bookworm true 2>&1); then
  say "podman's default runtime fails here ($probe); using runc with the host's open-files limit"
  nofile=$(ulimit -Hn)
  [[ "$nofile" == unlimited ]] && nofile=1048576
  cat >"$work/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=4096:4096"]
[engine]
runtime = "runc"
EOF
  export CONTAINERS_CONF=$work/containers.conf
fi

# NATS: the run pulls no image from a registry, so nats-server (a static binary) in an image of
# its own, run as the chart's pods are (non-root, read-only root).
nats_version=$("$NATS_SERVER_BIN" --version | sed -n 's/.*v\([0-9.]*\).*/\1/p')
NATS_IMAGE=localhost/imgfetch-nats:$nats_version
if ! podman image exists "$NATS_IMAGE"; then
  mkdir -p "$work/nats-image"
  # NATS_SERVER_BIN may be a wrapper (a pyenv shim execs the real one): the executable of a
  # running nats-server is the binary itself.
  "$NATS_SERVER_BIN" -a 127.0.0.1 -p -1 -m 0 >/dev/null 2>&1 &
  probe_pid=$!
  nats_exe=
  for _ in $(seq 1 50); do
    nats_exe=$(readlink -f "/proc/$probe_pid/exe" 2>/dev/null || true)
    [[ "$(basename "$nats_exe")" == nats-server ]] && break
    sleep 0.1
  done
  kill "$probe_pid" 2>/dev/null || true
  wait "$probe_pid" 2>/dev/null || true
  [[ "$(basename "$nats_exe")" == nats-server ]] || die "cannot find the nats-server executable behind $NATS_SERVER_BIN"
  cp "$nats_exe" "$work/nats-image/nats-server"
  file_out=$(od -An -c -N4 "$work/nats-image/nats-server" | tr -d ' ')
  [[ "$file_out" == *ELF* ]] || die "$nats_exe is not an executable"
  buildah build --quiet ${CONTAINERS_CONF:+--runtime runc} -f scripts/run_chart/Containerfile.nats \
    -t "$NATS_IMAGE" "$work/nats-image" >/dev/null
  say "built $NATS_IMAGE"
fi

say "release binaries: the imgfetch CLI and imgfetch-faults"
cargo build --release --locked -p imgfetch-cli -p imgfetch-bench --bins >&2
bin=${CARGO_TARGET_DIR:-$root/target}/release
"$bin/imgfetch-faults" --write-corpus "$work/corpus" >/dev/null

common=(--helm "$HELM" --nats-image "$NATS_IMAGE" --base-image localhost/imgfetch-base:bookworm
  --s3s-fs "$(readlink -f "$S3S_FS_BIN")" --cli "$bin/imgfetch" --faults "$bin/imgfetch-faults"
  --corpus "$work/corpus"
  --gateway-image "localhost/imgfetch-gateway:$version" --resolver-image "localhost/imgfetch-resolver:$version")

# The runner in the background, so that a signal reaches the trap at once (bash runs traps only
# between foreground commands), which then stops the runner and waits for it to clean up.
run_py() {
  local rc=0
  python3 scripts/run-chart.py "$@" --run-id "$run_id" &
  py_pid=$!
  wait "$py_pid" || rc=$?
  py_pid=
  return "$rc"
}

for scenario in run creds leaf; do
  if [[ "$what" == "$scenario" || "$what" == all ]]; then
    mkdir -p "$work/$scenario"
    run_py "$scenario" "${common[@]}" --work "$work/$scenario"
  fi
done

if [[ "$what" == upgrade || "$what" == all ]]; then
  prev=localhost/imgfetch-gateway:$PREVIOUS_VERSION
  if ! podman image exists "$prev" || ! podman image exists "localhost/imgfetch-resolver:$PREVIOUS_VERSION"; then
    say "building the images of $PREVIOUS_VERSION ($PREVIOUS_RELEASE) with that commit's scripts/images.sh"
    prev_tree=$work/previous
    git worktree add --quiet --detach "$prev_tree" "$PREVIOUS_RELEASE"
    (cd "$prev_tree" && CARGO_TARGET_DIR=$root/target/previous-release scripts/images.sh)
  fi
  mkdir -p "$work/old-chart"
  git archive "$PREVIOUS_RELEASE" deploy/helm | tar -x -C "$work/old-chart"
  mkdir -p "$work/upgrade"
  run_py upgrade "${common[@]}" --work "$work/upgrade" \
    --old-chart "$work/old-chart/deploy/helm/imgfetch" \
    --old-gateway-image "$prev" --old-resolver-image "localhost/imgfetch-resolver:$PREVIOUS_VERSION"
fi
say "all good in $(($(date +%s) - t0)) s"
