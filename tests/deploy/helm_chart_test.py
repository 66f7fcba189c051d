#!/usr/bin/env python3
"""Checks the Helm chart helm/nextserve without a cluster.

For the default values and every value set under helm/nextserve/ci/: helm lint (strict) and render
with the Helm v4 library of PyPI's helm-python-sdk, every manifest validated strictly against the
Kubernetes schemas of kubernetes-validate (the LeaderWorkerSet and Prometheus Operator kinds against
the minimal schemas beside this file, whose pod templates and selectors use the same Kubernetes
definitions), then what the chart must get right: ranks x groups, the router's rank addresses, GPU
counts, probes, selectors matching labels, ports matching container ports, the NetworkPolicy
selecting the rank pods and letting only routers (and the other ranks) in, non-root read-only
containers, the model mounted read-only, and only flags that nextserve-router / nextserve-rank have.

Exit 77 (ctest skip) only when the two packages cannot be imported (scripts/setup.sh installs them);
any other problem fails.
"""
import copy
import json
import os
import re
import subprocess
import sys
import unittest

SOURCE = os.environ.get("NEXTSERVE_SOURCE_DIR") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
CHART = os.path.join(SOURCE, "helm", "nextserve")
SCHEMAS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schemas")
KUBE_VERSIONS = ("1.30", "1.37")  # the oldest we support with gRPC probes GA (1.27+) and the newest
RELEASE, NAMESPACE = "demo", "serving"

try:
    import helm_python as helm
    import jsonschema
    import kubernetes_validate
    import referencing
    import yaml
except ImportError as e:
    print(f"SKIP: {e.name} is not installed (scripts/setup.sh installs helm-python-sdk==0.2.2 and "
          "kubernetes-validate==1.37.0 from PyPI)")
    sys.exit(77)


def load_yaml(path):
    with open(path) as f:
        return yaml.safe_load(f) or {}


def deep_merge(base, override):
    out = copy.deepcopy(base)
    for k, v in override.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def real_flags(source_file):
    """The flag names a binary's main registers (flags.String("name", ...) / flags.Int(...))."""
    with open(os.path.join(SOURCE, source_file)) as f:
        return {"--" + m for m in re.findall(r'flags\.(?:String|Int|Bool|Double)\(\s*"([a-z0-9-]+)"', f.read())}


ROUTER_FLAGS = real_flags("router/router_main.cc")
RANK_FLAGS = real_flags("worker/rank_main.cc")


class CustomSchemas:
    """Strict validation of the kinds kubernetes-validate has no schema for."""

    def __init__(self, kube_version):
        base = os.path.join(os.path.dirname(kubernetes_validate.__file__), "kubernetes-json-schema",
                            f"v{kube_version}.0-local-strict")
        with open(os.path.join(base, "_definitions.json")) as f:
            definitions = json.load(f)
        registry = referencing.Resource.from_contents(definitions) @ referencing.Registry()
        self.validators = {}
        for name in os.listdir(SCHEMAS):
            with open(os.path.join(SCHEMAS, name)) as f:
                schema = json.load(f)
            kind = schema["properties"]["kind"]["const"]
            api = schema["properties"]["apiVersion"]["const"]
            self.validators[(api, kind)] = jsonschema.Draft202012Validator(
                schema, registry=referencing.Resource.from_contents(schema) @ registry)

    def validate(self, doc):
        validator = self.validators.get((doc["apiVersion"], doc["kind"]))
        if validator is None:
            return False
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
        if errors:
            e = errors[0]
            raise AssertionError(f"{doc['kind']}/{doc['metadata']['name']}: "
                                 f"{'.'.join(map(str, e.path))}: {e.message}")
        return True


CUSTOM = {v: CustomSchemas(v) for v in KUBE_VERSIONS}


