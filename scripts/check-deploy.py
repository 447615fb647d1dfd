#!/usr/bin/env python3
"""Checks one rendering of the imgfetch Helm chart (called by scripts/check-deploy.sh).

    check-deploy.py RENDERED.yaml --zones cams,dmz [--keda] [--nack] [--secure] [--creds] [--leaf Z]
        --resolver BIN --gateway BIN --nats-server BIN --work DIR
        [--reference nats.conf] [--nats-values deploy/nats-values.yaml]

Built-in kinds are validated by kubernetes-validate (run by the shell script); this checks what
a schema cannot:

- the custom kinds' required fields (KEDA ScaledObject, NACK Stream and Consumer), one resolver
  Deployment, PodDisruptionBudget and ConfigMap per zone, the gateway's drain timing, the
  restricted security context, secrets never in plain environment values, no container of an
  imgfetch image running a command of its own (the images hold no shell, sleep or cp);
- every file a binary is told to read (password, creds, CA, tokens, S3 secret) is on a volume
  its container mounts, and is there once the pod's volumes are laid out in a temporary root
  (the chart's own Secrets with their rendered content, others as real stand-ins: a PEM CA made
  with openssl, a tokens file, a .creds file, a password) and its init containers have run;
- the gateway replicas' NATS identities: a StatefulSet whose HPA and PodDisruptionBudget reach
  it, each pod copying only its own credentials (the key named after the pod) into a volume the
  gateway container mounts instead of the Secret (its init container runs the gateway image with
  --install-nats-identity, done here by the gateway binary itself in the laid-out pod), its
  instance and NATS user both its pod name,
  and a NATS user with a password key for every ordinal up to the HPA's maxReplicas, whose
  subscribe permissions name only its own instance;
- the NATS users' permissions against the roles block of the repository's nats.conf (the
  gateway's instance aside), the accounts block through `nats-server -t`, and a live
  nats-server running it: every gateway pod logs in with the password file it would have and
  may subscribe to its own callbacks, liveness subject and inbox but not another replica's, a
  wrong password is refused, the resolver and the publisher log in;
- deploy/nats-values.yaml mounts and includes the chart's users Secret where the official
  chart's config reloader sees it, and can turn TLS on from a Secret;
- each zone's resolver TOML and every gateway pod's environment through the binaries' own
  --check-config, with the paths moved into the temporary root.
- leaf zones (--leaf): each zone's hub user limited to its own networks, its leaf node's
  Service, its resolvers pointed at the leaf through the hub's JetStream domain; then live: a
  hub nats-server with the rendered users and a TLS leafnode port, the rendered leaf node, the
  hub side's --provision-only, and the hub side's collector and the zone's resolver until ready.

Prints one line per finding; exits 1 on any.
"""

import argparse
import base64
import binascii
import hashlib
import json
import os
import posixpath
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time

import yaml

# The NATS client protocol by hand, shared with scripts/run-chart.py.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_chart.clients import Nats  # noqa: E402
from run_chart.kubelet import Failure  # noqa: E402

FAILURES = []



DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_seconds(text):
    """Seconds of a duration in the binaries' human form (`30s`, `1m 30s`, `500ms`), or None."""
    if not re.fullmatch(r"(\d+(ms|s|m|h|d) *)+", text.strip()):
        return None
    return sum(int(n) * DURATION_UNITS[unit] for n, unit in re.findall(r"(\d+)(ms|s|m|h|d)", text))

def fail(message):
    FAILURES.append(message)
    print(f"FAIL {message}")


def need(doc, path):
    """The value at a dotted path (list indexes as numbers), or None."""
    value = doc
    for part in path.split("."):
        if isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            return None
    return value


def execs(value):
    """Whether a lifecycle hook or probe runs a command: an `exec` action anywhere in it."""
    if isinstance(value, dict):
        return "exec" in value or any(execs(v) for v in value.values())
    return isinstance(value, list) and any(execs(v) for v in value)


def require(doc, paths):
    name = f"{doc.get('kind')}/{need(doc, 'metadata.name')}"
    for path in paths:
        if need(doc, path) in (None, "", []):
            fail(f"{name}: {path} is missing")


def check_custom(doc, networks):
    kind = doc["kind"]
    require(doc, ["apiVersion", "kind", "metadata.name"])
    if kind == "ScaledObject":
        if doc["apiVersion"] != "keda.sh/v1alpha1":
            fail(f"ScaledObject: apiVersion {doc['apiVersion']}")
        require(doc, ["spec.scaleTargetRef.name", "spec.triggers"])
        for trigger in need(doc, "spec.triggers") or []:
            if trigger.get("type") != "nats-jetstream":
                fail(f"ScaledObject {doc['metadata']['name']}: trigger type {trigger.get('type')}")
            meta = trigger.get("metadata") or {}
            for key in ("natsServerMonitoringEndpoint", "stream", "consumer", "lagThreshold"):
                if not meta.get(key):
                    fail(f"ScaledObject {doc['metadata']['name']}: trigger without {key}")
            for key, value in meta.items():
                if not isinstance(value, str):
                    fail(f"ScaledObject {doc['metadata']['name']}: trigger {key} is not a string")
    elif kind == "Stream":
        require(doc, ["spec.name", "spec.subjects", "spec.retention", "spec.storage"])
    elif kind == "Consumer":
        require(doc, ["spec.streamName", "spec.durableName", "spec.ackPolicy"])
        if need(doc, "spec.deliverSubject"):
            fail(f"Consumer {doc['metadata']['name']}: a push consumer; imgfetch pulls")
    else:
        fail(f"unexpected custom kind {doc['apiVersion']} {kind}")


def network_subjects(network):
    """A network's request subjects, as common/src/provision.rs has the stream capture and the
    consumer filter them: the gateways', then the hand publishers'."""
    return [f"imgfetch.gwreq.{network}", f"imgfetch.req.{network}"]


def run_check(argv, env=None):
    out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30)
    line = (out.stdout + out.stderr).strip()
    return out.returncode, line


# ---------------------------------------------------------------------------------------------
# NATS users and their permissions


def subject_matches(pattern, subject):
    """Whether the NATS subject pattern (with * and >) covers `subject`."""
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


def roles_block(path):
    """The text between `# BEGIN imgfetch roles` and `# END imgfetch roles` of nats.conf."""
    text = open(path).read()
    start, end = text.index("# BEGIN imgfetch roles"), text.index("# END imgfetch roles")
    return text[start:end]


def conf_users(text):
    """user -> {password, publish, subscribe, allow_responses} from an `accounts { ... }` block
    in nats-server's own syntax (nats.conf): quoted subjects in
    `publish: { allow: [...] }` and `subscribe: { allow: [...] }`."""
    block = text[text.index("accounts {"):]
    users = {}
    for chunk in re.split(r"\n\s*user: ", block)[1:]:
        name = chunk.split("\n", 1)[0].strip()
        body = "\n".join(
            "" if line.strip().startswith("#") else re.sub(r"\s+#.*$", "", line)
            for line in chunk.split("\n")
        )
        pub, sub = body.index("publish:"), body.index("subscribe:")
        end = body.index("]", sub)
        users[name] = {
            "password": re.search(r"password: (\S+)", body).group(1),
            "publish": re.findall(r'"([^"]*)"', body[pub:sub]),
            "subscribe": re.findall(r'"([^"]*)"', body[sub:end]),
            "allow_responses": "allow_responses: true" in body,
        }
    return users


