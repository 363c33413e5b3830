"""``make demo``: a real local broker, the demo topics, ~225K records, every asset materialized through Dagster.

Prints what was ingested (records, files, MB, records/s) and the row count an independent reader
(pyarrow over the Delta table) sees next to the count expected: the records produced for append datasets,
the live keys of the source table for the Debezium (CDC) dataset ``users``.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from ingest_platform.catalog import Catalog, Dataset, load_catalog
from ingest_platform.dev.demo_data import produce
from ingest_platform.dev.demo_producer import Feed, feed_for
from ingest_platform.dev.local_kafka import LocalKafka, create_topic
from ingest_platform.kafka.client import KafkaConnection
from ingest_platform.lake.storage import is_s3
from ingest_platform.lake.tables import LakeLocation, lake_location
from ingest_platform.settings import DEMO_CATALOG, Settings

#: Demo topics: dataset -> (partitions, records). ~200K records in all, plus the CDC dataset ``users``:
#: a snapshot of that many users, then as many changes (updates, deletes with tombstones, inserts).
DEMO_VOLUME = {"orders": (6, 100_000), "clicks": (3, 80_000), "payments": (3, 20_000), "users": (3, 20_000)}
DEFAULT_VOLUME = (3, 10_000)
#: Topic settings from the guide (snappy, 1 GB segments, 7-day retention), replication 1 on one local broker.
LOCAL_TOPIC_CONFIG = {"compression.type": "snappy", "segment.bytes": "1073741824", "retention.ms": "604800000"}


@dataclass
class DemoRow:
    dataset: str
    produced: int  # Kafka records (Debezium: change events and tombstones)
    records: int  # Kafka records the run consumed
    table_rows: int  # rows an independent reader sees
    expected_rows: int  # append: one per record produced; upsert: the source's live keys
    files: int
    mb: float
    records_per_s: float

    @property
    def ok(self) -> bool:
        return self.produced == self.records and self.table_rows == self.expected_rows


def run_demo(lake_root: Path | str, scale: float = 1.0, echo=print) -> list[DemoRow]:
    """``lake_root`` is a folder or ``s3://bucket/prefix`` (S3 settings from the standard AWS variables)."""
    import dagster as dg

    from ingest_platform.definitions import build_definitions

    catalog = load_catalog(DEMO_CATALOG)
    lake = lake_location(str(lake_root))
    clear_lake(lake)  # the topics are new on every demo broker: start the lake over too
    with LocalKafka() as broker:
        echo(f"local Kafka broker {broker.kafka_version} on {broker.bootstrap}")
        kafka = KafkaConnection(broker.bootstrap)
        produced, expected_rows, _ = produce_backlog(create_demo_topics(catalog, broker.bootstrap), kafka, scale, echo)
        settings = Settings(catalog_path=str(DEMO_CATALOG), lake_root=lake.root, kafka_bootstrap=broker.bootstrap)
        defs = build_definitions(settings)
        echo("materializing every asset through Dagster ...")
        with tempfile.TemporaryDirectory(prefix="ingest-demo-dagster-") as home:
            with dg.DagsterInstance.local_temp(tempdir=home) as instance:
                result = dg.materialize(
                    list(defs.assets or []),
                    resources=defs.resources,
                    instance=instance,
                    run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}},
                    raise_on_error=True,
                )
        rows = []
        for dataset in catalog.datasets:
            metadata = {
                key: value.value
                for event in result.asset_materializations_for_node(_node_name(dataset.asset_path))
                for key, value in event.metadata.items()
            }
            rows.append(
                DemoRow(
                    dataset="/".join(dataset.asset_path),
                    produced=produced[dataset.name],
                    records=int(metadata["records"]),
                    table_rows=_independent_row_count(lake, dataset.table_path),
                    expected_rows=expected_rows[dataset.name],
                    files=int(metadata["files_written"]),
                    mb=int(metadata["bytes_written"]) / 1e6,
                    records_per_s=float(metadata["records_per_s"]),
                )
            )
            if dataset.format == "debezium":
                row = rows[-1]
                echo(f"{row.dataset}: {row.table_rows:,} rows in the table, {row.expected_rows:,} live keys in the "
                     f"source: {'OK' if row.table_rows == row.expected_rows else 'MISMATCH'}")
    return rows