def selects(selector, labels):
    """A LabelSelector (matchLabels + matchExpressions) or a plain map, against labels."""
    if selector is None:
        return False
    match = selector.get("matchLabels", selector if "matchExpressions" not in selector else {})
    if any(labels.get(k) != v for k, v in match.items()):
        return False
    for expr in selector.get("matchExpressions", []):
        value, op = labels.get(expr["key"]), expr["operator"]
        if op == "In" and value not in expr["values"]:
            return False
        if op == "NotIn" and value in expr["values"]:
            return False
        if op == "Exists" and value is None:
            return False
        if op == "DoesNotExist" and value is not None:
            return False
    return True


def policy_allows(policy, peer_labels, peer_namespace_labels, port):
    """Whether a NetworkPolicy's ingress rules let a pod with peer_labels reach `port`."""
    for rule in policy["spec"].get("ingress", []):
        ports = rule.get("ports")
        if ports and not any(p.get("port") == port for p in ports):
            continue
        peers = rule.get("from")
        if not peers:
            return True
        for peer in peers:
            if "ipBlock" in peer:
                return True
            ns_ok = ("namespaceSelector" not in peer and peer_namespace_labels.get(
                "kubernetes.io/metadata.name") == NAMESPACE) or (
                    "namespaceSelector" in peer and selects(peer["namespaceSelector"], peer_namespace_labels))
            pod_ok = "podSelector" not in peer or selects(peer["podSelector"], peer_labels)
            if ns_ok and pod_ok:
                return True
    return False


class Rendered:
    """One value set rendered: its documents, and the rank pods the workloads would create."""

    def __init__(self, name, overrides):
        self.name = name
        self.values = deep_merge(load_yaml(os.path.join(CHART, "values.yaml")), overrides)
        report = helm.lint(CHART, overrides, strict=True, namespace=NAMESPACE, kube_version="v1.30.0")
        problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
        if problems:
            raise AssertionError(f"{name}: helm lint: {problems}")
        with helm.Chart.load(CHART) as chart:
            manifests = chart.render(overrides, name=RELEASE, namespace=NAMESPACE, is_install=True)
        self.docs = []
        for path, text in manifests.items():
            if not path.endswith(".yaml"):
                continue
            for doc in yaml.safe_load_all(text):
                if doc:
                    self.docs.append(doc)
        self.pods = self._pods()  # (pod name, subdomain, template) for every rank pod

    def of_kind(self, kind):
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind, name=None):
        found = [d for d in self.of_kind(kind) if name is None or d["metadata"]["name"] == name]
        if len(found) != 1:
            raise AssertionError(f"{self.name}: expected one {kind} {name or ''}, got {len(found)}")
        return found[0]

    def _pods(self):
        pods = []
        for lws in self.of_kind("LeaderWorkerSet"):
            name, spec = lws["metadata"]["name"], lws["spec"]
            t = spec["leaderWorkerTemplate"]
            for g in range(spec["replicas"]):
                pods.append((f"{name}-{g}", name, t.get("leaderTemplate", t["workerTemplate"])))
                for p in range(1, t["size"]):
                    pods.append((f"{name}-{g}-{p}", name, t["workerTemplate"]))
        for sts in self.of_kind("StatefulSet"):
            name, spec = sts["metadata"]["name"], sts["spec"]
            for p in range(spec["replicas"]):
                pods.append((f"{name}-{p}", spec["serviceName"], spec["template"]))
        return pods

    def router_template(self):
        return self.one("Deployment")["spec"]["template"]

    def all_pod_templates(self):
        templates = [self.router_template()] + [t for _, _, t in self.pods]
        return templates


def container(template, name):
    found = [c for c in template["spec"]["containers"] if c["name"] == name]
    assert len(found) == 1, f"no container {name}"
    return found[0]


