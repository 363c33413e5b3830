"""The stream process's Prometheus metrics: exactly the names, types and labels of docs/DESIGN.md §11.

One ``CollectorRegistry`` per ``StreamMetrics`` (a process normally has one), with prometheus-client's
process collector (``process_resident_memory_bytes`` …) for memory alerts. Every series carries
``pipeline`` (the dataset's stream group), ``dataset`` and ``topic``. The per-record latency histogram is a
custom collector fed with whole-batch bucket counts (``latency.batch_latency``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, disable_created_metrics
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

from ingest_platform.catalog import Dataset
from ingest_platform.streaming.latency import LATENCY_BUCKETS, LatencySample

LABELS = ("pipeline", "dataset", "topic")
#: Error kinds of ``ingestion_errors_total``.
ERROR_KINDS = ("kafka", "lake", "decode", "data_loss", "internal")
#: Batch close -> commit done, seconds.
BATCH_DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def labels_of(dataset: Dataset) -> tuple[str, str, str]:
    return (dataset.pipeline, dataset.name, dataset.topic)


class LatencyHistogram(Collector):
    """``ingestion_processing_duration_seconds``: cumulative bucket counts per label set, added per commit."""

    NAME = "ingestion_processing_duration_seconds"
    HELP = "Per record: Delta commit time minus the Kafka record timestamp (end-to-end latency), seconds."

    def __init__(self) -> None:
        self._series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}
        self._lock = threading.Lock()

    def add(self, labels: tuple[str, ...], sample: LatencySample) -> None:
        with self._lock:
            buckets, totals = self._series.setdefault(labels, ([0] * len(LATENCY_BUCKETS), [0, 0.0]))
            for index, count in enumerate(sample.cumulative):
                buckets[index] += count
            totals[0] += sample.count
            totals[1] += sample.total_s

    def forget(self, labels: tuple[str, ...]) -> None:
        with self._lock:
            self._series.pop(labels, None)

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.NAME, self.HELP, labels=LABELS)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.NAME, self.HELP, labels=LABELS)
        with self._lock:
            for labels, (buckets, (count, total)) in sorted(self._series.items()):
                points = [(_bound(b), c) for b, c in zip(LATENCY_BUCKETS, buckets)] + [("+Inf", count)]
                family.add_metric(list(labels), points, total)
        yield family


def _bound(value: float) -> str:
    return str(float(value))


class StreamMetrics:
    def __init__(self, registry: CollectorRegistry | None = None, process_collector: bool = True):
        disable_created_metrics()  # no ``*_created`` series: dashboards and rules never use them
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        if process_collector:
            ProcessCollector(registry=r)
        self.records = Counter("ingestion_records_processed_total",
                               "Kafka records covered by Delta commits (applied + dead-lettered + skipped).",
                               LABELS, registry=r)  # fmt: skip
        self.latency = LatencyHistogram()
        r.register(self.latency)
        self.lag = Gauge("kafka_consumer_lag_sum",
                         "Sum over partitions of log end - (ledger + 1): records not yet in the table.",
                         LABELS, registry=r)  # fmt: skip
        self.bytes = Counter("ingestion_bytes_processed_total", "Key + value bytes of the processed records.",
                             LABELS, registry=r)  # fmt: skip
        self.dead_letters = Counter("ingestion_dead_letters_total", "Records written to <name>_dlq.", LABELS,
                                    registry=r)  # fmt: skip
        self.batches = Counter("ingestion_batches_total", "Micro-batch commit attempts by outcome.",
                               (*LABELS, "outcome"), registry=r)  # fmt: skip
        self.errors = Counter("ingestion_errors_total", "Errors by kind, including retried ones.",
                              (*LABELS, "kind"), registry=r)  # fmt: skip
        self.batch_duration = Histogram("ingestion_batch_duration_seconds",
                                        "Batch close -> commit done (decode, write, commit), seconds.",
                                        LABELS, buckets=BATCH_DURATION_BUCKETS, registry=r)  # fmt: skip
        self.commits = Counter("ingestion_delta_commits_total", "Delta commits written.", LABELS, registry=r)
        self.files = Counter("ingestion_files_written_total", "Data files added by those commits.", LABELS,
                             registry=r)  # fmt: skip
        self.last_commit_time = Gauge("ingestion_last_commit_timestamp_seconds",
                                      "Unix time of the dataset's last ingest commit.", LABELS, registry=r)
        self.last_commit_version = Gauge("ingestion_last_commit_version", "Delta version of that commit.",
                                         LABELS, registry=r)  # fmt: skip
        self.up = Gauge("ingestion_stream_up", "1 while the dataset's loop runs, 0 after it stopped on an error.",
                        LABELS, registry=r)  # fmt: skip
        self.memory_limit = Gauge("ingestion_memory_limit_bytes",
                                  "The process's memory limit (cgroup, or --memory-limit).", ("pipeline",),
                                  registry=r)  # fmt: skip

    def register_dataset(self, dataset: Dataset) -> None:
        """Create the dataset's series at 0, so rates and alerts see it before its first commit."""
        labels = labels_of(dataset)
        for metric in (self.records, self.bytes, self.dead_letters, self.commits, self.files):
            metric.labels(*labels)
        for outcome in ("committed", "failed"):
            self.batches.labels(*labels, outcome)
        for kind in ERROR_KINDS:
            self.errors.labels(*labels, kind)
        self.up.labels(*labels).set(1)

    def committed(self, labels: tuple[str, str, str], records: int, nbytes: int, dead_letters: int, files: int,
                  committed_at_s: float, version: int, duration_s: float, latency: LatencySample) -> None:  # fmt: skip
        """One Delta data commit of a stream (either loop): every per-commit series at once."""
        self.records.labels(*labels).inc(records)
        self.bytes.labels(*labels).inc(nbytes)
        self.dead_letters.labels(*labels).inc(dead_letters)
        self.batches.labels(*labels, "committed").inc()
        self.commits.labels(*labels).inc()
        self.files.labels(*labels).inc(files)
        self.last_commit_time.labels(*labels).set(committed_at_s)
        self.last_commit_version.labels(*labels).set(version)
        self.batch_duration.labels(*labels).observe(duration_s)
        self.latency.add(labels, latency)
    def forget_dataset(self, dataset: Dataset) -> None:
        """Drop the dataset's series: a sharded worker that handed the dataset over must not keep exporting its
        last lag, last commit and ``up`` next to the new owner's (DESIGN §12). Counters restart at 0 if the
        dataset comes back, which ``rate()`` reads as a counter reset."""
        labels = labels_of(dataset)
        for metric in (self.records, self.bytes, self.dead_letters, self.commits, self.files, self.batch_duration,
                       self.lag, self.last_commit_time, self.last_commit_version, self.up):  # fmt: skip
            metric.remove(*labels)  # a label set never created is ignored
        for outcome in ("committed", "failed"):
            self.batches.remove(*labels, outcome)
        for kind in ERROR_KINDS:
            self.errors.remove(*labels, kind)
        self.latency.forget(labels)

    def error(self, dataset: Dataset, kind: str) -> None:
        self.errors.labels(*labels_of(dataset), kind).inc()
