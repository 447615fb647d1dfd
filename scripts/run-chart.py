#!/usr/bin/env python3
"""Starts what the Helm chart renders, from the built images, on one machine with podman, and
checks it through the running containers (docs/DEPLOY.md, "Running the chart without a
cluster"). scripts/run-chart.sh prepares the tools and images and calls it:

    run-chart.py run     --chart deploy/helm/imgfetch ...   # the two-zone example, every check
    run-chart.py upgrade --old-chart DIR --old-tag T ...    # the previous release, then this one

Every pod runs from the rendered spec (scripts/run_chart/kubelet.py says how, and what a real
cluster does that this does not); NATS is nats-server in an image of its own, configured as
deploy/nats-values.yaml configures the official chart, with the users the chart rendered; S3 is
s3s-fs. Exits non-zero at the first failed check, after stopping everything it started.
"""

import argparse
import base64
import copy
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import yaml  # noqa: E402  (PyYAML, installed by scripts/check-deploy.sh)

from run_chart.clients import Load, Nats, http_get  # noqa: E402
from run_chart.kubelet import Cluster, Failure, log, podman  # noqa: E402
from run_chart.operator import Operator, accounts_conf_users, sign  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMESPACE = "imgfetch"
RELEASE = "imgfetch"
S3_KEY_ID, S3_SECRET = "run-chart", "run-chart-secret-key"
RESULTS = []  # (check, outcome) for the summary


def passed(check, detail=""):
    RESULTS.append((check, detail))
    log(f"ok: {check}{': ' + detail if detail else ''}")


def secret(name, data, labels=None):
    return {"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels or {}},
            "data": {k: base64.b64encode(v if isinstance(v, bytes) else v.encode()).decode()
                     for k, v in data.items()}}


# -- what the run needs besides the chart ------------------------------------------------------