def accounts_users(text):
    """user -> {password, publish, subscribe, allow_responses} from the chart's accounts.conf
    (comment lines, then `accounts: ` and JSON of one account)."""
    body = "\n".join(line for line in text.split("\n") if not line.lstrip().startswith("#"))
    body = body.strip()
    if not body.startswith("accounts:"):
        fail("accounts.conf does not start with `accounts:`")
        return {}
    accounts = json.loads(body[len("accounts:"):])
    if len(accounts) != 1:
        fail(f"accounts.conf has the accounts {sorted(accounts)}, expected one")
        return {}
    users = {}
    for u in next(iter(accounts.values()))["users"]:
        perms = u.get("permissions", {})
        users[u["user"]] = {
            "password": u["password"],
            "publish": need(perms, "publish.allow") or [],
            "subscribe": need(perms, "subscribe.allow") or [],
            "allow_responses": perms.get("allow_responses", False) is True,
        }
    return users


def normalized(user, instance=None):
    """A user's permissions with its gateway instance name replaced by {instance}, sorted."""

    def norm(subjects):
        out = []
        for s in subjects:
            subject, _, queue = s.partition(" ")
            tokens = ["{instance}" if t == instance else t for t in subject.split(".")]
            out.append(".".join(tokens) + (" " + queue if queue else ""))
        return sorted(out)

    return (norm(user["publish"]), norm(user["subscribe"]), user["allow_responses"])


def compare_roles(what, users, gateways, reference_path):
    """The gateway users (their pod name being their instance), `resolver` and `publisher` have
    exactly the permissions of nats.conf's roles (whose gateway runs as instance local-gateway)."""
    ref = conf_users(roles_block(reference_path))
    before = len(FAILURES)
    want_gateway = normalized(ref["gateway"], "local-gateway")
    for pod in gateways:
        if pod in users and normalized(users[pod], pod) != want_gateway:
            fail(f"{what}: user {pod}'s permissions differ from nats.conf's gateway role "
                 f"(instance {pod} for local-gateway):\n  {normalized(users[pod], pod)}\n  "
                 f"expected {want_gateway}")
    for role in ("resolver", "publisher"):
        if role not in users:
            fail(f"{what}: no user {role}")
        elif normalized(users[role]) != normalized(ref[role]):
            fail(f"{what}: user {role}'s permissions differ from nats.conf's:\n  "
                 f"{normalized(users[role])}\n  expected {normalized(ref[role])}")
    if len(FAILURES) == before:
        print(f"{what}: gateway users {gateways[0]} ... {gateways[-1]}, resolver, publisher: "
              f"the permissions of {reference_path}'s roles")


# What only the gateway named INSTANCE may receive.
OWN_SUBJECTS = ("imgfetch.reply.{}.x", "imgfetch.gateway.{}", "_INBOX_gateway.{}.x")


def check_isolation(what, users, gateways):
    """Each gateway user may subscribe to its own callbacks, liveness subject and inbox, and no
    pattern it may subscribe to (queue group or not) covers another replica's."""
    for pod in gateways:
        patterns = [s.split(" ")[0] for s in users[pod]["subscribe"]]
        for subject in (t.format(pod) for t in OWN_SUBJECTS):
            if not any(subject_matches(p, subject) for p in patterns):
                fail(f"{what}: user {pod} may not subscribe to its own {subject}")
        for other in gateways:
            if other == pod:
                continue
            for subject in (t.format(other) for t in OWN_SUBJECTS):
                covering = [p for p in patterns if subject_matches(p, subject)]
                if covering:
                    fail(f"{what}: user {pod} may subscribe to {subject} of {other} ({covering})")
                    return
    print(f"{what}: each of the {len(gateways)} gateway users may subscribe to its own "
          f"callbacks, liveness subject and inbox only")


# ---------------------------------------------------------------------------------------------
# Stand-ins for Secrets the chart does not render: real files of each kind.


class StandIns:
    def __init__(self, work):
        self.work = work
        self._ca = None

    def ca(self):
        """A PEM CA certificate, made once with openssl."""
        if self._ca is None:
            key, crt = os.path.join(self.work, "ca.key"), os.path.join(self.work, "ca.crt")
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                 "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", crt,
                 "-subj", "/CN=check-deploy stand-in CA", "-days", "1"],
                check=True, capture_output=True)
            self._ca = open(crt).read()
        return self._ca

    def server_cert(self):
        """A server certificate for localhost and 127.0.0.1 signed by the stand-in CA: (cert,
        key) paths."""
        self.ca()
        ca_key, ca_crt = os.path.join(self.work, "ca.key"), os.path.join(self.work, "ca.crt")
        key, csr = os.path.join(self.work, "server.key"), os.path.join(self.work, "server.csr")
        crt, ext = os.path.join(self.work, "server.crt"), os.path.join(self.work, "server.ext")
        with open(ext, "w") as f:
            f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        subprocess.run(["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=localhost"],
                       check=True, capture_output=True)
        subprocess.run(["openssl", "x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key,
                        "-CAcreateserial", "-out", crt, "-days", "1", "-extfile", ext],
                       check=True, capture_output=True)
        return crt, key

    @staticmethod
    def tokens():
        """A tokens file in the format of docs/SECURITY.md#authentication."""
        token = secrets.token_urlsafe(32)
        digest = hashlib.sha256(token.encode()).hexdigest()
        return (f'[[token]]\nname = "check-deploy"\nsha256 = "{digest}"\nnetworks = ["*"]\n\n'
                f'[[token]]\nname = "check-deploy-one"\n'
                f'sha256 = "{hashlib.sha256(token[::-1].encode()).hexdigest()}"\n'
                f'networks = ["harbor"]\n')

    def creds(self, name):
        """A .creds file: a user JWT signed by a fresh account nkey, and the user's nkey seed
        (ed25519 through openssl; nkey encoding as nats-io/nkeys)."""
        account_seed, user_seed = os.urandom(32), os.urandom(32)
        account_pub, user_pub = self._ed25519_public(account_seed), self._ed25519_public(user_seed)
        header = {"typ": "JWT", "alg": "ed25519-nkey"}
        claims = {
            "jti": base64.b32encode(os.urandom(20)).decode().rstrip("="),
            "iat": int(time.time()),
            "iss": _nkey(0 << 3, account_pub),  # A...: an account
            "name": name,
            "sub": _nkey(20 << 3, user_pub),  # U...: a user
            "nats": {"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
                     "type": "user", "version": 2},
        }
        signing = ".".join(_b64url(json.dumps(x, separators=(",", ":")).encode())
                           for x in (header, claims))
        jwt = signing + "." + _b64url(self._ed25519_sign(account_seed, signing.encode()))
        seed = _nkey_seed(20 << 3, user_seed)
        return ("-----BEGIN NATS USER JWT-----\n" + jwt + "\n------END NATS USER JWT------\n\n"
                "************************* IMPORTANT *************************\n"
                "NKEY Seed printed below can be used to sign and prove identity.\n"
                "NKEYs are sensitive and should be treated as secrets.\n\n"
                "-----BEGIN USER NKEY SEED-----\n" + seed + "\n------END USER NKEY SEED------\n\n"
                "*************************************************************\n")

    def _key_file(self, seed):
        path = os.path.join(self.work, f"ed25519-{secrets.token_hex(4)}.der")
        # PKCS#8 of an ed25519 private key: a fixed prefix and the 32-byte seed.
        with open(path, "wb") as f:
            f.write(bytes.fromhex("302e020100300506032b657004220420") + seed)
        return path

    def _ed25519_public(self, seed):
        der = subprocess.run(["openssl", "pkey", "-inform", "DER", "-in", self._key_file(seed),
                              "-pubout", "-outform", "DER"], check=True, capture_output=True).stdout
        return der[-32:]

    def _ed25519_sign(self, seed, data):
        path = os.path.join(self.work, f"tbs-{secrets.token_hex(4)}")
        with open(path, "wb") as f:
            f.write(data)
        return subprocess.run(["openssl", "pkeyutl", "-sign", "-keyform", "DER", "-inkey",
                               self._key_file(seed), "-rawin", "-in", path],
                              check=True, capture_output=True).stdout

    def content(self, name, kind=None):
        """Stand-in content of a Secret key (or the file it becomes) called `name`."""
        kind = kind or (
            "ca" if name.endswith((".crt", ".pem")) else
            "tokens" if name.endswith(".toml") else
            "creds" if name.endswith(".creds") or name == "creds" else
            "password")
        if kind == "ca":
            return self.ca()
        if kind == "tokens":
            return self.tokens()
        if kind == "creds":
            return self.creds(name)
        return secrets.token_hex(24) + "\n"


