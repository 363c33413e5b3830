"""The lag exporter: lag and freshness of every catalog dataset, batch or continuous (docs/DESIGN.md §11).

Like kafka-lag-exporter for consumer groups, but positions are the tables' ledgers (the truth, §2): every
``interval_s`` one batched read of all topics' offsets (``monitoring/offsets.py``: one metadata request, two
``list_offsets``) and of the ledgers of the tables that moved (``monitoring/positions.py``: one batched
existence check, then only changed tables are opened). A scrape serves the last read, so its time does not
grow with the number of datasets; the read itself is bounded by the requests' deadlines.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ingest_platform.catalog import Dataset
from ingest_platform.kafka.client import KafkaConnection
from ingest_platform.lake.tables import LakeLocation
from ingest_platform.monitoring.lag import dataset_lag
from ingest_platform.monitoring.offsets import admin_client, read_topic_offsets
from ingest_platform.monitoring.positions import PositionCache, PositionRequest
from ingest_platform.streaming.metrics import LABELS

READ_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class DatasetFigures:
    labels: tuple[str, str, str]
    lag: int | None  # None: the topic could not be read
    last_commit_s: float | None  # None: no table yet
    version: int | None


class LagExporter(Collector):
    """Reads every dataset's lag and last commit on ``refresh()``; ``collect()`` serves the last read."""

    def __init__(self, datasets: list[Dataset], kafka: KafkaConnection, lake: LakeLocation,
                 log: logging.Logger | None = None):  # fmt: skip
        self.datasets = datasets
        self.kafka = kafka
        self.positions = PositionCache(lake)
        self.log = log or logging.getLogger(__name__)
        self._admin = admin_client(kafka, READ_TIMEOUT_S)
        self._figures: list[DatasetFigures] = []
        self.last_refresh: float | None = None  # monotonic time of the last completed read
        self.last_duration_s = 0.0
        self.errors: dict[str, str] = {}

    def refresh(self) -> None:
        started = time.monotonic()
        topics = read_topic_offsets(self._admin, {d.topic for d in self.datasets}, READ_TIMEOUT_S, with_ids=False)
        requests = [
            PositionRequest(d.name, d.table_path, frozenset(topics[d.topic].marks)) for d in self.datasets
        ]
        positions = self.positions.positions(requests)
        figures, errors = [], {}
        for dataset in self.datasets:
            offsets, position = topics[dataset.topic], positions[dataset.name]
            lag = None
            if offsets.error is None:
                lag = dataset_lag(position.ledger, offsets.marks).total
            else:
                errors[dataset.name] = offsets.error
            figures.append(DatasetFigures(
                labels=(dataset.pipeline, dataset.name, dataset.topic), lag=lag,
                last_commit_s=position.last_commit_ms / 1000 if position.last_commit_ms is not None else None,
                version=position.version,
            ))  # fmt: skip
        self._figures, self.errors = figures, errors
        self.last_duration_s = time.monotonic() - started
        self.last_refresh = time.monotonic()

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        lag = GaugeMetricFamily("kafka_consumer_lag_sum",
                                "Sum over partitions of log end - (ledger + 1): records not yet in the table.",
                                labels=LABELS)  # fmt: skip
        last = GaugeMetricFamily("ingestion_last_commit_timestamp_seconds",
                                 "Unix time of the dataset's last ingest commit.", labels=LABELS)
        version = GaugeMetricFamily("ingestion_last_commit_version", "Delta version of that commit.", labels=LABELS)
        for figures in self._figures:
            if figures.lag is not None:
                lag.add_metric(list(figures.labels), figures.lag)
            if figures.last_commit_s is not None:
                last.add_metric(list(figures.labels), figures.last_commit_s)
            if figures.version is not None:
                version.add_metric(list(figures.labels), figures.version)
        yield from (lag, last, version)

    def healthz(self, interval_s: float) -> tuple[int, dict]:
        if self.last_refresh is None:
            return 503, {"status": "starting"}
        age = time.monotonic() - self.last_refresh
        if age > 3 * interval_s + READ_TIMEOUT_S:
            return 503, {"status": "stuck", "last_read_age_s": round(age, 1)}
        return 200, {"status": "ok", "last_read_age_s": round(age, 1), "read_s": round(self.last_duration_s, 3),
                     "unreadable": self.errors}  # fmt: skip


def serve_exporter(
    datasets: list[Dataset], kafka: KafkaConnection, lake: LakeLocation, port: int, host: str, interval_s: float,
    duration_s: float | None, echo: Callable[[str], None] = print,
) -> None:  # fmt: skip
    """Serve until SIGTERM/SIGINT (or ``duration_s``)."""
    import signal

    from ingest_platform.streaming.endpoints import Endpoints

    registry = CollectorRegistry()
    exporter = LagExporter(datasets, kafka, lake)
    registry.register(exporter)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    endpoints = Endpoints(registry, lambda: exporter.healthz(interval_s), lambda: exporter.healthz(interval_s),
                          port, host).start()  # fmt: skip
    echo(f"exporting lag of {len(datasets)} dataset(s) on port {endpoints.port}, read every {interval_s:g} s")
    started = time.monotonic()
    try:
        while not stop.is_set():
            try:
                exporter.refresh()
            except Exception as error:  # noqa: BLE001 - a failed read keeps the last figures; reported, retried
                exporter.log.warning(f"metrics: reading offsets and ledgers failed: {error}")
            remaining = None if duration_s is None else duration_s - (time.monotonic() - started)
            if remaining is not None and remaining <= 0:
                break
            stop.wait(interval_s if remaining is None else min(interval_s, remaining))
    finally:
        endpoints.stop()
