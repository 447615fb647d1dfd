"""Runs rendered Kubernetes workloads as podman pods on one machine: what a kubelet, the
Deployment and StatefulSet controllers and kube-proxy do for the objects the imgfetch chart
renders, and no more (docs/DEPLOY.md, "Running the chart without a cluster" lists what is left
out).

- Secrets and ConfigMaps are kept by name; a volume of one is a directory of its keys, written
  again when the object changes (as the kubelet updates mounted Secrets), group-owned by the
  pod's fsGroup.
- A pod is a podman pod on one network (podman's name prefixed with the run's id, its host name
  and downward-API name the Kubernetes one), with the names of the Services that select it as
  network aliases (cluster DNS); its init containers run one after
  the other to completion, then its containers, each with the container's image, command and
  arguments (`$(VAR)` expanded), environment (values, Secret and ConfigMap keys, the downward
  API's metadata.name and metadata.namespace), volume mounts (Secret, ConfigMap, emptyDir (in
  memory when `medium: Memory`), persistentVolumeClaim and hostPath mapped to directories of
  the run),
  securityContext (user, group, fsGroup and supplementalGroups, read-only root, capabilities,
  no privilege escalation) and memory limit.
- Probes (httpGet, tcpSocket) run at their declared period, timeout and thresholds; readiness
  decides the Service endpoints, a failed liveness probe restarts the container, an exited
  container is restarted with back-off (restartPolicy Always).
- Stopping a pod takes it out of the endpoints, runs its preStop hook (exec or sleep), then
  SIGTERM and SIGKILL at terminationGracePeriodSeconds.
- Deployments and StatefulSets are rolled as their RollingUpdate strategies say: a Deployment
  surges new pods and stops old ones once the new are ready (maxSurge, maxUnavailable); a
  StatefulSet replaces one ordinal at a time, highest first, waiting for each to be ready.
- Each Service port is a TCP proxy on 127.0.0.1 to the ready endpoints, round robin.
"""

import base64
import copy
import hashlib
import json
import os
import random
import re
import shutil
import socket
import string
import subprocess
import threading
import time
import urllib.request


def log(msg):
    print(f"run-chart: {msg}", flush=True)


class Failure(Exception):
    """A check failed, or the rendered objects cannot run."""


