"""NATS in operator (JWT) mode for the chart's creds mode (`nats.auth.mode: creds`), as `nsc`
would set it up: an operator, a system account and the account IMGFETCH with JetStream, and a
user JWT per NATS user carrying exactly the permissions the chart renders for that user in
password mode (docs/DEPLOY.md, "NATS credentials files": "render the chart in password mode
once to read them"). The nkeys and ed25519 signatures are scripts/check-deploy.py's (openssl)."""

import atexit
import base64
import importlib.util
import json
import os
import re
import shutil
import tempfile
import time

_spec = importlib.util.spec_from_file_location(
    "check_deploy", os.path.join(os.path.dirname(os.path.dirname(__file__)), "check-deploy.py"))
check_deploy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_deploy)

OPERATOR, ACCOUNT, USER = 14 << 3, 0 << 3, 20 << 3  # nkeys' prefixes: O, A, U


def accounts_conf_users(text):
    """The users of the chart's accounts.conf (JSON after `accounts:`, comments first)."""
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    body = re.sub(r"^\s*accounts\s*:", "", body.strip(), count=1)
    accounts = json.loads(body)
    return [u for acc in accounts.values() for u in acc.get("users", [])]


class Operator:
    """The keys and JWTs of one operator-mode NATS."""

    def __init__(self, work):
        self.signer = check_deploy.StandIns(work)
        self.operator = self._key(OPERATOR)
        self.system = self._key(ACCOUNT)
        self.account = self._key(ACCOUNT)

    def _key(self, prefix):
        seed = os.urandom(32)
        public = check_deploy._nkey(prefix, self.signer._ed25519_public(seed))
        return {"seed": seed, "public": public, "prefix": prefix}

    def _jwt(self, issuer, subject, name, nats):
        claims = {"jti": check_deploy._base32_crc(os.urandom(20))[:52], "iat": int(time.time()),
                  "iss": issuer["public"], "name": name, "sub": subject, "nats": nats}
        header = {"typ": "JWT", "alg": "ed25519-nkey"}
        signing = ".".join(check_deploy._b64url(json.dumps(x, separators=(",", ":")).encode())
                           for x in (header, claims))
        sig = self.signer._ed25519_sign(issuer["seed"], signing.encode())
        return signing + "." + check_deploy._b64url(sig)

    def server_config(self):
        """The lines of nats.conf that put the server in operator mode, accounts preloaded."""
        operator_jwt = self._jwt(self.operator, self.operator["public"], "imgfetch-run",
                                 {"type": "operator", "version": 2,
                                  "system_account": self.system["public"]})
        unlimited = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                     "wildcards": True, "conn": -1, "leaf": -1}
        system_jwt = self._jwt(self.operator, self.system["public"], "SYS",
                               {"type": "account", "version": 2, "limits": unlimited})
        account_jwt = self._jwt(self.operator, self.account["public"], "IMGFETCH", {
            "type": "account", "version": 2,
            "limits": {**unlimited, "mem_storage": -1, "disk_storage": -1, "streams": -1,
                       "consumer": -1}})
        return (f"operator: {operator_jwt}\nsystem_account: {self.system['public']}\n"
                f"resolver: MEMORY\nresolver_preload: {{\n"
                f"  {self.system['public']}: {system_jwt}\n"
                f"  {self.account['public']}: {account_jwt}\n}}\n")

    def creds(self, user):
        """A .creds file for one user of the chart's password-mode accounts.conf, with its
        permissions (allow and deny lists, queue groups, allow_responses)."""
        key = self._key(USER)
        perms = user.get("permissions", {})
        nats = {"type": "user", "version": 2, "subs": -1, "data": -1, "payload": -1}
        for side, short in (("publish", "pub"), ("subscribe", "sub")):
            p = perms.get(side, {})
            nats[short] = {k: p[k] for k in ("allow", "deny") if k in p}
        if perms.get("allow_responses"):
            nats["resp"] = {"max": 1, "ttl": 0}
        jwt = self._jwt(self.account, key["public"], user["user"], nats)
        seed = check_deploy._nkey_seed(USER, key["seed"])
        return ("-----BEGIN NATS USER JWT-----\n" + jwt + "\n------END NATS USER JWT------\n\n"
                "-----BEGIN USER NKEY SEED-----\n" + seed + "\n------END USER NKEY SEED------\n")


def sign(seed, data):
    """The base64url signature of `data` with an nkey seed (a .creds file's), as a client
    signs the server's nonce."""
    raw = base64.b32decode(seed + "=" * (-len(seed) % 8))[2:-2]
    return check_deploy._b64url(check_deploy.StandIns(_SIGN_DIR)._ed25519_sign(raw, data))


_SIGN_DIR = tempfile.mkdtemp(prefix="run-chart-sign-")
atexit.register(shutil.rmtree, _SIGN_DIR, True)