def _b64url(data):
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _base32_crc(data):
    """nkeys' encoding: base32 without padding of the bytes and their CRC-16 (XMODEM)."""
    crc = binascii.crc_hqx(data, 0).to_bytes(2, "little")
    return base64.b32encode(data + crc).decode().rstrip("=")


def _nkey(prefix, raw):
    return _base32_crc(bytes([prefix]) + raw)


def _nkey_seed(prefix, raw):
    return _base32_crc(bytes([(18 << 3) | (prefix >> 5), (prefix & 31) << 3]) + raw)


# ---------------------------------------------------------------------------------------------
# Pods laid out on disk


def secret_data(doc):
    data = {k: base64.b64decode(v).decode() for k, v in (doc.get("data") or {}).items()}
    data.update(doc.get("stringData") or {})
    return data


def is_file_setting(name):
    return name.endswith("_FILE") or name in (
        "IMGFETCH_NATS_CREDS", "IMGFETCH_NATS_TLS_CA", "IMGFETCH_CONFIG")


# The gateway's flag that its pods' init container runs (gateway/src/nats_identity.rs).
INSTALL_IDENTITY = "--install-nats-identity"


class Pod:
    """A pod of a workload laid out under `root`: its volumes written at their containers'
    mount paths (rendered Secrets and ConfigMaps with their content, other Secrets as
    stand-ins), then its init containers run: the gateway's `--install-nats-identity DIR` by
    the `gateway` binary, with the paths moved into the root."""

    def __init__(self, what, spec, name, root, rendered, stand_ins, generated_keys,
                 gateway=None):
        self.what, self.spec, self.name, self.root = what, spec, name, root
        self.rendered, self.stand_ins = rendered, stand_ins
        self.generated_keys = generated_keys
        self.gateway = gateway
        self.init_logs = {}
        shutil.rmtree(root, ignore_errors=True)
        os.makedirs(root)
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        laid = {}
        for c in spec.get("initContainers", []) + spec["containers"]:
            for m in c.get("volumeMounts", []):
                if laid.get(m["mountPath"], m["name"]) != m["name"]:
                    fail(f"{what}: two volumes at {m['mountPath']}")
                if m["mountPath"] not in laid:
                    laid[m["mountPath"]] = m["name"]
                    self._lay(volumes.get(m["name"]), m["mountPath"])
        for c in spec.get("initContainers", []):
            self._run_init(c)

    def path(self, path):
        return os.path.join(self.root, path.lstrip("/"))

    def _write(self, path, content):
        os.makedirs(os.path.dirname(self.path(path)), exist_ok=True)
        with open(self.path(path), "w") as f:
            f.write(content)

    def _lay(self, volume, mount):
        os.makedirs(self.path(mount), exist_ok=True)
        if volume is None:
            fail(f"{self.what}: a mount of a volume the pod does not have at {mount}")
        elif "secret" in volume or "configMap" in volume:
            src = volume.get("secret") or volume.get("configMap")
            kind = "Secret" if "secret" in volume else "ConfigMap"
            name = src.get("secretName") or src.get("name")
            doc = self.rendered.get((kind, name))
            data = (secret_data(doc) if kind == "Secret" else doc.get("data", {})) if doc else None
            items = src.get("items")
            if items is None:
                if data is None:
                    keys, stand_in = self.generated_keys.get(name, ([], None))
                    if not keys:
                        fail(f"{self.what}: the whole of Secret {name} is mounted, whose keys "
                             "are unknown")
                    data = {k: self.stand_ins.content(k, stand_in) for k in keys}
                items = [{"key": k, "path": k} for k in data]
            for item in items:
                if data is not None and item["key"] not in data:
                    fail(f"{self.what}: {kind} {name} has no key {item['key']}")
                    continue
                content = data[item["key"]] if data is not None else self.stand_ins.content(
                    item["path"])
                self._write(posixpath.join(mount, item["path"]), content)

    def env_value(self, e):
        if "value" in e:
            return e["value"]
        if need(e, "valueFrom.fieldRef.fieldPath") == "metadata.name":
            return self.name
        ref = need(e, "valueFrom.secretKeyRef")
        if ref:
            doc = self.rendered.get(("Secret", ref["name"]))
            if doc:
                return secret_data(doc).get(ref["key"], "")
        return "stand-in"

    def _run_init(self, c):
        if c.get("args") == ["--provision-only"]:
            return  # the hub side of the leaf zones: check_leaf_zones runs it
        argv = c.get("command", []) + c.get("args", [])
        if c.get("command") or len(argv) != 2 or argv[0] != INSTALL_IDENTITY:
            fail(f"{self.what}: init container {c['name']} runs {argv}; only the gateway "
                 f"image's {INSTALL_IDENTITY} DIR can be checked")
            return
        if self.gateway is None:
            fail(f"{self.what}: init container {c['name']}: no gateway binary to run it with")
            return
        if self._mount(c, argv[1]) is None:
            fail(f"{self.what}: init container {c['name']}: {argv[1]} is on none of its volumes")
            return
        # The files it writes need not be there yet, but on a volume it may write to.
        env = self.env(c, writes=True)
        code, line = run_check([self.gateway, INSTALL_IDENTITY, self.path(argv[1])], env=env)
        self.init_logs[c["name"]] = line
        if code != 0:
            fail(f"{self.what}: init container {c['name']} exit {code}: {line}")

    @staticmethod
    def _mount(container, path):
        """The volume mount of `container` that `path` is on, or None."""
        for m in container.get("volumeMounts", []):
            if (path.rstrip("/") + "/").startswith(m["mountPath"].rstrip("/") + "/"):
                return m
        return None

    def env(self, container, writes=False):
        """The container's environment for --check-config, file paths moved into the root,
        checking that each such file is on a volume this container mounts and is there (or,
        with `writes`, for the files an init container writes: on a volume mounted writable)."""
        env = {"PATH": os.environ.get("PATH", "")}
        for e in container.get("env", []):
            value = self.env_value(e)
            if is_file_setting(e["name"]) and "value" in e:
                mount = self._mount(container, value)
                if mount is None:
                    fail(f"{self.what}: {e['name']}={value} is on no mounted volume")
                elif writes and mount.get("readOnly"):
                    fail(f"{self.what}: {e['name']}={value} is on a read-only mount")
                elif not writes and not os.path.isfile(self.path(value)):
                    fail(f"{self.what}: {e['name']}={value}: no such file in the pod")
                value = self.path(value)
            env[e["name"]] = value
        return env

    def read(self, path):
        return open(self.path(path)).read()


# ---------------------------------------------------------------------------------------------
# A live nats-server


