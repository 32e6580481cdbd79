#!/usr/bin/env python3
"""Checks the tidewatch Helm chart with the real Helm engine.

For the default values and several realistic value sets:
  * render with Helm's Go SDK (pip: helm-python-sdk) and lint in strict mode;
  * validate every rendered manifest against the Kubernetes JSON schemas
    (pip: kubernetes-validate, strict: unknown fields are errors), and the
    cert-manager / Prometheus-operator resources against their CRD essentials;
  * check what the chart promises: hardened pods, probes, the migrate hook,
    and what each value set switches on or off.
Value sets that break the schema or the chart's own rules must fail, with a
message naming the problem.

Usage: deploy/helm/check.py [--kube-version 1.30.0]
Prints one line per check and a final "helm chart: N value sets ok, M refusals ok".
Exits 1 on the first failure.
"""

import argparse
import copy
import os
import sys

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml

CHART = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tidewatch")

CRD_SCHEMAS = {
    ("cert-manager.io/v1", "Certificate"): {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "spec": {
                "type": "object",
                "required": ["secretName", "issuerRef"],
                "properties": {
                    "secretName": {"type": "string", "minLength": 1},
                    "dnsNames": {"type": "array", "items": {"type": "string"}},
                    "ipAddresses": {"type": "array", "items": {"type": "string"}},
                    "duration": {"type": "string"},
                    "renewBefore": {"type": "string"},
                    "usages": {"type": "array", "items": {"type": "string"}},
                    "issuerRef": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "kind": {"enum": ["Issuer", "ClusterIssuer"]},
                            "group": {"type": "string"},
                        },
                    },
                },
            }
        },
    },
    ("cert-manager.io/v1", "Issuer"): {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "spec": {
                "type": "object",
                "required": ["ca"],
                "properties": {
                    "ca": {
                        "type": "object",
                        "required": ["secretName"],
                        "properties": {"secretName": {"type": "string", "minLength": 1}},
                    }
                },
            }
        },
    },
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "spec": {
                "type": "object",
                "required": ["selector", "endpoints"],
                "properties": {
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {"type": "object", "required": ["port"]},
                    }
                },
            }
        },
    },
}


def fail(msg):
    print(f"FAIL {msg}")
    sys.exit(1)


def merge(base, over):
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def render(chart, values):
    out = chart.render(values, name="tw", namespace="tidewatch", is_install=True)
    docs = []
    for path, text in out.items():
        if path.endswith("NOTES.txt"):
            continue
        for d in yaml.safe_load_all(text):
            if d:
                docs.append((path, d))
    return docs


