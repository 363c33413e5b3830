"""`ingest-platform preflight`: the guide's checklist against Spark profiles, the broker, the client settings,
the catalog and the deploy manifests; failures carry reasons and a non-zero exit."""

from __future__ import annotations

import json
import uuid

import pytest
import yaml
from click.testing import CliRunner

from ingest_platform.catalog import parse_catalog_text
from ingest_platform.cli.main import main
from ingest_platform.kafka.client import KafkaConnection
from ingest_platform.kafka.topics import PROFILES
from ingest_platform.preflight import CHECKLIST, PreflightContext, run_preflight, spark_cores

GOOD_DATASET = {"name": "users", "source": "inventory", "topic": "t.users", "format": "json",
                "partition_by": ["date"], "expected": {"peak_rps": 2000, "record_bytes": 400}}

K8S_PROFILE = {
    "spark.master": "k8s://https://kubernetes.default.svc",
    "spark.dynamicAllocation.enabled": True,
    "spark.dynamicAllocation.shuffleTracking.enabled": True,
    "spark.dynamicAllocation.minExecutors": 10,
    "spark.dynamicAllocation.initialExecutors": 20,
    "spark.dynamicAllocation.maxExecutors": 500,
    "spark.executor.cores": 5,
    "spark.executor.memory": "16g",
    "spark.memory.fraction": 0.8,
    "spark.serializer": "org.apache.spark.serializer.KryoSerializer",
    "spark.sql.adaptive.enabled": True,
    "spark.sql.shuffle.partitions": 400,
    "spark.hadoop.fs.s3a.multipart.size": "128M",
    "spark.hadoop.fs.s3a.multipart.threshold": 67108864,
    "spark.hadoop.fs.s3a.connection.maximum": 200,
    "spark.hadoop.fs.s3a.threads.max": 64,
}

DEPLOYMENT = {
    "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "dagster-daemon"},
    "spec": {"template": {"spec": {"containers": [{
        "name": "daemon", "image": "ingest:latest",
        "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}},
        "livenessProbe": {"exec": {"command": ["true"]}},
    }]}}},
}
HPA = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "executors"},
       "spec": {"minReplicas": 10, "maxReplicas": 200, "metrics": [{"type": "Resource"}]}}

DASHBOARD = {"dashboard": {"title": "Kafka Ingestion Platform Performance", "panels": [
    {"title": "Throughput", "targets": [{"expr": "rate(ingestion_records_processed_total[5m])"}]},
    {"title": "Latency", "targets": [{"expr": "ingestion_processing_duration_seconds"}]},
    {"title": "Lag", "targets": [{"expr": "kafka_consumer_lag_sum"}]},
]}}


def rule(name, expr, severity):
    return {"alert": name, "expr": expr, "labels": {"severity": severity}}


ALERTS = {"groups": [{"name": "ingest", "rules": [
    rule("ConsumerLagHigh", "kafka_consumer_lag_sum > 100000", "warning"),
    rule("ConsumerLagCritical", "kafka_consumer_lag_sum > 1000000", "critical"),
    rule("ProcessingSlow", "ingestion_processing_duration_seconds > 120", "warning"),
    rule("ProcessingStalled", "ingestion_processing_duration_seconds > 300", "critical"),
    rule("ErrorRate", "rate(ingestion_errors_total[5m]) / rate(ingestion_records_processed_total[5m]) > 0.01",
         "warning"),
    rule("ErrorRateCritical", "rate(ingestion_errors_total[5m]) / rate(ingestion_records_processed_total[5m])"
         " > 0.05", "critical"),
    rule("MemoryHigh", "container_memory_working_set_bytes / container_spec_memory_limit_bytes > 0.8", "warning"),
    rule("MemoryCritical", "container_memory_working_set_bytes / container_spec_memory_limit_bytes > 0.9",
         "critical"),
]}]}


def write_deploy(root, spark=None, manifests=None, dashboard=None, alerts=None):
    root.mkdir(parents=True, exist_ok=True)
    for name, conf in (spark or {}).items():
        (root / "spark" / "profiles").mkdir(parents=True, exist_ok=True)
        (root / "spark" / "profiles" / name).write_text(yaml.safe_dump({"conf": conf}))
    if manifests:
        (root / "k8s").mkdir()
        (root / "k8s" / "platform.yaml").write_text(yaml.safe_dump_all(manifests))
    if dashboard:
        (root / "grafana").mkdir()
        (root / "grafana" / "ingest.json").write_text(json.dumps(dashboard))
    if alerts:
        (root / "prometheus").mkdir()
        (root / "prometheus" / "rules.yaml").write_text(yaml.safe_dump(alerts))
    return root


def context(tmp_path, datasets=(GOOD_DATASET,), deploy=None, **kwargs):
    parsed = parse_catalog_text(json.dumps({"datasets": list(datasets)}))
    kwargs.setdefault("check_broker", False)
    kwargs.setdefault("profile", PROFILES["production"])
    return PreflightContext(datasets=tuple(parsed), connection=kwargs.pop("connection", KafkaConnection("x:1")),
                            deploy_dir=deploy or tmp_path / "no-deploy", lake_root="/data/lake", **kwargs)