class Process:
    """A binary run until stop(), its output in `log`."""

    def __init__(self, argv, env, log):
        self.log = log
        with open(log, "w") as out:
            self.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=out)

    def wait_ready(self, url, seconds):
        deadline = time.time() + seconds
        while time.time() < deadline and self.proc.poll() is None:
            if http_get(url)[0] == 200:
                return True
            time.sleep(0.2)
        return False

    def tail(self):
        return "".join(open(self.log).readlines()[-8:])

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class NatsServer(Process):
    def __init__(self, binary, conf, log, env=None):
        super().__init__([binary, "-c", conf], env, log)
        deadline = time.time() + 15
        self.port = None
        while time.time() < deadline and self.port is None:
            m = re.search(r"Listening for client connections on [\d.]+:(\d+)", open(log).read())
            if m:
                self.port = int(m.group(1))
            elif self.proc.poll() is not None:
                break
            else:
                time.sleep(0.05)
        if self.port is None:
            self.stop()
            raise RuntimeError(f"nats-server did not start:\n{open(log).read()}")


def live_check(what, binary, accounts_conf, work, logins, gateways):
    """Runs nats-server on `accounts_conf` (a file with the `accounts` block, included from a
    main configuration), then: every gateway pod logs in with its own password and may subscribe
    to its own subjects, not to the next replica's nor to all callbacks or the shared inbox; a
    wrong password is refused; every other login succeeds. `logins` is user -> password."""
    conf = os.path.join(work, "nats-live.conf")
    with open(conf, "w") as f:
        f.write(f"listen: 127.0.0.1:-1\nserver_name: check-deploy\n"
                f"jetstream {{ store_dir: {json.dumps(os.path.join(work, 'js'))}, "
                f"max_memory_store: 16MB, max_file_store: 64MB }}\n"
                f"include {json.dumps(os.path.relpath(accounts_conf, work))}\n")
    test = subprocess.run([binary, "-c", conf, "-t"], capture_output=True, text=True)
    if test.returncode != 0:
        fail(f"{what}: nats-server -t: {(test.stdout + test.stderr).strip()}")
        return
    server = NatsServer(binary, conf, os.path.join(work, "nats-live.log"))
    try:
        for user, password in logins.items():
            try:
                c = Nats("127.0.0.1", server.port, user, password)
            except Failure as err:
                fail(f"{what}: {user} cannot log in: {err}")
                continue
            if user in gateways:
                i = gateways.index(user)
                for subject in ("imgfetch.reply.{}.>", "imgfetch.gateway.{}",
                                "_INBOX_gateway.{}.>"):
                    if c.sub_errors(subject.format(user)):
                        fail(f"{what}: {user} may not subscribe to {subject.format(user)}")
                    if len(gateways) > 1:
                        other = subject.format(gateways[(i + 1) % len(gateways)])
                        if not any("Permissions Violation" in e for e in c.sub_errors(other)):
                            fail(f"{what}: {user} may subscribe to {other}")
                for subject in ("imgfetch.reply.>", "_INBOX.>"):
                    if not any("Permissions Violation" in e for e in c.sub_errors(subject)):
                        fail(f"{what}: {user} may subscribe to {subject}")
            c.close()
        if gateways:
            try:
                Nats("127.0.0.1", server.port, gateways[0], logins[gateways[0]] + "x").close()
                refused = "logged in"
            except Failure as err:
                refused = str(err)
            if "Authorization Violation" not in refused:
                fail(f"{what}: a wrong password for {gateways[0]} was not refused: {refused}")
    finally:
        server.stop()
    print(f"{what}: nats-server ran the users: {len(logins)} logins, each gateway pod limited "
          "to its own subjects, a wrong password refused")


# ---------------------------------------------------------------------------------------------
# Leaf zones


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(url):
    """The status of GET `url`, or None when nothing answers."""
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, ""
    except OSError:
        return None, ""


def toml_value(text, key):
    m = re.search(rf'^{key} = "?([^"\n]*)"?$', text, flags=re.M)
    return m.group(1) if m else None


