#!/usr/bin/env bash
# Builds imgfetch's two container images without a container daemon or a registry, and runs
# them for real (docs/DEPLOY.md, "Build the images"):
#   1. the base image localhost/imgfetch-base:bookworm: a `debootstrap --variant=minbase`
#      Debian bookworm with ca-certificates, trimmed like debian:bookworm-slim and imported into
#      the containers store; made once, reused afterwards (IMGFETCH_REBUILD_BASE=1 remakes it);
#   2. the release binaries, built on this host with cargo;
#   3. localhost/imgfetch-gateway:<version> and localhost/imgfetch-resolver:<version>, with
#      buildah from deploy/Containerfile.prebuilt;
#   4. with podman: `--version` of each image, then one fetch through the containers (nats-server
#      on the host with the roles of nats.conf, resolver serving samples/harbor read-only,
#      gateway), compared byte for byte with the sample; both containers run as 65532:65532
#      with a read-only root filesystem.
# Takes minutes, so it is a separate check, not part of scripts/test.sh. Run it as root
# (debootstrap, and the root containers store); it installs buildah, podman, runc and
# debootstrap with apt-get when missing. IMGFETCH_DEBIAN_MIRROR overrides the Debian mirror
# (default http://deb.debian.org/debian). Exits non-zero on any failure and stops what it
# started.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