def container_ports(template):
    return {p["name"]: p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports", [])}


def flags_in(args):
    return [a for a in args if a.startswith("--") and a != "--"]


VALUE_SETS = {"defaults": {}}
for file in sorted(os.listdir(os.path.join(CHART, "ci"))):
    if file.endswith("-values.yaml"):
        VALUE_SETS[file[: -len("-values.yaml")]] = load_yaml(os.path.join(CHART, "ci", file))
RENDERED = {}


def rendered(name):
    if name not in RENDERED:
        RENDERED[name] = Rendered(name, VALUE_SETS[name])
    return RENDERED[name]


# What each value set must come to: (groups, pods per group, ranks per pod, GPUs in all, workload).
EXPECTED = {
    "defaults": (1, 1, 1, 0, "LeaderWorkerSet"),
    "cpu-small": (2, 2, 1, 0, "StatefulSet"),
    "gpu-1node-8": (1, 1, 8, 8, "LeaderWorkerSet"),
    "gpu-2node-16": (2, 2, 8, 32, "LeaderWorkerSet"),
}


class ChartTest(unittest.TestCase):
    def for_each(self, check):
        self.assertEqual(set(VALUE_SETS), set(EXPECTED), "a value set without expectations (or gone)")
        for name in VALUE_SETS:
            with self.subTest(values=name):
                check(rendered(name), EXPECTED[name])

    def test_manifests_validate_strictly(self):
        def check(r, _):
            for doc in r.docs:
                for version in KUBE_VERSIONS:
                    if CUSTOM[version].validate(doc):
                        continue
                    try:
                        kubernetes_validate.validate(doc, version, strict=True)
                    except kubernetes_validate.ValidationError as e:
                        self.fail(f"{doc['kind']}/{doc['metadata']['name']} (Kubernetes {version}): "
                                  f"{'.'.join(map(str, e.path))}: {e.message}")
                    except kubernetes_validate.SchemaNotFoundError as e:
                        self.fail(e.message)
        self.for_each(check)

    def test_grafana_dashboard_configmap_is_the_deploy_dashboard(self):
        with open(os.path.join(SOURCE, "deploy", "grafana", "nextserve-dashboard.json")) as f:
            dashboard = json.load(f)
        def check(r, _):
            maps = [d for d in r.of_kind("ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
            if not r.values["grafana"]["dashboard"]["enabled"]:
                self.assertEqual(maps, [])
                return
            self.assertEqual(len(maps), 1)
            self.assertEqual(maps[0]["metadata"]["labels"].get("grafana_dashboard"), "1")
            self.assertEqual(json.loads(maps[0]["data"]["nextserve-dashboard.json"]), dashboard)
        self.for_each(check)
        self.assertTrue(any(rendered(n).values["grafana"]["dashboard"]["enabled"] for n in VALUE_SETS))

    def test_invalid_values_are_rejected_by_the_schema(self):
        with helm.Chart.load(CHART) as chart:
            for bad, where in [({"ranks": {"groups": 0}}, "/ranks/groups"),
                               ({"ranks": {"workload": "deployment"}}, "/ranks/workload"),
                               ({"ranks": {"grups": 2}}, "grups"),
                               ({"tls": {"enabled": True}}, "/tls/secretName"),
                               ({"tls": {"flags": {"cert": "tls-cert"}}}, "/tls/flags/cert")]:
                with self.assertRaises(helm.HelmError, msg=str(bad)) as caught:
                    chart.render(bad, name=RELEASE, namespace=NAMESPACE)
                self.assertIn(where, str(caught.exception))

    def test_ranks_times_groups(self):
        def check(r, expected):
            groups, pods, per_pod, _, workload = expected
            v = r.values["ranks"]
            self.assertEqual((v["groups"], v["podsPerGroup"], v["ranksPerPod"]), (groups, pods, per_pod))
            if workload == "LeaderWorkerSet":
                lws = r.one("LeaderWorkerSet")
                self.assertEqual(lws["spec"]["replicas"], groups)
                self.assertEqual(lws["spec"]["leaderWorkerTemplate"]["size"], pods)
                self.assertEqual(lws["spec"]["leaderWorkerTemplate"]["restartPolicy"],
                                 "RecreateGroupOnPodRestart")
                self.assertEqual(r.of_kind("StatefulSet"), [])
            else:
                self.assertEqual(len(r.of_kind("StatefulSet")), groups)
                self.assertEqual(r.of_kind("LeaderWorkerSet"), [])
                for sts in r.of_kind("StatefulSet"):
                    self.assertEqual(sts["spec"]["replicas"], pods)
            self.assertEqual(len(r.pods), groups * pods)
            for _, _, t in r.pods:
                env = {e["name"]: e.get("value") for e in container(t, "rank")["env"]}
                # launch.sh puts a pod's ranks on NEXTSERVE_RANK_PORT + local index (launch_scripts_test).
                self.assertEqual(int(env["NEXTSERVE_RANK_PORT"]), container_ports(t)["rank-0"])
                self.assertEqual(int(env["NEXTSERVE_PODS_PER_GROUP"]), pods)
                self.assertEqual(int(env["NEXTSERVE_RANKS_PER_POD"]), per_pod)
                self.assertEqual(len([p for p in container_ports(t) if p.startswith("rank-")]), per_pod)
            # The router reaches every rank of every group, each at a pod that exists and a port it declares.
            args = container(r.router_template(), "router")["args"]
            addresses = args[args.index("--ranks") + 1].split(",")
            self.assertEqual(len(addresses), groups * pods * per_pod)
            self.assertEqual(len(set(addresses)), len(addresses))
            pods_by_dns = {f"{n}.{sub}.{NAMESPACE}.svc": t for n, sub, t in r.pods}
            for address in addresses:
                host, port = address.rsplit(":", 1)
                self.assertIn(host, pods_by_dns, f"{address} names no rank pod")
                self.assertIn(int(port), container_ports(pods_by_dns[host]).values(), address)
        self.for_each(check)

    def test_gpus(self):
        def check(r, expected):
            groups, pods, per_pod, gpus, _ = expected
            total = 0
            for _, _, t in r.pods:
                res = container(t, "rank")["resources"]
                n = int(res.get("limits", {}).get("nvidia.com/gpu", 0))
                self.assertEqual(n, int(res.get("requests", {}).get("nvidia.com/gpu", 0)))
                if n:
                    self.assertEqual(n, per_pod, "one GPU per rank")
                    env = {e["name"] for e in container(t, "rank")["env"]}
                    self.assertIn("NCCL_SOCKET_IFNAME", env)
                total += n
            self.assertEqual(total, gpus)
            self.assertNotIn("nvidia.com/gpu", json.dumps(container(r.router_template(), "router")))
        self.for_each(check)

    def test_probes(self):
        def check(r, _):
            for _, _, t in r.pods:
                c = container(t, "rank")
                ports = container_ports(t)
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    self.assertIn(c[probe]["grpc"]["port"], ports.values(), probe)
                # SIGTERM: a rank whose peer is on another pod waits out the 30 s communicator watchdog.
                self.assertGreater(t["spec"]["terminationGracePeriodSeconds"], 30)
                startup = c["startupProbe"]
                self.assertGreaterEqual(startup["periodSeconds"] * startup["failureThreshold"],
                                        r.values["ranks"]["startupSeconds"], "time allowed to load weights")
            router = container(r.router_template(), "router")
            ports = container_ports(r.router_template())
            self.assertEqual(int(router["args"][router["args"].index("--port") + 1]), ports["grpc"],
                             "the router listens on its declared port")
            self.assertEqual(router["readinessProbe"]["grpc"]["port"], ports["grpc"])
            self.assertIn(router["livenessProbe"]["tcpSocket"]["port"], ports)
            self.assertIn(router["startupProbe"]["tcpSocket"]["port"], ports)
        self.for_each(check)

    def test_selectors_match_labels_and_ports(self):
        def check(r, _):
            router_labels = r.router_template()["metadata"]["labels"]
            rank_labels = [t["metadata"]["labels"] for _, _, t in r.pods]
            all_templates = r.all_pod_templates()
            for kind in ("Deployment", "StatefulSet"):
                for d in r.of_kind(kind):
                    self.assertTrue(selects(d["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"]),
                                    f"{kind}/{d['metadata']['name']} does not select its own pods")
            sts_selectors = [s["spec"]["selector"] for s in r.of_kind("StatefulSet")]
            for i, a in enumerate(sts_selectors):  # StatefulSets must not claim each other's pods
                for b in sts_selectors[i + 1:]:
                    self.assertFalse(selects(a, b["matchLabels"]) or selects(b, a["matchLabels"]))
            for svc in r.of_kind("Service"):
                chosen = [t for t in all_templates if selects(svc["spec"]["selector"], t["metadata"]["labels"])]
                self.assertTrue(chosen, f"Service/{svc['metadata']['name']} selects no pod")
                for port in svc["spec"]["ports"]:
                    target = port.get("targetPort", port["port"])
                    for t in chosen:
                        ports = container_ports(t)
                        self.assertIn(target, ports if isinstance(target, str) else ports.values(),
                                      f"Service/{svc['metadata']['name']} port {port['name']}")
            public = r.one("Service", f"{RELEASE}-nextserve")
            self.assertTrue(selects(public["spec"]["selector"], router_labels))
            self.assertFalse(any(selects(public["spec"]["selector"], l) for l in rank_labels))
            for pdb in r.of_kind("PodDisruptionBudget"):
                self.assertTrue(any(selects(pdb["spec"]["selector"], t["metadata"]["labels"]) for t in all_templates))
            for hpa in r.of_kind("HorizontalPodAutoscaler"):
                target = hpa["spec"]["scaleTargetRef"]
                self.assertEqual(target["kind"], "Deployment")
                self.assertEqual(target["name"], r.one("Deployment")["metadata"]["name"])
            for sm in r.of_kind("ServiceMonitor"):
                services = [s for s in r.of_kind("Service") if selects(sm["spec"]["selector"], s["metadata"]["labels"])]
                names = {p["name"] for s in services for p in s["spec"]["ports"]}
                for ep in sm["spec"]["endpoints"]:
                    self.assertIn(ep["port"], names, "ServiceMonitor endpoint without a Service port")
                self.assertTrue(any(p.startswith("metrics") for p in names))
            for pm in r.of_kind("PodMonitor"):
                chosen = [t for t in all_templates if selects(pm["spec"]["selector"], t["metadata"]["labels"])]
                self.assertEqual(len(chosen), len(all_templates), "PodMonitor scrapes routers and ranks")
                for ep in pm["spec"]["podMetricsEndpoints"]:
                    self.assertTrue(any(ep["port"] in container_ports(t) for t in chosen), ep["port"])
            if r.values["metrics"]["enabled"]:
                self.assertIn("metrics", container_ports(r.router_template()))
                for _, _, t in r.pods:
                    self.assertIn("metrics-0", container_ports(t))
        self.for_each(check)

    def test_network_policy_lets_only_routers_reach_ranks(self):
        def check(r, _):
            policies = r.of_kind("NetworkPolicy")
            router_labels = r.router_template()["metadata"]["labels"]
            for _, _, t in r.pods:
                labels = t["metadata"]["labels"]
                on_rank = [p for p in policies if selects(p["spec"]["podSelector"], labels)]
                self.assertEqual(len(on_rank), 1, "exactly one policy selects each rank pod")
                policy = on_rank[0]
                self.assertIn("Ingress", policy["spec"]["policyTypes"])
                here = {"kubernetes.io/metadata.name": NAMESPACE}
                for port in (p for n, p in container_ports(t).items() if n.startswith("rank-")):
                    self.assertTrue(policy_allows(policy, router_labels, here, port), f"router -> rank:{port}")
                    for stranger, ns in [({"app": "other"}, here),
                                         ({**router_labels, "app.kubernetes.io/instance": "other"}, here),
                                         (router_labels, {"kubernetes.io/metadata.name": "elsewhere"})]:
                        self.assertFalse(policy_allows(policy, stranger, ns, port),
                                         f"{stranger} in {ns} must not reach rank:{port}")
                ssh = container_ports(t).get("ssh")
                if ssh:
                    self.assertTrue(policy_allows(policy, labels, here, ssh), "rank -> rank ssh (mpirun)")
                    self.assertFalse(policy_allows(policy, router_labels, here, ssh), "router -> rank ssh")
            self.assertFalse(any(selects(p["spec"]["podSelector"], router_labels) and
                                 "ranks" in p["metadata"]["name"] for p in policies))
        self.for_each(check)

    def test_security_and_volumes(self):
        def check(r, _):
            for t in r.all_pod_templates():
                spec = t["spec"]
                self.assertTrue(spec["securityContext"]["runAsNonRoot"])
                self.assertNotEqual(spec["securityContext"]["runAsUser"], 0)
                volumes = {v["name"]: v for v in spec["volumes"]}
                for c in spec["containers"]:
                    sc = c["securityContext"]
                    self.assertTrue(sc["readOnlyRootFilesystem"])
                    self.assertFalse(sc["allowPrivilegeEscalation"])
                    self.assertEqual(sc["capabilities"]["drop"], ["ALL"])
                    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
                    model = [m for m in c["volumeMounts"] if m["name"] == "model"]
                    self.assertEqual(len(model), 1)
                    self.assertTrue(model[0]["readOnly"], "the model is mounted read-only")
                    self.assertIn("/tmp", mounts, "a writable /tmp on a read-only root")
                    for m in c["volumeMounts"]:
                        self.assertIn(m["name"], volumes)
                        if "secret" in volumes[m["name"]] or "configMap" in volumes[m["name"]]:
                            self.assertTrue(m.get("readOnly"), m["name"])
            for _, _, t in r.pods:
                shm = {v["name"]: v for v in t["spec"]["volumes"]}["dshm"]
                self.assertEqual(shm["emptyDir"]["medium"], "Memory")
                self.assertIn("/dev/shm", {m["mountPath"] for m in container(t, "rank")["volumeMounts"]})
        self.for_each(check)

    def test_only_real_flags(self):
        self.assertIn("--ranks", ROUTER_FLAGS)
        self.assertIn("--kv-blocks", RANK_FLAGS)
        def check(r, _):
            router_args = container(r.router_template(), "router")["args"]
            self.assertEqual(set(flags_in(router_args)) - ROUTER_FLAGS, set())
            for _, _, t in r.pods:
                c = container(t, "rank")
                self.assertEqual(set(flags_in(c["args"])) - RANK_FLAGS, set())
                self.assertEqual(c["command"][:2], ["/bin/bash", "/etc/nextserve/launch/launch.sh"])
        self.for_each(check)
        # The TLS / API-key / metrics flags are passed once named, and go where the files are mounted.
        named = deep_merge(VALUE_SETS["gpu-2node-16"], {
            "tls": {"flags": {"cert": "--tls-cert", "key": "--tls-key", "clientCa": "--tls-client-ca"}},
            "apiKeys": {"fileFlag": "--api-keys-file"}, "metrics": {"portFlag": "--metrics-port"}})
        args = container(Rendered("named-flags", named).router_template(), "router")["args"]
        for flag, value in [("--tls-cert", "/etc/nextserve/tls/tls.crt"), ("--tls-key", "/etc/nextserve/tls/tls.key"),
                            ("--tls-client-ca", "/etc/nextserve/tls/ca.crt"),
                            ("--api-keys-file", "/etc/nextserve/api-keys/api-keys"), ("--metrics-port", "9400")]:
            self.assertEqual(args[args.index(flag) + 1], value)

    def test_launcher_script_parses(self):
        cm = rendered("defaults").one("ConfigMap")
        with open(os.path.join(CHART, "files", "launch.sh")) as f:
            self.assertEqual(cm["data"]["launch.sh"], f.read())
        subprocess.run(["bash", "-n", os.path.join(CHART, "files", "launch.sh")], check=True)
        subprocess.run(["bash", "-n", os.path.join(SOURCE, "deploy", "launch-multihost.sh")], check=True)


if __name__ == "__main__":
    unittest.main(verbosity=2)