def check_leaf_zones(args, leaf_zones, by_kind, rendered, stand_ins, users, networks, tomls,
                     accounts_file, hub):
    """Each leaf zone: its hub user limited to its own networks (and equal to nats.conf's user
    of the same name), its leaf node's Service, its resolvers pointed at the leaf through the
    hub's JetStream domain. Then live: a hub nats-server with the rendered users, JetStream
    domain and a TLS leafnode port; each zone's leaf nats-server from its rendered Secret (the
    hub's URL and CA as rendered, only the address moved to this machine); the hub side's
    --provision-only making the consumers; and the hub side's collector and each zone's resolver
    started from their rendered TOML until their /readyz says they serve."""
    ref = conf_users(roles_block(args.reference)) if args.reference else {}
    services = {d["metadata"]["name"]: d for d in by_kind.get("Service", [])}
    leaves = {d["metadata"]["labels"]["imgfetch/zone"]: d for d in by_kind.get("Deployment", [])
              if d["metadata"]["labels"].get("app.kubernetes.io/component") == "leaf"}
    domain = None
    for zone in leaf_zones:
        user = f"zone-{zone}"
        text = open(tomls[zone][0]).read() if zone in tomls else ""
        domain = toml_value(text, "jetstream_domain")
        if user not in users:
            fail(f"leaf zone {zone}: no NATS user {user}")
            continue
        if user in ref and normalized(users[user]) != normalized(ref[user]):
            fail(f"leaf zone {zone}: user {user}'s permissions differ from nats.conf's:\n  "
                 f"{normalized(users[user])}\n  expected {normalized(ref[user])}")
        publish, subscribe = users[user]["publish"], [p.split(" ")[0] for p in
                                                     users[user]["subscribe"]]
        for other, nets in networks.items():
            for n in nets:
                mine = other == zone
                for patterns, subject in (
                        (publish, f"$JS.{domain}.API.CONSUMER.MSG.NEXT.IMGFETCH.imgfetch-{n}"),
                        (publish, f"imgfetch.reply.gw-0.{n}.token"),
                        (subscribe, f"_INBOX_resolver.{other}.x"),
                        (subscribe, f"imgfetch.flow.{other}.token")):
                    allowed = any(subject_matches(p, subject) for p in patterns)
                    if allowed != mine:
                        fail(f"leaf zone {zone}: {user} {'may not' if mine else 'may'} use "
                             f"{subject}")
        if any(p.startswith(("$JS.API.", f"$JS.{domain}.API.STREAM.UPDATE",
                             f"$JS.{domain}.API.CONSUMER.CREATE")) for p in publish):
            fail(f"leaf zone {zone}: {user} may manage streams or consumers")
        leaf = leaves.get(zone)
        name = leaf["metadata"]["name"] if leaf else None
        svc = services.get(name)
        if not svc or [p["port"] for p in svc["spec"]["ports"]] != [4222] or \
                any(leaf["spec"]["template"]["metadata"]["labels"].get(k) != v
                    for k, v in svc["spec"]["selector"].items()):
            fail(f"leaf zone {zone}: no Service {name} on 4222 selecting its leaf pods")
        for key, want in (("nats_url", f"nats://{name}:4222"), ("zone", zone),
                          ("provision", "false"), ("dead_letter_collector", "false")):
            if toml_value(text, key) != want:
                fail(f"leaf zone {zone}: resolver {key} = {toml_value(text, key)}, expected {want}")
        if not domain:
            fail(f"leaf zone {zone}: resolver has no jetstream_domain")
    if not hub:
        fail("leaf zones but no hub side")
    if FAILURES or args.secure:
        if args.secure:
            print("leaf zones: the live run is left to the plain example (no client TLS here)")
        return
    print(f"leaf zones {', '.join(leaf_zones)}: users zone-<zone> limited to their own networks "
          f"(and as nats.conf's), Services on 4222, resolvers through domain {domain}")

    work = os.path.join(args.work, "leaf-live")
    os.makedirs(work, exist_ok=True)
    cert, key = stand_ins.server_cert()
    leaf_port = free_port()
    started = []
    try:
        hub_conf = os.path.join(os.path.dirname(accounts_file), "hub-live.conf")
        with open(hub_conf, "w") as f:
            f.write(f"listen: 127.0.0.1:-1\nserver_name: check-deploy-hub\n"
                    f"max_payload: 8MB\n"
                    f"jetstream {{ store_dir: {json.dumps(os.path.join(work, 'js'))}, "
                    f"max_memory_store: 16MB, max_file_store: 1GB, domain: {domain} }}\n"
                    f"leafnodes {{ listen: 127.0.0.1:{leaf_port}, no_advertise: true, "
                    f"tls {{ cert_file: {json.dumps(cert)}, key_file: {json.dumps(key)} }} }}\n"
                    f"include {json.dumps(os.path.basename(accounts_file))}\n")
        hub_server = NatsServer(args.nats_server, hub_conf, os.path.join(work, "hub.log"))
        started.append(hub_server)

        # The hub side: --provision-only, then the collector.
        spec = hub["spec"]["template"]["spec"]
        pod = Pod("hub side", spec, f"{hub['metadata']['name']}-0",
                  os.path.join(args.work, "pods", "resolver-hub"), rendered, stand_ins, {})
        hub_http = free_port()

        def hub_toml(container):
            env = pod.env(container)
            text = open(env["IMGFETCH_CONFIG"]).read()
            text = re.sub(r'^nats_url = .*$', f'nats_url = "nats://127.0.0.1:{hub_server.port}"',
                          text, flags=re.M)
            text = re.sub(r'^(\w+_file|nats_creds) = "([^"]+)"$',
                          lambda m: f'{m.group(1)} = "{pod.path(m.group(2))}"', text, flags=re.M)
            text = re.sub(r'^http_listen = .*$', f'http_listen = "127.0.0.1:{hub_http}"', text,
                          flags=re.M)
            # One server here, where the chart's hub has three.
            text = re.sub(r'^stream_replicas = .*$', 'stream_replicas = 1', text, flags=re.M)
            path = os.path.join(work, container["name"] + ".toml")
            with open(path, "w") as f:
                f.write(text)
            env["IMGFETCH_CONFIG"] = path
            return env

        for init in spec.get("initContainers", []):
            env = hub_toml(init)
            for attempt in range(10):
                run = subprocess.run([args.resolver] + init["args"], env=env, capture_output=True,
                                     text=True, timeout=60)
                if run.returncode == 0 or attempt == 9:
                    break
                time.sleep(1)  # JetStream may still be starting
            if run.returncode != 0:
                fail(f"hub side: {init['name']} ({' '.join(init['args'])}) exit "
                     f"{run.returncode}: {run.stderr.strip()[-400:]}")
                return
            print(f"hub side: {init['name']} ({' '.join(init['args'])}) made the leaf zones' "
                  "consumers")
        collector = Process([args.resolver], hub_toml(spec["containers"][0]),
                            os.path.join(work, "collector.log"))
        started.append(collector)
        if not collector.wait_ready(f"http://127.0.0.1:{hub_http}/readyz", 30):
            fail(f"hub side: the collector is not ready:\n{collector.tail()}")
            return

        for zone in leaf_zones:
            leaf = leaves[zone]
            name = leaf["metadata"]["name"]
            lpod = Pod(f"zone {zone} leaf", leaf["spec"]["template"]["spec"], f"{name}-0",
                       os.path.join(args.work, "pods", f"leaf-{zone}"), rendered, stand_ins, {})
            c = leaf["spec"]["template"]["spec"]["containers"][0]
            conf_path = c["command"][-1]
            conf = lpod.read(conf_path)
            client, monitor = free_port(), free_port()
            conf = re.sub(r'(urls: \["[a-z-]+://[^@"]*@)[^"]+"',
                          rf'\g<1>localhost:{leaf_port}"', conf)
            conf = conf.replace('listen: "0.0.0.0:4222"', f'listen: "127.0.0.1:{client}"')
            conf = conf.replace('http: "0.0.0.0:8222"', f'http: "127.0.0.1:{monitor}"')
            for ca in re.findall(r'ca_file: "([^"]+)"', conf):
                if not os.path.isfile(lpod.path(ca)):
                    fail(f"zone {zone} leaf: ca_file {ca} is not in the pod")
                conf = conf.replace(f'"{ca}"', json.dumps(lpod.path(ca)))
            if "tls {" not in conf:
                fail(f"zone {zone} leaf: no TLS to the hub (the example dials tls://)")
            live = os.path.join(work, f"leaf-{zone}.conf")
            with open(live, "w") as f:
                f.write(conf)
            leaf_server = NatsServer(args.nats_server, live, os.path.join(work, f"leaf-{zone}.log"),
                                     env=lpod.env(c))
            started.append(leaf_server)
            deadline, linked = time.time() + 15, False
            while time.time() < deadline and not linked:
                status, body = http_get(f"http://127.0.0.1:{monitor}/leafz")
                linked = status == 200 and json.loads(body).get("leafnodes", 0) >= 1
                time.sleep(0.2)
            if not linked:
                fail(f"zone {zone} leaf: no link to the hub in 15 s:\n"
                     f"{''.join(open(leaf_server.log).readlines()[-6:])}")
                continue
            print(f"zone {zone} leaf: linked to the hub over TLS as zone-{zone} (its /leafz)")

            path, env = tomls[zone]
            text = open(path).read()
            store = os.path.join(work, f"store-{zone}")
            os.makedirs(store, exist_ok=True)
            zone_http = free_port()
            text = re.sub(r'^nats_url = .*$', f'nats_url = "nats://127.0.0.1:{client}"', text,
                          flags=re.M)
            text = re.sub(r'^http_listen = .*$', f'http_listen = "127.0.0.1:{zone_http}"', text,
                          flags=re.M)
            text = re.sub(r'^url = "file://[^"]*"$', f'url = "file://{store}"', text, flags=re.M)
            live_toml = os.path.join(work, f"resolver-{zone}.toml")
            with open(live_toml, "w") as f:
                f.write(text)
            resolver = Process([args.resolver], dict(env, IMGFETCH_CONFIG=live_toml),
                               os.path.join(work, f"resolver-{zone}.log"))
            started.append(resolver)
            if not resolver.wait_ready(f"http://127.0.0.1:{zone_http}/readyz", 30):
                fail(f"zone {zone}: its resolver, behind the leaf node, is not ready:\n"
                     f"{resolver.tail()}")
                continue
            print(f"zone {zone}: its resolver serves through the leaf node (/readyz 200)")
    finally:
        for process in reversed(started):
            process.stop()


# ---------------------------------------------------------------------------------------------
# The gateway replicas' identities