def validate(docs, kube_version, label):
    for path, d in docs:
        key = (d.get("apiVersion"), d.get("kind"))
        name = f"{label}: {path} {d.get('kind')}/{d.get('metadata', {}).get('name')}"
        if key in CRD_SCHEMAS:
            try:
                jsonschema.validate(d, CRD_SCHEMAS[key])
            except jsonschema.ValidationError as e:
                fail(f"{name}: {e.message}")
            continue
        try:
            kubernetes_validate.validate(d, kube_version, strict=True)
        except kubernetes_validate.ValidationError as e:
            fail(f"{name}: {'.'.join(map(str, e.path))}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError:
            fail(f"{name}: no Kubernetes schema for {key}")


def kinds(docs):
    return sorted(f"{d['kind']}/{d['metadata']['name']}" for _, d in docs)


def find(docs, kind, suffix):
    for _, d in docs:
        if d["kind"] == kind and d["metadata"]["name"].endswith(suffix):
            return d
    return None


def pod_specs(docs):
    for _, d in docs:
        if d["kind"] == "Deployment" or d["kind"] == "Job":
            yield d["metadata"]["name"], d["spec"]["template"]["spec"]


def check_hardening(docs, label):
    for name, spec in pod_specs(docs):
        psc = spec.get("securityContext", {})
        if not psc.get("runAsNonRoot"):
            fail(f"{label}: {name}: pod not runAsNonRoot")
        if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            fail(f"{label}: {name}: no RuntimeDefault seccomp profile")
        if spec.get("automountServiceAccountToken") is not False:
            fail(f"{label}: {name}: service account token mounted")
        for c in spec["containers"]:
            sc = c.get("securityContext", {})
            if sc.get("readOnlyRootFilesystem") is not True:
                fail(f"{label}: {name}/{c['name']}: root filesystem writable")
            if sc.get("allowPrivilegeEscalation") is not False:
                fail(f"{label}: {name}/{c['name']}: privilege escalation allowed")
            if sc.get("capabilities", {}).get("drop") != ["ALL"]:
                fail(f"{label}: {name}/{c['name']}: capabilities not dropped")
            res = c.get("resources", {})
            if not res.get("requests") or not res.get("limits"):
                fail(f"{label}: {name}/{c['name']}: resources not set")


def check_common(docs, label):
    ingest = find(docs, "Deployment", "-ingest")
    sink = find(docs, "Deployment", "-sink")
    if not ingest or not sink:
        fail(f"{label}: ingest or sink Deployment missing: {kinds(docs)}")
    ic = ingest["spec"]["template"]["spec"]["containers"][0]
    if ic["args"][0] != "ingest":
        fail(f"{label}: ingest runs {ic['args'][0]}")
    health = [p["containerPort"] for p in ic["ports"] if p["name"] == "health"][0]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        g = ic.get(probe, {}).get("grpc")
        if not g or g["port"] != health:
            fail(f"{label}: ingest {probe} is not a gRPC probe on the health port")
    if ic["readinessProbe"]["grpc"].get("service") != "tidewatch.v1.Uplink":
        fail(f"{label}: ingest readiness does not follow the Uplink service")
    if f"--health-listen=0.0.0.0:{health}" not in ic["args"]:
        fail(f"{label}: ingest does not serve health on its probe port")
    sc = sink["spec"]["template"]["spec"]["containers"][0]
    if sc["livenessProbe"].get("httpGet", {}).get("path") != "/healthz":
        fail(f"{label}: sink liveness is not /healthz")
    job = find(docs, "Job", "-migrate")
    if job and job["metadata"]["name"].endswith("-migrate"):
        hooks = job["metadata"]["annotations"]["helm.sh/hook"]
        if hooks != "pre-install,pre-upgrade":
            fail(f"{label}: migrate hook is {hooks}")
        margs = job["spec"]["template"]["spec"]["containers"][0]["args"]
        if margs[0] != "migrate" or not any(a.startswith("--rollup-retention-days=") for a in margs):
            fail(f"{label}: migrate job does not migrate with both retentions: {margs}")
    check_hardening(docs, label)
    return ingest, ic, sink, sc


def url_port(url, default):
    """The port of `host:port` or `scheme://host[:port][/...]`."""
    rest = url.split("://", 1)[-1].split("/", 1)[0]
    if ":" in rest:
        return int(rest.rsplit(":", 1)[1])
    return default


def check_network_policies(docs, values, label):
    """Each NetworkPolicy selects the pods it is meant for (its podSelector
    matches the pod template labels of that component's workloads, and of no
    other's), and lets them reach what they are configured to use: ingest and
    sink the Kafka brokers' ports, sink and the Jobs ClickHouse's port."""
    policies = {d["metadata"]["name"]: d for _, d in docs if d["kind"] == "NetworkPolicy"}
    if not policies:
        return
    workloads = [(d["metadata"]["name"], d["spec"]["template"]["metadata"].get("labels", {}))
                 for _, d in docs if d["kind"] in ("Deployment", "Job")]
    kafka = {url_port(b.strip(), 9092) for b in values["kafka"]["brokers"].split(",") if b.strip()}
    ch = url_port(values["clickhouse"]["url"], 8443 if values["clickhouse"]["url"].startswith("https") else 8123)
    needs = {"-ingest": kafka, "-sink": kafka | {ch}, "-migrate": {ch}}
    if values["detect"]["enabled"]:
        needs["-detect"] = kafka | {ch}
    if values["signer"]["enabled"]:
        # The signer talks to nobody; only ingest reaches it, and ingest may.
        needs["-ingest"] = kafka | {values["signer"]["port"]}
        needs["-signer"] = set()
        sp = next(d for n, d in policies.items() if n.endswith("-signer"))
        if sp["spec"]["egress"] != []:
            fail(f"{label}: the signer may reach out: {sp['spec']['egress']}")
        frm = [f.get("podSelector", {}).get("matchLabels", {}) for r in sp["spec"]["ingress"] for f in r.get("from", [])]
        if [m.get("app.kubernetes.io/component") for m in frm] != ["ingest"]:
            fail(f"{label}: the signer is reachable from {frm}, not ingest alone")
    for suffix, want in needs.items():
        np = next((d for n, d in policies.items() if n.endswith(suffix)), None)
        if np is None:
            fail(f"{label}: no NetworkPolicy {suffix}")
        sel = np["spec"]["podSelector"].get("matchLabels", {})
        selected = [n for n, labels in workloads if all(labels.get(k) == v for k, v in sel.items())]
        meant = [n for n, _ in workloads if n.endswith(suffix) or (suffix == "-migrate" and n.endswith("-registry"))]
        if meant and not selected or not set(meant) <= set(selected) or any(
                not (n.endswith(suffix) or (suffix == "-migrate" and n.endswith("-registry"))) for n in selected):
            fail(f"{label}: NetworkPolicy {suffix} selects {selected}, meant for {meant}")
        allowed = {p["port"] for rule in np["spec"].get("egress", []) for p in rule.get("ports", [])}
        if not want <= allowed:
            fail(f"{label}: NetworkPolicy {suffix} lets no traffic to port(s) {sorted(want - allowed)} "
                 f"(allowed egress ports {sorted(allowed)})")


def env_names(c):
    return {e["name"]: e for e in c.get("env", [])}


# (label, values, extra checks)
def cases():
    def default(docs, ingest, ic, sink, sc):
        assert find(docs, "HorizontalPodAutoscaler", "-ingest"), "HPA on by default"
        assert "replicas" not in ingest["spec"], "replicas set while the HPA scales"
        assert find(docs, "Service", "-ingest")["spec"]["type"] == "ClusterIP"
        assert find(docs, "PodDisruptionBudget", "-ingest")
        assert find(docs, "PodDisruptionBudget", "-sink")
        assert len([d for _, d in docs if d["kind"] == "NetworkPolicy"]) == 5
        assert not find(docs, "ServiceMonitor", "")
        detect = find(docs, "Deployment", "-detect")
        dc = detect["spec"]["template"]["spec"]["containers"][0]
        assert dc["args"][0] == "detect" and "--alerts-topic=tidewatch.alerts.v1" in dc["args"], dc["args"]
        assert env_names(dc)["TIDEWATCH_KAFKA_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "tidewatch-kafka-detect"
        assert not find(docs, "Deployment", "-deliver-"), "no destination, no delivery pod"
        assert not find(docs, "Certificate", "")
        vols = {v["name"]: v for v in ingest["spec"]["template"]["spec"]["volumes"]}
        assert vols["tls"]["secret"]["secretName"] == "tidewatch-ingest-tls"
        assert vols["sensor-ca"]["secret"]["secretName"] == "tidewatch-sensor-ca"
        assert not any(a.startswith("--crl") for a in ic["args"])
        # Sensors are verified against the sensor CA; the CA key is nowhere
        # but in the signer's volume.
        assert "--client-ca=/etc/tidewatch/sensor-ca/ca.crt" in ic["args"], ic["args"]
        assert "--signer=https://tw-tidewatch-signer:4444" in ic["args"], ic["args"]
        assert "--envelope-signing-key=/etc/tidewatch/envelope/envelope-signing-key.pem" in ic["args"]
        assert vols["envelope"]["secret"]["items"] == [
            {"key": "envelope-signing-key.pem", "path": "envelope-signing-key.pem"}]
        assert "--envelope-verify-key=/etc/tidewatch/envelope/envelope-verify-key.pem" in sc["args"], sc["args"]
        svols = {v["name"]: v for v in sink["spec"]["template"]["spec"]["volumes"]}
        assert svols["envelope"]["secret"]["secretName"] == "tidewatch-envelope-verify"
        signer = find(docs, "Deployment", "-signer")
        assert signer["spec"]["replicas"] == 1 and signer["spec"]["strategy"]["type"] == "Recreate"
        spod = signer["spec"]["template"]["spec"]
        assert [v.get("persistentVolumeClaim", {}).get("claimName") for v in spod["volumes"]] == ["tw-tidewatch-signer"]
        assert env_names(spod["containers"][0])["TIDEWATCH_PKI_DIR"]["value"] == "/var/lib/tidewatch/pki"
        for _, d in docs:
            if d["kind"] in ("Deployment", "Job") and not d["metadata"]["name"].endswith("-signer"):
                mounted = [v.get("persistentVolumeClaim") for v in d["spec"]["template"]["spec"].get("volumes", [])]
                assert not any(mounted), f"{d['metadata']['name']} mounts the signer's volume"
        pvc = find(docs, "PersistentVolumeClaim", "-signer")
        assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        # Consumers are static group members named by their pods; one
        # server, no cluster.
        for suffix in ("-sink", "-detect"):
            c = find(docs, "Deployment", suffix)["spec"]["template"]["spec"]["containers"][0]
            ref = env_names(c)["TIDEWATCH_KAFKA_GROUP_INSTANCE_ID"]["valueFrom"]["fieldRef"]
            assert ref["fieldPath"] == "metadata.name", ref
        assert "TIDEWATCH_CLICKHOUSE_CLUSTER" not in find(docs, "ConfigMap", "-config")["data"]
        # Kafka: TLS and SCRAM, one user per component.
        for c, user in ((ic, "tidewatch-kafka-ingest"), (sc, "tidewatch-kafka-sink")):
            assert "--kafka-option=security.protocol=SASL_SSL" in c["args"], c["args"]
            assert "--kafka-option=sasl.mechanism=SCRAM-SHA-512" in c["args"], c["args"]
            assert env_names(c)["TIDEWATCH_KAFKA_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == user

    def cert_manager(docs, ingest, ic, sink, sc):
        cert = find(docs, "Certificate", "-ingest")
        issuer = find(docs, "Issuer", "-server-ca")
        assert cert and issuer, kinds(docs)
        assert issuer["spec"]["ca"]["secretName"] == "server-ca-keypair"
        assert cert["spec"]["dnsNames"] == ["ingest.fleet.example.com"]
        assert cert["spec"]["issuerRef"]["name"] == issuer["metadata"]["name"]
        vols = {v["name"]: v for v in ingest["spec"]["template"]["spec"]["volumes"]}
        assert vols["tls"]["secret"]["secretName"] == cert["spec"]["secretName"]
        # The issued Secret's ca.crt (the server CA) does not verify sensors.
        assert "--client-ca=/etc/tidewatch/sensor-ca/ca.crt" in ic["args"]

    def cluster_issuer(docs, ingest, ic, sink, sc):
        cert = find(docs, "Certificate", "-ingest")
        assert not find(docs, "Issuer", "")
        assert cert["spec"]["issuerRef"] == {
            "name": "fleet-ca",
            "kind": "ClusterIssuer",
            "group": "cert-manager.io",
        }

    def load_balancer(docs, ingest, ic, sink, sc):
        svc = find(docs, "Service", "-ingest")
        assert svc["spec"]["type"] == "LoadBalancer"
        assert svc["spec"]["externalTrafficPolicy"] == "Local"
        assert svc["spec"]["loadBalancerSourceRanges"] == ["203.0.113.0/24"]
        np = find(docs, "NetworkPolicy", "-ingest")
        assert np["spec"]["ingress"][0]["from"] == [{"ipBlock": {"cidr": "203.0.113.0/24"}}]
        assert not find(docs, "HorizontalPodAutoscaler", "")
        assert ingest["spec"]["replicas"] == 3

    def node_port(docs, ingest, ic, sink, sc):
        svc = find(docs, "Service", "-ingest")
        assert svc["spec"]["type"] == "NodePort"
        assert svc["spec"]["ports"][0]["nodePort"] == 30443

    def service_monitor(docs, ingest, ic, sink, sc):
        sm = find(docs, "ServiceMonitor", "")
        assert sm["metadata"]["labels"]["release"] == "prometheus"
        assert sm["spec"]["endpoints"][0]["port"] == "metrics"
        sel = sm["spec"]["selector"]["matchLabels"]
        matched = [
            d["metadata"]["name"]
            for _, d in docs
            if d["kind"] == "Service"
            and all(d["metadata"]["labels"].get(k) == v for k, v in sel.items())
        ]
        assert sorted(matched) == ["tw-tidewatch-detect-metrics", "tw-tidewatch-ingest-metrics",
                                  "tw-tidewatch-sink-metrics"], matched
        assert not any(d["kind"] == "NetworkPolicy" for _, d in docs)

    def secrets(docs, ingest, ic, sink, sc):
        ie, se = env_names(ic), env_names(sc)
        for env, user in ((ie, "kafka-ingest"), (se, "kafka-sink")):
            assert env["TIDEWATCH_KAFKA_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
                "name": user,
                "key": "password",
            }
        assert se["TIDEWATCH_CLICKHOUSE_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "ch-pass"
        assert "TIDEWATCH_CLICKHOUSE_PASSWORD" not in ie, "ingest does not need ClickHouse"
        job = find(docs, "Job", "-migrate")
        je = env_names(job["spec"]["template"]["spec"]["containers"][0])
        assert je["TIDEWATCH_CLICKHOUSE_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "pw"
        assert "--crl=/etc/tidewatch/crl/crl.pem" in ic["args"]
        for c in (ic, sc):
            assert "--kafka-option=security.protocol=SASL_SSL" in c["args"], c["args"]
            assert "--kafka-option=sasl.mechanism=SCRAM-SHA-256" in c["args"], c["args"]
            assert "--kafka-option=ssl.ca.location=/etc/tidewatch/kafka-ca/ca.crt" in c["args"], c["args"]
            mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
            assert mounts["kafka-ca"] == "/etc/tidewatch/kafka-ca"
        for d in (ingest, sink):
            vols = {v["name"]: v for v in d["spec"]["template"]["spec"]["volumes"]}
            assert vols["kafka-ca"]["secret"]["secretName"] == "kafka-cluster-ca"
        reg = find(docs, "ConfigMap", "-fleet")
        assert '"imo": "9321483"' in reg["data"]["registry.json"]
        load = find(docs, "Job", "-fleet-registry")
        assert load["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
        pod = load["spec"]["template"]["spec"]
        assert pod["containers"][0]["args"] == ["registry", "load", "/etc/tidewatch/fleet/registry.json"]
        assert pod["volumes"][0]["configMap"]["name"] == reg["metadata"]["name"]
        cfg = find(docs, "ConfigMap", "-config")
        assert cfg["data"]["TIDEWATCH_CLICKHOUSE_URL"] == "https://ch.example.com:8443"

    def alerting(docs, ingest, ic, sink, sc):
        det = find(docs, "Deployment", "-detect")
        assert "--rules=/etc/tidewatch/rules/rules.yaml" in det["spec"]["template"]["spec"]["containers"][0]["args"]
        rules = yaml.safe_load(find(docs, "ConfigMap", "-detect-rules")["data"]["rules.yaml"])
        assert rules["rules"]["intel-contact"]["severity"] == "critical", rules
        assert rules["scheduled"] == [{"query": "beaconing", "every_secs": 1800,
                                       "args": ["--min-count", "30"]}], rules
        soc = find(docs, "Deployment", "-deliver-soc")
        cases = find(docs, "Deployment", "-deliver-cases")
        assert soc and cases, kinds(docs)
        a = soc["spec"]["template"]["spec"]["containers"][0]["args"]
        assert a[:2] == ["deliver", "--name=soc"], a
        for want in ("--syslog=siem.example.com:6514", "--syslog-format=cef", "--syslog-tls",
                     "--syslog-ca=/etc/tidewatch/destination-ca/ca.crt"):
            assert want in a, a
        vols = {v["name"]: v for v in soc["spec"]["template"]["spec"]["volumes"]}
        assert vols["destination-ca"]["secret"]["secretName"] == "siem-ca"
        b = cases["spec"]["template"]["spec"]["containers"][0]["args"]
        assert "--webhook=https://cases.example.com/hooks/tidewatch" in b, b
        assert "--webhook-secret-file=/etc/tidewatch/webhook-secret/secret" in b, b
        for d in (soc, cases):
            assert d["spec"]["replicas"] == 1
            e = env_names(d["spec"]["template"]["spec"]["containers"][0])
            assert e["TIDEWATCH_KAFKA_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "tidewatch-kafka-deliver"
        np = find(docs, "NetworkPolicy", "-deliver")
        ports = {p["port"] for r in np["spec"]["egress"] for p in r.get("ports", [])}
        assert {6514, 443} <= ports, ports

    def lab(docs, ingest, ic, sink, sc):
        for c in (ic, sc):
            assert "--kafka-option=security.protocol=PLAINTEXT" in c["args"], c["args"]
            assert not any("sasl" in a for a in c["args"]), c["args"]
            assert "TIDEWATCH_KAFKA_PASSWORD" not in env_names(c)
        assert not find(docs, "Deployment", "-signer")
        assert not find(docs, "PersistentVolumeClaim", "")
        assert not any(a.startswith("--signer") for a in ic["args"]), ic["args"]
        assert len([d for _, d in docs if d["kind"] == "NetworkPolicy"]) == 3

    def ch_cluster(docs, ingest, ic, sink, sc):
        job = find(docs, "Job", "-migrate")["spec"]["template"]["spec"]["containers"][0]
        assert env_names(job)["TIDEWATCH_CLICKHOUSE_CLUSTER"]["value"] == "fleet_ch", job["env"]
        assert env_names(job)["TIDEWATCH_CLICKHOUSE_CLUSTER_NODES"]["value"] == (
            "http://ch-0-0.ch:8123,http://ch-1-0.ch:8123"), job["env"]
        assert find(docs, "ConfigMap", "-config")["data"]["TIDEWATCH_CLICKHOUSE_CLUSTER"] == "fleet_ch"
        assert sink["spec"]["replicas"] == 3

    def no_migrate(docs, ingest, ic, sink, sc):
        assert not find(docs, "Job", "")
        assert not find(docs, "Job", "-fleet-registry"), "no registry job without sensors"

    yield "default values", {}, default
    yield "cert-manager with a CA issuer", {
        "tls": {
            "existingSecret": "",
            "certManager": {
                "enabled": True,
                "serverCaSecretName": "server-ca-keypair",
                "dnsNames": ["ingest.fleet.example.com"],
            },
        }
    }, cert_manager
    yield "cert-manager with an existing ClusterIssuer", {
        "tls": {
            "certManager": {
                "enabled": True,
                "createIssuer": False,
                "issuerRef": {"name": "fleet-ca", "kind": "ClusterIssuer"},
                "ipAddresses": ["198.51.100.7"],
            }
        }
    }, cluster_issuer
    yield "LoadBalancer, HPA off", {
        "ingest": {
            "replicas": 3,
            "autoscaling": {"enabled": False},
            "service": {
                "type": "LoadBalancer",
                "externalTrafficPolicy": "Local",
                "loadBalancerSourceRanges": ["203.0.113.0/24"],
                "annotations": {"service.beta.kubernetes.io/aws-load-balancer-type": "nlb"},
            },
        },
        "networkPolicy": {"ingestFrom": [{"ipBlock": {"cidr": "203.0.113.0/24"}}]},
    }, load_balancer
    yield "NodePort", {"ingest": {"service": {"type": "NodePort", "nodePort": 30443}}}, node_port
    yield "ServiceMonitor on, NetworkPolicy off", {
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "networkPolicy": {"enabled": False},
    }, service_monitor
    yield "Kafka SASL, ClickHouse password, CRL, fleet registry", {
        "kafka": {
            "brokers": "b0.kafka.example.com:9093,b1.kafka.example.com:9093",
            "security": {"saslMechanism": "SCRAM-SHA-256", "caSecret": {"name": "kafka-cluster-ca"}},
            "sasl": {"ingest": {"existingSecret": "kafka-ingest"}, "sink": {"existingSecret": "kafka-sink"}},
        },
        "clickhouse": {
            "url": "https://ch.example.com:8443",
            "existingSecret": "ch-pass",
            "passwordKey": "pw",
        },
        "tls": {"crl": {"existingSecret": "fleet-crl"}},
        "fleet": {
            "sensors": [
                {"id": "crane-a", "vessel": "port-of-kiel", "site": "kiel", "role": "crane"},
                {"id": "bridge-b", "vessel": "mv-aurora", "imo": "9321483", "role": "bridge"},
            ]
        },
    }, secrets
    yield "alerting: detector, syslog and webhook destinations", {
        "detect": {"rules": {"intel-contact": {"severity": "critical",
                                               "suppress": [{"vessel": "mv-test", "note": "test vessel"}]}},
                   "scheduled": [{"query": "beaconing", "every_secs": 1800, "args": ["--min-count", "30"]}]},
        "deliver": {"destinations": [
            {"name": "soc", "syslog": {"address": "siem.example.com:6514", "tls": True, "format": "cef",
                                        "caSecret": {"name": "siem-ca", "key": "ca.crt"}}},
            {"name": "cases", "webhook": {"url": "https://cases.example.com/hooks/tidewatch",
                                          "secretSecret": {"name": "cases-hmac", "key": "secret"}}},
        ]},
    }, alerting
    yield "lab: plaintext Kafka, no signer", {
        "kafka": {"brokers": "kafka:9092", "ports": [9092], "security": {"protocol": "PLAINTEXT"}},
        "signer": {"enabled": False},
        "detect": {"enabled": False},
    }, lab
    yield "ClickHouse cluster, three sinks", {
        "clickhouse": {"url": "http://clickhouse-fleet.clickhouse:8123", "cluster": "fleet_ch",
                       "clusterNodes": ["http://ch-0-0.ch:8123", "http://ch-1-0.ch:8123"]},
        "sink": {"replicas": 3},
    }, ch_cluster
    yield "migration disabled", {"migrate": {"enabled": False}}, no_migrate


# (label, values, text the error must contain)
REFUSALS = [
    ("unknown service type", {"ingest": {"service": {"type": "Ingress"}}}, "type"),
    ("batch size as text", {"ingest": {"maxBatchBytes": "1MB"}}, "maxBatchBytes"),
    ("port out of range", {"ingest": {"port": 70000}}, "port"),
    ("unknown top-level key", {"ingset": {"replicas": 2}}, "ingset"),
    ("bad database name", {"clickhouse": {"database": "tide-watch"}}, "database"),
    ("bad cluster name", {"clickhouse": {"cluster": "fleet ch"}}, "cluster"),
    ("broker without port", {"kafka": {"brokers": "kafka"}}, "brokers"),
    ("unknown fleet role", {"fleet": {"sensors": [{"id": "a", "vessel": "v", "role": "galley"}]}}, "role"),
    ("no TLS source", {"tls": {"existingSecret": ""}}, "tls.existingSecret"),
    (
        "cert-manager without names",
        {"tls": {"certManager": {"enabled": True}}},
        "dnsNames or ipAddresses",
    ),
    (
        "cert-manager without issuer",
        {"tls": {"certManager": {"enabled": True, "createIssuer": False, "dnsNames": ["x"]}}},
        "issuerRef.name",
    ),
    ("nodePort with ClusterIP", {"ingest": {"service": {"nodePort": 30443}}}, "nodePort"),
    (
        "cert-manager issuing from the sensor CA",
        {"tls": {"certManager": {"enabled": True, "serverCaSecretName": "tidewatch-sensor-ca",
                                 "dnsNames": ["x"]}}},
        "never from the sensor CA",
    ),
    ("the old single CA key", {"tls": {"certManager": {"caSecretName": "fleet-ca"}}}, "caSecretName"),
    ("no sensor CA", {"tls": {"sensorCA": {"existingSecret": ""}}}, "tls.sensorCA"),
    ("SASL without a sink user", {"kafka": {"sasl": {"sink": {"existingSecret": ""}}}}, "kafka.sasl"),
    ("unknown Kafka protocol", {"kafka": {"security": {"protocol": "TLS"}}}, "protocol"),
    ("unsigned envelopes", {"envelope": {"signingKey": {"existingSecret": ""}}}, "envelope"),
    ("signer without an ingest client", {"signer": {"ingestClient": {"existingSecret": ""}}}, "signer.ingestClient"),
    ("a destination with neither", {"deliver": {"destinations": [{"name": "x"}]}}, "give syslog or webhook"),
    ("a destination with both", {"deliver": {"destinations": [
        {"name": "x", "syslog": {"address": "a:514"}, "webhook": {"url": "http://b/"}}]}}, "not both"),
    (
        "rollups kept shorter than flows",
        {"migrate": {"flowRetentionDays": 90, "rollupRetentionDays": 30}},
        "rollupRetentionDays",
    ),
    (
        "min above max replicas",
        {"ingest": {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}},
        "minReplicas",
    ),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kube-version", default="1.30.0")
    args = ap.parse_args()
    chart = helm.Chart.load(CHART)
    defaults = chart.values
    ok = 0
    for label, values, extra in cases():
        try:
            docs = render(chart, values)
        except helm.HelmError as e:
            fail(f"{label}: render failed: {e}")
        report = helm.lint(CHART, values, strict=True, namespace="tidewatch",
                           kube_version=f"v{args.kube_version}")
        problems = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
        if problems or report.get("errors"):
            fail(f"{label}: helm lint --strict: {problems or report['errors']}")
        validate(docs, args.kube_version, label)
        ingest, ic, sink, sc = check_common(docs, label)
        try:
            extra(docs, ingest, ic, sink, sc)
        except AssertionError as e:
            fail(f"{label}: {e}")
        merged = merge(defaults, values)
        check_network_policies(docs, merged, label)
        print(f"ok   {label}: {len(docs)} manifests valid for Kubernetes {args.kube_version} "
              f"(ingest service {merged['ingest']['service']['type']})")
        ok += 1
    refused = 0
    for label, values, needle in REFUSALS:
        try:
            render(chart, values)
        except helm.HelmError as e:
            msg = str(e)
            if needle not in msg:
                fail(f"refusal {label}: message does not name {needle!r}: {msg}")
            print(f"ok   refused {label}: {msg.strip().splitlines()[-1][:150]}")
            refused += 1
            continue
        fail(f"refusal {label}: rendered although it must fail")
    print(f"helm chart: {ok} value sets ok, {refused} refusals ok")


if __name__ == "__main__":
    main()
