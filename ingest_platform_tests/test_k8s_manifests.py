"""deploy/k8s/: rendered by the pinned kustomize (deploy/local/kustomize/install.sh), validated against the
Kubernetes OpenAPI schemas (kubernetes-validate, KUBERNETES_VERSION) and prometheus-operator's CRD schemas;
generated files agree with their one source; the stream workload keeps its contract (DESIGN §10-11, §12);
no secret in any file."""

from __future__ import annotations

import copy
import re
import shutil
import zipfile
from pathlib import Path

import pytest
import yaml

from ingest_platform.deployment import render
from ingest_platform_tests.deploy_tools import (
    DEPLOY,
    crd_errors,
    kubernetes_errors,
    kustomize,
    kustomize_command,
    yaml_documents,
)

OVERLAY = DEPLOY / "k8s" / "overlays" / "production"
#: The stream process's default trigger (DESIGN §10): grace must exceed two of them.
DEFAULT_TRIGGER_INTERVAL_S = 30


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    return kustomize(OVERLAY)


def by_kind(documents: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [d for d in documents if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def pod_templates(documents: list[dict]) -> list[dict]:
    (config_map,) = by_kind(documents, "ConfigMap", "spark-pod-templates")
    return [yaml.safe_load(text) for text in config_map["data"].values()]


# ---------------------------------------------------------------------------------------------------------
# Schemas


def test_every_object_is_valid_for_the_stated_kubernetes_version(rendered):
    kinds = {d["kind"] for d in rendered}
    assert {"StatefulSet", "Deployment", "PodDisruptionBudget", "Role", "RoleBinding", "ConfigMap"} <= kinds
    component = yaml_documents((DEPLOY / "k8s" / "components" / "stream-autoscaling").glob("hpa.yaml"))
    assert [d["kind"] for d in component] == ["HorizontalPodAutoscaler"]
    assert kubernetes_errors([*rendered, *pod_templates(rendered), *component]) == []


def test_the_pinned_kustomize_renders_what_kubectl_applies(rendered):
    """The tests' renderer (the pinned kustomize, built with Go) and kubectl's built-in kustomize (what
    ``kubectl apply -k`` uses) produce the same objects."""
    if kustomize_command()[0] == shutil.which("kubectl"):
        pytest.skip("no Go on this machine: the manifests are rendered by kubectl's kustomize itself")
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: nothing to compare the pinned kustomize with")
    assert kustomize(OVERLAY, [kubectl, "kustomize"]) == rendered


def test_schema_validation_catches_a_wrong_field(rendered):
    (statefulset,) = copy.deepcopy(by_kind(rendered, "StatefulSet"))
    container = statefulset["spec"]["template"]["spec"]["containers"][0]
    container["livenessProbe"]["httpGet"]["paht"] = "/healthz"  # a typo
    container["resources"]["limits"]["memory"] = ["4Gi"]  # a wrong type
    errors = kubernetes_errors([statefulset])
    assert len(errors) == 1 and "StatefulSet/ingest-stream" in errors[0], errors


def test_prometheus_operator_resources_match_their_crds(rendered):
    crds = [d for d in rendered if d["apiVersion"].startswith("monitoring.coreos.com/")]
    assert sorted(d["kind"] for d in crds) == ["PodMonitor", "PodMonitor", "PrometheusRule"]
    assert crd_errors(crds) == []
    broken = copy.deepcopy(by_kind(crds, "PodMonitor", "ingest-stream")[0])
    broken["spec"]["podMetricsEndpoints"][0]["interval"] = "15 seconds"
    (error,) = crd_errors([broken])
    assert "PodMonitor/ingest-stream" in error and "interval" in error


# ---------------------------------------------------------------------------------------------------------
# One source each


def test_generated_files_agree_with_their_sources(tmp_path):
    assert render.stale_files() == [], "run `make deploy-render`"
    copy_dir = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy_dir, ignore=shutil.ignore_patterns("local"))
    profile = copy_dir / render.SPARK_PROFILE
    profile.write_text(profile.read_text().replace('maxExecutors: "200"', 'maxExecutors: "300"'))
    rules = copy_dir / render.RULES_SOURCE
    rules.write_text(rules.read_text().replace("> 1000000", "> 2000000"))
    assert sorted(render.stale_files(copy_dir)) == sorted(
        [render.SPARK_CONFIG, render.PROMETHEUS_RULE])  # pod templates do not carry maxExecutors
    assert render.main(["--check", "--deploy-dir", str(copy_dir)]) == 1
    assert render.main(["--deploy-dir", str(copy_dir)]) == 0 and render.stale_files(copy_dir) == []


def parse_spark_defaults(text: str) -> dict[str, str]:
    pairs = [line.split(None, 1) for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return {key: value for key, value in pairs}


def test_spark_defaults_configmap_is_the_k8s_profile(rendered):
    (config_map,) = by_kind(rendered, "ConfigMap", "spark-config")
    conf = parse_spark_defaults(config_map["data"]["spark-defaults.conf"])
    master, profile = render.load_spark_profile()
    expected = {"spark.master": master, **profile}
    assert conf == {k: re.sub(r"\$\{(\w+)\}", r"${env:\1}", v) for k, v in expected.items()}
    # the guide's ConfigMap, where it is right for Spark
    assert {k: conf[k] for k in conf if k.startswith("spark.dynamicAllocation.") and k.endswith("Executors")} == {
        "spark.dynamicAllocation.minExecutors": "10", "spark.dynamicAllocation.maxExecutors": "200",
        "spark.dynamicAllocation.initialExecutors": "20"}
    assert [conf[f"spark.kubernetes.{r}.{b}.cores"] for r in ("driver", "executor") for b in ("request", "limit")] == [
        "2", "4", "4", "8"]
    assert conf["spark.dynamicAllocation.enabled"] == "true"


def test_profile_sets_only_settings_spark_on_kubernetes_knows():
    """The guide's spark.kubernetes.executor.request.memory / limit.memory are not Spark settings; this reads
    the keys Spark 4.2 defines from its own spark-kubernetes jar (in pyspark's wheel)."""
    pyspark = pytest.importorskip("pyspark")
    (jar,) = (Path(pyspark.__file__).parent / "jars").glob("spark-kubernetes_*.jar")
    with zipfile.ZipFile(jar) as archive:
        text = "\n".join(archive.read(n).decode("latin-1") for n in archive.namelist() if n.endswith(".class"))
    known = set(re.findall(r"spark\.kubernetes\.[A-Za-z0-9.]+", text))
    words = set(re.findall(r"[A-Za-z][A-Za-z0-9]+", text))

    def defined(key: str) -> bool:  # a key, a prefix + name ("spark.kubernetes.authenticate.driver" + ...)
        return key in known or any(key.startswith(k.rstrip(".") + ".") and key[len(k.rstrip(".")) + 1:] in words
                                   for k in known)

    _, conf = render.load_spark_profile()
    unknown = [k for k in conf if k.startswith("spark.kubernetes.") and not defined(k)]
    assert unknown == []
    assert "spark.kubernetes.executor.request.cores" in known
    # the guide's keys, silently ignored by Spark
    assert not defined("spark.kubernetes.executor.request.memory")
    assert not defined("spark.kubernetes.executor.limit.memory")


def test_pod_templates_state_what_spark_requests(rendered):
    driver, executor = pod_templates(rendered)
    assert executor["spec"]["containers"][0]["resources"] == {
        "requests": {"cpu": "4", "memory": "18022Mi"},  # 16g + max(384m, 10 %) = 16384 + 1638 MiB
        "limits": {"cpu": "8", "memory": "18022Mi"}}
    assert driver["spec"]["containers"][0]["resources"]["limits"] == {"cpu": "4", "memory": "9011Mi"}
    assert driver["spec"]["serviceAccountName"] == "spark-driver"
    assert executor["spec"]["automountServiceAccountToken"] is False
    assert render.pod_memory_mib({"spark.executor.memory": "2g"}, "executor") == 2048 + 384  # the 384 MiB floor


def test_spark_driver_may_manage_its_executors(rendered):
    (role,) = by_kind(rendered, "Role", "spark-driver")
    verbs = {resource: set(rule["verbs"]) for rule in role["rules"] for resource in rule["resources"]}
    assert {"create", "get", "list", "watch", "delete"} <= verbs["pods"]
    assert {"create", "delete"} <= verbs["configmaps"] and {"create", "delete"} <= verbs["services"]
    (binding,) = by_kind(rendered, "RoleBinding", "spark-driver")
    assert binding["roleRef"]["name"] == "spark-driver"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "spark-driver", "namespace": "ingest-platform"}]
    assert by_kind(rendered, "ServiceAccount", "spark-driver")


