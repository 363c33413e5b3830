"""`ingest-platform preflight --profile production` on this repository's deploy/ files: the guide's
infrastructure items pass, and each fails, with a reason naming the file and object, when a limit, a probe, a
dashboard panel or an alert rule is removed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ingest_platform.deployment import render
from ingest_platform_tests.deploy_tools import DEPLOY

INFRASTRUCTURE = ("infrastructure.autoscaling", "infrastructure.resource_limits", "infrastructure.health_checks",
                  "infrastructure.dashboards", "infrastructure.alerts")


def preflight(deploy_dir: Path) -> dict[str, dict]:
    done = subprocess.run(
        [sys.executable, "-m", "ingest_platform.cli.main", "preflight", "--profile", "production", "--skip-broker",
         "--json", "--deploy-dir", str(deploy_dir)],
        capture_output=True, text=True, timeout=300)
    assert done.stdout, done.stderr[-2000:]
    return {item["id"]: item for item in json.loads(done.stdout)["items"]}


@pytest.fixture
def deploy_copy(tmp_path) -> Path:
    target = tmp_path / "deploy"
    shutil.copytree(DEPLOY, target, ignore=shutil.ignore_patterns("local", "docker"))
    return target


def edit_yaml(path: Path, change) -> None:
    documents = list(yaml.safe_load_all(path.read_text()))
    for document in documents:
        change(document)
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False))


def stream_container(document: dict) -> dict:
    return document["spec"]["template"]["spec"]["containers"][0]


def test_the_repository_passes_the_infrastructure_items():
    items = preflight(DEPLOY)
    assert {i: items[i]["status"] for i in INFRASTRUCTURE} == dict.fromkeys(INFRASTRUCTURE, "pass")
    subjects = " ".join(f["subject"] for f in items["infrastructure.resource_limits"]["findings"])
    assert "StatefulSet/ingest-stream/stream" in subjects and "spark-pod-templates/executor.yaml" in subjects
    assert "helm/dagster-values.yaml" in subjects


def test_each_removal_fails_its_item_with_a_reason(deploy_copy):
    base = deploy_copy / "k8s" / "base"
    # a limit: the stream workers' memory limit
    edit_yaml(base / "stream" / "statefulset.yaml", lambda d: stream_container(d)["resources"]["limits"].pop("memory"))
    # a probe: the stream workers' readiness probe
    edit_yaml(base / "stream" / "statefulset.yaml", lambda d: stream_container(d).pop("readinessProbe"))
    # a dashboard: the guide's consumer-lag panel
    dashboard = json.loads((deploy_copy / render.DASHBOARD_SOURCE).read_text())
    dashboard["panels"] = [p for p in dashboard["panels"] if "kafka_consumer_lag_sum" not in json.dumps(p)]
    (deploy_copy / render.DASHBOARD_SOURCE).write_text(json.dumps(dashboard))
    # a rule: the critical memory alert, from the source and (re-rendered) the PrometheusRule
    rules = yaml.safe_load((deploy_copy / render.RULES_SOURCE).read_text())
    for group in rules["groups"]:
        group["rules"] = [r for r in group["rules"] if r.get("alert") != "IngestMemoryCritical"]
    (deploy_copy / render.RULES_SOURCE).write_text(yaml.safe_dump(rules, sort_keys=False))
    render.write_files(deploy_copy)
    items = preflight(deploy_copy)
    assert {i: items[i]["status"] for i in INFRASTRUCTURE} == {
        "infrastructure.autoscaling": "pass", "infrastructure.resource_limits": "fail",
        "infrastructure.health_checks": "fail", "infrastructure.dashboards": "fail", "infrastructure.alerts": "fail"}
    assert re.search(r"StatefulSet/ingest-stream/stream: resources without limits\.memory",
                     items["infrastructure.resource_limits"]["reason"])
    assert "StatefulSet/ingest-stream/stream: stream process: no readinessProbe on /readyz" in items[
        "infrastructure.health_checks"]["reason"]
    assert "no panel plots kafka_consumer_lag_sum" in items["infrastructure.dashboards"]["reason"]
    assert "memory usage: no rule for critical > 90" in items["infrastructure.alerts"]["reason"]


def test_a_stream_worker_must_probe_its_health_endpoints(deploy_copy):
    statefulset = deploy_copy / "k8s" / "base" / "stream" / "statefulset.yaml"
    edit_yaml(statefulset, lambda d: stream_container(d)["livenessProbe"].update(
        {"httpGet": {"path": "/metrics", "port": "metrics"}}))
    items = preflight(deploy_copy)
    assert items["infrastructure.health_checks"]["status"] == "fail"
    assert "livenessProbe is not an HTTP GET of /healthz" in items["infrastructure.health_checks"]["reason"]


def test_run_pod_defaults_without_limits_fail(deploy_copy):
    values = deploy_copy / "helm" / "dagster-values.yaml"
    edit_yaml(values, lambda d: d["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]["containerConfig"][
        "resources"].pop("limits"))
    items = preflight(deploy_copy)
    assert items["infrastructure.resource_limits"]["status"] == "fail"
    assert "Dagster run pods): resources without limits.cpu, limits.memory" in items[
        "infrastructure.resource_limits"]["reason"]


def test_scaling_stream_workers_that_do_not_shard_fails(deploy_copy):
    """An HPA on (or replicas > 1 of) stream workers without --shard-group: two writers of every table."""
    statefulset = deploy_copy / "k8s" / "base" / "stream" / "statefulset.yaml"

    def unshard(document: dict) -> None:
        container = stream_container(document)
        container["args"] = ["ingest-platform", "stream", "--all-continuous", "--metrics-port", "9400"]

    edit_yaml(statefulset, unshard)
    items = preflight(deploy_copy)
    autoscaling = items["infrastructure.autoscaling"]
    assert autoscaling["status"] == "fail"
    assert "HPA scales StatefulSet/ingest-stream, whose `ingest-platform stream` has no --shard-group" in autoscaling[
        "reason"]  # fmt: skip
    assert "2 replicas of `ingest-platform stream` without --shard-group" in autoscaling["reason"]