BASE_IMAGE=localhost/imgfetch-base:bookworm
MIRROR=${IMGFETCH_DEBIAN_MIRROR:-http://deb.debian.org/debian}
target_dir=${CARGO_TARGET_DIR:-$root/target}

say() { echo "images: $*" >&2; }
die() { say "FAILED: $*"; exit 1; }
t0=$(date +%s)
step_name=
step_start=$t0
step() { # closes the previous step with its duration, then names the next one (if any)
  local now
  now=$(date +%s)
  [[ -z "$step_name" ]] || say "-- $step_name: $((now - step_start)) s"
  step_name=${1:-}
  step_start=$now
  [[ -z "$step_name" ]] || say "== $step_name"
}

[[ $(id -u) -eq 0 ]] || die "run as root: debootstrap and the root containers store need it"

# Everything this run starts, stopped on exit whatever happens.
work=$(mktemp -d /var/tmp/imgfetch-images.XXXXXX)
containers=()
nats_pid=
ctr= # buildah's working container while the base image is made
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [[ -n "$ctr" ]]; then buildah rm "$ctr" >/dev/null 2>&1 || true; fi
  for cid in "${containers[@]}"; do podman rm --force --time 10 "$cid" >/dev/null 2>&1 || true; done
  if [[ -n "$nats_pid" ]]; then kill "$nats_pid" 2>/dev/null || true; wait "$nats_pid" 2>/dev/null || true; fi
  rm -rf "$work"
  if ((${#containers[@]})) || [[ -n "$nats_pid" ]]; then
    say "stopped ${#containers[@]} container(s) and nats-server"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "tools"
missing=()
for tool in buildah podman runc debootstrap curl; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
  say "installing ${missing[*]} (apt-get)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } >&2
fi
say "$(buildah --version); $(podman --version); $(runc --version | head -n1)"
# Only nats-server is needed here; scripts/setup.sh installs it (and the test tools) if missing.
NATS_SERVER_BIN=${NATS_SERVER_BIN:-$(command -v nats-server || true)}
# shellcheck source=scripts/setup.sh
[[ -n "$NATS_SERVER_BIN" ]] || source scripts/setup.sh
say "$("$NATS_SERVER_BIN" --version)"

# The runtime parts of deploy/Dockerfile and deploy/Containerfile.prebuilt must not drift apart.
for f in deploy/Dockerfile deploy/Containerfile.prebuilt; do
  grep -q '^USER 65532:65532$' "$f" || die "$f does not run as USER 65532:65532"
  grep -q 'useradd --system --uid 65532 --gid 65532' "$f" || die "$f does not create uid 65532"
done
diff <(sed -n '/^FROM runtime AS resolver/,$p' deploy/Dockerfile) \
  <(sed -n '/^FROM runtime AS resolver/,$p' deploy/Containerfile.prebuilt) >&2 ||
  die "the resolver and gateway stages of deploy/Dockerfile and deploy/Containerfile.prebuilt differ"

step "base image $BASE_IMAGE"
if [[ "${IMGFETCH_REBUILD_BASE:-0}" != 1 ]] && buildah inspect --type image "$BASE_IMAGE" >/dev/null 2>&1; then
  say "reusing $BASE_IMAGE (IMGFETCH_REBUILD_BASE=1 makes it again)"
else
  rootfs=$work/rootfs
  say "debootstrap --variant=minbase --include=ca-certificates bookworm from $MIRROR"
  if ! debootstrap --variant=minbase --include=ca-certificates bookworm "$rootfs" "$MIRROR" \
    >"$work/debootstrap.log" 2>&1; then
    tail -n 20 "$work/debootstrap.log" >&2
    die "debootstrap failed (log above)"
  fi
  # What debian:bookworm-slim leaves out too: documentation but the copyright files, manual
  # pages, translations, apt's package lists and downloaded packages, logs. Device nodes, the
  # host name and the resolver configuration come from the container runtime, not the image.
  (
    cd "$rootfs"
    rm -rf var/lib/apt/lists/* var/cache/apt/archives/*.deb var/cache/apt/*.bin \
      var/cache/debconf/*-old usr/share/man/* usr/share/info/* usr/share/locale/* \
      dev/* proc/* sys/* run/*
    find usr/share/doc -mindepth 1 ! -type d ! -name copyright -delete
    find usr/share/doc -mindepth 1 -type d -empty -delete
    find var/log -type f -delete
    : >etc/hostname
    : >etc/resolv.conf
  )
  tar --numeric-owner -C "$rootfs" -cf "$work/rootfs.tar" .
  rm -rf "$rootfs"
  ctr=$(buildah from scratch)
  buildah add --quiet "$ctr" "$work/rootfs.tar" / >/dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd /bin/bash \
    --label org.opencontainers.image.description="Debian bookworm minbase with ca-certificates (debootstrap)" \
    "$ctr"
  buildah commit --quiet --rm "$ctr" "$BASE_IMAGE" >/dev/null
  ctr=
  rm -f "$work/rootfs.tar"
  say "made $BASE_IMAGE"
fi

# podman's defaults do not run everywhere: its default open-files limit for containers
# (1048576) fails where that is above the host's hard limit and the runtime may not raise it (no
# CAP_SYS_RESOURCE), and crun, its default runtime, refuses a host whose cgroup v2 hierarchy is
# mounted next to v1 controllers and has controllers of its own ("cgroups in hybrid mode not
# supported"). Use the defaults when they work, else runc with the host's open-files limit and a
# process limit (given one limit, podman sets the other to 1048576, again above the host's).
step "container runtime"
run_flags=()
build_flags=()
if probe=$(podman run --rm --network none "$BASE_IMAGE" true 2>&1); then
  say "podman's default runtime works"
else
  say "podman's default runtime fails here: $probe"
  nofile=$(ulimit -Hn)
  [[ "$nofile" == unlimited ]] && nofile=1048576
  run_flags=(--runtime runc --ulimit "nofile=$nofile:$nofile" --ulimit nproc=4096:4096)
  build_flags=(--runtime runc)
  probe=$(podman run --rm --network none "${run_flags[@]}" "$BASE_IMAGE" true 2>&1) ||
    die "podman cannot run containers here, with runc either: $probe"
  say "using ${run_flags[*]}"
fi

step "release binaries (cargo build --release)"
# The images hold only the two servers. The CLI is built along so that the one release build
# serves both: building the two without it unifies dependency features differently and
# recompiles most of the tree.
cargo build --release --locked -p imgfetch-gateway -p imgfetch-resolver -p imgfetch-cli --bins
context=$work/context
mkdir -p "$context"
# Stripped of their symbol tables (a panic's backtrace then shows addresses; symbolize them with
# the unstripped binaries of the same build, kept in the target directory).
install -s -m 0755 -t "$context" "$target_dir/release/imgfetch-gateway" "$target_dir/release/imgfetch-resolver"
version=$("$context/imgfetch-gateway" --version | awk '{print $2}')
[[ -n "$version" ]] || die "imgfetch-gateway --version printed no version"
GATEWAY_IMAGE=localhost/imgfetch-gateway:$version
RESOLVER_IMAGE=localhost/imgfetch-resolver:$version
say "binaries: imgfetch-gateway $(stat -c %s "$context/imgfetch-gateway") bytes, imgfetch-resolver $(stat -c %s "$context/imgfetch-resolver") bytes"

step "images $GATEWAY_IMAGE and $RESOLVER_IMAGE (buildah)"
for target in gateway resolver; do
  image=localhost/imgfetch-$target:$version
  buildah build --quiet --layers "${build_flags[@]}" --build-arg "BASE=$BASE_IMAGE" \
    -f deploy/Containerfile.prebuilt --target "$target" -t "$image" "$context" >/dev/null
  say "built $image"
done
# The configuration the manifests rely on.
want_config() { # image, go template, expected value
  local got
  got=$(podman image inspect --format "$2" "$1")
  [[ "$got" == "$3" ]] || die "$1: $2 is '$got', not '$3'"
}
for image in "$GATEWAY_IMAGE" "$RESOLVER_IMAGE"; do
  want_config "$image" '{{.Config.User}}' 65532:65532
done
want_config "$GATEWAY_IMAGE" '{{json .Config.Entrypoint}}' '["/usr/local/bin/imgfetch-gateway"]'
want_config "$RESOLVER_IMAGE" '{{json .Config.Entrypoint}}' '["/usr/local/bin/imgfetch-resolver"]'
want_config "$GATEWAY_IMAGE" '{{json .Config.ExposedPorts}}' '{"8080/tcp":{}}'
gateway_env=$(podman image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$GATEWAY_IMAGE")
grep -qx 'IMGFETCH_LISTEN=0.0.0.0:8080' <<<"$gateway_env" ||
  die "$GATEWAY_IMAGE does not set IMGFETCH_LISTEN=0.0.0.0:8080"

# Both run as in deploy/: non-root, read-only root filesystem, no capabilities, no privilege
# escalation; and no tmpfs either, which podman would otherwise add on /tmp, /var/tmp and /run.
secure=(--user 65532:65532 --read-only --read-only-tmpfs=false --cap-drop ALL
  --security-opt no-new-privileges "${run_flags[@]}")

step "--version"
for image in "$GATEWAY_IMAGE" "$RESOLVER_IMAGE"; do
  out=$(podman run --rm --network none "${secure[@]}" "$image" --version) ||
    die "$image --version failed"
  [[ "$out" == *" $version" ]] || die "$image --version printed '$out'"
  say "$image: $out"
done
# Each image holds its own binary only.
for pair in "$GATEWAY_IMAGE imgfetch-resolver" "$RESOLVER_IMAGE imgfetch-gateway"; do
  read -r image other <<<"$pair"
  if podman run --rm --network none "${secure[@]}" --entrypoint "/usr/local/bin/$other" \
    "$image" --version >/dev/null 2>&1; then
    die "$image also holds $other"
  fi
done
say "each image holds its own binary only"

step "one fetch through the containers"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
nats_port=$(free_port)
http_port=$(free_port)
resolver_port=$(free_port)
# nats.conf's roles, on a free port and a store of this run's own. The streams reserve 256 MB
# each; a fixed file-store limit (as the tests' servers have) lets them be created on a host
# short of free disk, where JetStream's default limit (a share of the free space) would not.
mkdir -p "$work/nats" "$work/secrets" "$work/archive" "$work/fetched"
{
  echo "listen: 127.0.0.1:$nats_port"
  echo "max_payload: 8MB"
  echo "jetstream { store_dir: \"$work/nats\", max_file_store: 1GB, max_memory_store: 64MB }"
  sed -n '/^# BEGIN imgfetch roles/,/^# END imgfetch roles/p' nats.conf
} >"$work/nats.conf"
dev_password() { awk -v u="$1" '$1 == "user:" && $2 == u { getline; print $2; exit }' nats.conf; }
for role in gateway resolver; do
  dev_password "$role" >"$work/secrets/$role.password"
  [[ -s "$work/secrets/$role.password" ]] || die "no $role user in nats.conf"
done
# Readable by the containers' user; the archive is the only place either container writes.
chmod 0755 "$work/secrets"
chmod 0444 "$work/secrets"/*
chown 65532:65532 "$work/archive"

"$NATS_SERVER_BIN" -c "$work/nats.conf" >"$work/nats-server.log" 2>&1 &
nats_pid=$!
# The resolver exits at start when NATS is unreachable.
for _ in $(seq 1 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null; then break; fi
  kill -0 "$nats_pid" 2>/dev/null || { cat "$work/nats-server.log" >&2; die "nats-server exited"; }
  sleep 0.1
done
(exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null || die "nats-server does not listen on $nats_port"

# Starts one container on the host network as the NATS role of the same name (its password
# mounted as a file), checks that its process runs as 65532 on a read-only root, and waits until
# it is ready.
run_container() { # role, readiness URL, more `podman run` arguments and the image
  local role=$1 ready=$2 cid pid uid
  shift 2
  cid=$(podman run -d --network host "${secure[@]}" \
    -v "$work/secrets/$role.password:/var/run/secrets/imgfetch/nats/password:ro" \
    -e IMGFETCH_NATS_URL="nats://127.0.0.1:$nats_port" \
    -e IMGFETCH_NATS_USER="$role" \
    -e IMGFETCH_NATS_PASSWORD_FILE=/var/run/secrets/imgfetch/nats/password \
    "$@")
  containers+=("$cid")
  pid=$(podman inspect --format '{{.State.Pid}}' "$cid")
  if [[ "$pid" == 0 ]]; then
    podman logs "$cid" 2>&1 | tail -n 20 >&2
    die "the $role exited at start (log above)"
  fi
  uid=$(awk '/^Uid:/ {print $2 "," $3 "," $4 "," $5}' "/proc/$pid/status")
  [[ "$uid" == 65532,65532,65532,65532 ]] || die "the $role runs as uid $uid, not 65532"
  [[ $(podman inspect --format '{{.HostConfig.ReadonlyRootfs}}' "$cid") == true ]] ||
    die "the $role has a writable root filesystem"
  say "$role running as container ${cid:0:12}, pid $pid, uid 65532, read-only root"
  for _ in $(seq 1 150); do
    if curl -fsS -o /dev/null --max-time 1 "$ready" 2>/dev/null; then return 0; fi
    [[ $(podman inspect --format '{{.State.Running}}' "$cid") == true ]] || break
    sleep 0.2
  done
  podman logs "$cid" 2>&1 | tail -n 20 >&2
  die "the $role did not become ready, or exited (log above)"
}

run_container resolver "http://127.0.0.1:$resolver_port/readyz" \
  -v "$root/samples/harbor:/srv/images:ro" \
  -e IMGFETCH_NETWORKS=harbor=file:///srv/images \
  -e IMGFETCH_INSTANCE=images-resolver \
  -e IMGFETCH_HTTP_LISTEN="127.0.0.1:$resolver_port" \
  "$RESOLVER_IMAGE"
# Host network: the image's 0.0.0.0:8080 would take the host's port 8080, so listen elsewhere.
# nats.conf lets the gateway role listen only under imgfetch.reply.local-gateway.>.
run_container gateway "http://127.0.0.1:$http_port/readyz" \
  -v "$work/archive:/archive" \
  -e IMGFETCH_LISTEN="127.0.0.1:$http_port" \
  -e IMGFETCH_INSTANCE=local-gateway \
  -e IMGFETCH_ARCHIVE=/archive \
  "$GATEWAY_IMAGE"

fetched=$work/fetched/quay-east.jpg
curl -fsS -o "$fetched" -w 'images: GET quay-east.jpg: HTTP %{http_code}, %{size_download} bytes in %{time_total} s\n' \
  "http://127.0.0.1:$http_port/v1/images/harbor/quay-east.jpg" >&2 ||
  die "the fetch through the gateway failed"
cmp "$fetched" samples/harbor/quay-east.jpg || die "the fetched image differs from samples/harbor/quay-east.jpg"
say "quay-east.jpg is byte for byte samples/harbor/quay-east.jpg"
archived=$(find "$work/archive" -type f | wc -l)
((archived > 0)) || die "the gateway archived nothing"
say "the gateway archived $archived file(s): $(cd "$work/archive" && find . -type f | sort | tr '\n' ' ')"

step "sizes"
podman images --filter reference='localhost/imgfetch-*' >&2
for image in "$BASE_IMAGE" "$GATEWAY_IMAGE" "$RESOLVER_IMAGE"; do
  say "$image: $(podman image inspect --format '{{.Size}}' "$image") bytes"
done
step
say "all good in $(($(date +%s) - t0)) s"
