#!/usr/bin/env bash
# Builds imgfetch's two container images without a container daemon or a registry, and runs
# them for real (docs/DEPLOY.md, "Build the images" and "The images"):
#   1. the base image localhost/imgfetch-base:bookworm: a `debootstrap --variant=minbase`
#      Debian bookworm with ca-certificates, trimmed like debian:bookworm-slim and imported into
#      the containers store; made once, reused afterwards (IMGFETCH_REBUILD_BASE=1 remakes it).
#      The images are FROM scratch: the base lends them the loader, the libraries the binaries
#      link, the CA bundle and copyright files;
#   2. the release binaries, built on this host with cargo;
#   3. localhost/imgfetch-gateway:<version> and localhost/imgfetch-resolver:<version>, with
#      buildah from deploy/Containerfile.prebuilt; checks every file in them against the list of
#      what they may hold, and that they have no shell;
#   4. with podman: `--version` of each image; the gateway image's --install-nats-identity as
#      the Helm chart's init container runs it (a directory of every replica's passwords mounted
#      read-only, the password written to a volume, a missing key refused); one fetch through
#      the containers (nats-server on the host with the roles of nats.conf, resolver serving
#      samples/harbor read-only, gateway with the password installed before), compared byte for
#      byte with the sample; then the same fetch on a podman network where NATS is the container
#      `nats`, found through the network's DNS. The containers run as 65532:65532 with a
#      read-only root filesystem.
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
ctr=     # buildah's working container while the base image is made
mounted= # an image mounted to list its files
network= # the podman network of the DNS check
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [[ -n "$ctr" ]]; then buildah rm "$ctr" >/dev/null 2>&1 || true; fi
  if [[ -n "$mounted" ]]; then podman image unmount "$mounted" >/dev/null 2>&1 || true; fi
  # All at once: podman stops them in parallel.
  if ((${#containers[@]})); then podman rm --force --time 10 "${containers[@]}" >/dev/null 2>&1 || true; fi
  if [[ -n "$network" ]]; then podman network rm --force "$network" >/dev/null 2>&1 || true; fi
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

# The runtime parts of deploy/Dockerfile and deploy/Containerfile.prebuilt must not drift apart:
# both files are the same from the stage that stages the root filesystem on.
for f in deploy/Dockerfile deploy/Containerfile.prebuilt; do
  grep -q '^USER 65532:65532$' "$f" || die "$f does not run as USER 65532:65532"
  grep -q "'nonroot:x:65532:65532:" "$f" || die "$f does not create uid 65532"
  grep -q '^FROM base AS rootfs$' "$f" || die "$f has no stage FROM base AS rootfs"
done
diff <(sed -n '/^FROM base AS rootfs$/,$p' deploy/Dockerfile) \
  <(sed -n '/^FROM base AS rootfs$/,$p' deploy/Containerfile.prebuilt) >&2 ||
  die "the runtime stages (from FROM base AS rootfs on) of deploy/Dockerfile and deploy/Containerfile.prebuilt differ"

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

step "contents"
# What an image may hold: its binary, the loader and the libraries `ldd` lists, the CA bundle,
# passwd, group, nsswitch.conf and the copyright files of the packages these came from. All are
# regular files; nothing else is there (no shell, no coreutils).
allowed='^/(etc/(passwd|group|nsswitch\.conf|ssl/certs/ca-certificates\.crt)|lib64/ld-linux-x86-64\.so\.2|lib/x86_64-linux-gnu/lib[a-z0-9_]+\.so\.[0-9]+|usr/share/doc/[a-z0-9.+-]+/copyright|usr/local/bin/imgfetch-(gateway|resolver)) f$'
for pair in "$GATEWAY_IMAGE imgfetch-gateway" "$RESOLVER_IMAGE imgfetch-resolver"; do
  read -r image own <<<"$pair"
  mnt=$(podman image mount "$image")
  mounted=$image
  listing=$(cd "$mnt" && find . -mindepth 1 ! -type d -printf '/%P %y %s\n' | LC_ALL=C sort)
  podman image unmount "$image" >/dev/null
  mounted=
  unexpected=$(awk '{print $1, $2}' <<<"$listing" | grep -Ev "$allowed" || true)
  [[ -z "$unexpected" ]] || die "$image holds what it should not: $(tr '\n' ' ' <<<"$unexpected")"
  grep -q "^/usr/local/bin/$own f " <<<"$listing" || die "$image has no /usr/local/bin/$own"
  grep -q '^/etc/ssl/certs/ca-certificates.crt f ' <<<"$listing" || die "$image has no CA bundle"
  say "$image: $(wc -l <<<"$listing") files, $(awk '{n += $3} END {print n}' <<<"$listing") bytes: $(awk '{print $1}' <<<"$listing" | tr '\n' ' ')"
  # No shell to run: an entrypoint of /bin/sh fails.
  if out=$(podman run --rm --network none "${secure[@]}" --entrypoint /bin/sh "$image" -c true 2>&1); then
    die "$image runs /bin/sh"
  fi
  grep -qi 'no such file or directory\|not found' <<<"$out" || die "$image: /bin/sh failed otherwise: $out"
  say "$image: no shell (podman run --entrypoint /bin/sh: not found)"
done

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

step "the init container: --install-nats-identity"
# As the Helm chart's init container runs it: the Secret of every replica's password mounted
# read-only (a key per instance, group 65532 and mode 0440 as fsGroup and defaultMode make
# them), and the pod's emptyDir, where the gateway container later finds its own password.
dev_password() { awk -v u="$1" '$1 == "user:" && $2 == u { getline; print $2; exit }' nats.conf; }
identities=$work/identities
emptydir=$work/nats-gateway
mkdir -p "$identities" "$emptydir"
# nats.conf's gateway user is the instance local-gateway's; the other key stands for another
# replica's password, which must stay where it is.
dev_password gateway >"$identities/local-gateway"
[[ -s "$identities/local-gateway" ]] || die "no gateway user in nats.conf"
echo "another-replicas-password" >"$identities/other-gateway"
chgrp 65532 "$identities"/*
chmod 0440 "$identities"/*
chown 65532:65532 "$emptydir"
install_identity() { # instance; prints what the container printed, returns its status
  podman run --rm --network none "${secure[@]}" \
    -v "$identities:/var/run/secrets/imgfetch/nats-identities:ro" \
    -v "$emptydir:/var/run/secrets/imgfetch/nats" \
    -e IMGFETCH_INSTANCE="$1" \
    -e IMGFETCH_NATS_PASSWORD_FILE=/var/run/secrets/imgfetch/nats/password \
    "$GATEWAY_IMAGE" --install-nats-identity /var/run/secrets/imgfetch/nats-identities 2>&1
}
out=$(install_identity local-gateway) || die "--install-nats-identity failed: $out"
say "$out"
cmp "$emptydir/password" "$identities/local-gateway" || die "the installed password differs from its key"
[[ $(stat -c '%a %u:%g' "$emptydir/password") == "400 65532:65532" ]] ||
  die "the installed password is $(stat -c '%a %u:%g' "$emptydir/password"), not 400 65532:65532"
[[ $(find "$emptydir" -mindepth 1 | wc -l) == 1 ]] || die "more than the password in the emptyDir"
say "the emptyDir holds the password of local-gateway only, mode 0400, owner 65532"
status=0
out=$(install_identity gateway-7) || status=$?
[[ $status == 64 && "$out" == *'no key "gateway-7"'* ]] ||
  die "a missing key gave status $status: $out"
say "a missing key: exit $status, $out"

step "one fetch through the containers"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
nats_port=$(free_port)
http_port=$(free_port)
resolver_port=$(free_port)
# nats.conf's roles, on a free port and a store of this run's own. The streams reserve 256 MB
# each; a fixed file-store limit (as the tests' servers have) lets them be created on a host
# short of free disk, where JetStream's default limit (a share of the free space) would not.
mkdir -p "$work/nats" "$work/secrets" "$work/archive" "$work/fetched"
nats_conf() { # listen address, store directory
  echo "listen: $1"
  echo "max_payload: 8MB"
  echo "jetstream { store_dir: \"$2\", max_file_store: 1GB, max_memory_store: 64MB }"
  sed -n '/^# BEGIN imgfetch roles/,/^# END imgfetch roles/p' nats.conf
}
nats_conf "127.0.0.1:$nats_port" "$work/nats" >"$work/nats.conf"
dev_password resolver >"$work/secrets/resolver.password"
[[ -s "$work/secrets/resolver.password" ]] || die "no resolver user in nats.conf"
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

# Starts one container as the NATS role of the same name (its password a mounted file, the
# resolver's from secrets/, the gateway's the one installed in the emptyDir), checks that its
# process runs as 65532 on a read-only root, and waits until it is ready.
run_container() { # role, readiness URL, more `podman run` arguments (network, NATS URL) and the image
  local role=$1 ready=$2 cid pid uid password
  shift 2
  if [[ $role == gateway ]]; then
    password=(-v "$emptydir:/var/run/secrets/imgfetch/nats:ro")
  else
    password=(-v "$work/secrets/$role.password:/var/run/secrets/imgfetch/nats/password:ro")
  fi
  cid=$(podman run -d "${secure[@]}" "${password[@]}" \
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
  --network host -e IMGFETCH_NATS_URL="nats://127.0.0.1:$nats_port" \
  -v "$root/samples/harbor:/srv/images:ro" \
  -e IMGFETCH_NETWORKS=harbor=file:///srv/images \
  -e IMGFETCH_INSTANCE=images-resolver \
  -e IMGFETCH_HTTP_LISTEN="127.0.0.1:$resolver_port" \
  "$RESOLVER_IMAGE"
# Host network: the image's 0.0.0.0:8080 would take the host's port 8080, so listen elsewhere.
# nats.conf lets the gateway role listen only under imgfetch.reply.local-gateway.>.
run_container gateway "http://127.0.0.1:$http_port/readyz" \
  --network host -e IMGFETCH_NATS_URL="nats://127.0.0.1:$nats_port" \
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

step "DNS: the same fetch on a podman network, NATS as nats://nats:4222"
# Host names resolve in the images through glibc's own NSS modules (files, dns) inside libc.so.6
# and /etc/nsswitch.conf: here NATS is a container whose name only the network's DNS server
# knows, as a Service name is known in a cluster. nats-server runs in the base image (it has
# no image of its own here), the executable of the one started above.
nats_exe=$(readlink -f "/proc/$nats_pid/exe")
network=imgfetch-images-$$
podman network create "$network" >/dev/null
mkdir -p "$work/nats-dns"
nats_conf "0.0.0.0:4222" /data >"$work/nats-dns.conf"
cid=$(podman run -d --network "$network" --network-alias nats "${run_flags[@]}" \
  -v "$nats_exe:/usr/local/bin/nats-server:ro" -v "$work/nats-dns.conf:/etc/nats.conf:ro" \
  -v "$work/nats-dns:/data" "$BASE_IMAGE" /usr/local/bin/nats-server -c /etc/nats.conf)
containers+=("$cid")
for _ in $(seq 1 100); do
  if podman logs "$cid" 2>&1 | grep -q 'Server is ready'; then break; fi
  sleep 0.1
done
podman logs "$cid" 2>&1 | grep -q 'Server is ready' || {
  podman logs "$cid" 2>&1 | tail -n 20 >&2
  die "nats-server did not start in a container on $network (log above)"
}
say "nats-server running as container ${cid:0:12} on network $network, alias nats"
dns_resolver_port=$(free_port)
dns_http_port=$(free_port)
run_container resolver "http://127.0.0.1:$dns_resolver_port/readyz" \
  --network "$network" -e IMGFETCH_NATS_URL=nats://nats:4222 \
  -p "127.0.0.1:$dns_resolver_port:9090" -e IMGFETCH_HTTP_LISTEN=0.0.0.0:9090 \
  -v "$root/samples/harbor:/srv/images:ro" \
  -e IMGFETCH_NETWORKS=harbor=file:///srv/images \
  -e IMGFETCH_INSTANCE=images-resolver \
  "$RESOLVER_IMAGE"
# The gateway on the image's own listen address, 0.0.0.0:8080, published on the host.
run_container gateway "http://127.0.0.1:$dns_http_port/readyz" \
  --network "$network" -e IMGFETCH_NATS_URL=nats://nats:4222 \
  -p "127.0.0.1:$dns_http_port:8080" \
  -e IMGFETCH_INSTANCE=local-gateway \
  -e IMGFETCH_ARCHIVE=off \
  "$GATEWAY_IMAGE"
gateway_cid=${containers[-1]}
hosts=$(podman inspect --format '{{.HostsPath}}' "$gateway_cid")
if grep -qw nats "$hosts"; then die "nats is in the gateway's /etc/hosts: the check would not use DNS"; fi
nameservers=$(awk '$1 == "nameserver" {print $2}' "$(podman inspect --format '{{.ResolvConfPath}}' "$gateway_cid")" | tr '\n' ' ')
say "nats is not in the gateway's /etc/hosts; its resolv.conf names ${nameservers:-no server}: both containers found NATS through DNS"
fetched=$work/fetched/quay-east-dns.jpg
curl -fsS -o "$fetched" -w 'images: GET quay-east.jpg: HTTP %{http_code}, %{size_download} bytes in %{time_total} s\n' \
  "http://127.0.0.1:$dns_http_port/v1/images/harbor/quay-east.jpg" >&2 ||
  die "the fetch through the gateway on $network failed"
cmp "$fetched" samples/harbor/quay-east.jpg || die "the image fetched on $network differs from samples/harbor/quay-east.jpg"
say "quay-east.jpg through nats://nats:4222 is byte for byte samples/harbor/quay-east.jpg"

step "sizes"
podman images --filter reference='localhost/imgfetch-*' >&2
base_size=$(podman image inspect --format '{{.Size}}' "$BASE_IMAGE")
say "$BASE_IMAGE: $base_size bytes (where the images' files come from; the images held all of it while they were built on it)"
for pair in "$GATEWAY_IMAGE imgfetch-gateway" "$RESOLVER_IMAGE imgfetch-resolver"; do
  read -r image own <<<"$pair"
  size=$(podman image inspect --format '{{.Size}}' "$image")
  binary=$(stat -c %s "$context/$own")
  say "$image: $size bytes: the binary $binary, the rest $((size - binary)) (the base and the binary made $((base_size + binary)))"
done
step
say "all good in $(($(date +%s) - t0)) s"