def make_tls(work):
    """A CA, and a certificate for the NATS Service's names signed by it (as cert-manager
    would write them into a Secret: tls.crt, tls.key, ca.crt)."""
    d = os.path.join(work, "tls")
    os.makedirs(d, exist_ok=True)

    def ssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)
    ssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=imgfetch run-chart CA", "-days", "2")
    with open(os.path.join(d, "ext"), "w") as f:
        f.write("subjectAltName=DNS:nats,DNS:nats.imgfetch.svc,"
                "DNS:nats.imgfetch.svc.cluster.local\n")
    ssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "tls.key", "-out", "tls.csr", "-subj", "/CN=nats")
    ssl("x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "tls.crt", "-days", "2", "-extfile", "ext")
    return {k: open(os.path.join(d, k), "rb").read() for k in ("ca.crt", "tls.crt", "tls.key")}


def tokens():
    """A client token with every network, and its tokens file (docs/SECURITY.md)."""
    token = secrets.token_urlsafe(32)
    digest = hashlib.sha256(token.encode()).hexdigest()
    return token, (f'[[token]]\nname = "run-chart"\nsha256 = "{digest}"\n'
                   f'networks = ["*"]\n')


def nats_objects(nats_values, image, tls, operator_conf=None, leaf_tls=None):
    """NATS as deploy/nats-values.yaml has the official chart run it, on one node: its
    config.merge, JetStream (file store, domain), leafnode port, monitoring, client TLS, and
    the imgfetch chart's accounts Secret mounted at /etc/nats-imgfetch and included."""
    cfg = nats_values["config"]
    merge = cfg.get("merge", {})
    js = cfg["jetstream"]
    lines = ["server_name: nats-0", "port: 4222", f"http_port: {cfg['monitor']['port']}"]
    payload = str(merge.get("max_payload", "1MB")).strip("<> ")
    lines.append(f"max_payload: {payload}")
    lines.append("jetstream {\n  store_dir: /data\n"
                 f"  max_file_store: {js['fileStore']['maxSize']}\n"
                 f"  max_memory_store: {js['memoryStore']['maxSize']}\n"
                 + "".join(f"  {k}: {v}\n" for k, v in js.get("merge", {}).items()) + "}")
    leaf = cfg.get("leafnodes", {})
    leaf_tls = tls if leaf_tls is None else leaf_tls
    if leaf.get("enabled"):
        leaf_conf = ("  tls {\n    cert_file: /etc/nats-certs/leafnodes/tls.crt\n"
                    "    key_file: /etc/nats-certs/leafnodes/tls.key\n  }\n") if leaf_tls else ""
        lines.append("leafnodes {\n" f"  port: {leaf['port']}\n"
                     + "".join(f"  {k}: {str(v).lower()}\n" for k, v in leaf.get("merge", {}).items())
                     + leaf_conf + "}")
    if tls:
        lines.append("tls {\n  cert_file: /etc/nats-certs/nats/tls.crt\n"
                     "  key_file: /etc/nats-certs/nats/tls.key\n}")
    if operator_conf:
        # Creds mode: the user JWTs carry the permissions; no users are included.
        lines.append(operator_conf)
    else:
        lines.append(f"include {merge.get('$include')}")
    conf = "\n".join(lines) + "\n"
    labels = {"app.kubernetes.io/name": "nats", "app.kubernetes.io/instance": "nats",
              "app.kubernetes.io/component": "nats"}
    mounts = [{"name": "config", "mountPath": "/etc/nats-config"},
              {"name": "data", "mountPath": "/data"}]
    volumes = [{"name": "config", "configMap": {"name": "nats-config"}},
               {"name": "data", "persistentVolumeClaim": {"claimName": "nats-js-nats-0"}}]
    if not operator_conf:
        # deploy/nats-values.yaml's podTemplate and container patches, in effect.
        mounts.append({"name": "imgfetch-accounts", "mountPath": "/etc/nats-imgfetch",
                       "readOnly": True})
        volumes.append({"name": "imgfetch-accounts", "secret": {
            "secretName": "imgfetch-nats-accounts",
            "items": [{"key": "accounts.conf", "path": "accounts.conf"}]}})
    if tls:
        mounts.append({"name": "server-tls", "mountPath": "/etc/nats-certs/nats", "readOnly": True})
        volumes.append({"name": "server-tls", "secret": {
            "secretName": cfg["nats"]["tls"]["secretName"]}})
    if leaf_tls and leaf.get("enabled"):
        mounts.append({"name": "leafnodes-tls", "mountPath": "/etc/nats-certs/leafnodes",
                       "readOnly": True})
        volumes.append({"name": "leafnodes-tls", "secret": {"secretName": leaf["tls"]["secretName"]}})
    probe = {"httpGet": {"path": "/healthz?js-enabled-only=true", "port": "monitor"},
             "periodSeconds": 2, "failureThreshold": 3}
    sts = {"apiVersion": "apps/v1", "kind": "StatefulSet",
           "metadata": {"name": "nats", "namespace": NAMESPACE, "labels": labels},
           "spec": {"replicas": 1, "serviceName": "nats-headless",
                    "selector": {"matchLabels": labels},
                    "template": {"metadata": {"labels": labels}, "spec": {
                        "terminationGracePeriodSeconds": 60,
                        "securityContext": {"runAsNonRoot": True, "runAsUser": 65532,
                                            "runAsGroup": 65532, "fsGroup": 65532},
                        "containers": [{
                            "name": "nats", "image": image,
                            "args": ["--config", "/etc/nats-config/nats.conf"],
                            "ports": [{"name": "nats", "containerPort": 4222},
                                      {"name": "monitor", "containerPort": 8222},
                                      {"name": "leafnodes", "containerPort": 7422}],
                            "readinessProbe": probe, "livenessProbe": {
                                "httpGet": {"path": "/healthz", "port": "monitor"},
                                "periodSeconds": 10, "failureThreshold": 3},
                            "securityContext": {"readOnlyRootFilesystem": True,
                                                "allowPrivilegeEscalation": False,
                                                "capabilities": {"drop": ["ALL"]}},
                            "volumeMounts": mounts}],
                        "volumes": volumes}}}}
    services = [{"apiVersion": "v1", "kind": "Service",
                 "metadata": {"name": name, "namespace": NAMESPACE},
                 "spec": {"selector": labels, "ports": [
                     {"name": "nats", "port": 4222, "targetPort": "nats"},
                     {"name": "monitor", "port": 8222, "targetPort": "monitor"},
                     {"name": "leafnodes", "port": 7422, "targetPort": "leafnodes"}]}}
                for name in ("nats", "nats-headless")]
    cm = {"apiVersion": "v1", "kind": "ConfigMap",
          "metadata": {"name": "nats-config", "namespace": NAMESPACE},
          "data": {"nats.conf": conf}}
    return [cm, *services, sts]


def s3_objects(image, s3s_fs):
    """s3s-fs, which checks SigV4 signatures, as a pod with the Service name `s3`."""
    labels = {"app.kubernetes.io/name": "s3"}
    sts = {"apiVersion": "apps/v1", "kind": "StatefulSet",
           "metadata": {"name": "s3", "namespace": NAMESPACE},
           "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                    "template": {"metadata": {"labels": labels}, "spec": {
                        "terminationGracePeriodSeconds": 2,
                        "securityContext": {"runAsUser": 65532, "runAsGroup": 65532,
                                            "runAsNonRoot": True},
                        "containers": [{
                            "name": "s3", "image": image,
                            "command": ["/usr/local/bin/s3s-fs", "--host", "0.0.0.0",
                                        "--port", "9000", "--access-key", S3_KEY_ID,
                                        "--secret-key", S3_SECRET, "/data"],
                            "ports": [{"name": "s3", "containerPort": 9000}],
                            "readinessProbe": {"tcpSocket": {"port": 9000}, "periodSeconds": 1},
                            "volumeMounts": [
                                {"name": "bin", "mountPath": "/usr/local/bin/s3s-fs",
                                 "readOnly": True},
                                {"name": "data", "mountPath": "/data"}]}],
                        "volumes": [
                            {"name": "bin", "persistentVolumeClaim": {"claimName": "s3s-fs-bin"}},
                            {"name": "data", "persistentVolumeClaim": {"claimName": "s3-data"}}]}}}}
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s3", "namespace": NAMESPACE},
           "spec": {"selector": labels, "ports": [{"name": "s3", "port": 9000, "targetPort": 9000}]}}
    return [svc, sts]


