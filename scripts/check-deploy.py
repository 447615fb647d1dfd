#!/usr/bin/env python3
"""Checks one rendering of the imgfetch Helm chart (called by scripts/check-deploy.sh).

    check-deploy.py RENDERED.yaml --zones cams,dmz [--keda] [--nack]
        --resolver BIN --gateway BIN --work DIR

Built-in kinds are validated by kubernetes-validate (run by the shell script); this checks what
a schema cannot: the custom kinds' required fields (KEDA ScaledObject, NACK Stream and Consumer),
one resolver Deployment, PodDisruptionBudget and ConfigMap per zone, the gateway's drain timing,
secrets never in plain environment values, and each zone's resolver TOML and the gateway's
environment through the binaries' own --check-config. Prints one line per finding; exits 1 on
any.
"""

import argparse
import os
import re
import subprocess
import sys

import yaml

FAILURES = []


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


def toml_for_check(text, work, zone):
    """The zone's TOML with every *_file path moved under `work`, where a stand-in file is
    written: what the pod's mounted Secrets provide."""

    def move(match):
        key, path = match.group(1), match.group(2)
        local = os.path.join(work, "secrets", zone, path.lstrip("/"))
        os.makedirs(os.path.dirname(local), exist_ok=True)
        with open(local, "w") as f:
            f.write("stand-in-for-a-mounted-secret\n")
        return f'{key} = "{local}"'

    return re.sub(r'^(\w+_file) = "([^"]+)"$', move, text, flags=re.M)


def run_check(argv, env=None):
    out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30)
    line = (out.stdout + out.stderr).strip()
    return out.returncode, line


def roles_of_nats_yaml(path):
    """user -> (publish allow, subscribe allow) from deploy/nats.yaml's roles block."""
    text = open(path).read()
    block = text[text.index("    accounts {"):]
    roles = {}
    for chunk in re.split(r"\n\s*user: ", block)[1:]:
        name = chunk.split("\n", 1)[0].strip()
        body = "\n".join(
            "" if line.strip().startswith("#") else line for line in chunk.split("\n")
        )
        pub, sub = body.index("publish:"), body.index("subscribe:")
        end = body.index("}", body.index("]", sub))
        roles[name] = (
            re.findall(r'"([^"]*)"', body[pub:sub]),
            re.findall(r'"([^"]*)"', body[sub:end]),
        )
    return roles


