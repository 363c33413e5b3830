"""deploy/helm/dagster-values.yaml through Dagster's own config machinery, and the per-run ``dagster-k8s/config``
tag through dagster-k8s: the instance settings the chart renders from the values load as a Dagster instance
config, the run launcher and run coordinator validate against K8sRunLauncher's and QueuedRunCoordinator's
config schemas, and K8sRunLauncher builds, from the values plus a Spark dataset's tag, a Kubernetes Job that is
valid for the stated Kubernetes version and carries the driver's resources and account."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from ingest_platform.catalog import Dataset
from ingest_platform.deployment import render
from ingest_platform.deployment.run_resources import K8S_CONFIG_TAG, embedded_memory_mib, run_k8s_config
from ingest_platform_tests.deploy_tools import DEPLOY, REPO, kubernetes_errors

VALUES = DEPLOY / "helm" / "dagster-values.yaml"
RELEASE, NAMESPACE = "dagster", "ingest-platform"


def values() -> dict[str, Any]:
    return yaml.safe_load(VALUES.read_text(encoding="utf-8"))


def _snake(key: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in key)


def instance_from_values(v: dict[str, Any]) -> dict[str, Any]:
    """The parts of dagster.yaml the chart's configmap-instance.yaml template renders from the values this
    repository sets (run launcher, run coordinator, run monitoring, concurrency, telemetry), key by key as
    the chart 1.13 templates map them; the chart's own fixed settings (storage, dagster_home, the instance
    ConfigMap, service account) as it renders them for release "dagster"."""
    launcher = v["runLauncher"]["config"]["k8sRunLauncher"]
    run_k8s = {_snake(k): val for k, val in launcher.get("runK8sConfig", {}).items()}
    daemon = v["dagsterDaemon"]
    queued = daemon["runCoordinator"]["config"]["queuedRunCoordinator"]
    monitoring = daemon["runMonitoring"]
    postgres = {"postgres_db": {"username": v["postgresql"]["postgresqlUsername"],
                                "password": {"env": "DAGSTER_PG_PASSWORD"},
                                "hostname": v["postgresql"]["postgresqlHost"],
                                "db_name": v["postgresql"]["postgresqlDatabase"], "port": 5432}}
    return {
        "run_storage": {"module": "dagster_postgres.run_storage", "class": "PostgresRunStorage", "config": postgres},
        "event_log_storage": {"module": "dagster_postgres.event_log", "class": "PostgresEventLogStorage",
                              "config": postgres},
        "schedule_storage": {"module": "dagster_postgres.schedule_storage", "class": "PostgresScheduleStorage",
                             "config": postgres},
        "run_launcher": {"module": "dagster_k8s", "class": "K8sRunLauncher", "config": {
            "load_incluster_config": launcher["loadInclusterConfig"],
            "job_namespace": launcher.get("jobNamespace", NAMESPACE),
            "image_pull_policy": launcher["imagePullPolicy"],
            "service_account_name": RELEASE,
            "dagster_home": "/opt/dagster/dagster_home",
            "instance_config_map": f"{RELEASE}-instance",
            "postgres_password_secret": "dagster-postgresql-secret",
            "env_config_maps": [c["name"] for c in launcher.get("envConfigMaps", [])],
            "env_secrets": [s["name"] for s in launcher.get("envSecrets", [])],
            "fail_pod_on_run_failure": bool(launcher.get("failPodOnRunFailure")),
            "run_k8s_config": run_k8s,
        }},
        "run_coordinator": {"module": "dagster._core.run_coordinator", "class": "QueuedRunCoordinator", "config": {
            _snake(k): val for k, val in queued.items()}},
        "run_monitoring": {
            "enabled": monitoring["enabled"],
            "start_timeout_seconds": monitoring["startTimeoutSeconds"],
            "cancel_timeout_seconds": monitoring["cancelTimeoutSeconds"],
            "max_resume_run_attempts": monitoring["maxResumeRunAttempts"],
            "poll_interval_seconds": monitoring["pollIntervalSeconds"],
            "free_slots_after_run_end_seconds": monitoring["freeSlotsAfterRunEndSeconds"],
        },
        "concurrency": {part: {_snake(k): val for k, val in v["concurrency"][part].items()}
                        for part in ("pools", "runs") if part in v["concurrency"]},
        "telemetry": {"enabled": v["telemetry"]["enabled"]},
    }


def spark_dataset(**fields) -> Dataset:
    return Dataset(name="orders", source="shop", topic="shop.orders", format="json", mode="append", engine="spark",
                   **fields)


def test_instance_settings_load_as_a_dagster_instance(tmp_path):
    from dagster._core.instance.config import dagster_instance_config

    instance = instance_from_values(values())
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(instance))
    loaded, _ = dagster_instance_config(str(tmp_path))
    assert loaded["run_launcher"]["class"] == "K8sRunLauncher"
    # the per-dataset pools and the slot release of the repository's dagster.yaml, unchanged
    local = yaml.safe_load((REPO / "dagster.yaml").read_text())
    assert loaded["concurrency"]["pools"] == local["concurrency"]["pools"]
    assert loaded["run_monitoring"]["free_slots_after_run_end_seconds"] == local["run_monitoring"][
        "free_slots_after_run_end_seconds"]
    assert loaded["concurrency"]["runs"]["tag_concurrency_limits"][0]["key"] == "ingest/stream-group"
    limits = loaded["concurrency"]["runs"]["tag_concurrency_limits"]
    assert {limit["key"] for limit in limits} == {limit["key"] for limit in local["concurrency"]["runs"][
        "tag_concurrency_limits"]}  # fmt: skip
    for limit in local["concurrency"]["runs"]["tag_concurrency_limits"]:  # one run per dataset, per group, too
        if "value" in limit:  # (the cap on all stream runs together scales with the slots: 10 of 20, 30 of 50)
            assert limit in limits
    from dagster._core.errors import DagsterInvalidConfigError

    broken = {**instance, "run_monitoring": {**instance["run_monitoring"], "start_timeout_secs": 1}}
    conflicting = {**instance, "run_coordinator": {**instance["run_coordinator"], "config": {
        **instance["run_coordinator"]["config"], "max_concurrent_runs": 5}}}  # Dagster: belongs in concurrency.runs
    for wrong in (broken, conflicting):
        (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(wrong))
        with pytest.raises(DagsterInvalidConfigError):
            dagster_instance_config(str(tmp_path))


def test_run_launcher_and_coordinator_match_their_classes_config_schemas():
    from dagster._config import validate_config
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster_k8s import K8sRunLauncher

    instance = instance_from_values(values())
    launcher = validate_config(K8sRunLauncher.config_type(), instance["run_launcher"]["config"])
    assert launcher.success, launcher.errors
    coordinator = validate_config(QueuedRunCoordinator.config_type(), instance["run_coordinator"]["config"])
    assert coordinator.success, coordinator.errors
    wrong = {**instance["run_launcher"]["config"], "run_k8s_confg": {}}
    assert not validate_config(K8sRunLauncher.config_type(), wrong).success


def test_run_tags_pass_dagster_k8s_validation():
    from dagster._core.errors import DagsterInvalidConfigError
    from dagster_k8s.job import get_user_defined_k8s_config

    for engine in ("embedded", "spark"):
        tag = json.dumps(run_k8s_config(spark_dataset(), engine))
        parsed = get_user_defined_k8s_config({K8S_CONFIG_TAG: tag})
        assert parsed.container_config["resources"]["limits"]["memory"].endswith("Mi")
    with pytest.raises(DagsterInvalidConfigError):
        get_user_defined_k8s_config({K8S_CONFIG_TAG: json.dumps({"container_confg": {}})})
    assert embedded_memory_mib(spark_dataset(max_batch_bytes=64 * 1024 * 1024)) == 512 + 256


@pytest.fixture
def run_launcher(tmp_path):
    """K8sRunLauncher from the values' instance config, pointed at a kubeconfig that is never contacted."""
    from dagster._config import process_config
    from dagster_k8s import K8sRunLauncher

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "users": [{"name": "u", "user": {}}]}))
    config = {**instance_from_values(values())["run_launcher"]["config"], "load_incluster_config": False,
              "kubeconfig_file": str(kubeconfig)}
    processed = process_config(K8sRunLauncher.config_type(), config)
    assert processed.success, processed.errors
    return K8sRunLauncher(**processed.value)