# -- rendering --------------------------------------------------------------------------------

def values_for(args, example, passwords, gateway_max):
    """An example's values with only what this machine needs changed, each change logged."""
    with open(example) as f:
        values = yaml.safe_load(f)
    changes = []

    def change(path, value):
        node = values
        keys = path.split(".")
        for k in keys[:-1]:
            node = node[int(k)] if isinstance(node, list) else node.setdefault(k, {})
        old = node[int(keys[-1])] if isinstance(node, list) else node.get(keys[-1])
        node[keys[-1]] = value
        changes.append(f"{path}: {old!r} -> {value!r}")
    change("nack.enabled", False)  # no NACK operator: the resolvers provision (the default)
    change("keda.enabled", False)  # no KEDA: replicas as given
    change("nats.streamReplicas", 1)  # one NATS node
    change("gateway.archive.endpoint", "http://s3:9000")
    for i, zone in enumerate(values["zones"]):
        for j, net in enumerate(zone["networks"]):
            if "endpoint" in net.get("store", {}):
                change(f"zones.{i}.networks.{j}.store.endpoint", "http://s3:9000")
                change(f"zones.{i}.networks.{j}.store.accessKeyId", S3_KEY_ID)
        if "leaf" in zone:
            # The hub's leafnode port, as the zone reaches it here: the nats Service.
            change(f"zones.{i}.leaf.hubUrl", "tls://nats:7422")
    if any("leaf" in z for z in values["zones"]):
        change("leaf.image", {"repository": args.nats_image.rsplit(":", 1)[0],
                              "tag": args.nats_image.rsplit(":", 1)[1], "pullPolicy": "Never"})
    for c in changes:
        log(f"values: {c}")
    overlay = {"nats": {"auth": {
        "gateway": {"passwords": {f"{RELEASE}-gateway-{i}": passwords[f"gateway-{i}"]
                                  for i in range(gateway_max)}},
        "resolver": {"passwords": {"resolver": passwords["resolver"]}},
        "publisher": {"passwords": {"publisher": passwords["publisher"]}}}}}
    return values, overlay