def roles_of_nats_values(path):
    values = yaml.safe_load(open(path))
    users = values["config"]["merge"]["accounts"]["IMGFETCH"]["users"]
    return {
        u["user"]: (
            u["permissions"]["publish"]["allow"],
            u["permissions"]["subscribe"]["allow"],
        )
        for u in users
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("rendered")
    parser.add_argument("--zones", required=True)
    parser.add_argument("--keda", action="store_true")
    parser.add_argument("--nack", action="store_true")
    parser.add_argument("--resolver", required=True)
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--roles", nargs=2, metavar=("NATS_YAML", "NATS_VALUES"))
    args = parser.parse_args()
    zones = args.zones.split(",")

    docs = [d for d in yaml.safe_load_all(open(args.rendered)) if d]
    by_kind = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    custom = [d for d in docs if d["apiVersion"].split("/")[0] in ("keda.sh", "jetstream.nats.io")]

    def zone_of(doc):
        return need(doc, "metadata.labels") and doc["metadata"]["labels"].get("imgfetch/zone")

    # One resolver Deployment, PodDisruptionBudget and ConfigMap per zone, nothing else zoned.
    for kind in ("Deployment", "PodDisruptionBudget", "ConfigMap"):
        found = sorted(zone_of(d) for d in by_kind.get(kind, []) if zone_of(d))
        if found != sorted(zones):
            fail(f"{kind}s of zones {found}, expected one each of {sorted(zones)}")

    # Every container: probes, the restricted security context, no secret in a plain value.
    for deploy in by_kind.get("Deployment", []):
        name = deploy["metadata"]["name"]
        pod = deploy["spec"]["template"]["spec"]
        if need(pod, "securityContext.runAsNonRoot") is not True:
            fail(f"{name}: pod not runAsNonRoot")
        for c in pod["containers"]:
            sc = c.get("securityContext") or {}
            if sc.get("readOnlyRootFilesystem") is not True:
                fail(f"{name}: root filesystem writable")
            if sc.get("allowPrivilegeEscalation") is not False:
                fail(f"{name}: privilege escalation allowed")
            if need(sc, "capabilities.drop") != ["ALL"]:
                fail(f"{name}: capabilities not all dropped")
            for probe, path in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz")):
                if need(c, f"{probe}.httpGet.path") != path:
                    fail(f"{name}: {probe} is not on {path}")
            for env in c.get("env", []):
                secretish = re.search(r"PASSWORD|SECRET|TOKEN", env["name"]) and not env[
                    "name"
                ].endswith("_FILE")
                if secretish and "value" in env:
                    fail(f"{name}: {env['name']} is a plain value")
                # A file setting names a file some volume provides.
                if env["name"].endswith("_FILE") and "value" in env:
                    mounts = [m["mountPath"] for m in c.get("volumeMounts", [])]
                    if not any(env["value"].startswith(m.rstrip("/") + "/") for m in mounts):
                        fail(f"{name}: {env['name']}={env['value']} is on no mounted volume")

    # The gateway outlives its drain: preStop sleep + IMGFETCH_GRACE < grace period.
    gateways = [d for d in by_kind.get("Deployment", []) if not zone_of(d)]
    if len(gateways) != 1:
        fail(f"{len(gateways)} gateway Deployments")
    for gw in gateways:
        pod = gw["spec"]["template"]["spec"]
        c = pod["containers"][0]
        env = {e["name"]: e for e in c["env"]}
        grace = env["IMGFETCH_GRACE"]["value"]
        if not re.fullmatch(r"\d+s", grace):
            fail(f"gateway: IMGFETCH_GRACE {grace!r} is not whole seconds")
        grace_s = int(grace[:-1])
        sleep = int(need(c, "lifecycle.preStop.exec.command")[-1])
        period = pod["terminationGracePeriodSeconds"]
        if not period > sleep + grace_s:
            fail(f"gateway: terminationGracePeriodSeconds {period} <= {sleep} s + {grace}")
        # The gateway's own check of the environment it is given (pod name as instance,
        # stand-ins for the Secrets' values).
        check_env = {"PATH": os.environ.get("PATH", "")}
        for e in c["env"]:
            if "value" in e and e["name"].endswith("_FILE"):
                # A mounted Secret: a stand-in file where the pod would have it.
                local = os.path.join(args.work, "secrets", "gateway", e["value"].lstrip("/"))
                os.makedirs(os.path.dirname(local), exist_ok=True)
                with open(local, "w") as f:
                    f.write("stand-in-for-a-mounted-secret\n")
                check_env[e["name"]] = local
            elif "value" in e:
                check_env[e["name"]] = e["value"]
            elif need(e, "valueFrom.fieldRef.fieldPath") == "metadata.name":
                check_env[e["name"]] = "gateway-0"
            else:
                check_env[e["name"]] = "stand-in"
        code, line = run_check([args.gateway, "--check-config"], env=check_env)
        print(f"gateway --check-config: {line}")
        if code != 0:
            fail(f"gateway --check-config exit {code}")

    hpa = by_kind.get("HorizontalPodAutoscaler", [])
    if len(hpa) != 1 or need(hpa[0], "spec.metrics.0.resource.name") != "cpu":
        fail("expected one HorizontalPodAutoscaler on CPU")

    # Each zone's TOML, as its pods read it, through the resolver's own check.
    networks = {}
    for cm in by_kind.get("ConfigMap", []):
        zone = zone_of(cm)
        text = cm["data"]["resolver.toml"]
        networks[zone] = re.findall(r"^\[networks\.([^\]]+)\]$", text, flags=re.M)
        if args.nack and "provision = false" not in text:
            fail(f"zone {zone}: NACK on but the resolvers provision")
        path = os.path.join(args.work, f"resolver-{zone}.toml")
        with open(path, "w") as f:
            f.write(toml_for_check(text, args.work, zone))
        code, line = run_check(
            [args.resolver, "--config", path, "--check-config"],
            env={"PATH": os.environ.get("PATH", "")},
        )
        print(f"zone {zone}: resolver --check-config: {line}")
        if code != 0:
            fail(f"zone {zone}: resolver --check-config exit {code}")
    all_networks = sorted(n for ns in networks.values() for n in ns)

    for doc in custom:
        check_custom(doc, all_networks)
    scaled = {need(d, "spec.scaleTargetRef.name"): d for d in by_kind.get("ScaledObject", [])}
    if args.keda:
        for deploy in by_kind.get("Deployment", []):
            zone = zone_of(deploy)
            if not zone:
                continue
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
            if subjects != sorted(f"imgfetch.req.{n}" for n in all_networks):
                fail(f"Stream IMGFETCH captures {subjects}, networks are {all_networks}")
            for key, want in (("retention", "workqueue"), ("discard", "new"), ("storage", "file")):
                if req["spec"].get(key) != want:
                    fail(f"Stream IMGFETCH: {key} {req['spec'].get(key)}, expected {want}")
        for n in all_networks:
            c = consumers.get(f"imgfetch-{n}")
            if not c:
                fail(f"NACK on but no Consumer imgfetch-{n}")
            elif (c["spec"]["filterSubject"], c["spec"]["ackPolicy"]) != (
                f"imgfetch.req.{n}",
                "explicit",
            ):
                fail(f"Consumer imgfetch-{n}: filter or ack policy wrong")
        if "IMGFETCH_DLQ" not in streams or "imgfetch-dead-letters" not in consumers:
            fail("NACK on but no dead-letter Stream and Consumer")
    elif streams or consumers:
        fail("Streams or Consumers rendered with NACK off")

    if args.roles:
        ours, theirs = roles_of_nats_yaml(args.roles[0]), roles_of_nats_values(args.roles[1])
        if ours != theirs:
            fail(f"the roles in {args.roles[1]} differ from {args.roles[0]}")
        else:
            print(f"roles in {args.roles[1]} match {args.roles[0]}: {', '.join(sorted(ours))}")

    kinds = ", ".join(f"{len(v)} {k}" for k, v in sorted(by_kind.items()))
    print(f"{args.rendered}: {kinds}; zones {', '.join(zones)}; networks {', '.join(all_networks)}")
    if FAILURES:
        sys.exit(1)


if __name__ == "__main__":
    main()
