"""The tuning guide's pre-production checklist, executable (docs/DESIGN.md §6).

Each of the guide's 21 checklist items (Spark 6, Kafka 5, storage 5, infrastructure 5) is a ``CheckItem``:
an id, its section, the guide's wording, and a function that inspects the *actual* configuration and returns
findings (one per subject: a Spark profile, a topic, a dataset, a manifest) with a status and a reason:

* ``pass``: the guide's setting is in place;
* ``fail``: it is not, and the reason says what was found, what the guide wants and where to change it;
* ``na``: the item does not apply (yet), and the reason says why (e.g. no Spark profile exists).

What is read: Spark profiles (``deploy/spark/**.yaml`` with a top-level ``conf:`` mapping of ``spark.*``
keys and an optional ``master:``; ``local[...]`` profiles are development profiles, cluster-only items are
not applicable to them), the topics' partitions, replication and configs from the broker, the real client settings
(``KafkaConnection.consumer_config()`` / ``producer_config()``), the catalog's partitioning and file-size
targets, the embedded engine's Parquet writer, and, when present, Kubernetes manifests (``deploy/k8s/``),
Grafana dashboards (``deploy/grafana/``) and Prometheus alert rules (``deploy/prometheus/``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ingest_platform.kafka.topics import TopicAdminError
from ingest_platform.preflight.checklist import (
    DEFAULT_DEPLOY_DIR,
    FAIL,
    NA,
    PASS,
    SECTIONS,
    CheckItem,
    Finding,
    ItemResult,
    PreflightContext,
    SparkProfile,
    load_spark_profiles,
)
from ingest_platform.preflight.infrastructure import (
    check_alerts,
    check_autoscaling,
    check_dashboards,
    check_health_checks,
    check_resource_limits,
)
from ingest_platform.preflight.kafka import (
    check_compression,
    check_consumer_fetch,
    check_partitions,
    check_producer_batching,
    check_replication,
)
from ingest_platform.preflight.spark import (
    check_adaptive,
    check_dynamic_allocation,
    check_kryo,
    check_memory,
    check_shuffle,
    check_shuffle_partitions,
    spark_cores,
)
from ingest_platform.preflight.storage import (
    check_file_sizes,
    check_partitioning,
    check_s3a_multipart,
    check_s3a_pool,
    check_storage_compression,
)

# ---------------------------------------------------------------------------------------------------------
# The checklist, in the guide's order and wording


CHECKLIST: tuple[CheckItem, ...] = (
    CheckItem("spark.dynamic_allocation", "spark", "Dynamic allocation enabled", check_dynamic_allocation),
    CheckItem("spark.adaptive_execution", "spark", "Adaptive query execution enabled", check_adaptive),
    CheckItem("spark.kryo", "spark", "Kryo serialization configured", check_kryo),
    CheckItem("spark.shuffle_partitions", "spark", "Optimal partition count set", check_shuffle_partitions),
    CheckItem("spark.memory_fractions", "spark", "Memory fractions tuned", check_memory),
    CheckItem("spark.shuffle", "spark", "Shuffle optimization enabled", check_shuffle),
    CheckItem("kafka.partitions", "kafka", "Partition count calculated based on throughput", check_partitions),
    CheckItem("kafka.replication", "kafka", "Replication factor set to 3", check_replication),
    CheckItem("kafka.compression", "kafka", "Compression enabled (snappy)", check_compression),
    CheckItem("kafka.producer_batching", "kafka", "Producer batching configured", check_producer_batching),
    CheckItem("kafka.consumer_fetch", "kafka", "Consumer fetch sizes optimized", check_consumer_fetch),
    CheckItem("storage.file_sizes", "storage", "File sizes between 128MB-1GB", check_file_sizes),
    CheckItem("storage.partitioning", "storage", "Appropriate partitioning strategy", check_partitioning),
    CheckItem("storage.s3a_multipart", "storage", "S3A multipart upload configured", check_s3a_multipart),
    CheckItem("storage.connection_pooling", "storage", "Connection pooling enabled", check_s3a_pool),
    CheckItem("storage.compression", "storage", "Compression enabled", check_storage_compression),
    CheckItem("infrastructure.autoscaling", "infrastructure", "Auto-scaling configured", check_autoscaling),
    CheckItem("infrastructure.resource_limits", "infrastructure", "Resource limits set", check_resource_limits),
    CheckItem("infrastructure.health_checks", "infrastructure", "Health checks implemented", check_health_checks),
    CheckItem("infrastructure.dashboards", "infrastructure", "Monitoring dashboards created", check_dashboards),
    CheckItem("infrastructure.alerts", "infrastructure", "Alerting rules configured", check_alerts),
)


# ---------------------------------------------------------------------------------------------------------
# Running


def run_preflight(ctx: PreflightContext, items: Iterable[CheckItem] | None = None) -> list[ItemResult]:
    results = []
    for item in items if items is not None else CHECKLIST:
        try:
            findings = item.check(ctx)
        except TopicAdminError as error:
            findings = [Finding("broker", FAIL, f"{error} (or pass --skip-broker to check the rest)")]
        results.append(_summarize(item, findings))
    return results


def _summarize(item: CheckItem, findings: list[Finding]) -> ItemResult:
    statuses = {f.status for f in findings}
    status = FAIL if FAIL in statuses else PASS if PASS in statuses else NA
    shown = [f for f in findings if f.status == status]
    reason = "; ".join(f"{f.subject}: {f.reason}" if f.subject else f.reason for f in shown)
    return ItemResult(item.id, item.section, item.title, status, reason, tuple(findings))


def results_json(results: list[ItemResult], profile: str) -> dict[str, Any]:
    counts = {s: sum(r.status == s for r in results) for s in (PASS, FAIL, NA)}
    return {"ok": counts[FAIL] == 0, "profile": profile, "summary": counts,
            "items": [r.as_dict() for r in results]}


def format_results(results: list[ItemResult]) -> str:
    marks = {PASS: "PASS", FAIL: "FAIL", NA: "N/A "}
    lines = []
    for section in SECTIONS:
        rows = [r for r in results if r.section == section]
        if not rows:
            continue
        lines.append(f"{section}:")
        for r in rows:
            lines.append(f"  [{marks[r.status]}] {r.title} ({r.id})")
            for f in r.findings:
                if r.status == NA or f.status != NA or len(r.findings) == 1:
                    subject = f"{f.subject}: " if f.subject else ""
                    lines.append(f"         {marks[f.status].strip().lower():<4} {subject}{f.reason}")
    counts = {s: sum(r.status == s for r in results) for s in (PASS, FAIL, NA)}
    lines.append(f"{counts[PASS]} passed, {counts[FAIL]} failed, {counts[NA]} not applicable")
    return "\n".join(lines)


__all__ = [
    "CHECKLIST", "DEFAULT_DEPLOY_DIR", "FAIL", "NA", "PASS", "SECTIONS", "CheckItem", "Finding", "ItemResult",
    "PreflightContext", "SparkProfile", "format_results", "load_spark_profiles", "results_json", "run_preflight",
    "spark_cores",
]
