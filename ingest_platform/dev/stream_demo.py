"""``ingest-platform demo --stream SECONDS``: watch continuous ingestion on a local broker.

The demo catalog's continuous datasets (``continuous: true``) are served by a stream process while a
producer writes to their topics at a steady rate; every 10 s a line shows what each table holds; at the end,
per dataset, the records produced and in the table, the commits, and the event -> visible latency p50/p99
measured from the table itself: each row's Kafka timestamp against the time of the commit that made it
visible (found by the commit's recorded offset ranges).
"""

from __future__ import annotations

import bisect
import threading
import time
from dataclasses import dataclass

from confluent_kafka import Producer

from ingest_platform.catalog import Dataset, load_catalog
from ingest_platform.dev.demo import DEMO_VOLUME, LOCAL_TOPIC_CONFIG, clear_lake
from ingest_platform.dev.demo_data import records
from ingest_platform.dev.local_kafka import LocalKafka, create_topic
from ingest_platform.kafka.client import KafkaConnection
from ingest_platform.lake.commit import run_metadata_of
from ingest_platform.lake.tables import LakeLocation, lake_location
from ingest_platform.settings import DEMO_CATALOG
from ingest_platform.streaming.process import StreamProcess


@dataclass
class StreamDemoRow:
    dataset: str
    produced: int
    table_rows: int
    commits: int
    p50_s: float | None
    p99_s: float | None

    @property
    def ok(self) -> bool:
        return self.produced == self.table_rows


def run_stream_demo(lake_root: str, seconds: float, rate: float = 200.0, echo=print) -> list[StreamDemoRow]:
    """Stream the demo's continuous datasets for ``seconds`` while producing ``rate`` records/s to each."""
    datasets = [d for d in load_catalog(DEMO_CATALOG).datasets if d.continuous]
    lake = lake_location(lake_root)
    clear_lake(lake)
    with LocalKafka() as broker:
        echo(f"local Kafka broker {broker.kafka_version} on {broker.bootstrap}")
        kafka = KafkaConnection(broker.bootstrap)
        for dataset in datasets:
            create_topic(broker.bootstrap, dataset.topic, DEMO_VOLUME[dataset.name][0], LOCAL_TOPIC_CONFIG)
        process = StreamProcess(datasets, kafka, lake)
        stream = threading.Thread(target=process.run, kwargs={"keep_alive": True}, daemon=True)
        stream.start()
        echo(f"streaming {', '.join(f'{d.name} (trigger {d.trigger_interval_s:g} s)' for d in datasets)}; "
             f"producing {rate:g} records/s to each for {seconds:g} s")  # fmt: skip
        produced = _produce_steadily(kafka, datasets, rate, seconds, lake, echo)
        deadline = time.monotonic() + max(d.trigger_interval_s for d in datasets) * 2 + 30
        while time.monotonic() < deadline and any(_rows(lake, d) < produced[d.name] for d in datasets):
            time.sleep(0.5)
        process.stop()
        stream.join(60)
    return [_summary(lake, d, produced[d.name]) for d in datasets]


def _produce_steadily(kafka: KafkaConnection, datasets: list[Dataset], rate: float, seconds: float,
                      lake: LakeLocation, echo) -> dict[str, int]:  # fmt: skip
    producer = Producer(kafka.producer_config())
    produced = {d.name: 0 for d in datasets}
    started = last_report = time.monotonic()
    while (elapsed := time.monotonic() - started) < seconds:
        for dataset in datasets:
            due = int(rate * elapsed) - produced[dataset.name]
            for key, value in records(dataset.name, due, seed=produced[dataset.name], start=produced[dataset.name]):
                producer.produce(dataset.topic, value=value, key=key)
            produced[dataset.name] += max(0, due)
        producer.poll(0)
        if time.monotonic() - last_report >= 10:
            last_report = time.monotonic()
            echo(f"  {elapsed:5.0f} s: " + ", ".join(
                f"{d.name} {produced[d.name]:,} produced / {_rows(lake, d):,} in the table" for d in datasets))
        time.sleep(0.05)
    producer.flush(60)
    return produced


def _rows(lake: LakeLocation, dataset: Dataset) -> int:
    table = lake.open_table(dataset.table_path)
    return 0 if table is None else table.count()


def _summary(lake: LakeLocation, dataset: Dataset, produced: int) -> StreamDemoRow:
    """Per row: the time of the commit whose recorded range covers its offset, minus its Kafka timestamp."""
    table = lake.open_table(dataset.table_path)
    if table is None:
        return StreamDemoRow(dataset.name, produced, 0, 0, None, None)
    spans: dict[int, list[tuple[int, int, int]]] = {}  # partition -> sorted (first, last, commit ms)
    commits = 0
    for entry in table.history():
        run = run_metadata_of(entry)
        if run is None:
            continue
        commits += 1
        for partition, (first, last) in run.get("ranges", {}).items():
            spans.setdefault(int(partition), []).append((int(first), int(last), int(entry["timestamp"])))
    for ranges in spans.values():
        ranges.sort()
    rows = table.to_pyarrow_table(columns=["_kafka_partition", "_kafka_offset", "_kafka_timestamp"])
    latencies = []
    for partition, offset, stamp in zip(*(rows[c].to_pylist() for c in rows.column_names)):
        ranges = spans.get(partition, [])
        index = bisect.bisect_right(ranges, (offset, float("inf"), 0)) - 1
        if index >= 0 and ranges[index][0] <= offset <= ranges[index][1]:
            latencies.append((ranges[index][2] - stamp.timestamp() * 1000) / 1000)
    latencies.sort()

    def quantile(q: float) -> float | None:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 2) if latencies else None

    return StreamDemoRow(dataset.name, produced, rows.num_rows, commits, quantile(0.5), quantile(0.99))


def format_stream_table(rows: list[StreamDemoRow]) -> str:
    header = (f"{'dataset':<10} {'produced':>9} {'in table':>9} {'commits':>8} {'p50 event->visible':>19} "
              f"{'p99':>7}  check")  # fmt: skip
    lines = [header, "-" * len(header)]
    for row in rows:
        p50 = f"{row.p50_s:.2f} s" if row.p50_s is not None else "-"
        p99 = f"{row.p99_s:.2f} s" if row.p99_s is not None else "-"
        lines.append(f"{row.dataset:<10} {row.produced:>9,} {row.table_rows:>9,} {row.commits:>8} {p50:>19} {p99:>7}  "
                     f"{'OK' if row.ok else 'MISMATCH'}")
    return "\n".join(lines)