def check_gateway_identity(what, sts, hpa, pdbs, rendered, mode):
    """The StatefulSet's structure; returns (pod names, identities Secret name, the file the
    credentials are copied to)."""
    name = sts["metadata"]["name"]
    pod = sts["spec"]["template"]["spec"]
    if hpa:
        if need(hpa, "spec.scaleTargetRef.kind") != "StatefulSet" or \
                need(hpa, "spec.scaleTargetRef.name") != name:
            fail(f"{what}: the HPA scales {need(hpa, 'spec.scaleTargetRef')}, "
                 f"not StatefulSet {name}")
        count = hpa["spec"]["maxReplicas"]
    else:
        count = sts["spec"].get("replicas", 1)
    pods = [f"{name}-{i}" for i in range(count)]
    labels = need(sts, "spec.template.metadata.labels") or {}
    if sts["spec"].get("podManagementPolicy") != "Parallel":
        fail(f"{what}: podManagementPolicy is not Parallel (the HPA would add pods one by one)")
    if not any(set((need(p, "spec.selector.matchLabels") or {}).items()) <= set(labels.items())
               for p in pdbs):
        fail(f"{what}: no PodDisruptionBudget selects the gateway pods")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    inits = pod.get("initContainers", [])
    if len(inits) != 1:
        fail(f"{what}: {len(inits)} init containers, expected the one copying the pod's "
             "credentials")
        return pods, None, None
    init = inits[0]
    c = pod["containers"][0]
    cmd = init.get("command", []) + init.get("args", [])
    init_env = {e["name"]: e for e in init.get("env", [])}
    mounts = {m["name"]: m["mountPath"] for m in init.get("volumeMounts", [])}
    identities = [n for n in mounts if "secret" in volumes.get(n, {})]
    # The gateway image itself (it has no cp), copying the key named after the instance, which
    # is the pod's name, to the file the gateway container reads.
    target_var = "IMGFETCH_NATS_PASSWORD_FILE" if mode == "password" else "IMGFETCH_NATS_CREDS"
    if init.get("command") or init.get("image") != c.get("image") or len(identities) != 1 or \
            cmd != [INSTALL_IDENTITY, mounts[identities[0]]] or \
            need(init_env.get("IMGFETCH_INSTANCE", {}), "valueFrom.fieldRef.fieldPath") != \
            "metadata.name" or not need(init_env.get(target_var, {}), "value"):
        fail(f"{what}: the init container does not install the key named after the pod (the "
             f"gateway image with args {INSTALL_IDENTITY} <Secret>, IMGFETCH_INSTANCE the pod's "
             f"name, {target_var} set): image {init.get('image')}, {cmd}")
        return pods, None, None
    secret = volumes[identities[0]]["secret"]
    if secret.get("items"):
        fail(f"{what}: the identities Secret is mounted with items; every pod needs its own key")
    target = init_env[target_var]["value"]
    main_mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
    if identities[0] in main_mounts:
        fail(f"{what}: the gateway container mounts every replica's credentials")
    own = [n for n, p in mounts.items()
           if target.startswith(p.rstrip("/") + "/") and n != identities[0]]
    if not own or "emptyDir" not in volumes.get(own[0], {}) or own[0] not in main_mounts or \
            main_mounts[own[0]]["mountPath"] != mounts[own[0]]:
        fail(f"{what}: {target} is not on an emptyDir the gateway container mounts at the "
             "same place")
    elif volumes[own[0]]["emptyDir"].get("medium") != "Memory":
        fail(f"{what}: the credentials' emptyDir is not in memory")
    env = {e["name"]: e for e in c.get("env", [])}
    by_pod = lambda n: need(env.get(n, {}), "valueFrom.fieldRef.fieldPath") == "metadata.name"
    if not by_pod("IMGFETCH_INSTANCE"):
        fail(f"{what}: IMGFETCH_INSTANCE is not the pod's name")
    if mode == "password":
        if not by_pod("IMGFETCH_NATS_USER"):
            fail(f"{what}: IMGFETCH_NATS_USER is not the pod's name, so not its instance")
        if need(env.get("IMGFETCH_NATS_PASSWORD_FILE", {}), "value") != target:
            fail(f"{what}: IMGFETCH_NATS_PASSWORD_FILE is not {target}, what the init "
                 "container wrote")
    else:
        creds = need(env.get("IMGFETCH_NATS_CREDS", {}), "value")
        if "IMGFETCH_NATS_USER" in env or creds != target:
            fail(f"{what}: creds mode, but IMGFETCH_NATS_CREDS is not {target} (or a user is set)")
    doc = rendered.get(("Secret", secret["secretName"]))
    if doc is not None and sorted(secret_data(doc)) != sorted(pods):
        fail(f"{what}: Secret {secret['secretName']} has keys {sorted(secret_data(doc))}, "
             f"expected one per pod: {pods}")
    print(f"{what}: StatefulSet {name}, {len(pods)} pods up to the "
          f"{'HPA maximum' if hpa else 'replicas'}; each copies its own key of Secret "
          f"{secret['secretName']} to {target}, and is instance"
          f"{' and NATS user' if mode == 'password' else ''} by its pod name")
    return pods, secret["secretName"], target


def run_gateways(what, sts, pods, args, rendered, stand_ins, generated, mode, secure):
    """Every gateway pod laid out and its environment through --check-config; returns
    user -> password for the live check (password mode)."""
    logins = {}
    for pod_name in pods:
        pod = Pod(f"{what} pod {pod_name}", sts["spec"]["template"]["spec"], pod_name,
                  os.path.join(args.work, "pods", pod_name), rendered, stand_ins, generated,
                  gateway=args.gateway)
        if pod_name in (pods[0], pods[-1]):
            for init, line in pod.init_logs.items():
                print(f"{what} pod {pod_name}: init container {init}: "
                      f"{line.replace(pod.root, '<pod>')}")
        c = pod.spec["containers"][0]
        env = pod.env(c)
        if secure:
            for name in ("IMGFETCH_TOKENS_FILE", "IMGFETCH_NATS_TLS_CA"):
                if name not in env:
                    fail(f"{what}: {name} is not set")
        code, line = run_check([args.gateway, "--check-config"], env=env)
        if pod_name in (pods[0], pods[-1]):
            print(f"{what} pod {pod_name}: gateway --check-config: {line}")
        if code != 0:
            fail(f"{what} pod {pod_name}: gateway --check-config exit {code}: {line}")
            continue
        who = f"as {pod_name}; " if mode == "password" else "with a creds file; "
        if f"{who}instance {pod_name};" not in line:
            fail(f"{what} pod {pod_name}: --check-config does not say `{who}instance {pod_name};`")
        if "IMGFETCH_TOKENS_FILE" in env and "every client let in" in line:
            fail(f"{what} pod {pod_name}: a tokens file, yet every client let in")
        if mode == "password" and os.path.isfile(env.get("IMGFETCH_NATS_PASSWORD_FILE", "")):
            with open(env["IMGFETCH_NATS_PASSWORD_FILE"]) as f:
                logins[env["IMGFETCH_NATS_USER"]] = f.read().rstrip("\n")
    return logins


# ---------------------------------------------------------------------------------------------
# deploy/nats-values.yaml


def check_nats_values(path, accounts_secret):
    """Returns the path of the included accounts file relative to the chart's nats.conf."""
    values = yaml.safe_load(open(path))
    merge = need(values, "config.merge") or {}
    if "accounts" in merge or "authorization" in merge:
        fail(f"{path}: users in config.merge; they come from the imgfetch chart's Secret")
    includes = [v for k, v in merge.items() if k.endswith("$include")]
    if len(includes) != 1:
        fail(f"{path}: {len(includes)} $include in config.merge, expected the imgfetch users")
        return None
    file = posixpath.normpath(posixpath.join("/etc/nats-config", includes[0]))
    mounts = [p["value"] for p in need(values, "container.patch") or []
              if p.get("op") == "add" and p.get("path") == "/volumeMounts/-"]
    vols = {p["value"]["name"]: p["value"] for p in need(values, "podTemplate.patch") or []
            if p.get("op") == "add" and p.get("path") == "/spec/volumes/-"}
    mount = [m for m in mounts if posixpath.dirname(file) == m["mountPath"].rstrip("/")]
    if not mount:
        fail(f"{path}: nothing is mounted at {posixpath.dirname(file)}, where {file} is "
             "included from")
        return None
    volume = vols.get(mount[0]["name"], {})
    items = need(volume, "secret.items") or [{"key": posixpath.basename(file),
                                               "path": posixpath.basename(file)}]
    if need(volume, "secret.secretName") != accounts_secret or \
            {"key": "accounts.conf", "path": posixpath.basename(file)} not in items:
        fail(f"{path}: {file} is not key accounts.conf of Secret {accounts_secret}")
    if not file.startswith("/etc/"):
        fail(f"{path}: {file} is outside /etc/, where the config reloader mounts volumes")
    if not need(values, "config.nats.tls.secretName"):
        fail(f"{path}: no config.nats.tls.secretName to turn TLS on with")
    if need(values, "config.jetstream.merge.domain") != "hub" or \
            need(values, "config.leafnodes.enabled") is not True or \
            need(values, "config.leafnodes.merge.no_advertise") is not True or \
            not need(values, "config.leafnodes.tls.secretName"):
        fail(f"{path}: leaf zones need JetStream domain hub and a leafnodes port that advertises "
             "nothing and can turn TLS on")
    for name in need(values, "container.env") or {}:
        if "PASSWORD" in name:
            fail(f"{path}: {name} in the server's environment")
    print(f"{path}: includes {file}, key accounts.conf of Secret {accounts_secret} (seen by the "
          f"config reloader); TLS from Secret {need(values, 'config.nats.tls.secretName')}")
    return includes[0]