@pytest.mark.parametrize("engine", ["embedded", "spark"])
def test_k8s_run_launcher_builds_a_valid_job_for_a_dataset_run(run_launcher, engine, monkeypatch):
    from dagster import DagsterRun
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import construct_dagster_k8s_job
    from kubernetes.client import ApiClient

    from ingest_platform.defs.k8s import k8s_run_tags

    monkeypatch.setenv("DAGSTER_DEPLOYMENT", "prod")
    dataset = spark_dataset() if engine == "spark" else spark_dataset().model_copy(update={"engine": "embedded"})
    run = DagsterRun(job_name="__ASSET_JOB", run_id="4f1c8a2e-0000-4000-8000-000000000001",
                     tags={"ingest/dataset": dataset.name, **k8s_run_tags(dataset)})
    context = K8sContainerContext.create_for_run(run, run_launcher, include_run_tags=True)
    job = construct_dagster_k8s_job(
        job_config=context.get_k8s_job_config("registry.example.com/data/ingest-platform:0.1.0", run_launcher),
        args=["dagster", "api", "execute_run", "{}"], job_name="dagster-run-4f1c8a2e", pod_name="dagster-run-4f1c8a2e",
        component="run_worker", user_defined_k8s_config=context.run_k8s_config, labels={"dagster/job": "x"})
    manifest = ApiClient().sanitize_for_serialization(job)
    assert kubernetes_errors([manifest]) == []
    pod = manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert manifest["spec"]["backoffLimit"] == 0  # values' jobSpecConfig kept under the tag
    assert container["securityContext"]["allowPrivilegeEscalation"] is False and pod["securityContext"]["runAsNonRoot"]
    assert {e["configMapRef"]["name"] for e in container["envFrom"] if "configMapRef" in e} >= {"ingest-platform-env"}
    assert {e["secretRef"]["name"] for e in container["envFrom"] if "secretRef" in e} == {
        "ingest-platform-kafka", "ingest-platform-aws"}
    if engine == "embedded":
        assert container["resources"]["limits"] == {"cpu": "2", "memory": "1536Mi"}
        assert pod["serviceAccountName"] == RELEASE
        return
    _, conf = render.load_spark_profile(DEPLOY, "k8s")
    driver = render.pod_memory_mib(conf, "driver") + 1024
    assert container["resources"] == {"requests": {"cpu": "2", "memory": f"{driver}Mi"},
                                      "limits": {"cpu": "4", "memory": f"{driver}Mi"}}
    assert pod["serviceAccountName"] == "spark-driver"
    env = {e["name"]: e for e in container["env"]}
    assert env["SPARK_DRIVER_HOST"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["SPARK_DRIVER_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == {"spark-config": "/opt/spark/conf", "spark-pod-templates": "/opt/spark/pod-templates"}
    assert conf["spark.kubernetes.executor.podTemplateFile"].startswith(mounts["spark-pod-templates"] + "/")


def test_values_match_the_chart_schema():
    """The chart's values.schema.json over its values.yaml merged with ours, as `helm install` checks it.
    Needs the chart on disk (`helm pull dagster/dagster --version 1.13.27 --untar`): its Helm repository is
    not reachable from this machine, and the chart is not copied into this repository."""
    chart = os.environ.get("DAGSTER_HELM_CHART")
    if not chart or not (Path(chart) / "values.schema.json").is_file():
        pytest.skip("Dagster Helm chart 1.13.27 not available: set DAGSTER_HELM_CHART to its untarred folder "
                    "(the chart repository is not reachable here)")
    import jsonschema

    chart_dir = Path(chart)
    schema = json.loads((chart_dir / "values.schema.json").read_text())
    merged = _helm_merge(yaml.safe_load((chart_dir / "values.yaml").read_text()), values())
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(merged), key=lambda e: list(e.path))
    assert [f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors] == []


def _helm_merge(base: Any, override: Any) -> Any:
    """Helm's values merge: maps merge recursively, everything else (lists included) is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        return {k: _helm_merge(base.get(k), override[k]) if k in override else base[k]
                for k in {**base, **override}}
    return override


def test_a_dataset_with_a_missing_spark_profile_gets_no_tag_and_does_not_break_the_sensor():
    from ingest_platform.defs.k8s import k8s_run_tags

    assert k8s_run_tags(spark_dataset(spark_profile="does-not-exist")) == {}
    assert K8S_CONFIG_TAG in k8s_run_tags(spark_dataset(spark_profile="local"))
