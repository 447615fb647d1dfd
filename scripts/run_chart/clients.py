"""The clients of a chart run: HTTP with urllib, a NATS connection speaking the client protocol
as the NATS CLI does (CONNECT with a user and password, TLS after INFO, SUB, HPUB, HMSG), and
the fault suite's websocket load (`imgfetch-faults --against`). scripts/check-deploy.py uses
the same NATS connection to try the rendered users' permissions."""

import json
import os
import re
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request

from .kubelet import Failure


def http_get(url, token=None, timeout=30):
    """(status, headers, body) of a GET."""
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


class Nats:
    """One NATS client connection, as `nats --server ... --user ... --password ... --tlsca`."""

    def __init__(self, host, port, user, password, ca=None, server_name="nats", timeout=10,
                 creds=None, signer=None):
        """`creds`: the text of a .creds file instead of a user and password; `signer` signs
        the server's nonce with its seed (run_chart.operator.Operator.sign)."""
        raw = socket.create_connection((host, port), timeout=timeout)
        line = b""
        while not line.endswith(b"\r\n"):
            chunk = raw.recv(1)
            if not chunk:
                raise Failure("NATS closed the connection before INFO")
            line += chunk
        self.info = json.loads(line[5:])
        self.sock = raw
        if ca:
            if not self.info.get("tls_required") and not self.info.get("tls_available"):
                raise Failure("NATS offers no TLS, but a CA was given")
            ctx = ssl.create_default_context(cafile=ca)
            self.sock = ctx.wrap_socket(raw, server_hostname=server_name)
            self.tls = self.sock.version()
        elif self.info.get("tls_required"):
            raise Failure("NATS requires TLS")
        self.file = self.sock.makefile("rb")
        connect = {"verbose": False, "pedantic": False, "headers": True, "no_responders": True,
                   "protocol": 1, "name": "run-chart", "tls_required": bool(ca)}
        if creds:
            jwt = re.search(r"-----BEGIN NATS USER JWT-----\s*(\S+)", creds).group(1)
            seed = re.search(r"-----BEGIN USER NKEY SEED-----\s*(\S+)", creds).group(1)
            connect.update(jwt=jwt, sig=signer(seed, self.info["nonce"].encode()))
            user = "(creds)"
        else:
            connect.update(user=user, **{"pass": password})
        self._send(f"CONNECT {json.dumps(connect)}\r\nPING\r\n".encode())
        line = self.file.readline()
        if not line.startswith(b"PONG"):
            raise Failure(f"NATS refused {user}: {line.decode().strip()}")
        self.sid = 0

    def _send(self, data):
        self.sock.sendall(data)

    def sub(self, subject):
        self.sid += 1
        self._send(f"SUB {subject} {self.sid}\r\n".encode())
        return self.sid

    def sub_errors(self, subject):
        """Subscribes to `subject` and returns the server's errors for it (none: allowed),
        learnt by a PING after the SUB."""
        self.sub(subject)
        self._send(b"PING\r\n")
        errors = []
        while True:
            line = self.file.readline().decode().strip()
            if not line:
                return errors or ["connection closed"]
            if line == "PONG":
                return errors
            if line == "PING":
                self._send(b"PONG\r\n")
            elif line.startswith("-ERR"):
                errors.append(line)

    def pub(self, subject, payload, headers=None, reply=""):
        if headers:
            hdr = "NATS/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
            hb = hdr.encode()
            self._send(f"HPUB {subject} {reply} {len(hb)} {len(hb) + len(payload)}\r\n".encode()
                       + hb + payload + b"\r\n")
        else:
            self._send(f"PUB {subject} {reply} {len(payload)}\r\n".encode() + payload + b"\r\n")

    def next_msg(self, timeout):
        """(subject, headers, payload) of the next message; raises on -ERR or timeout."""
        self.sock.settimeout(timeout)
        try:
            while True:
                line = self.file.readline()
                if not line:
                    raise Failure("NATS closed the connection")
                if line.startswith(b"PING"):
                    self._send(b"PONG\r\n")
                    continue
                if line.startswith((b"+OK", b"PONG", b"INFO")):
                    continue
                if line.startswith(b"-ERR"):
                    raise Failure(f"NATS: {line.decode().strip()}")
                parts = line.decode().split()
                if parts[0] == "MSG":
                    size = int(parts[-1])
                    data = self.file.read(size + 2)[:-2]
                    return parts[1], {}, data
                if parts[0] == "HMSG":
                    hlen, total = int(parts[-2]), int(parts[-1])
                    data = self.file.read(total + 2)[:-2]
                    head, body = data[:hlen].decode(), data[hlen:]
                    lines = head.split("\r\n")
                    headers = {"_status": lines[0][len("NATS/1.0"):].strip()}
                    for h in lines[1:]:
                        if ": " in h:
                            k, v = h.split(": ", 1)
                            headers[k] = v
                    return parts[1], headers, body
        except socket.timeout:
            raise Failure(f"no NATS message within {timeout} s") from None

    def request(self, subject, payload, headers=None, timeout=30):
        inbox = f"_INBOX.run-chart.{os.getpid()}.{time.monotonic_ns()}"
        self.sub(inbox)
        self.pub(subject, payload, headers, reply=inbox)
        return self.next_msg(timeout)

    def close(self):
        for closable in (self.file, self.sock):
            try:
                closable.close()
            except OSError:
                pass


class Load:
    """`imgfetch-faults --against`: websocket clients with known request ids, stopped with
    SIGTERM; every accepted request must end in a correct image, once."""

    def __init__(self, faults_bin, gateways, networks, token, report, clients=8, interval_ms=None,
                 label="chart", seconds=None):
        args = [faults_bin, "--label", label, "--json", report, "--clients", str(clients)]
        if seconds:
            args += ["--seconds", str(seconds)]
        for g in gateways:
            args += ["--against", g]
        for n in networks:
            args += ["--network", n]
        if token:
            args += ["--token", token]
        if interval_ms:
            args += ["--interval", str(interval_ms)]
        self.report = report
        self.log = open(report + ".log", "w")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)

    def stop(self, timeout=120):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise Failure(f"the load did not finish within {timeout} s of SIGTERM") from None
        self.log.close()
        with open(self.report) as f:
            reports = json.load(f)
        return code, reports[0] if isinstance(reports, list) else reports