# ---------------------------------------------------------------------------------------------


def check_chart(args, docs, by_kind, rendered):
    zones = args.zones.split(",")
    mode = "creds" if args.creds else "password"
    stand_ins = StandIns(args.work)
    custom = [d for d in docs if d["apiVersion"].split("/")[0] in ("keda.sh", "jetstream.nats.io")]

    def zone_of(doc):
        return need(doc, "metadata.labels") and doc["metadata"]["labels"].get("imgfetch/zone")

    def component(doc):
        return (need(doc, "metadata.labels") or {}).get("app.kubernetes.io/component")

    # One resolver Deployment, PodDisruptionBudget and ConfigMap per zone, nothing else zoned
    # but the leaf zones' leaf nodes.
    leaf_zones = args.leaf.split(",") if args.leaf else []
    for kind in ("Deployment", "PodDisruptionBudget", "ConfigMap"):
        found = sorted(zone_of(d) for d in by_kind.get(kind, [])
                       if zone_of(d) and component(d) == "resolver")
        if found != sorted(zones):
            fail(f"{kind}s of zones {found}, expected one each of {sorted(zones)}")
    leaves = sorted(zone_of(d) for d in by_kind.get("Deployment", []) if component(d) == "leaf")
    if leaves != sorted(leaf_zones):
        fail(f"leaf node Deployments of zones {leaves}, expected {sorted(leaf_zones)}")
    resolver_deploys = [d for d in by_kind.get("Deployment", [])
                        if zone_of(d) and component(d) == "resolver"]

    # Every container: probes, the restricted security context, no secret in a plain value.
    workloads = by_kind.get("Deployment", []) + by_kind.get("StatefulSet", [])
    own_images = {c["image"] for w in workloads if component(w) in ("gateway", "resolver")
                  for c in w["spec"]["template"]["spec"]["containers"]}
    for w in workloads:
        name = w["metadata"]["name"]
        pod = w["spec"]["template"]["spec"]
        if need(pod, "securityContext.runAsNonRoot") is not True:
            fail(f"{name}: pod not runAsNonRoot")
        for c in pod.get("initContainers", []) + pod["containers"]:
            # The imgfetch images hold their binary and its libraries only: no shell, no sleep.
            if c["image"] in own_images and (c.get("command") or execs(
                    [c.get(k) for k in ("lifecycle", "livenessProbe", "readinessProbe",
                                        "startupProbe")])):
                fail(f"{name}: container {c['name']} of {c['image']} runs a command of its own; "
                     "the image has only its binary (its entrypoint)")
            sc = c.get("securityContext") or {}
            if sc.get("readOnlyRootFilesystem") is not True:
                fail(f"{name}: root filesystem writable")
            if sc.get("allowPrivilegeEscalation") is not False:
                fail(f"{name}: privilege escalation allowed")
            if need(sc, "capabilities.drop") != ["ALL"]:
                fail(f"{name}: capabilities not all dropped")
            for env in c.get("env", []):
                secretish = re.search(r"PASSWORD|SECRET|TOKEN|CREDS", env["name"]) and not \
                    is_file_setting(env["name"])
                if secretish and "value" in env:
                    fail(f"{name}: {env['name']} is a plain value")
        for c in pod["containers"]:
            # nats-server's own health endpoint for the leaf nodes.
            paths = ("/healthz", "/healthz") if component(w) == "leaf" else ("/livez", "/readyz")
            for probe, path in zip(("livenessProbe", "readinessProbe"), paths):
                if need(c, f"{probe}.httpGet.path") != path:
                    fail(f"{name}: {probe} is not on {path}")

    # The gateway: a StatefulSet that outlives its drain (preStop sleep + IMGFETCH_GRACE <
    # grace period), and whose replicas are each their own NATS identity.
    gateways = [d for d in by_kind.get("StatefulSet", []) if not zone_of(d)]
    hub_side = [d for d in by_kind.get("Deployment", []) if component(d) == "resolver-hub"]
    if len(hub_side) != (1 if leaf_zones else 0):
        fail(f"{len(hub_side)} hub-side Deployments of the leaf zones, expected "
             f"{1 if leaf_zones else 0}")
    if [d for d in by_kind.get("Deployment", []) if not zone_of(d) and d not in hub_side] \
            or len(gateways) != 1:
        fail(f"expected the gateway as one StatefulSet, found {len(gateways)}")
        return
    sts = gateways[0]
    pod = sts["spec"]["template"]["spec"]
    c = pod["containers"][0]
    env = {e["name"]: e for e in c["env"]}
    grace = env["IMGFETCH_GRACE"]["value"]
    grace_seconds = duration_seconds(grace)
    if grace_seconds is None:
        fail(f"gateway: IMGFETCH_GRACE {grace!r} is not a duration such as 30s")
        grace_seconds = 0
    # The kubelet's sleep action: the image has no sleep to exec.
    if need(c, "lifecycle.preStop.exec"):
        fail("gateway: preStop execs a command; the image has none (use lifecycle.preStop.sleep)")
    sleep = int(need(c, "lifecycle.preStop.sleep.seconds") or 0)
    period = pod["terminationGracePeriodSeconds"]
    if not period > sleep + grace_seconds:
        fail(f"gateway: terminationGracePeriodSeconds {period} <= {sleep} s + {grace}")

    hpa = by_kind.get("HorizontalPodAutoscaler", [])
    if len(hpa) != 1 or need(hpa[0], "spec.metrics.0.resource.name") != "cpu":
        fail("expected one HorizontalPodAutoscaler on CPU")
    pods, identities, _ = check_gateway_identity(
        "gateway", sts, hpa[0] if hpa else None, by_kind.get("PodDisruptionBudget", []),
        rendered, mode)
    generated = {identities: (pods, "creds" if args.creds else "password")}

    accounts = [d for d in by_kind.get("Secret", []) if "accounts.conf" in secret_data(d)]
    users = {}
    if mode == "password":
        if len(accounts) != 1:
            fail(f"password mode, but {len(accounts)} Secrets with accounts.conf")
            return
        users = accounts_users(secret_data(accounts[0])["accounts.conf"])
        pattern = re.escape(sts["metadata"]["name"]) + r"-\d+"
        listed = sorted(u for u in users if re.fullmatch(pattern, u))
        if listed != sorted(pods):
            fail(f"gateway users {listed}, expected one per pod up to the maximum: {pods}")
        else:
            check_isolation("gateway users", users, pods)
        if args.reference:
            compare_roles("NATS users", users, pods, args.reference)
        hashed = [u for u, v in users.items() if v["password"].startswith("$2a$")]
        if args.secure and len(hashed) != len(users):
            fail(f"users without a bcrypt hash: {sorted(set(users) - set(hashed))}")
    elif accounts:
        fail("creds mode, but the chart renders NATS users")

    logins = run_gateways("gateway", sts, pods, args, rendered, stand_ins, generated, mode,
                          args.secure)

    # Each zone's TOML, as its pods read it, through the resolver's own check.
    networks = {}
    resolver_login = None
    tomls = {}
    for deploy in resolver_deploys:
        zone = zone_of(deploy)
        cm = [d for d in by_kind.get("ConfigMap", [])
              if zone_of(d) == zone and component(d) == "resolver"][0]
        text = cm["data"]["resolver.toml"]
        networks[zone] = re.findall(r"^\[networks\.([^\]]+)\]$", text, flags=re.M)
        if args.nack and "provision = false" not in text:
            fail(f"zone {zone}: NACK on but the resolvers provision")
        if args.secure and zone not in leaf_zones and \
                not re.search(r"^nats_tls_ca = ", text, flags=re.M):
            fail(f"zone {zone}: no nats_tls_ca")
        pod = Pod(f"zone {zone}", deploy["spec"]["template"]["spec"],
                  f"{deploy['metadata']['name']}-0",
                  os.path.join(args.work, "pods", f"resolver-{zone}"), rendered, stand_ins, {})
        c = pod.spec["containers"][0]
        env = pod.env(c)
        mounted = [m["mountPath"].rstrip("/") + "/" for m in c.get("volumeMounts", [])]

        def move(match):
            key, path = match.group(1), match.group(2)
            if not any(path.startswith(m) for m in mounted):
                fail(f"zone {zone}: {key} = {path} is on no mounted volume")
            elif not os.path.isfile(pod.path(path)):
                fail(f"zone {zone}: {key} = {path}: no such file in the pod")
            return f'{key} = "{pod.path(path)}"'

        toml = re.sub(r'^(\w+_file|nats_creds|nats_tls_ca) = "([^"]+)"$', move,
                      open(env["IMGFETCH_CONFIG"]).read(), flags=re.M)
        path = os.path.join(args.work, f"resolver-{zone}.toml")
        with open(path, "w") as f:
            f.write(toml)
        env["IMGFETCH_CONFIG"] = path
        tomls[zone] = (path, env)
        code, line = run_check([args.resolver, "--check-config"], env=env)
        print(f"zone {zone}: resolver --check-config: {line}")
        if code != 0:
            fail(f"zone {zone}: resolver --check-config exit {code}")
        user = re.search(r'^nats_user = "([^"]+)"$', text, flags=re.M)
        password = re.search(r'^nats_password_file = "([^"]+)"$', text, flags=re.M)
        if mode == "password" and zone not in leaf_zones and user and password and \
                os.path.isfile(pod.path(password.group(1))):
            resolver_login = (user.group(1), pod.read(password.group(1)).rstrip("\n"))
    all_networks = sorted(n for ns in networks.values() for n in ns)

    if mode == "password" and users:
        if resolver_login:
            logins[resolver_login[0]] = resolver_login[1]
        publisher = [d for d in by_kind.get("Secret", []) if "publisher" in secret_data(d)]
        if publisher:
            logins["publisher"] = secret_data(publisher[0])["publisher"]
        conf = os.path.join(args.work, "nats", "etc", "nats-config", "nats.conf")
        include = "../nats-imgfetch/accounts.conf"
        if args.nats_values:
            include = check_nats_values(args.nats_values,
                                        accounts[0]["metadata"]["name"]) or include
        accounts_file = posixpath.normpath(posixpath.join(posixpath.dirname(conf), include))
        os.makedirs(os.path.dirname(conf), exist_ok=True)
        os.makedirs(os.path.dirname(accounts_file), exist_ok=True)
        with open(accounts_file, "w") as f:
            f.write(secret_data(accounts[0])["accounts.conf"])
        live_check("NATS users", args.nats_server, accounts_file, os.path.dirname(conf),
                   logins, pods)
        if leaf_zones:
            check_leaf_zones(args, leaf_zones, by_kind, rendered, stand_ins, users, networks,
                             tomls, accounts_file, hub_side[0] if hub_side else None)
    elif leaf_zones:
        print("leaf zones in creds mode: the live link is checked in password mode only")

    for doc in custom:
        check_custom(doc, all_networks)
    scaled = {need(d, "spec.scaleTargetRef.name"): d for d in by_kind.get("ScaledObject", [])}
    if args.keda:
        for deploy in resolver_deploys:
            zone = zone_of(deploy)
            so = scaled.get(deploy["metadata"]["name"])
            if not so:
                fail(f"zone {zone}: no ScaledObject")
                continue
            consumers = sorted(t["metadata"]["consumer"] for t in so["spec"]["triggers"])
            want = sorted(f"imgfetch-{n}" for n in networks.get(zone, []))
            if consumers != want:
                fail(f"zone {zone}: KEDA triggers on {consumers}, expected {want}")
            if "replicas" in deploy["spec"]:
                fail(f"zone {zone}: replicas set although KEDA scales it")
    elif scaled:
        fail("ScaledObjects rendered with KEDA off")

    streams = {need(d, "spec.name"): d for d in by_kind.get("Stream", [])}
    consumers = {need(d, "spec.durableName"): d for d in by_kind.get("Consumer", [])}
    if args.nack:
        req = streams.get("IMGFETCH")
        if not req:
            fail("NACK on but no Stream IMGFETCH")
        else:
            subjects = sorted(req["spec"]["subjects"])
            if subjects != sorted(s for n in all_networks for s in network_subjects(n)):
                fail(f"Stream IMGFETCH captures {subjects}, networks are {all_networks}")
            for key, want in (("retention", "workqueue"), ("discard", "new"), ("storage", "file")):
                if req["spec"].get(key) != want:
                    fail(f"Stream IMGFETCH: {key} {req['spec'].get(key)}, expected {want}")
        for n in all_networks:
            c = consumers.get(f"imgfetch-{n}")
            if not c:
                fail(f"NACK on but no Consumer imgfetch-{n}")
            elif "filterSubject" in c["spec"] or \
                    sorted(c["spec"].get("filterSubjects", [])) != sorted(network_subjects(n)) or \
                    c["spec"]["ackPolicy"] != "explicit":
                fail(f"Consumer imgfetch-{n}: filter or ack policy wrong")
        if "IMGFETCH_DLQ" not in streams or "imgfetch-dead-letters" not in consumers:
            fail("NACK on but no dead-letter Stream and Consumer")
    elif streams or consumers:
        fail("Streams or Consumers rendered with NACK off")

    kinds = ", ".join(f"{len(v)} {k}" for k, v in sorted(by_kind.items()))
    print(f"{args.rendered}: {kinds}; zones {', '.join(zones)}; networks {', '.join(all_networks)}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("rendered")
    parser.add_argument("--zones")
    parser.add_argument("--keda", action="store_true")
    parser.add_argument("--nack", action="store_true")
    parser.add_argument("--secure", action="store_true",
                        help="require tokens, NATS TLS and bcrypt hashes")
    parser.add_argument("--creds", action="store_true", help="expect NATS creds files")
    parser.add_argument("--resolver", required=True)
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--nats-server", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--reference", help="nats.conf, whose roles the users must have")
    parser.add_argument("--nats-values", help="deploy/nats-values.yaml")
    parser.add_argument("--leaf", help="the zones that are leaf zones (comma-separated)")
    args = parser.parse_args()

    docs = [d for d in yaml.safe_load_all(open(args.rendered)) if d]
    by_kind = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    rendered = {(d["kind"], d["metadata"]["name"]): d for d in docs
                if d["kind"] in ("Secret", "ConfigMap")}
    check_chart(args, docs, by_kind, rendered)
    if FAILURES:
        sys.exit(1)


if __name__ == "__main__":
    main()
