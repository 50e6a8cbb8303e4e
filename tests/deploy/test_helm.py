"""The Helm chart deploy/helm/ferrollama without a cluster: `helm lint`, `helm template` with the
default values and with the options on, every rendered document checked against the Kubernetes
JSON schemas (kubernetes-validate ships them; nothing is fetched), the facts a GPU deployment
depends on asserted in the rendered YAML, and the values the chart must refuse.

helm comes from tests/deploy/helm-tools.sh (found through $HELM, then PATH, then
.venv/helm-tools/bin/helm). Without it the helm tests are skipped with the reason, unless
FERROLLAMA_REQUIRE_HELM=1, which makes a missing helm a failure.
"""
import json
import os
import pathlib
import shutil
import subprocess

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "ferrollama"
RELEASE = "llm"
NAMESPACE = "duo"
FULLNAME = "llm-ferrollama"
# The oldest Kubernetes the chart claims (Chart.yaml kubeVersion), one in the middle, and the
# newest whose schemas kubernetes-validate ships (added at run time).
KUBE_VERSIONS = ["1.25.0", "1.30.0"]
OPTIONS = {
    "autoscaling.enabled": "true",
    "metrics.serviceMonitor.enabled": "true",
    "apiKey.enabled": "true",
    "apiKey.value": "s3cret-key",
}
SHARED = {"modelStore.type": "shared", "model.sha256": "ab" * 32}
EXISTING = {
    "modelStore.type": "shared",
    "modelStore.shared.existingClaim": "models-rwx",
    "apiKey.enabled": "true",
    "apiKey.existingSecret": "ferrollama-key",
    "metrics.podAnnotations": "false",
}