def by_id(results):
    return {r.id: r for r in results}


def test_checklist_has_every_item_of_the_guide():
    sections = [item.section for item in CHECKLIST]
    assert [sections.count(s) for s in ("spark", "kafka", "storage", "infrastructure")] == [6, 5, 5, 5]
    assert len({item.id for item in CHECKLIST}) == 21


def test_without_deploy_files_spark_and_infrastructure_are_not_applicable_with_reasons(tmp_path):
    results = by_id(run_preflight(context(tmp_path)))
    for item in CHECKLIST:
        if item.section in ("spark", "infrastructure"):
            assert results[item.id].status == "na", item.id
            assert results[item.id].reason
    assert "no Spark profile" in results["spark.kryo"].reason
    assert results["kafka.partitions"].status == "na" and "--skip-broker" in results["kafka.partitions"].reason
    # the real client settings (kafka/client.py) follow the guide
    assert results["kafka.producer_batching"].status == "pass"
    assert results["kafka.consumer_fetch"].status == "pass"
    assert results["kafka.compression"].status == "pass"  # the producer's snappy; the topics are skipped
    assert results["storage.file_sizes"].status == "pass" and results["storage.compression"].status == "pass"
    assert results["storage.s3a_multipart"].status == "na" and "not s3a://" in results["storage.s3a_multipart"].reason


def test_a_complete_deploy_tree_passes(tmp_path):
    deploy = write_deploy(tmp_path / "deploy", spark={"k8s.yaml": K8S_PROFILE}, manifests=[DEPLOYMENT, HPA],
                          dashboard=DASHBOARD, alerts=ALERTS)
    local = {"name": "local", "master": "local[2]", "conf": {  # `master:` at the top level, as the engine has it
        "spark.serializer": "org.apache.spark.serializer.KryoSerializer", "spark.sql.shuffle.partitions": "4"}}
    (deploy / "spark" / "profiles" / "local.yaml").write_text(yaml.safe_dump(local))
    results = by_id(run_preflight(context(tmp_path, deploy=deploy)))
    failed = {i: r.reason for i, r in results.items() if r.status == "fail"}
    assert not failed
    assert results["spark.dynamic_allocation"].status == "pass"
    local = [f for f in results["spark.dynamic_allocation"].findings if "local.yaml" in f.subject]
    assert local[0].status == "na" and "local mode" in local[0].reason
    assert "400 is 4.0x 100 cores" in results["spark.shuffle_partitions"].reason  # 20 initial executors × 5 cores
    assert "=4 is 2.0x 2 cores" in results["spark.shuffle_partitions"].reason  # local[2]
    assert results["spark.memory_fractions"].findings[1].status == "na"
    for item in ("infrastructure.autoscaling", "infrastructure.resource_limits", "infrastructure.health_checks",
                 "infrastructure.dashboards", "infrastructure.alerts", "storage.s3a_multipart",
                 "storage.connection_pooling"):
        assert results[item].status == "pass", item


def test_misconfigured_spark_profile_and_manifests_fail_with_reasons(tmp_path):
    bad = {"spark.master": "yarn", "spark.executor.instances": 10, "spark.executor.cores": 4,
           "spark.sql.shuffle.partitions": 40, "spark.sql.adaptive.enabled": False}
    no_limits = json.loads(json.dumps(DEPLOYMENT))
    container = no_limits["spec"]["template"]["spec"]["containers"][0]
    del container["resources"]["limits"], container["livenessProbe"]
    partial_alerts = {"groups": [{"name": "g", "rules": ALERTS["groups"][0]["rules"][2:]}]}  # no lag rules
    dashboard = {"panels": DASHBOARD["dashboard"]["panels"][:2]}
    deploy = write_deploy(tmp_path / "deploy", spark={"yarn.yaml": bad}, manifests=[no_limits],
                          dashboard=dashboard, alerts=partial_alerts)
    results = by_id(run_preflight(context(tmp_path, deploy=deploy)))
    reasons = {i: r.reason for i, r in results.items() if r.status == "fail"}
    assert "spark.dynamicAllocation.enabled is false" in reasons["spark.dynamic_allocation"]
    assert "spark.sql.adaptive.enabled" in reasons["spark.adaptive_execution"]
    assert "JavaSerializer" in reasons["spark.kryo"]
    assert "40 is 1.0x 40 cores; the guide: 2-3x (80-120)" in reasons["spark.shuffle_partitions"]
    assert "spark.memory.fraction not set" in reasons["spark.memory_fractions"]
    assert "limits.cpu, limits.memory" in reasons["infrastructure.resource_limits"]
    assert "no liveness or readiness probe" in reasons["infrastructure.health_checks"]
    assert "no HorizontalPodAutoscaler" in reasons["infrastructure.autoscaling"]
    assert "kafka_consumer_lag_sum" in reasons["infrastructure.dashboards"]
    assert "consumer lag: no rule for warning > 100,000, critical > 1,000,000" in reasons["infrastructure.alerts"]