def podman(*args, check=True, timeout=120, capture=True):
    r = subprocess.run(["podman", *args], capture_output=capture, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise Failure(f"podman {' '.join(args[:3])}...: {r.stderr.strip()[-800:]}")
    return r.stdout.strip() if capture else ""


def quantity_bytes(q):
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "K": 10**3, "M": 10**6, "G": 10**9}
    m = re.fullmatch(r"(\d+)([KMG]i?)?", str(q))
    if not m:
        raise Failure(f"memory quantity {q!r} not understood")
    return int(m.group(1)) * units.get(m.group(2) or "", 1)


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def expand(text, env):
    """Kubernetes' $(VAR) expansion of command, args and env values; $$ escapes."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
                  text)


class Probe:
    """One declared probe of one container, with its state."""

    def __init__(self, kind, spec, container):
        self.kind, self.spec, self.container = kind, spec, container
        self.period = spec.get("periodSeconds", 10)
        self.timeout = spec.get("timeoutSeconds", 1)
        self.failure_threshold = spec.get("failureThreshold", 3)
        self.success_threshold = spec.get("successThreshold", 1)
        self.next_at = time.monotonic() + spec.get("initialDelaySeconds", 0)
        self.failures = 0
        self.successes = 0
        self.ok = False
        self.seen_ok = 0
        self.seen_failed = 0
        self.last = ""

    def describe(self):
        if "httpGet" in self.spec:
            h = self.spec["httpGet"]
            return f"{self.kind} GET :{h['port']}{h.get('path', '/')}"
        if "tcpSocket" in self.spec:
            return f"{self.kind} tcp :{self.spec['tcpSocket']['port']}"
        return f"{self.kind} {json.dumps(self.spec)}"

    def port(self):
        p = (self.spec.get("httpGet") or self.spec.get("tcpSocket"))["port"]
        if isinstance(p, int):
            return p
        for port in self.container.get("ports", []):
            if port.get("name") == p:
                return port["containerPort"]
        raise Failure(f"probe port {p!r} names no port of container {self.container['name']}")

    def run_once(self, ip):
        if "httpGet" in self.spec:
            h = self.spec["httpGet"]
            url = f"{h.get('scheme', 'HTTP').lower()}://{ip}:{self.port()}{h.get('path', '/')}"
            try:
                with urllib.request.urlopen(url, timeout=self.timeout) as r:
                    self.last = f"{r.status}"
                    return 200 <= r.status < 400
            except urllib.error.HTTPError as e:
                self.last = f"{e.code}"
                return False
            except Exception as e:  # noqa: BLE001 - any failure is a failed probe
                self.last = str(e)[:120]
                return False
        if "tcpSocket" in self.spec:
            try:
                socket.create_connection((ip, self.port()), timeout=self.timeout).close()
                self.last = "connected"
                return True
            except OSError as e:
                self.last = str(e)
                return False
        raise Failure(f"probe kind not supported: {self.spec}")


class Pod:
    """One pod: its podman pod, volumes, containers and probes."""

    def __init__(self, cluster, name, owner, template):
        self.cluster, self.name, self.owner = cluster, name, owner
        # podman's names are global to its store: the run's id keeps two runs (or one left
        # behind) apart. The pod itself knows only its Kubernetes name (host name, fieldRef).
        self.pname = f"{cluster.run_id}-{name}"
        self.template = copy.deepcopy(template)
        self.spec = self.template["spec"]
        self.labels = dict(self.template.get("metadata", {}).get("labels", {}))
        self.annotations = dict(self.template.get("metadata", {}).get("annotations", {}))
        self.dir = os.path.join(cluster.work, "pods", name)
        self.ip = None
        self.containers = {}  # name -> podman container name
        self.probes = []
        self.restarts = {}
        self.restart_at = {}  # container -> when an exited one is started again
        self.terminating = False
        self.started = False
        self.stopped = False
        self.lock = threading.Lock()
        self.exit_codes = {}
        self.secret_volumes = []  # (Secret or ConfigMap kind, name, dir, volume spec)

    # -- volumes -------------------------------------------------------------------------------

    def _fs_group(self):
        return self.spec.get("securityContext", {}).get("fsGroup")

    def write_keyed_volume(self, kind, obj_name, vdir, vspec, optional=False):
        data = self.cluster.keyed_data(kind, obj_name, optional or vspec.get("optional", False))
        os.makedirs(vdir, exist_ok=True)
        mode = vspec.get("defaultMode", 0o644)
        items = vspec.get("items")
        pairs = [(i["key"], i["path"], i.get("mode", mode)) for i in items] if items else \
            [(k, k, mode) for k in data]
        wanted = set()
        fs_group = self._fs_group()
        for key, path, m in pairs:
            if key not in data:
                raise Failure(f"pod {self.name}: {kind} {obj_name} has no key {key}")
            target = os.path.join(vdir, path)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            tmp = target + ".tmp"
            with open(tmp, "wb") as f:
                f.write(data[key])
            if fs_group is not None:
                # As the kubelet: the group is the fsGroup, which may read.
                os.chown(tmp, 0, fs_group)
                m |= 0o440
            os.chmod(tmp, m)
            os.replace(tmp, target)
            wanted.add(path)
        for existing in os.listdir(vdir):
            if existing not in wanted and os.path.isfile(os.path.join(vdir, existing)):
                os.remove(os.path.join(vdir, existing))
        os.chmod(vdir, 0o755)

    def volume_dirs(self):
        dirs = {}
        for v in self.spec.get("volumes", []):
            vdir = os.path.join(self.dir, "volumes", v["name"])
            if "secret" in v:
                s = v["secret"]
                self.write_keyed_volume("Secret", s["secretName"], vdir, s)
                self.secret_volumes.append(("Secret", s["secretName"], vdir, s))
            elif "configMap" in v:
                c = v["configMap"]
                self.write_keyed_volume("ConfigMap", c["name"], vdir, c)
                self.secret_volumes.append(("ConfigMap", c["name"], vdir, c))
            elif "emptyDir" in v:
                if v["emptyDir"].get("medium") == "Memory":
                    vdir = os.path.join(self.cluster.shm, self.name, v["name"])
                os.makedirs(vdir, exist_ok=True)
                os.chmod(vdir, 0o777)
            elif "persistentVolumeClaim" in v:
                claim = v["persistentVolumeClaim"]["claimName"]
                vdir = self.cluster.claim_dir(claim)
            elif "hostPath" in v:
                path = v["hostPath"]["path"]
                if path not in self.cluster.host_paths:
                    raise Failure(f"pod {self.name}: hostPath {path} is not mapped to a "
                                  "directory of this run")
                vdir = self.cluster.host_paths[path]
            else:
                raise Failure(f"pod {self.name}: volume kind not supported: {v}")
            dirs[v["name"]] = vdir
        return dirs

    def refresh_secret_volumes(self):
        """As the kubelet does for mounted Secrets and ConfigMaps (not subPath ones)."""
        for kind, obj_name, vdir, vspec in self.secret_volumes:
            self.write_keyed_volume(kind, obj_name, vdir, vspec)

    # -- containers ----------------------------------------------------------------------------

    def env_of(self, c):
        env = {}
        for e in c.get("env", []):
            if "value" in e:
                env[e["name"]] = expand(str(e["value"]), env)
            elif "valueFrom" in e:
                vf = e["valueFrom"]
                if "fieldRef" in vf:
                    path = vf["fieldRef"]["fieldPath"]
                    known = {"metadata.name": self.name,
                             "metadata.namespace": self.cluster.namespace,
                             "status.podIP": self.ip or ""}
                    if path not in known:
                        raise Failure(f"pod {self.name}: fieldRef {path} not supported")
                    env[e["name"]] = known[path]
                elif "secretKeyRef" in vf or "configMapKeyRef" in vf:
                    kind = "Secret" if "secretKeyRef" in vf else "ConfigMap"
                    ref = vf.get("secretKeyRef") or vf.get("configMapKeyRef")
                    data = self.cluster.keyed_data(kind, ref["name"], ref.get("optional", False))
                    if ref["key"] not in data:
                        if ref.get("optional"):
                            continue
                        raise Failure(f"pod {self.name}: {kind} {ref['name']} has no key {ref['key']}")
                    env[e["name"]] = data[ref["key"]].decode()
                else:
                    raise Failure(f"pod {self.name}: env {e['name']} source not supported")
            else:
                env[e["name"]] = ""
        for src in c.get("envFrom", []):
            raise Failure(f"pod {self.name}: envFrom not supported: {src}")
        return env

    def nested_mount_points(self, c, dirs):
        """As the kubelet does since Kubernetes 1.10: a mount point inside a Secret, ConfigMap
        or other API data volume is made in that volume's directory, which the container
        sees read-only and so could not get it otherwise."""
        api = {v["name"] for v in self.spec.get("volumes", []) if "secret" in v or "configMap" in v}
        mounts = c.get("volumeMounts", [])
        for parent in mounts:
            if parent["name"] not in api:
                continue
            for child in mounts:
                rel = os.path.relpath(child["mountPath"], parent["mountPath"])
                if child is parent or rel.startswith(".."):
                    continue
                os.makedirs(os.path.join(dirs[parent["name"]], rel), exist_ok=True)

    def run_args(self, c, dirs, detach):
        pod_sc = self.spec.get("securityContext", {})
        sc = {**pod_sc, **c.get("securityContext", {})}
        env = self.env_of(c)
        self.nested_mount_points(c, dirs)
        args = ["run", "--pod", self.pname, "--pull", "never"]
        args += ["--name", f"{self.pname}-{c['name']}", "--label", self.cluster.label]
        if detach:
            args.append("-d")
        uid, gid = sc.get("runAsUser"), sc.get("runAsGroup")
        if sc.get("runAsNonRoot") and uid in (None, 0):
            raise Failure(f"pod {self.name}: runAsNonRoot without a non-root runAsUser")
        if uid is not None:
            args += ["--user", f"{uid}:{gid if gid is not None else uid}"]
        for g in ([pod_sc["fsGroup"]] if "fsGroup" in pod_sc else []) + \
                list(pod_sc.get("supplementalGroups", [])):
            args += ["--group-add", str(g)]
        if sc.get("readOnlyRootFilesystem"):
            args += ["--read-only", "--read-only-tmpfs=false"]
        caps = sc.get("capabilities", {})
        for cap in caps.get("drop", []):
            args += ["--cap-drop", cap]
        for cap in caps.get("add", []):
            args += ["--cap-add", cap]
        if sc.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        memory = c.get("resources", {}).get("limits", {}).get("memory")
        if memory:
            args += ["--memory", str(quantity_bytes(memory))]
        for k, v in env.items():
            args += ["-e", f"{k}={v}"]
        api = {v["name"] for v in self.spec.get("volumes", []) if "secret" in v or "configMap" in v}
        for m in c.get("volumeMounts", []):
            src = dirs[m["name"]]
            if m.get("subPath"):
                src = os.path.join(src, m["subPath"])
            # Secrets and ConfigMaps are read-only whatever the mount says, as in Kubernetes.
            ro = m.get("readOnly") or m["name"] in api
            args += ["-v", f"{src}:{m['mountPath']}{':ro' if ro else ''}"]
        if c.get("workingDir"):
            args += ["--workdir", c["workingDir"]]
        command = [expand(str(x), env) for x in c.get("command", [])]
        cargs = [expand(str(x), env) for x in c.get("args", [])]
        if command:
            args += ["--entrypoint", json.dumps(command)]
        return args + [c["image"]] + cargs

    def start(self):
        os.makedirs(self.dir, exist_ok=True)
        aliases = self.cluster.aliases_for(self.labels)
        create = ["pod", "create", "--name", self.pname, "--hostname", self.name,
                  "--label", self.cluster.label,
                  "--network", self.cluster.network]
        for a in aliases:
            create += ["--network-alias", a]
        podman(*create)
        infra = podman("pod", "inspect", self.pname, "--format", "{{.InfraContainerID}}")
        podman("start", infra)
        self.ip = podman("inspect", infra, "--format",
                         "{{(index .NetworkSettings.Networks \"%s\").IPAddress}}" % self.cluster.network)
        dirs = self.volume_dirs()
        for c in self.spec.get("initContainers", []):
            deadline = time.monotonic() + 120
            backoff = 1
            while True:
                r = subprocess.run(["podman", *self.run_args(c, dirs, detach=False), ],
                                   capture_output=True, text=True, timeout=300)
                subprocess.run(["podman", "rm", "-f", f"{self.pname}-{c['name']}"],
                               capture_output=True)
                if r.returncode == 0:
                    break
                log(f"pod {self.name}: init container {c['name']} exited {r.returncode}: "
                    f"{(r.stdout + r.stderr).strip()[-400:]}")
                if time.monotonic() > deadline:
                    raise Failure(f"pod {self.name}: init container {c['name']} never succeeded")
                time.sleep(backoff)
                backoff = min(backoff * 2, 10)
        for c in self.spec["containers"]:
            podman(*self.run_args(c, dirs, detach=True))
            self.containers[c["name"]] = f"{self.pname}-{c['name']}"
            self.restarts[c["name"]] = 0
            for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
                if kind in c:
                    self.probes.append(Probe(kind, c[kind], c))
        self.started = True
        log(f"pod {self.name} started ({self.ip}; aliases {', '.join(aliases) or 'none'})")

    def ready(self):
        if not self.started or self.terminating or self.stopped:
            return False
        with self.lock:
            readiness = [p for p in self.probes if p.kind == "readinessProbe"]
            startup = [p for p in self.probes if p.kind == "startupProbe"]
            return all(p.ok for p in startup) and all(p.ok for p in readiness)

    def tick(self, states):
        """One round of the kubelet's work for this pod: restarts, then probes. `states` maps
        every container's name to (state, exit code), from one `podman ps`."""
        if not self.started or self.stopped:
            return
        now = time.monotonic()
        for name, cname in self.containers.items():
            # A container missing from the snapshot was created after it was taken.
            state, code = states.get(cname, ("unknown", ""))
            if self.terminating or self.stopped:
                return
            if state not in ("exited", "stopped"):
                continue
            if name not in self.restart_at:
                with self.lock:
                    for p in self.probes:
                        if p.container["name"] == name:
                            p.ok = False
                self.restarts[name] += 1
                delay = min(2 ** self.restarts[name], 10)
                self.restart_at[name] = now + delay
                log(f"pod {self.name}: container {name} exited ({code}); restart "
                    f"{self.restarts[name]} in {delay} s; its last lines: "
                    f"{podman('logs', '--tail', '5', cname, check=False)[-600:]}")
            elif now >= self.restart_at[name]:
                del self.restart_at[name]
                podman("start", cname, check=False)
                with self.lock:
                    for p in self.probes:
                        if p.container["name"] == name:
                            p.ok = False
                            p.failures = p.successes = 0
        started = all(p.ok for p in self.probes if p.kind == "startupProbe")
        for p in self.probes:
            if now < p.next_at or (p.kind != "startupProbe" and not started):
                continue
            p.next_at = now + p.period
            ok = p.run_once(self.ip)
            with self.lock:
                if ok:
                    p.seen_ok += 1
                    p.successes += 1
                    p.failures = 0
                    if p.successes >= p.success_threshold:
                        p.ok = True
                else:
                    p.seen_failed += 1
                    p.failures += 1
                    p.successes = 0
                    if p.failures >= p.failure_threshold:
                        p.ok = False
            if not ok and p.kind == "livenessProbe" and p.failures >= p.failure_threshold \
                    and not self.terminating:
                name = p.container["name"]
                log(f"pod {self.name}: liveness probe of {name} failed ({p.last}); restarting")
                self.restarts[name] += 1
                grace = self.spec.get("terminationGracePeriodSeconds", 30)
                with self.lock:
                    for q in self.probes:
                        if q.container["name"] == name:
                            q.ok = False
                threading.Thread(target=podman, daemon=True,
                                 args=("restart", "-t", str(grace), self.containers[name]),
                                 kwargs={"check": False, "timeout": grace + 30}).start()
                p.failures = 0

    def stop(self):
        """Deletion: out of the endpoints, preStop, SIGTERM, SIGKILL at the grace period."""
        self.terminating = True
        t0 = time.monotonic()
        grace = self.spec.get("terminationGracePeriodSeconds", 30)
        hooks = []
        for c in self.spec["containers"]:
            pre = c.get("lifecycle", {}).get("preStop")
            if not pre:
                continue
            if "sleep" in pre:
                hooks.append(threading.Thread(target=time.sleep, args=(pre["sleep"]["seconds"],)))
            elif "exec" in pre:
                cmd = pre["exec"]["command"]
                hooks.append(threading.Thread(target=lambda cname=self.containers[c["name"]], cmd=cmd:
                                              podman("exec", cname, *cmd, check=False,
                                                     timeout=grace)))
            else:
                raise Failure(f"pod {self.name}: preStop {pre} not supported")
        for h in hooks:
            h.start()
        for h in hooks:
            h.join(timeout=grace)
        left = max(1, int(grace - (time.monotonic() - t0)))
        threads = [threading.Thread(target=podman, args=("stop", "-t", str(left), cname),
                                    kwargs={"check": False, "timeout": left + 30})
                   for cname in self.containers.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for name, cname in self.containers.items():
            code = podman("inspect", cname, "--format", "{{.State.ExitCode}}", check=False)
            self.exit_codes[name] = code
            with open(os.path.join(self.dir, f"{name}.log"), "w") as f:
                f.write(podman("logs", cname, check=False, timeout=60))
        self.stopped = True
        podman("pod", "rm", "-f", self.pname, check=False)
        shutil.rmtree(os.path.join(self.cluster.shm, self.name), ignore_errors=True)
        log(f"pod {self.name} stopped in {time.monotonic() - t0:.1f} s "
            f"(exit {', '.join(f'{k} {v}' for k, v in self.exit_codes.items())})")

    def logs(self, container, tail=None):
        args = ["logs"] + (["--tail", str(tail)] if tail else []) + [self.containers[container]]
        return podman(*args, check=False, timeout=60)


class ServiceProxy:
    """A Service port: 127.0.0.1:<port> forwarding to the ready endpoints, round robin."""

    def __init__(self, cluster, service, port):
        self.cluster, self.service, self.port_spec = cluster, service, port
        self.name = service["metadata"]["name"]
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(256)
        self.port = self.listener.getsockname()[1]
        self.turn = 0
        self.refused = 0
        threading.Thread(target=self.accept_loop, daemon=True).start()

    def target_port(self, pod):
        tp = self.port_spec.get("targetPort", self.port_spec["port"])
        if isinstance(tp, int):
            return tp
        for c in pod.spec["containers"]:
            for p in c.get("ports", []):
                if p.get("name") == tp:
                    return p["containerPort"]
        return None

    def endpoints(self):
        selector = self.service["spec"].get("selector", {})
        return [p for p in self.cluster.live_pods() if matches(selector, p.labels) and p.ready()]

    def accept_loop(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self.forward, args=(conn,), daemon=True).start()

    def forward(self, conn):
        eps = self.endpoints()
        if not eps:
            self.refused += 1
            conn.close()
            return
        self.turn += 1
        pod = eps[self.turn % len(eps)]
        try:
            upstream = socket.create_connection((pod.ip, self.target_port(pod)), timeout=5)
            upstream.settimeout(None)
        except OSError:
            self.refused += 1
            conn.close()
            return

        def pipe(a, b):
            try:
                while True:
                    data = a.recv(65536)
                    if not data:
                        break
                    b.sendall(data)
            except OSError:
                pass
            finally:
                for s in (a, b):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
        t = threading.Thread(target=pipe, args=(upstream, conn), daemon=True)
        t.start()
        pipe(conn, upstream)
        t.join()
        conn.close()
        upstream.close()

    def url(self, scheme="http"):
        return f"{scheme}://127.0.0.1:{self.port}"


class Workload:
    """A Deployment or StatefulSet and its pods."""

    def __init__(self, cluster, obj, replicas):
        self.cluster = cluster
        self.obj = obj
        self.kind = obj["kind"]
        self.name = obj["metadata"]["name"]
        self.replicas = replicas
        self.pods = []

    @property
    def template(self):
        return self.obj["spec"]["template"]

    def template_hash(self, template=None):
        text = json.dumps(template or self.template, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    def new_pod_name(self, ordinal=None):
        if self.kind == "StatefulSet":
            return f"{self.name}-{ordinal}"
        suffix = "".join(random.choice(string.ascii_lowercase + string.digits) for _ in range(5))
        return f"{self.name}-{self.template_hash()}-{suffix}"

    def create(self):
        for i in range(self.replicas):
            pod = Pod(self.cluster, self.new_pod_name(i), self, self.template)
            pod.ordinal = i
            self.pods.append(pod)
        errors = []

        def start(pod):
            try:
                self.cluster.start_pod(pod)
            except Exception as e:  # noqa: BLE001 - raised again below, with the others
                errors.append(e)
        threads = [threading.Thread(target=start, args=(p,)) for p in self.pods]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise Failure(f"{self.kind} {self.name}: " + "; ".join(str(e) for e in errors))

    def wait_ready(self, pods, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(p.ready() for p in pods):
                return
            time.sleep(0.2)
        states = ", ".join(f"{p.name}: " + "; ".join(f"{pr.describe()} {pr.last}" for pr in p.probes)
                           for p in pods if not p.ready())
        raise Failure(f"{self.kind} {self.name}: not ready within {timeout} s ({states})")

    def roll(self, new_obj, timeout=180):
        """Replaces every pod by one of the new template, as the RollingUpdate strategy says."""
        old_pods = list(self.pods)
        self.obj = new_obj
        t0 = time.monotonic()
        if self.kind == "StatefulSet":
            for pod in sorted(old_pods, key=lambda p: -p.ordinal):
                pod.stop()
                self.pods.remove(pod)
                new = Pod(self.cluster, self.new_pod_name(pod.ordinal), self, self.template)
                new.ordinal = pod.ordinal
                self.pods.append(new)
                self.cluster.start_pod(new)
                self.wait_ready([new], timeout)
        else:
            strategy = new_obj["spec"].get("strategy", {}).get("rollingUpdate", {})
            surge = self._count(strategy.get("maxSurge", "25%"), up=True)
            unavailable = self._count(strategy.get("maxUnavailable", "25%"), up=False)
            if surge == 0 and unavailable == 0:
                raise Failure(f"Deployment {self.name}: maxSurge and maxUnavailable both 0")
            while old_pods:
                batch = []
                for _ in range(max(surge, 1) if surge else 0):
                    if len(batch) >= len(old_pods):
                        break
                    new = Pod(self.cluster, self.new_pod_name(), self, self.template)
                    self.pods.append(new)
                    batch.append(new)
                for p in batch:
                    self.cluster.start_pod(p)
                if batch:
                    self.wait_ready(batch, timeout)
                going = old_pods[:max(len(batch), unavailable)]
                for p in going:
                    old_pods.remove(p)
                stops = [threading.Thread(target=p.stop) for p in going]
                for t in stops:
                    t.start()
                for t in stops:
                    t.join()
                for p in going:
                    self.pods.remove(p)
                    if not batch:
                        new = Pod(self.cluster, self.new_pod_name(), self, self.template)
                        self.pods.append(new)
                        self.cluster.start_pod(new)
                        self.wait_ready([new], timeout)
        log(f"{self.kind} {self.name} rolled in {time.monotonic() - t0:.1f} s")

    def _count(self, value, up):
        if isinstance(value, int):
            return value
        pct = int(str(value).rstrip("%"))
        n = self.replicas * pct / 100
        return int(-(-n // 1)) if up else int(n)


class Cluster:
    """Everything started for one run; `close()` removes it."""

    def __init__(self, work, run_id, namespace="imgfetch", claims=None, host_paths=None):
        self.work = work
        self.namespace = namespace
        # Everything podman holds for this run carries the label, so that scripts/run-chart.sh
        # can remove what a run killed outright left behind.
        self.run_id = run_id
        self.label = f"imgfetch-run={run_id}"
        self.network = run_id
        self.shm = os.path.join("/dev/shm", run_id)
        self.claims = dict(claims or {})
        self.host_paths = dict(host_paths or {})
        self.objects = {}  # (kind, name) -> object
        self.workloads = {}
        self.extra_pods = []
        self.services = {}  # name -> {port name or number: ServiceProxy}
        self.closed = False
        os.makedirs(self.shm, exist_ok=True)
        podman("network", "create", "--label", self.label, self.network)
        self.kubelet = threading.Thread(target=self._kubelet_loop, daemon=True)
        self.kubelet.start()

    # -- objects -------------------------------------------------------------------------------

    def keyed_data(self, kind, name, optional=False):
        obj = self.objects.get((kind, name))
        if obj is None:
            if optional:
                return {}
            raise Failure(f"{kind} {name} does not exist")
        data = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()} \
            if kind == "Secret" else {k: v.encode() for k, v in (obj.get("data") or {}).items()}
        data.update({k: v.encode() for k, v in (obj.get("stringData") or {}).items()})
        data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        return data

    def claim_dir(self, claim):
        if claim not in self.claims:
            path = os.path.join(self.work, "claims", claim)
            os.makedirs(path, exist_ok=True)
            self.claims[claim] = path
        return self.claims[claim]

    def aliases_for(self, labels):
        return sorted(name for (kind, name), obj in self.objects.items()
                      if kind == "Service" and matches(obj["spec"].get("selector", {}), labels))

    def live_pods(self):
        pods = [p for w in self.workloads.values() for p in w.pods] + self.extra_pods
        return [p for p in pods if not p.stopped]

    def start_pod(self, pod):
        pod.start()

    def apply(self, docs, replicas_of=None, roll_timeout=180):
        """Creates or updates the objects of one rendering, workloads last (rolled when their
        template changed). `replicas_of(obj)` gives a workload's replica count."""
        changed_keyed = set()
        for d in docs:
            kind, name = d["kind"], d["metadata"]["name"]
            if kind in ("Secret", "ConfigMap", "Service", "PersistentVolumeClaim"):
                if self.objects.get((kind, name)) != d and (kind, name) in self.objects:
                    changed_keyed.add((kind, name))
                self.objects[(kind, name)] = d
            if kind == "Service":
                self._proxy(d)
        for pod in self.live_pods():
            if any((k, n) in changed_keyed for k, n, _, _ in pod.secret_volumes):
                pod.refresh_secret_volumes()
        for d in docs:
            if d["kind"] not in ("Deployment", "StatefulSet"):
                continue
            name = d["metadata"]["name"]
            existing = self.workloads.get(name)
            if existing is None:
                w = Workload(self, d, replicas_of(d) if replicas_of else d["spec"].get("replicas", 1))
                self.workloads[name] = w
                w.create()
            elif existing.template_hash(d["spec"]["template"]) != existing.template_hash():
                existing.roll(d, roll_timeout)
            else:
                existing.obj = d
        return changed_keyed

    def _proxy(self, svc):
        name = svc["metadata"]["name"]
        have = self.services.setdefault(name, {})
        for port in svc["spec"].get("ports", []):
            key = port.get("name") or port["port"]
            if key in have:
                have[key].service = svc
                have[key].port_spec = port
            else:
                have[key] = ServiceProxy(self, svc, port)
                log(f"Service {name} port {port['port']} is 127.0.0.1:{have[key].port}")

    def service_url(self, name, port=None, scheme="http"):
        ports = self.services[name]
        proxy = ports[port] if port is not None else next(iter(ports.values()))
        return proxy.url(scheme)

    def wait_all_ready(self, timeout):
        for w in self.workloads.values():
            w.wait_ready(w.pods, timeout)

    def _kubelet_loop(self):
        while not self.closed:
            states = {}
            out = podman("ps", "-a", "--format", "{{.Names}} {{.State}} {{.ExitCode}}",
                         check=False)
            for line in out.splitlines():
                parts = line.split()
                if len(parts) >= 2:
                    states[parts[0]] = (parts[1].lower(), parts[-1])
            for pod in list(self.live_pods()):
                try:
                    pod.tick(states)
                except Exception as e:  # noqa: BLE001 - keep probing the others
                    if not self.closed:
                        log(f"pod {pod.name}: {e}")
            time.sleep(0.5)

    def close(self, last=()):
        """Stops every pod, those of the workloads named in `last` (what the others depend
        on, such as NATS) after the others, so that they drain as they would in a cluster."""
        self.closed = True
        pods = self.live_pods()
        for group in ([p for p in pods if p.owner is None or p.owner.name not in last],
                      [p for p in pods if p.owner is not None and p.owner.name in last]):
            threads = [threading.Thread(target=p.stop) for p in group if p.started]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        for p in pods:
            podman("pod", "rm", "-f", p.pname, check=False)
        podman("network", "rm", "-f", self.network, check=False)
        shutil.rmtree(self.shm, ignore_errors=True)