# The Prometheus Operator's ServiceMonitor is a CRD, outside the Kubernetes schemas: the part of
# monitoring.coreos.com/v1 that the chart writes, with no other fields allowed.
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "properties": {
                        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}
                    },
                    "additionalProperties": False,
                },
                "namespaceSelector": {
                    "type": "object",
                    "properties": {"matchNames": {"type": "array", "items": {"type": "string"}}},
                    "additionalProperties": False,
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {"type": "string", "pattern": "^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                            "scrapeTimeout": {"type": "string", "pattern": "^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                            "authorization": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "type": {"type": "string"},
                                    "credentials": {
                                        "type": "object",
                                        "required": ["key"],
                                        "additionalProperties": False,
                                        "properties": {
                                            "name": {"type": "string"},
                                            "key": {"type": "string"},
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


def find_helm():
    """(path, None) for a Helm v3, else (None, why not)."""
    tried = []
    for candidate in (os.environ.get("HELM"), shutil.which("helm"),
                      str(ROOT / ".venv" / "helm-tools" / "bin" / "helm")):
        if not candidate:
            continue
        tried.append(candidate)
        if not os.access(candidate, os.X_OK):
            continue
        out = subprocess.run([candidate, "version", "--short"], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.startswith("v3."):
            return candidate, None
        tried[-1] += f" ({out.stdout.strip() or out.stderr.strip()}: not Helm v3)"
    return None, ("no Helm v3 found (tried $HELM, PATH, .venv/helm-tools/bin/helm: "
                  f"{', '.join(tried) or 'none present'}); install one with "
                  "`eval \"$(tests/deploy/helm-tools.sh .venv/helm-tools)\"`")


@pytest.fixture(scope="module")
def helm():
    path, why = find_helm()
    if path is None:
        if os.environ.get("FERROLLAMA_REQUIRE_HELM") == "1":
            pytest.fail(f"FERROLLAMA_REQUIRE_HELM=1 and {why}")
        pytest.skip(f"SKIPPED helm checks: {why}")
    print(f"helm: {path}")
    return path


@pytest.fixture(scope="module")
def kv():
    """kubernetes_validate, with the newest Kubernetes version it has schemas for."""
    try:
        import kubernetes_validate
        from kubernetes_validate import utils
    except ImportError as e:
        pytest.skip(f"SKIPPED schema checks: kubernetes-validate is not installed ({e}); "
                    "pip install -r tests/deploy/requirements.txt")
    return kubernetes_validate, utils.latest_version()


def run_helm(helm, *args, check=True):
    out = subprocess.run([helm, *args], capture_output=True, text=True, cwd=ROOT,
                         stdin=subprocess.DEVNULL, timeout=120)
    if check:
        assert out.returncode == 0, f"helm {' '.join(args)}:\n{out.stdout}\n{out.stderr}"
    return out


def set_args(values):
    args = []
    for key, value in (values or {}).items():
        args += ["--set-string" if key in ("apiKey.value", "model.sha256") else "--set",
                 f"{key}={value}"]
    return args


def template(helm, values=None, kube_version="1.30.0", check=True):
    return run_helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
                    "--kube-version", kube_version, *set_args(values), check=check)


def render(helm, values=None, kube_version="1.30.0"):
    """The rendered documents, by kind."""
    docs = [d for d in yaml.safe_load_all(template(helm, values, kube_version).stdout) if d]
    by_kind = {}
    for doc in docs:
        assert doc["kind"] not in by_kind, f"two {doc['kind']} documents"
        by_kind[doc["kind"]] = doc
    return by_kind


def pod_spec(docs):
    return docs["Deployment"]["spec"]["template"]["spec"]


def server(docs):
    (container,) = pod_spec(docs)["containers"]
    assert container["name"] == "ferrollama"
    return container


def volumes(spec):
    return {v["name"]: v for v in spec["volumes"]}


def env_of(container):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def seconds(duration):
    assert duration.endswith("s") and duration[:-1].isdigit(), duration
    return int(duration[:-1])


# --- helm lint ---------------------------------------------------------------------------------

@pytest.mark.parametrize("values", [None, OPTIONS, SHARED, EXISTING],
                         ids=["default", "options", "shared", "existing-claim"])
def test_lint(helm, values):
    out = run_helm(helm, "lint", "--strict", str(CHART), *set_args(values))
    print(out.stdout)
    assert "1 chart(s) linted, 0 chart(s) failed" in out.stdout


# --- schemas -----------------------------------------------------------------------------------

@pytest.mark.parametrize("values", [None, OPTIONS, SHARED, EXISTING],
                         ids=["default", "options", "shared", "existing-claim"])
def test_every_document_matches_the_kubernetes_schemas(helm, kv, values):
    import jsonschema

    kubernetes_validate, latest = kv
    checked = []
    for version in KUBE_VERSIONS + [latest]:
        for kind, doc in render(helm, values, version).items():
            if kind == "ServiceMonitor":
                jsonschema.validate(doc, SERVICE_MONITOR_SCHEMA)
                checked.append(f"{kind}@CRD-subset")
                continue
            # strict: the schemas with additionalProperties false, so a misplaced key fails.
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                pytest.fail(f"{kind} against Kubernetes {version}: {path}: {e.message}")
            checked.append(f"{kind}@{version}")
    print(f"{len(checked)} documents valid: {', '.join(checked)}")
    assert any(c.startswith("Deployment@") for c in checked)


def test_the_validator_catches_a_misplaced_key(helm, kv):
    """The schema check is not vacuous: a probe key one level too high is refused."""
    kubernetes_validate, _ = kv
    deployment = render(helm)["Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["path"] = container["readinessProbe"]["httpGet"].pop("path")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.30.0", strict=True)


# --- what the rendered YAML says ---------------------------------------------------------------

def test_defaults(helm):
    docs = render(helm)
    assert set(docs) == {"Deployment", "Service", "PodDisruptionBudget", "ServiceAccount", "NetworkPolicy"}, set(docs)
    deployment = docs["Deployment"]
    assert deployment["spec"]["replicas"] == 2
    spec = pod_spec(docs)
    c = server(docs)
    assert c["image"] == "ferrollama:cuda-sm75"
    assert c["ports"] == [{"name": "http", "containerPort": 11434, "protocol": "TCP"}]

    # One GPU per pod, requested and limited alike; the GPU pool's taint is tolerated.
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]

    env = env_of(c)
    assert env["OLLAMA_HOST"] == "0.0.0.0:11434"
    assert env["FERROLLAMA_MODEL"] == "mistral:instruct"
    assert env["OLLAMA_MODELS"] == "/models"
    assert "FERROLLAMA_API_KEY" not in env

    # Probes: startup and readiness on /ready, liveness on /health, all on the named port.
    for probe, path in (("startupProbe", "/ready"), ("readinessProbe", "/ready"),
                        ("livenessProbe", "/health")):
        assert c[probe]["httpGet"] == {"path": path, "port": "http"}, probe
    # The startup probe must outlast a 7B model's load (the server listens only after it).
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300

    # Shutdown: preStop sleep, then the drain; the grace period covers both.
    drain = seconds(env["FERROLLAMA_DRAIN_TIMEOUT"])
    assert drain == 30
    assert c["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    assert spec["terminationGracePeriodSeconds"] > drain + 5
    assert spec["terminationGracePeriodSeconds"] == 50

    # The model is pulled into the store the server reads, before it starts.
    (init,) = spec["initContainers"]
    assert init["command"] == ["ferrollama", "pull", "mistral:instruct"]
    assert env_of(init)["OLLAMA_MODELS"] == "/models"
    assert init["resources"]["limits"]["nvidia.com/gpu"] == 1  # libcuda.so.1 to start at all
    assert init["volumeMounts"] == c["volumeMounts"] == [{"name": "models", "mountPath": "/models"},
                                                         {"name": "tmp", "mountPath": "/tmp"}]
    assert set(volumes(spec)) == {"models", "tmp"}
    claim = volumes(spec)["models"]["ephemeral"]["volumeClaimTemplate"]["spec"]
    assert claim["accessModes"] == ["ReadWriteOnce"]
    assert claim["resources"]["requests"]["storage"] == "20Gi"

    # The image's user; fsGroup so that a fresh volume is writable.
    assert spec["securityContext"]["runAsUser"] == 10001
    assert spec["securityContext"]["fsGroup"] == 10001
    # Nothing in the image changes: a read-only root, scratch space on an emptyDir.
    for container in (init, c):
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert volumes(spec)["tmp"] == {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}
    # The replicas serve; they do not change the store, whatever the key.
    assert env["FERROLLAMA_READ_ONLY"] == "true"
    assert "FERROLLAMA_READ_ONLY" not in env_of(init)

    # Port 11434 of these pods, and only it, for the pods of the release's namespace.
    policy = docs["NetworkPolicy"]["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert policy["policyTypes"] == ["Ingress"]
    assert policy["ingress"] == [{"from": [{"podSelector": {}}], "ports": [{"port": 11434, "protocol": "TCP"}]}]

    service = docs["Service"]
    assert service["metadata"]["name"] == FULLNAME
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "http", "port": 11434, "targetPort": "http", "protocol": "TCP"}]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()

    pdb = docs["PodDisruptionBudget"]
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()

    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"


def test_options_on(helm):
    docs = render(helm, OPTIONS)
    assert {"HorizontalPodAutoscaler", "ServiceMonitor", "Secret"} <= set(docs), set(docs)
    deployment = docs["Deployment"]
    assert "replicas" not in deployment["spec"]  # the HPA owns it

    hpa = docs["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": FULLNAME}
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "ferrollama_num_requests_waiting"
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "4"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)

    secret = docs["Secret"]
    assert secret["data"]["api-key"] == "czNjcmV0LWtleQ=="  # base64 of s3cret-key
    c = server(docs)
    assert env_of(c)["FERROLLAMA_API_KEY"] == {
        "secretKeyRef": {"name": secret["metadata"]["name"], "key": "api-key"}}
    # With a key every route needs it, probes included: they run curl with it, and the key
    # itself stays out of the pod spec.
    rendered = yaml.safe_dump(deployment)
    assert "s3cret-key" not in rendered
    for probe, path in (("startupProbe", "/ready"), ("readinessProbe", "/ready"),
                        ("livenessProbe", "/health")):
        assert "httpGet" not in c[probe]
        command = c[probe]["exec"]["command"]
        assert command[:2] == ["sh", "-c"]
        assert "Authorization: Bearer $FERROLLAMA_API_KEY" in command[2]
        assert command[2].endswith(f"http://127.0.0.1:11434{path}")

    monitor = docs["ServiceMonitor"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "http" and endpoint["path"] == "/metrics"
    assert endpoint["authorization"]["credentials"] == {"name": secret["metadata"]["name"], "key": "api-key"}
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}


def test_shared_store(helm):
    docs = render(helm, SHARED)
    pvc = docs["PersistentVolumeClaim"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    spec = pod_spec(docs)
    assert volumes(spec)["models"]["persistentVolumeClaim"] == {"claimName": pvc["metadata"]["name"]}
    # One pull at a time on the shared store, pinned to a layer digest.
    (init,) = spec["initContainers"]
    assert init["command"] == ["flock", "/models/.ferrollama-pull.lock", "ferrollama", "pull",
                               "mistral:instruct", "--model-sha256", "ab" * 32]


def test_existing_claim_and_secret(helm):
    docs = render(helm, EXISTING)
    assert "PersistentVolumeClaim" not in docs and "Secret" not in docs
    spec = pod_spec(docs)
    assert volumes(spec)["models"]["persistentVolumeClaim"] == {"claimName": "models-rwx"}
    assert env_of(server(docs))["FERROLLAMA_API_KEY"] == {
        "secretKeyRef": {"name": "ferrollama-key", "key": "api-key"}}
    assert "annotations" not in docs["Deployment"]["spec"]["template"]["metadata"]


def test_grace_period_follows_the_drain_timeout(helm):
    docs = render(helm, {"drainTimeoutSeconds": "120", "preStopSleepSeconds": "10"})
    c = server(docs)
    assert env_of(c)["FERROLLAMA_DRAIN_TIMEOUT"] == "120s"
    assert c["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "10"]
    assert pod_spec(docs)["terminationGracePeriodSeconds"] == 145
    explicit = render(helm, {"terminationGracePeriodSeconds": "36"})
    assert pod_spec(explicit)["terminationGracePeriodSeconds"] == 36


def test_gpu_and_pool_are_configurable(helm):
    docs = render(helm, {"gpu.count": "2", "nodeSelector.cloud\\.google\\.com/gke-accelerator": "nvidia-tesla-t4",
                         "gpu.forPull": "false", "image.tag": "cuda-sm90"})
    c = server(docs)
    assert c["image"] == "ferrollama:cuda-sm90"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert c["resources"]["requests"]["nvidia.com/gpu"] == 2
    spec = pod_spec(docs)
    assert spec["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"}
    assert "nvidia.com/gpu" not in spec["initContainers"][0]["resources"].get("limits", {})


def test_read_only_and_the_network_policy_are_configurable(helm, tmp_path):
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"readOnly": False, "networkPolicy": {"from": [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ai-gateway"}},
         "podSelector": {"matchLabels": {"app": "ai-gateway"}}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]}}))
    docs = [d for d in yaml.safe_load_all(run_helm(helm, "template", RELEASE, str(CHART), "-n", NAMESPACE,
                                                        "-f", str(values)).stdout) if d]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    assert "FERROLLAMA_READ_ONLY" not in env_of(deployment["spec"]["template"]["spec"]["containers"][0])
    (rule,) = next(d for d in docs if d["kind"] == "NetworkPolicy")["spec"]["ingress"]
    assert [peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for peer in rule["from"]] == [
        "ai-gateway", "monitoring"]
    assert rule["from"][0]["podSelector"] == {"matchLabels": {"app": "ai-gateway"}}
    assert "NetworkPolicy" not in render(helm, {"networkPolicy.enabled": "false"})
    # No peers would shut everyone out, the gateway too: refused (disable the policy instead).
    values.write_text(yaml.safe_dump({"networkPolicy": {"from": []}}))
    out = run_helm(helm, "template", RELEASE, str(CHART), "-f", str(values), check=False)
    assert out.returncode != 0 and "networkPolicy.from: Array must have at least 1 items" in out.stderr, out.stderr


# --- the values schema --------------------------------------------------------------------------

def object_levels(schema, path="values"):
    """Every object level of the schema that names its properties, with its path."""
    if schema.get("type") == "object" and "properties" in schema:
        yield path, schema
        for key, sub in schema["properties"].items():
            yield from object_levels(sub, f"{path}.{key}")
    if isinstance(schema.get("items"), dict):
        yield from object_levels(schema["items"], f"{path}[]")


def test_the_values_schema_covers_values_yaml_and_closes_every_level():
    import jsonschema

    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(yaml.safe_load((CHART / "values.yaml").read_text()), schema)
    levels = dict(object_levels(schema))
    assert len(levels) >= 15, sorted(levels)
    assert [path for path, level in levels.items() if level.get("additionalProperties") is not False] == []
    # Every key values.yaml has is a key the schema names, down to the levels it closes.
    def keys(values, schema, path):
        for key, value in values.items():
            assert key in schema["properties"], f"{path}.{key} is not in values.schema.json"
            sub = schema["properties"][key]
            if isinstance(value, dict) and "properties" in sub:
                keys(value, sub, f"{path}.{key}")
    keys(yaml.safe_load((CHART / "values.yaml").read_text()), schema, "values")


@pytest.mark.parametrize("key", ["replicaCont", "apiKey.enabeld", "modelStore.shared.existingClam",
                                 "probes.startup.periodSecond", "networkPolicy.form", "metrics.serviceMonitor.enable",
                                 "readonly"])
def test_the_schema_refuses_a_misspelt_key(helm, key):
    out = template(helm, {key: "true"}, check=False)
    assert out.returncode != 0, f"helm template accepted {key}:\n{out.stdout[:300]}"
    assert f"Additional property {key.rsplit('.', 1)[-1]} is not allowed" in out.stderr, out.stderr


@pytest.mark.parametrize("values, message", [
    ({"readOnly": "yes"}, "readOnly: Invalid type"),
    ({"replicaCount": "two"}, "replicaCount: Invalid type"),
    ({"image.pullPolicy": "Sometimes"}, "image.pullPolicy"),
])
def test_the_schema_refuses_a_value_of_the_wrong_kind(helm, values, message):
    out = run_helm(helm, "template", RELEASE, str(CHART), *[a for k, v in values.items() for a in ("--set-string", f"{k}={v}")],
                   check=False)
    assert out.returncode != 0 and message in out.stderr, out.stderr


# --- values the chart refuses ------------------------------------------------------------------

@pytest.mark.parametrize("values,message", [
    ({"terminationGracePeriodSeconds": "30"}, "must be above preStopSleepSeconds + drainTimeoutSeconds"),
    ({"terminationGracePeriodSeconds": "35"}, "must be above preStopSleepSeconds + drainTimeoutSeconds"),
    ({"drainTimeoutSeconds": "60", "terminationGracePeriodSeconds": "50"}, "the kubelet would kill the server"),
    ({"modelStore.type": "shared", "modelStore.shared.accessMode": "ReadWriteOnce"}, "cannot be mounted by several replicas"),
    ({"apiKey.enabled": "true"}, "apiKey.enabled needs apiKey.existingSecret or apiKey.value"),
    ({"autoscaling.enabled": "true", "autoscaling.minReplicas": "5", "autoscaling.maxReplicas": "3"}, "minReplicas must not exceed"),
    ({"model.sha256": "abc"}, "model.sha256 must be 64 lowercase hex digits"),
    ({"modelStore.type": "hostPath"}, "modelStore.type must be perPod or shared"),
    ({"env.FERROLLAMA_DRAIN_TIMEOUT": "5s"}, "env.FERROLLAMA_DRAIN_TIMEOUT: the chart sets it"),
    ({"gpu.count": "0"}, "gpu.count must be at least 1"),
    ({"env.FERROLLAMA_READ_ONLY": "false"}, "env.FERROLLAMA_READ_ONLY: the chart sets it"),
    ({"networkPolicy.from": "null"}, "networkPolicy: from is required"),
], ids=["grace-below-drain", "grace-equal-prestop-plus-drain", "drain-above-grace", "rwo-shared",
        "api-key-without-secret", "hpa-min-above-max", "bad-sha256", "bad-store-type",
        "env-overrides-drain", "no-gpu", "env-overrides-read-only", "no-network-policy-peers"])
def test_refused(helm, values, message):
    out = template(helm, values, check=False)
    print(out.stderr.strip())
    assert out.returncode != 0, f"helm template accepted {values}:\n{out.stdout}"
    assert message in out.stderr


def test_refuses_an_older_kubernetes(helm):
    out = template(helm, kube_version="1.24.0", check=False)
    assert out.returncode != 0
    assert "kubeVersion" in out.stderr or "incompatible" in out.stderr, out.stderr
