#!/usr/bin/env bash
# Starts the whole imgfetch pipeline on this machine, on built-in defaults:
#   nats-server (nats.conf), one resolver serving two filesystem networks of sample images
#   (harbor and plant, from samples/), and one gateway on http://127.0.0.1:8080.
# Ctrl-C stops everything it started. Logs go to .local/logs/.
#
# --leaf: serve plant from a zone behind a firewall instead (docs/DEPLOY.md, "Leaf zones"): a
#   leaf nats-server (deploy/leaf/leaf.conf, on 127.0.0.1:4223) dials out to nats.conf's
#   leafnode port as the user zone-plant, and plant's resolver connects to that leaf only.
set -euo pipefail
leaf=0
case "${1:-}" in
  "") ;;
  --leaf) leaf=1 ;;
  *) echo "usage: scripts/run-local.sh [--leaf]" >&2; exit 64 ;;
esac
cd "$(dirname "$0")/.."
root=$PWD
source scripts/setup.sh

HTTP=127.0.0.1:8080
ports=(4222 8222 7422 8080)
[[ $leaf == 1 ]] && ports+=(4223)
for port in "${ports[@]}"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "run-local: port $port on 127.0.0.1 is already in use; stop what holds it first." >&2
    exit 1
  fi
done

echo "run-local: building (cargo build --locked --bins)" >&2
cargo build --locked --bins --quiet
bin="$root/target/debug"

mkdir -p .local/logs .local/nats .local/secrets
# nats.conf has no anonymous access: each component logs in as its role (docs/SECURITY.md),
# with the fixed development passwords written in nats.conf.
dev_password() { awk -v u="$1" '$1 == "user:" && $2 == u { getline; print $2; exit }' nats.conf; }
for role in gateway resolver publisher zone-plant; do
  (umask 077; dev_password "$role" >".local/secrets/$role.password")
  [[ -s ".local/secrets/$role.password" ]] || { echo "run-local: no $role user in nats.conf" >&2; exit 1; }