# ---------------------------------------------------------------------------------------------------------
# The stream workload


def test_stream_workers_keep_the_stream_contract(rendered):
    (statefulset,) = by_kind(rendered, "StatefulSet", "ingest-stream")
    spec = statefulset["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    # the image's entrypoint is only tini (dagster-k8s run pods pass `dagster api ...` as args)
    assert container["args"][:2] == ["ingest-platform", "stream"] and "--metrics-port" in container["args"]
    port = container["args"][container["args"].index("--metrics-port") + 1]
    assert [p["containerPort"] for p in container["ports"] if p["name"] == "metrics"] == [int(port)]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert set(container["resources"]["requests"]) == set(container["resources"]["limits"]) == {"cpu", "memory"}
    assert pod["terminationGracePeriodSeconds"] > 2 * DEFAULT_TRIGGER_INTERVAL_S
    assert "replicas" not in spec  # the production overlay's HPA owns the count (see the test below)
    # the replicas are one shard group's workers (DESIGN §12), never N copies of --all-continuous
    args = container["args"]
    assert "--shard-group" in args and "--all-continuous" not in args and not ({"--group", "--duration"} & set(args))
    assert int(args[args.index("--shard-session-timeout") + 1]) < pod["terminationGracePeriodSeconds"]
    labels = spec["template"]["metadata"]["labels"]
    (pdb,) = by_kind(rendered, "PodDisruptionBudget", "ingest-stream")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items() and pdb["spec"]["maxUnavailable"] == 1
    (monitor,) = by_kind(rendered, "PodMonitor", "ingest-stream")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_the_guide_hpa_scales_the_sharded_stream_workers_in_production(rendered):
    """The production overlay renders the guide's HPA on the stream StatefulSet; its bounds fit the shard group
    (at least 2, below the coordination partitions), and scale-down is slow and one pod at a time (each step a
    drain and a rebalance, DESIGN §12), like the PDB's voluntary evictions."""
    (hpa,) = by_kind(rendered, "HorizontalPodAutoscaler", "ingest-stream")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "ingest-stream"}
    targets = {m["resource"]["name"]: m["resource"]["target"]["averageUtilization"] for m in hpa["spec"]["metrics"]}
    assert targets == {"cpu": 70, "memory": 80}
    (statefulset,) = by_kind(rendered, "StatefulSet", "ingest-stream")
    args = statefulset["spec"]["template"]["spec"]["containers"][0]["args"]
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"] <= int(
        args[args.index("--shard-partitions") + 1])  # fmt: skip
    down = hpa["spec"]["behavior"]["scaleDown"]
    assert down["stabilizationWindowSeconds"] >= 300
    assert down["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 300}]
    (pdb,) = by_kind(rendered, "PodDisruptionBudget", "ingest-stream")
    assert pdb["spec"]["maxUnavailable"] == 1
    (base,) = by_kind(kustomize(DEPLOY / "k8s" / "base"), "StatefulSet", "ingest-stream")
    assert base["spec"]["replicas"] >= 2  # without the HPA: a fixed shard group


# ---------------------------------------------------------------------------------------------------------
# Secrets

SECRET_NAME = re.compile(r"(PASSWORD|SECRET|TOKEN|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL)", re.IGNORECASE)


def secret_findings(documents: list[dict]) -> list[str]:
    """Secret objects, secret-named env vars with literal values, and secret-named ConfigMap keys."""
    findings = []
    for doc in documents:
        name = f"{doc['kind']}/{doc['metadata'].get('name')}"
        if doc["kind"] == "Secret":
            findings.append(f"{name}: a Secret object in the manifests")
        for key in (doc.get("data") or {}) if doc["kind"] == "ConfigMap" else ():
            if SECRET_NAME.search(key):
                findings.append(f"{name}: ConfigMap key {key}")
        for text in (doc.get("data") or {}).values() if doc["kind"] == "ConfigMap" else ():
            for line in str(text).splitlines():
                if SECRET_NAME.search(line.split("=")[0].split(" ")[0]) and not line.lstrip().startswith("#"):
                    findings.append(f"{name}: {line.split('=')[0].split(' ')[0]} in a ConfigMap")
        for env in _env_entries(doc):
            if SECRET_NAME.search(env.get("name", "")) and "value" in env:
                findings.append(f"{name}: env {env['name']} has a literal value")
    return findings


def _env_entries(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "env" and isinstance(value, list):
                yield from (v for v in value if isinstance(v, dict))
            else:
                yield from _env_entries(value)
    elif isinstance(node, list):
        for item in node:
            yield from _env_entries(item)


def test_no_secret_in_any_manifest(rendered):
    assert secret_findings(rendered) == []
    leaked = copy.deepcopy(rendered)
    (statefulset,) = by_kind(leaked, "StatefulSet")
    statefulset["spec"]["template"]["spec"]["containers"][0]["env"] = [
        {"name": "INGEST_KAFKA_SASL_PASSWORD", "value": "hunter2"}]
    (env,) = [d for d in leaked if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("ingest-platform-env")]
    env["data"]["AWS_SECRET_ACCESS_KEY"] = "abc"
    assert len(secret_findings(leaked)) == 2
    # the workloads take credentials only from Secrets, by reference
    refs = {r["secretRef"]["name"] for d in by_kind(rendered, "StatefulSet") + by_kind(rendered, "Deployment")
            for c in d["spec"]["template"]["spec"]["containers"] for r in c.get("envFrom", []) if "secretRef" in r}
    assert refs == {"ingest-platform-kafka", "ingest-platform-aws"}


PLACEHOLDER = r"(\$\{?\w+\}?|<[^>]+>|\{\{.*|null|~|\"\"|secretKeyRef|valueFrom|true|false)"


def test_no_secret_literal_in_deploy_files():
    """No file under deploy/ assigns a value to a secret-named key (values files, Dockerfile, docs examples
    use references or placeholders)."""
    assignment = re.compile(r"(?i)\b[\w.]*(password|secret_access_key|session_token|sasl_password)[\w.]*"
                            r"\s*[:=]\s*['\"]?([^\s'\"#]+)")
    offenders = []
    for path in DEPLOY.rglob("*"):
        if path.is_file() and path.suffix in (".yaml", ".yml", ".json", ".conf", ".sh", ".properties", ""):
            for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                match = assignment.search(line)
                if match and not re.fullmatch(PLACEHOLDER, match.group(2)):
                    offenders.append(f"{path.relative_to(DEPLOY)}:{number}: {line.strip()}")
    assert offenders == []