def test_catalog_items_fail_for_small_files_and_bad_partitioning(tmp_path):
    small = {**GOOD_DATASET, "name": "small", "slo": {"file_size_mb": {"min": 64, "max": 2048}}}
    flat = {**GOOD_DATASET, "name": "flat", "partition_by": []}
    hourly = {**GOOD_DATASET, "name": "hourly", "partition_by": ["year", "month", "day", "hour"],
              "expected": {"peak_rps": 10, "record_bytes": 100}}
    results = by_id(run_preflight(context(tmp_path, datasets=[GOOD_DATASET, small, flat, hourly])))
    sizes = results["storage.file_sizes"]
    assert sizes.status == "fail"
    assert "small: slo.file_size_mb.min is 64 MB, below the guide's 128 MB" in sizes.reason
    assert "max is 2048 MB, above the guide's 1024 MB" in sizes.reason
    assert "users" not in sizes.reason
    partitioning = results["storage.partitioning"]
    assert "flat: no partition_by" in partitioning.reason
    assert "hourly: hourly partitions hold at most 3.4 MB/hour" in partitioning.reason


def test_client_settings_are_checked_as_configured(tmp_path):
    ctx = context(tmp_path, consumer_config={"fetch.min.bytes": 1, "fetch.wait.max.ms": 500},
                  producer_config={"compression.type": "gzip", "batch.size": 16384, "linger.ms": 10,
                                   "queue.buffering.max.kbytes": 131072, "enable.idempotence": True})
    results = by_id(run_preflight(ctx))
    assert "fetch.min.bytes=1 (the guide: >= 1048576)" in results["kafka.consumer_fetch"].reason
    assert "max.partition.fetch.bytes not set" in results["kafka.consumer_fetch"].reason
    assert "batch.size=16384 (the guide: >= 65536)" in results["kafka.producer_batching"].reason
    assert "producer: compression.type=gzip (the guide: snappy)" in results["kafka.compression"].reason


def test_spark_cores():
    assert spark_cores({"spark.master": "local[4]"}) == 4
    assert spark_cores({"spark.master": "local[*]"}) is None
    assert spark_cores({"spark.executor.instances": "40", "spark.executor.cores": "5"}) == 200


@pytest.mark.kafka
def test_broker_topics_are_checked_and_the_cli_exits_non_zero(tmp_path, kafka_broker, make_topic):
    gzip = make_topic(partitions=1, config={"compression.type": "gzip"})
    good = f"pf.{uuid.uuid4().hex[:8]}"
    catalog = tmp_path / "c.yaml"
    catalog.write_text(
        "datasets:\n"
        f"  - {{name: good, source: app, topic: {good}, format: json, partition_by: [date],\n"
        "     expected: {peak_rps: 3000, record_bytes: 400}}\n"
        f"  - {{name: zipped, source: app, topic: {gzip}, format: json, partition_by: [date],\n"
        "     expected: {peak_rps: 2000, record_bytes: 400}}\n"
    )
    apply = CliRunner().invoke(main, ["topics", "apply", "good", "--catalog", str(catalog), "--bootstrap",
                                      kafka_broker.bootstrap, "--profile", "local"])
    assert apply.exit_code == 0, apply.output

    args = ["preflight", "--catalog", str(catalog), "--bootstrap", kafka_broker.bootstrap,
            "--deploy-dir", str(tmp_path / "no-deploy"), "--lake-root", str(tmp_path / "lake")]
    local = CliRunner().invoke(main, [*args, "--profile", "local", "--json"])
    assert local.exit_code == 1, local.output
    report = json.loads(local.output)
    assert report["ok"] is False and report["profile"] == "local"
    assert set(report["summary"]) == {"pass", "fail", "na"} and len(report["items"]) == 21
    assert set(report["items"][0]) >= {"id", "section", "title", "status", "reason", "findings"}
    items = {i["id"]: i for i in report["items"]}
    assert items["kafka.compression"]["status"] == "fail"
    assert f"{gzip}: compression.type=gzip (the guide: snappy" in items["kafka.compression"]["reason"]
    assert good not in items["kafka.compression"]["reason"]
    assert f"zipped ({gzip}): 1 partitions, the planner wants 2" in items["kafka.partitions"]["reason"]
    assert items["kafka.replication"]["status"] == "pass"  # RF 1 / min.insync 1 is the local profile

    production = CliRunner().invoke(main, [*args, "--profile", "production"])
    assert production.exit_code == 1
    assert "[FAIL] Replication factor set to 3 (kafka.replication)" in production.output
    assert f"{good}: replication factor 1, the production profile wants 3" in production.output
    assert "min.insync.replicas 1, the production profile wants 2" in production.output
    assert "[N/A ] Kryo serialization configured" in production.output