def render(args, chart, files, sets, work, tag):
    out = subprocess.run([args.helm, "template", RELEASE, chart, "-n", NAMESPACE,
                          *sum((["-f", f] for f in files), []),
                          *sum((["--set", s] for s in sets), [])],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise Failure(f"helm template {chart}: {out.stderr.strip()}")
    with open(os.path.join(work, f"rendered-{tag}.yaml"), "w") as f:
        f.write(out.stdout)
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    kinds = sorted({d["kind"] for d in docs})
    log(f"rendered {chart} ({tag}): {len(docs)} objects: {', '.join(kinds)}")
    return docs


def replicas_of(docs):
    hpas = {d["spec"]["scaleTargetRef"]["name"]: d["spec"]["minReplicas"]
            for d in docs if d["kind"] == "HorizontalPodAutoscaler"}

    def count(obj):
        return obj["spec"].get("replicas") or hpas.get(obj["metadata"]["name"], 1)
    return count


class Run:
    """One machine's "cluster": the network, NATS, S3, the Secrets made out of band, the
    stores, and the chart's workloads."""

    def __init__(self, args, work, creds=False, layout="two-zones"):
        self.args, self.work = args, work
        self.operator = Operator(work) if creds else None
        self.tls = make_tls(work)
        self.token, tokens_file = tokens()
        self.passwords = {f"gateway-{i}": secrets.token_hex(24) for i in range(10)}
        self.passwords.update(resolver=secrets.token_hex(24), publisher=secrets.token_hex(24))
        claims, host_paths = self.stores(layout)
        self.cluster = Cluster(work, args.run_id, NAMESPACE, claims=claims, host_paths=host_paths)
        out_of_band = [
            secret("imgfetch-nats-ca", {"ca.crt": self.tls["ca.crt"]}),
            secret("imgfetch-nats-server-tls", {k: self.tls[k] for k in ("tls.crt", "tls.key", "ca.crt")}),
            secret("imgfetch-gateway-tokens", {"tokens.toml": tokens_file}),
            secret("imgfetch-archive-s3", {"access_key_id": S3_KEY_ID, "secret_access_key": S3_SECRET}),
            secret("cams-s3", {"secret_access_key": S3_SECRET}),
            # The leaf zones' trust in the hub's leafnode certificate, and that certificate.
            secret("imgfetch-hub-ca", {"ca.crt": self.tls["ca.crt"]}),
            secret("imgfetch-nats-leafnodes-tls", {k: self.tls[k] for k in ("tls.crt", "tls.key")}),
        ]
        self.cluster.apply(out_of_band)
        with open(os.path.join(ROOT, "deploy/nats-values.yaml")) as f:
            self.nats_values = yaml.safe_load(f)

    def stores(self, layout):
        """The zones' stores with the samples and the load's images: for the two-zone example
        the dmz share and the S3 bucket camera-images; for the leaf-zone example harbor's claim
        and plant's hostPath. The S3 server also holds the archive bucket."""
        stores = os.path.join(self.work, "stores")
        s3 = os.path.join(stores, "s3")
        os.makedirs(os.path.join(s3, "imgfetch-archive"))
        if layout == "two-zones":
            dirs = {"dmz": (os.path.join(stores, "dmz"), "harbor", "quay-east.jpg"),
                    "cams": (os.path.join(s3, "camera-images"), "plant", "line-3/overview.png")}
            claims = {"dmz-images": dirs["dmz"][0]}
            host_paths = {}
        else:
            dirs = {"harbor": (os.path.join(stores, "harbor"), "harbor", "quay-east.jpg"),
                    "plant": (os.path.join(stores, "plant"), "plant", "line-3/overview.png")}
            claims = {f"{RELEASE}-resolver-harbor-harbor": dirs["harbor"][0]}
            host_paths = {"/srv/images/plant": dirs["plant"][0]}
        self.cases = {}
        for net, (path, sample, key) in dirs.items():
            shutil.copytree(os.path.join(ROOT, "samples", sample), path)
            if self.args.corpus:
                shutil.copytree(self.args.corpus, path, dirs_exist_ok=True)
            subprocess.run(["chmod", "-R", "a+rX", path], check=True)
            self.cases[net] = (key, os.path.join(path, key))
        self.networks = sorted(dirs)
        subprocess.run(["chown", "-R", "65532:65532", s3], check=True)
        nats_data = os.path.join(stores, "nats-0")
        os.makedirs(nats_data)
        os.chown(nats_data, 65532, 65532)
        claims.update({"s3-data": s3, "nats-js-nats-0": nats_data,
                       "s3s-fs-bin": self.args.s3s_fs})
        self.archive = os.path.join(s3, "imgfetch-archive")
        return claims, host_paths

    def start_backing(self, tls, leaf_tls=None):
        self.nats_tls = tls
        c = self.cluster
        c.apply(s3_objects(self.args.base_image, self.args.s3s_fs))
        self.nats_docs = nats_objects(self.nats_values, self.args.nats_image, tls,
                                      self.operator.server_config() if self.operator else None,
                                      leaf_tls)
        # NATS waits for the chart's accounts Secret, as its pods do (ContainerCreating).
        self.nats_started = False

    def apply_chart(self, docs):
        c = self.cluster
        keyed = [d for d in docs if d["kind"] in ("Secret", "ConfigMap", "Service")]
        changed = c.apply(keyed)
        if not self.nats_started:
            c.apply(self.nats_docs)
            c.workloads["nats"].wait_ready(c.workloads["nats"].pods, 60)
            c.workloads["s3"].wait_ready(c.workloads["s3"].pods, 60)
            self.nats_started = True
        elif ("Secret", "imgfetch-nats-accounts") in changed:
            # The official chart's config reloader: SIGHUP once the mounted file changed.
            for pod in c.workloads["nats"].pods:
                podman("kill", "--signal", "HUP", pod.containers["nats"])
            log("NATS reloaded the chart's users (SIGHUP, as the config reloader does)")
            time.sleep(1)
        c.apply(docs, replicas_of=replicas_of(docs))

    def make_creds(self, password_docs, creds_docs):
        """The creds Secrets the creds-mode rendering names, one .creds file per user of the
        password-mode rendering, with that user's permissions; and the publisher's."""
        accounts = next(d for d in password_docs if d["kind"] == "Secret"
                        and d["metadata"]["name"] == f"{RELEASE}-nats-accounts")
        text = accounts.get("stringData", {}).get("accounts.conf") or \
            base64.b64decode(accounts["data"]["accounts.conf"]).decode()
        users = {u["user"]: u for u in accounts_conf_users(text)}
        wanted = {}
        for d in creds_docs:
            if d["kind"] not in ("Deployment", "StatefulSet"):
                continue
            for v in d["spec"]["template"]["spec"].get("volumes", []):
                if "secret" in v and v["secret"]["secretName"].endswith("-creds"):
                    wanted[v["secret"]["secretName"]] = d["metadata"]["name"]
        objs = []
        for name, workload in wanted.items():
            if workload.endswith("-gateway"):
                data = {u: self.operator.creds(users[u]) for u in users
                        if u.startswith(f"{RELEASE}-gateway-")}
            else:
                data = {"creds": self.operator.creds(users["resolver"])}
            objs.append(secret(name, data))
            log(f"creds: Secret {name} with {', '.join(sorted(data))}")
        self.cluster.apply(objs)
        self.publisher_creds = self.operator.creds(users["publisher"])

    def nats_login(self):
        """How a NATS CLI user logs in: the publisher's password, or its .creds file."""
        if self.operator:
            return {"user": None, "password": None, "creds": self.publisher_creds,
                    "signer": sign}
        pw = self.cluster.keyed_data("Secret", f"{RELEASE}-nats-publisher")["publisher"]
        return {"user": "publisher", "password": pw.decode().strip()}

    def close(self):
        self.cluster.close(last=("nats", "s3"))


# -- checks -----------------------------------------------------------------------------------

def check_pods(run, docs):
    """Every container as the chart declares it: not root, no capabilities left, a read-only
    root; no gateway container mounts the Secret holding every replica's NATS credentials
    (only the init container may)."""
    identities = {f"{RELEASE}-nats-gateway", f"{RELEASE}-nats-gateway-creds"}
    for w in chart_workloads(run):
        for pod in w.pods:
            secret_of = {v["name"]: v["secret"]["secretName"]
                         for v in pod.spec.get("volumes", []) if "secret" in v}
            for c in pod.spec["containers"]:
                for m in c.get("volumeMounts", []):
                    if secret_of.get(m["name"]) in identities:
                        raise Failure(f"{pod.name}/{c['name']} mounts {secret_of[m['name']]}")
            for name, cname in pod.containers.items():
                info = json.loads(podman("inspect", cname))[0]
                with open(f"/proc/{info['State']['Pid']}/status") as f:
                    status = dict(line.split(":", 1) for line in f if ":" in line)
                if status["Uid"].split()[0] == "0":
                    raise Failure(f"{pod.name}/{name} runs as root")
                if int(status["CapEff"].strip(), 16) != 0:
                    raise Failure(f"{pod.name}/{name} has capabilities {status['CapEff'].strip()}")
                if not info["HostConfig"]["ReadonlyRootfs"]:
                    raise Failure(f"{pod.name}/{name} has a writable root filesystem")
    passed("every container non-root, without capabilities, on a read-only root; no gateway "
           "container mounts the Secret of every replica's credentials")


def chart_workloads(run):
    return [w for w in run.cluster.workloads.values()
            if w.obj["metadata"].get("labels", {}).get("app.kubernetes.io/managed-by") == "Helm"]


def check_probes(run, timeout=60):
    """Every declared probe has answered as declared (the slowest period is 10 s), and no
    container restarted."""
    deadline = time.monotonic() + timeout
    while True:
        pending = [(pod.name, p) for w in run.cluster.workloads.values() for pod in w.pods
                   for p in pod.probes if p.seen_ok == 0]
        if not pending:
            break
        if time.monotonic() > deadline:
            name, p = pending[0]
            raise Failure(f"{name}: {p.describe()} never succeeded ({p.last})")
        time.sleep(1)
    declared = 0
    for w in run.cluster.workloads.values():
        for pod in w.pods:
            declared += len(pod.probes)
            if any(pod.restarts.values()):
                raise Failure(f"{pod.name}: containers restarted {pod.restarts}")
    passed("probes", f"{declared} declared probes answered as declared, no restarts")


def check_metrics(run):
    seen = 0
    for w in run.cluster.workloads.values():
        for pod in w.pods:
            ann = pod.annotations
            if ann.get("prometheus.io/scrape") != "true":
                continue
            url = f"http://{pod.ip}:{ann['prometheus.io/port']}{ann.get('prometheus.io/path', '/metrics')}"
            status, _, body = http_get(url)
            # The hub side's dead-letter collector serves no network: it has recorded nothing
            # until a request dies, and a metric appears once recorded.
            collector = w.name.endswith("-resolver-hub")
            if status != 200 or (b"imgfetch_" not in body and not collector):
                raise Failure(f"{pod.name}: {url} answered {status} without imgfetch_ metrics")
            seen += 1
    if seen == 0:
        raise Failure("no pod declares a metrics port")
    passed("metrics", f"{seen} pods answer on their declared prometheus.io port")


def check_fetches(run, gateway, networks):
    """HTTP (urllib and the imgfetch CLI) and NATS hand requests on every network."""
    c = run.cluster
    cases = run.cases
    for net in networks:
        key, path = cases[net]
        want = open(path, "rb").read()
        status, headers, body = http_get(f"{gateway}/v1/images/{net}/{key}", run.token)
        if status != 200 or body != want:
            raise Failure(f"HTTP {net}/{key}: {status}, {len(body)} bytes: {body[:200]!r}")
        status, _, _ = http_get(f"{gateway}/v1/images/{net}/{key}")
        if run.token and status != 401:
            raise Failure(f"HTTP {net}/{key} without a token: {status}, not 401")
        out = os.path.join(run.work, "cli", net)
        token = ["--token", run.token] if run.token else []
        r = subprocess.run([run.args.cli, "get", "--gateway", gateway, "--network", net, *token,
                            "--keep-names", "--no-progress", "-o", out, key],
                           capture_output=True, text=True, timeout=60)
        got = [os.path.join(d, f) for d, _, fs in os.walk(out) for f in fs]
        if r.returncode != 0 or len(got) != 1 or open(got[0], "rb").read() != want:
            raise Failure(f"imgfetch get {net} {key}: exit {r.returncode} {r.stderr[-400:]}")
        passed(f"HTTP fetch on {net}", f"{key}, {len(want)} bytes, byte for byte (urllib and "
               "the imgfetch CLI)" + ("; 401 without a token" if run.token else ""))
    nats = c.services["nats"]["nats"]
    ca = os.path.join(run.work, "tls", "ca.crt") if run.nats_tls else None
    conn = Nats("127.0.0.1", nats.port, ca=ca, **run.nats_login())
    try:
        for net in networks:
            key, path = cases[net]
            want = open(path, "rb").read()
            rid = f"run-chart-{net}-{secrets.token_hex(4)}"
            conn.sub(f"me.{rid}")
            conn.pub(f"imgfetch.req.{net}", json.dumps({"id": rid, "key": key}).encode(),
                     {"Imgfetch-Callback": f"me.{rid}", "Nats-Msg-Id": rid})
            _, headers, body = conn.next_msg(30)
            if headers.get("Imgfetch-Status") != "ok" or body != want:
                raise Failure(f"NATS hand request {net}/{key}: {headers}, {len(body)} bytes")
            _, headers, body = conn.request(
                "imgfetch.fetch", json.dumps({"network": net, "key": key}).encode())
            if headers.get("Imgfetch-Status") != "ok" or body != want:
                raise Failure(f"NATS imgfetch.fetch {net}/{key}: {headers}, {len(body)} bytes")
            passed(f"NATS fetch on {net}", f"as publisher over {getattr(conn, 'tls', 'plain TCP')}: imgfetch.req.{net} "
                   "with a me.> callback, and imgfetch.fetch, byte for byte")
    finally:
        conn.close()


def check_tls(run):
    """NATS requires TLS (its INFO), and every client connection it has is TLS (its /connz):
    the pods connected with the CA the chart mounted."""
    nats = run.cluster.workloads["nats"].pods[0]
    _, _, body = http_get(f"http://{nats.ip}:8222/connz?auth=true&limit=1024")
    conns = json.loads(body)["connections"]
    plain = [x for x in conns if not x.get("tls_version")]
    if not conns or plain:
        raise Failure(f"NATS connections without TLS: {plain} (of {len(conns)})")
    # After /connz: this probe's own connection, plain until it would upgrade, is not a pod's.
    with socket.create_connection((nats.ip, 4222), timeout=5) as raw:
        info = json.loads(raw.makefile("rb").readline()[5:])
    if not info.get("tls_required"):
        raise Failure(f"NATS does not require TLS: {info}")
    users = sorted({x.get("authorized_user", "?") for x in conns})
    passed("NATS TLS", f"{len(conns)} connections, all TLS ({conns[0]['tls_version']}), "
           f"users {', '.join(users)}")


def check_archive(run):
    files = [os.path.join(d, f) for d, _, fs in os.walk(run.archive) for f in fs
             if not f.startswith(".")]
    if not files:
        raise Failure("the gateways archived nothing into the S3 bucket imgfetch-archive")
    passed("archive", f"{len(files)} objects in s3://imgfetch-archive")


def restart_annotation(docs, name, stamp):
    out = copy.deepcopy(docs)
    for d in out:
        if d["kind"] in ("Deployment", "StatefulSet") and d["metadata"]["name"] == name:
            d["spec"]["template"]["metadata"].setdefault("annotations", {})[
                "kubectl.kubernetes.io/restartedAt"] = stamp
    return out


def load_summary(r):
    """The counts of a load report, refusals and websockets not opened included."""
    out = ", ".join(f"{k} {r.get(k)}" for k in ("accepted", "ok", "lost", "duplicated"))
    for k, what in (("refused", "refused before acceptance"),
                    ("connect_failures", "websockets not opened")):
        if r.get(k):
            out += f", {what} " + " ".join(f"{n} {c}" for n, c in sorted(r[k].items()))
    return out


def under_load(run, networks, gateway, label, action):
    """Runs `action()` under the fault suite's websocket load on `networks`; fails unless
    every accepted request got the right image once, and every websocket opened (a Service
    with a ready pod left accepts connections throughout a rollout)."""
    report = os.path.join(run.work, f"load-{label}.json")
    # --seconds only as a backstop: the load is stopped with SIGTERM once the action is done.
    load = Load(run.args.faults, [gateway], networks, run.token, report, label=label,
                seconds=1800)
    try:
        time.sleep(5)
        detail = action()
        time.sleep(5)
    except BaseException:
        try:
            load.stop()
        except Exception:  # noqa: BLE001 - the action's failure is the one to report
            pass
        raise
    code, r = load.stop()
    summary = load_summary(r)
    if code != 0 or r.get("connect_failures"):
        raise Failure(f"{label} under load: {summary}; {r.get('failures')}; "
                      f"{open(report + '.log').read()[-1500:]}")
    return f"{detail}: {summary}"


def check_rolling(run, docs, gateway, networks):
    """`kubectl rollout restart` of every Deployment and StatefulSet of the chart, one after
    the other, under the fault suite's websocket load: nothing accepted may be lost."""
    names = [d["metadata"]["name"] for d in docs if d["kind"] in ("Deployment", "StatefulSet")]

    def roll():
        current = docs
        for n, name in enumerate(names):
            current = restart_annotation(current, name, f"rolling-{n}")
            run.cluster.apply(current, replicas_of=replicas_of(docs))
            time.sleep(3)
        return ", ".join(names)
    passed("rolling replacement under load", under_load(run, networks, gateway, "rolling", roll))


# -- scenarios --------------------------------------------------------------------------------

def chart_values(args, run, chart, tag, gateway_max=6, example="values-two-zones.yaml",
                 secure=True):
    values, overlay = values_for(args, os.path.join(chart, "..", example), run.passwords,
                                 gateway_max)
    vfile = os.path.join(run.work, f"values-{tag}.yaml")
    ofile = os.path.join(run.work, f"overlay-{tag}.yaml")
    with open(vfile, "w") as f:
        yaml.safe_dump(values, f)
    with open(ofile, "w") as f:
        yaml.safe_dump(overlay, f)
    files = [vfile] + ([os.path.join(chart, "..", "values-secure.yaml")] if secure else [])
    if not secure:
        run.token = None  # no tokens file: the client sends none
    return files + [ofile]


def image_sets(repo_tag_gateway, repo_tag_resolver):
    g, gt = repo_tag_gateway.rsplit(":", 1)
    r, rt = repo_tag_resolver.rsplit(":", 1)
    return [f"image.gateway.repository={g}", f"image.gateway.tag={gt}",
            "image.gateway.pullPolicy=Never", f"image.resolver.repository={r}",
            f"image.resolver.tag={rt}", "image.resolver.pullPolicy=Never"]


def scenario_run(args, work):
    run = Run(args, work)
    try:
        chart = args.chart
        files = chart_values(args, run, chart, "new")
        docs = render(args, chart, files, image_sets(args.gateway_image, args.resolver_image),
                      work, "new")
        run.start_backing(tls=True)
        t0 = time.monotonic()
        run.apply_chart(docs)
        run.cluster.wait_all_ready(240)
        passed("every pod ready", f"{sum(len(w.pods) for w in run.cluster.workloads.values())} "
               f"pods in {time.monotonic() - t0:.0f} s")
        gateway = run.cluster.service_url(f"{RELEASE}-gateway")
        networks = run.networks
        check_pods(run, docs)
        check_fetches(run, gateway, networks)
        check_tls(run)
        check_metrics(run)
        check_archive(run)
        check_probes(run)
        check_rolling(run, docs, gateway, networks)
        check_fetches(run, gateway, networks)
        check_probes(run)
    finally:
        run.close()


def scenario_leaf(args, work):
    """deploy/helm/values-leaf-zone.yaml: harbor direct, plant behind a leaf node that dials the
    hub's leafnode port over TLS; the hub side provisions plant's consumer and collects dead
    letters."""
    run = Run(args, work, layout="leaf")
    try:
        chart = args.chart
        files = chart_values(args, run, chart, "leaf", example="values-leaf-zone.yaml",
                             secure=False)
        docs = render(args, chart, files, image_sets(args.gateway_image, args.resolver_image),
                      work, "leaf")
        run.start_backing(tls=False, leaf_tls=True)
        run.apply_chart(docs)
        run.cluster.wait_all_ready(240)
        passed("every pod ready", f"{sum(len(w.pods) for w in run.cluster.workloads.values())} "
               "pods, the leaf node among them")
        nats = run.cluster.workloads["nats"].pods[0]
        _, _, body = http_get(f"http://{nats.ip}:8222/leafz")
        leafs = json.loads(body).get("leafs", [])
        if len(leafs) != 1 or leafs[0].get("account") != "IMGFETCH":
            raise Failure(f"the hub's /leafz: {leafs}")
        passed("the leaf node is connected", f"account {leafs[0]['account']}, from "
               f"{leafs[0].get('name')}, over TLS to tls://nats:7422 (the hub's CA verified)")
        gateway = run.cluster.service_url(f"{RELEASE}-gateway")
        check_pods(run, docs)
        check_fetches(run, gateway, run.networks)
        check_metrics(run)
        check_probes(run)
        check_rolling(run, docs, gateway, run.networks)
        check_fetches(run, gateway, run.networks)
        check_probes(run)
    finally:
        run.close()


def scenario_creds(args, work):
    """values-secure.yaml with `nats.auth.mode=creds`: NATS in operator mode, every binary
    logging in with its .creds file."""
    run = Run(args, work, creds=True)
    try:
        chart = args.chart
        files = chart_values(args, run, chart, "creds")
        images = image_sets(args.gateway_image, args.resolver_image)
        password = render(args, chart, files, images + ["nats.auth.bcrypt=false"], work,
                          "password")
        docs = render(args, chart, files, images + ["nats.auth.mode=creds"], work, "creds")
        if any(d["kind"] == "Secret" and d["metadata"]["name"] == f"{RELEASE}-nats-accounts"
               for d in docs):
            raise Failure("creds mode, but the chart renders NATS users")
        run.make_creds(password, docs)
        run.start_backing(tls=True)
        run.apply_chart(docs)
        run.cluster.wait_all_ready(240)
        passed("every pod ready with creds files")
        gateway = run.cluster.service_url(f"{RELEASE}-gateway")
        check_pods(run, docs)
        check_fetches(run, gateway, run.networks)
        check_tls(run)
        check_probes(run)
    finally:
        run.close()


def jsz(run):
    nats = run.cluster.workloads["nats"].pods[0]
    _, _, body = http_get(f"http://{nats.ip}:8222/jsz?accounts=true&streams=true&consumers=true")
    out = {}
    for acc in json.loads(body).get("account_details", []):
        for s in acc.get("stream_detail", []):
            out[s["name"]] = {"created": s["created"], "last_seq": s["state"]["last_seq"],
                              "messages": s["state"]["messages"],
                              "consumers": {c["name"]: {"created": c["created"],
                                                        "delivered": c["delivered"]["stream_seq"]}
                                            for c in s.get("consumer_detail", [])}}
    return out


def scenario_upgrade(args, work):
    run = Run(args, work)
    try:
        old_files = chart_values(args, run, args.old_chart, "old")
        old = render(args, args.old_chart, old_files,
                     image_sets(args.old_gateway_image, args.old_resolver_image), work, "old")
        new_files = chart_values(args, run, args.chart, "new")
        new = render(args, args.chart, new_files,
                     image_sets(args.gateway_image, args.resolver_image), work, "new")
        run.start_backing(tls=True)
        run.apply_chart(old)
        run.cluster.wait_all_ready(240)
        passed("the previous release ready")
        gateway = run.cluster.service_url(f"{RELEASE}-gateway")
        networks = run.networks
        check_fetches(run, gateway, networks)
        before = {}

        def upgrade():
            before.update(jsz(run))
            t0 = time.monotonic()
            run.apply_chart(new)
            run.cluster.wait_all_ready(240)
            return f"every workload rolled in {time.monotonic() - t0:.0f} s"
        passed("upgrade under load", under_load(run, networks, gateway, "upgrade", upgrade))
        after = jsz(run)
        want = {"IMGFETCH": len(networks), "IMGFETCH_DLQ": 1}
        for stream, consumers in want.items():
            if len(before.get(stream, {}).get("consumers", {})) < consumers:
                raise Failure(f"before the upgrade, /jsz shows no stream {stream} with "
                              f"{consumers} consumers: {before.get(stream)}")
        for stream, s in before.items():
            a = after.get(stream)
            if a is None or a["created"] != s["created"] or a["last_seq"] < s["last_seq"]:
                raise Failure(f"stream {stream} did not keep its data: {s} -> {a}")
            for cons, c in s["consumers"].items():
                ac = a["consumers"].get(cons)
                if ac is None or ac["created"] != c["created"] or ac["delivered"] < c["delivered"]:
                    raise Failure(f"consumer {stream}/{cons} did not keep its state: {c} -> {ac}")
        passed("streams and consumers kept", "; ".join(
            f"{k} seq {before[k]['last_seq']} -> {after[k]['last_seq']}, "
            f"{len(before[k]['consumers'])} consumers the same" for k in sorted(before)))
        check_pods(run, new)
        check_fetches(run, gateway, networks)
        check_probes(run)
    finally:
        run.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("scenario", choices=["run", "creds", "leaf", "upgrade"])
    p.add_argument("--helm", required=True)
    p.add_argument("--chart", default=os.path.join(ROOT, "deploy/helm/imgfetch"))
    p.add_argument("--gateway-image", required=True)
    p.add_argument("--resolver-image", required=True)
    p.add_argument("--old-chart")
    p.add_argument("--old-gateway-image")
    p.add_argument("--old-resolver-image")
    p.add_argument("--nats-image", required=True)
    p.add_argument("--base-image", required=True, help="for s3s-fs (glibc of the build host)")
    p.add_argument("--s3s-fs", required=True)
    p.add_argument("--cli", required=True, help="the imgfetch CLI")
    p.add_argument("--faults", required=True, help="imgfetch-faults")
    p.add_argument("--corpus", help="the load's images (imgfetch-faults --write-corpus)")
    p.add_argument("--work", required=True)
    p.add_argument("--run-id", required=True,
                   help="names and labels what podman holds for the run (imgfetch-run=ID)")
    args = p.parse_args()
    # Stopped from outside (scripts/run-chart.sh's trap, a CI cancel): unwind, so that every
    # `finally` stops what it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t0 = time.monotonic()
    try:
        {"run": scenario_run, "creds": scenario_creds, "leaf": scenario_leaf,
         "upgrade": scenario_upgrade}[args.scenario](args, args.work)
    except Failure as e:
        log(f"FAILED ({args.scenario}): {e}")
        sys.exit(1)
    log(f"{args.scenario}: {len(RESULTS)} checks passed in {time.monotonic() - t0:.0f} s")
    for check, detail in RESULTS:
        print(f"  - {check}{': ' + detail if detail else ''}")


if __name__ == "__main__":
    main()
