"""A real Prometheus (Debian's package, ingest_platform/dev/local_prometheus.py) with this repository's config
and rules: every dashboard panel returns series, the recording rule gives the guide's latency panel a value and
the lag alerts go pending — on synthetic samples of the DESIGN §11 metrics, backfilled with promtool. The check
against a running stream worker and the lag exporter: test_stream_metrics.py."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from ingest_platform.dev.local_prometheus import LocalPrometheus
from ingest_platform_tests.test_monitoring_files import GUIDE_PANELS, dashboard_targets

pytestmark = pytest.mark.skipif(shutil.which("prometheus") is None or shutil.which("promtool") is None,
                                reason="prometheus/promtool not installed (deploy/local/debian-packages.txt)")

BUCKETS = ("0.5", "1", "2.5", "5", "10", "15", "30", "60", "120", "300", "600", "+Inf")
DATASETS = {  # dataset: (pipeline, topic, lag)
    "orders": ("shop", "shop.orders", 150_000),  # above the warning threshold
    "payments": ("billing", "billing.payments", 12),
}


def synthetic_openmetrics(start: float, end: float, step: float = 15.0) -> str:
    """Stream-process and exporter series of DESIGN §11 for two datasets, one sample per ``step``."""
    series: dict[str, list[tuple[str, float]]] = {}

    def add(name: str, labels: dict[str, str], value: float) -> None:
        text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        series.setdefault(name, []).append((f"{name}{{{text}}}", value))

    steps = int((end - start) // step)
    samples: list[list[tuple[str, str, float]]] = []
    for i in range(steps + 1):
        series.clear()
        for dataset, (pipeline, topic, lag) in DATASETS.items():
            stream = {"job": "ingest-platform-stream", "instance": "127.0.0.1:9400", "pipeline": pipeline,
                      "dataset": dataset, "topic": topic}
            exporter = {**stream, "job": "ingest-platform-exporter", "instance": "127.0.0.1:9401"}
            records = 1000.0 * i
            add("ingestion_records_processed_total", stream, records)
            add("ingestion_bytes_processed_total", stream, 400 * records)
            add("ingestion_dead_letters_total", stream, float(i // 10))
            add("ingestion_batches_total", {**stream, "outcome": "committed"}, 2.0 * i)
            add("ingestion_batches_total", {**stream, "outcome": "failed"}, float(i // 60))  # < 1 %
            add("ingestion_errors_total", {**stream, "kind": "lake"}, float(i // 60))
            add("ingestion_delta_commits_total", stream, 2.0 * i)
            add("ingestion_files_written_total", stream, 6.0 * i)
            for name, base in (("ingestion_processing_duration_seconds", 12.0),
                               ("ingestion_batch_duration_seconds", 2.0)):
                for le in BUCKETS:
                    share = 0.0 if le != "+Inf" and float(le) < base else 1.0
                    add(f"{name}_bucket", {**stream, "le": le}, share * records)
                add(f"{name}_sum", stream, base * records)
                add(f"{name}_count", stream, records)
            for labels in (stream, exporter):
                add("kafka_consumer_lag_sum", labels, float(lag))
                add("ingestion_last_commit_timestamp_seconds", labels, start + step * i - 5)
                add("ingestion_last_commit_version", labels, 2.0 * i)
            add("ingestion_stream_up", stream, 1.0)
            add("ingestion_memory_limit_bytes", {"job": stream["job"], "instance": stream["instance"],
                                                 "pipeline": pipeline}, 4 * 2**30)
        add("process_resident_memory_bytes", {"job": "ingest-platform-stream", "instance": "127.0.0.1:9400"},
            2 * 2**30)
        samples.append([(name, key, value) for name, rows in series.items() for key, value in rows])
    by_series: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for i, rows in enumerate(samples):
        for name, key, value in rows:
            by_series.setdefault(name, {}).setdefault(key, []).append((start + step * i, value))
    lines = []
    for name, keyed in by_series.items():
        lines.append(f"# TYPE {name} unknown")
        for key, points in keyed.items():
            lines.extend(f"{key} {value} {at:.3f}" for at, value in points)
    return "\n".join(lines) + "\n# EOF\n"


@pytest.fixture(scope="module")
def prometheus():
    now = time.time()
    server = LocalPrometheus(evaluation_interval_s=1, startup_timeout_s=60)
    try:
        # up to now only: the rules write their results at the current time, which must be after the data
        server.backfill(synthetic_openmetrics(now - 1800, now - 5))
        server.start()
        yield server
    finally:
        server.stop()


def test_every_dashboard_panel_returns_series(prometheus):
    prometheus.wait_for(lambda: prometheus.query("ingestion_processing_duration_seconds"), timeout_s=30)
    empty = [(title, expr) for title, expr, _ in dashboard_targets() if not prometheus.query(expr)]
    assert empty == []
    # the guide's latency panel: the recorded mean, 12 s per record, per dataset (3 labels, no job/instance)
    (title, (expr, _)) = next((t, p) for t, p in GUIDE_PANELS.items() if t == "End-to-End Latency")
    recorded = {r["metric"]["dataset"]: (sorted(r["metric"]), float(r["value"][1])) for r in prometheus.query(expr)}
    # a ratio of two rates: 12 up to float rounding (11.999999999999998 seen, depending on the window's alignment)
    assert recorded == {d: (["__name__", "dataset", "pipeline", "topic"], pytest.approx(12.0)) for d in DATASETS}


def test_alerts_follow_the_thresholds(prometheus):
    def lag_alerts():
        return [a for a in prometheus.alerts() if a["labels"]["alertname"].startswith("IngestConsumerLag")]

    alerts = prometheus.wait_for(lag_alerts, timeout_s=30)
    assert [(a["labels"]["alertname"], a["labels"]["dataset"], a["state"]) for a in alerts] == [
        ("IngestConsumerLagWarning", "orders", "pending")]  # max of stream and exporter: one alert, `for` running
    names = {r["name"] for r in prometheus.rules()}
    assert {"IngestTableStale", "IngestMemoryCritical", "ingestion_processing_duration_seconds"} <= names
    others = {a["labels"]["alertname"] for a in prometheus.alerts()} - {"IngestConsumerLagWarning"}
    assert others == set(), json.dumps(prometheus.alerts())[:2000]