done
pids=()
cleanup() {
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "run-local: stopped." >&2
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

wait_for() { # what, check command...
  local what=$1; shift
  for _ in $(seq 1 100); do
    if "$@" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "run-local: $what did not come up; see .local/logs/" >&2
  exit 1
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1"); }
http_ok() { # port path
  exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
  printf 'GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n' "$2" >&3
  head -n1 <&3 | grep -q ' 200 '
}

"$NATS_SERVER_BIN" -c nats.conf >.local/logs/nats-server.log 2>&1 &
pids+=($!)
wait_for "nats-server" port_open 4222

hub_networks=(--network "harbor=file://$root/samples/harbor")
if [[ $leaf == 0 ]]; then
  hub_networks+=(--network "plant=file://$root/samples/plant")
else
  # The hub's side of the zone: plant's consumer, made here because the zone may not.
  "$bin/imgfetch-resolver" --provision-only \
    --nats-url nats://127.0.0.1:4222 --instance local-provisioning \
    --nats-user resolver --nats-password-file .local/secrets/resolver.password \
    --network "plant=file://$root/samples/plant" >.local/logs/provision.log 2>&1 ||
    { echo "run-local: provisioning plant failed; see .local/logs/provision.log" >&2; exit 1; }
  IMGFETCH_LEAF_NAME=leaf-plant IMGFETCH_LEAF_LISTEN=127.0.0.1:4223 \
    IMGFETCH_HUB_LEAF_URL="nats-leaf://zone-plant:$(cat .local/secrets/zone-plant.password)@127.0.0.1:7422" \
    IMGFETCH_LEAF_RESOLVER_PASSWORD="$(cat .local/secrets/resolver.password)" \
    "$NATS_SERVER_BIN" -c deploy/leaf/leaf.conf >.local/logs/nats-leaf-plant.log 2>&1 &
  pids+=($!)
  wait_for "the leaf node" port_open 4223
  wait_for "the leaf node's link" grep -q "Leafnode connection created" .local/logs/nats-leaf-plant.log
  "$bin/imgfetch-resolver" \
    --nats-url nats://127.0.0.1:4223 \
    --instance plant-resolver --zone plant --jetstream-domain hub \
    --no-provision --no-dead-letter-collector \
    --nats-user resolver --nats-password-file .local/secrets/resolver.password \
    --network "plant=file://$root/samples/plant" \
    >.local/logs/resolver-plant.log 2>&1 &
  pids+=($!)
fi
"$bin/imgfetch-resolver" \
  --nats-url nats://127.0.0.1:4222 \
  --instance local-resolver \
  --nats-user resolver --nats-password-file .local/secrets/resolver.password \
  "${hub_networks[@]}" \
  >.local/logs/resolver.log 2>&1 &
pids+=($!)

# nats.conf lets the gateway user listen only on imgfetch.reply.local-gateway.>.
"$bin/imgfetch-gateway" --nats-url nats://127.0.0.1:4222 --listen "$HTTP" \
  --instance local-gateway \
  --nats-user gateway --nats-password-file .local/secrets/gateway.password \
  --archive "$root/.local/archive" \
  >.local/logs/gateway.log 2>&1 &
pids+=($!)
wait_for "the gateway" http_ok 8080 /readyz

zone_note=""
if [[ $leaf == 1 ]]; then
  zone_note=$'\n  leaf zone   plant, served through the leaf nats-server on 127.0.0.1:4223, which dials the\n              hub 127.0.0.1:7422 as zone-plant (curl http://127.0.0.1:8222/leafz shows the link)'
fi
cat <<MSG

imgfetch is running.
  gateway     http://$HTTP        (ready: http://$HTTP/readyz, metrics: http://$HTTP/metrics)
  nats-server nats://127.0.0.1:4222 (monitoring: http://127.0.0.1:8222/jsz?streams=1&consumers=1)
  networks    harbor -> samples/harbor    plant -> samples/plant${zone_note}
  archive     .local/archive/ (every image fetched, filed by place and capture date)
  logs        .local/logs/

Open the web viewer:
  http://$HTTP/?network=harbor&keys=quay-east.jpg,cranes/crane-07.jpg,no/such.jpg

Command-line client (built above as target/debug/imgfetch):
  target/debug/imgfetch get --gateway http://$HTTP --network harbor quay-east.jpg cranes/crane-07.jpg -o fetched/

Try:
  curl -o quay.jpg http://$HTTP/v1/images/harbor/quay-east.jpg
  curl -sS -D - -o overview.png http://$HTTP/v1/images/plant/line-3/overview.png
  find .local/archive -type f                                   # where they were archived
  curl -i http://$HTTP/v1/images/harbor/no-such.jpg            # 404, JSON error body
  curl -i http://$HTTP/v1/images/atlantis/x.jpg                # 400 unknown_network

Websocket (ws://$HTTP/v1/ws), one JSON text frame per request, e.g. with websocat:
  echo '{"type":"fetch","network":"harbor","key":"cranes/crane-07.jpg"}' | websocat -n1 ws://$HTTP/v1/ws

NATS CLI (see docs/PROTOCOL.md), as the publisher role (user publisher, development password
"$(cat .local/secrets/publisher.password)"; callbacks must be under me.>):
  export NATS_USER=publisher NATS_PASSWORD=$(cat .local/secrets/publisher.password)
  nats sub --count 1 --raw me.img1 > crane.jpg &
  nats pub imgfetch.req.harbor '{"id":"img1","key":"cranes/crane-07.jpg"}' \\
      -H Imgfetch-Callback:me.img1 -H Nats-Msg-Id:img1
  nats micro ls                                   # the gateway and the resolver, as services
  nats req imgfetch.fetch '{"network":"harbor","key":"quay-east.jpg"}' --raw > quay.jpg
  nats req imgfetch.stat.plant '{"key":"line-3/overview.png"}'   # size, date, etag; no bytes

Press Ctrl-C to stop.
MSG

# Stop as soon as any component exits, and say which.
wait -n "${pids[@]}" || true
echo "run-local: a component exited; see .local/logs/" >&2