def _node_name(path: list[str]) -> str:
    return "__".join(path)


def create_demo_topics(catalog: Catalog, bootstrap: str, exist_ok: bool = False) -> list[Dataset]:
    """The catalog's topics with the demo's partition counts; returns the datasets whose topic is new."""
    from confluent_kafka.admin import AdminClient

    existing = set(AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=15).topics)
    created = []
    for dataset in catalog.datasets:
        if dataset.topic in existing and exist_ok:
            continue
        create_topic(bootstrap, dataset.topic, demo_volume(dataset)[0], LOCAL_TOPIC_CONFIG, exist_ok=exist_ok)
        created.append(dataset)
    return created


def demo_volume(dataset: Dataset) -> tuple[int, int]:
    """(partitions, records) of a demo topic; datasets the demo does not know get a small default."""
    return DEMO_VOLUME.get(dataset.name, DEFAULT_VOLUME)


def produce_backlog(
    datasets: list[Dataset], kafka: KafkaConnection, scale: float, echo
) -> tuple[dict[str, int], dict[str, int], dict[str, Feed]]:
    """Produce each dataset's backlog (``scale`` x its demo volume, event times within seconds of now).
    Returns the records produced and the rows each table must end with, by dataset, and the feeds (to
    continue the streams)."""
    produced, expected_rows, feeds = {}, {}, {}
    for dataset in datasets:
        partitions, count = demo_volume(dataset)
        feeds[dataset.name] = feed = feed_for(dataset)
        started = time.monotonic()
        items, expected_rows[dataset.name], what = feed.backlog(max(1, int(count * scale)))
        produced[dataset.name] = produce(kafka, dataset.topic, iter(items))
        echo(f"produced {produced[dataset.name]:>7,} {what} to {dataset.topic} ({partitions} partitions) "
             f"in {time.monotonic() - started:.1f} s")  # fmt: skip
    return produced, expected_rows, feeds


def clear_lake(lake: LakeLocation) -> None:
    """Delete the demo lake: the folder, or every object under the S3 prefix (never a whole bucket)."""
    if not is_s3(lake.root):
        if Path(lake.root).exists():
            shutil.rmtree(lake.root)
        return
    filesystem, base = lake.filesystem()
    if "/" not in base.strip("/"):
        raise ValueError(f"the demo deletes its lake first: give it a prefix, not a whole bucket ({lake.root})")
    if filesystem.get_file_info(base).type != pafs.FileType.NotFound:
        filesystem.delete_dir(base)


def _independent_row_count(lake: LakeLocation, table_path: str) -> int:
    """Row count read with pyarrow's dataset reader over the Delta table's current files."""
    table = lake.open_table(table_path)
    return 0 if table is None else table.to_pyarrow_dataset().count_rows()


def format_table(rows: list[DemoRow]) -> str:
    """Per dataset: produced vs ingested records, the table's rows vs the rows expected, and OK/MISMATCH."""
    header = (
        f"{'dataset':<24} {'produced':>9} {'records':>9} {'rows in table':>13} {'expected':>9} {'files':>5} "
        f"{'MB':>7} {'records/s':>10}  check"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row.dataset:<24} {row.produced:>9,} {row.records:>9,} {row.table_rows:>13,} {row.expected_rows:>9,} "
            f"{row.files:>5} {row.mb:>7.1f} {row.records_per_s:>10,.0f}  {'OK' if row.ok else 'MISMATCH'}"
        )
    return "\n".join(lines)
