"""``make demo``: a real local broker, the demo topics, ~200K records, every asset materialized through Dagster.

Prints what was ingested (records, files, MB, records/s) and the row count an independent reader
(pyarrow over the Delta table) sees next to the count produced.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from ingest_platform.catalog import Catalog, load_catalog
from ingest_platform.demo_data import produce, records
from ingest_platform.kafka.client import KafkaConnection
from ingest_platform.kafka.local_broker import LocalKafka, create_topic
from ingest_platform.lake.storage import is_s3, lake_location
from ingest_platform.lake.tables import LakeLocation
from ingest_platform.settings import DEMO_CATALOG, Settings

#: Demo topics: dataset -> (partitions, records). ~200K records in all.
DEMO_VOLUME = {"orders": (6, 100_000), "clicks": (3, 80_000), "payments": (3, 20_000)}
#: Topic settings from the guide (snappy, 1 GB segments, 7-day retention), replication 1 on one local broker.
LOCAL_TOPIC_CONFIG = {"compression.type": "snappy", "segment.bytes": "1073741824", "retention.ms": "604800000"}


@dataclass
class DemoRow:
    dataset: str
    produced: int
    records: int
    table_rows: int
    files: int
    mb: float
    records_per_s: float


def run_demo(lake_root: Path | str, scale: float = 1.0, echo=print) -> list[DemoRow]:
    """``lake_root`` is a folder or ``s3://bucket/prefix`` (S3 settings from the standard AWS variables)."""
    import dagster as dg

    from ingest_platform.definitions import build_definitions

    catalog = load_catalog(DEMO_CATALOG)
    lake = lake_location(str(lake_root))
    _clear(lake)  # the topics are new on every demo broker: start the lake over too
    with LocalKafka() as broker:
        echo(f"local Kafka broker {broker.kafka_version} on {broker.bootstrap}")
        kafka = KafkaConnection(broker.bootstrap)
        produced = _create_and_produce(catalog, kafka, broker.bootstrap, scale, echo)
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
                    files=int(metadata["files_written"]),
                    mb=int(metadata["bytes_written"]) / 1e6,
                    records_per_s=float(metadata["records_per_s"]),
                )
            )
    return rows


def _node_name(path: list[str]) -> str:
    return "__".join(path)


def _create_and_produce(catalog: Catalog, kafka: KafkaConnection, bootstrap: str, scale: float, echo) -> dict[str, int]:
    produced = {}
    for dataset in catalog.datasets:
        partitions, count = DEMO_VOLUME[dataset.name]
        count = max(1, int(count * scale))
        create_topic(bootstrap, dataset.topic, partitions, LOCAL_TOPIC_CONFIG)
        started = time.monotonic()
        produced[dataset.name] = produce(kafka, dataset.topic, records(dataset.name, count))
        echo(f"produced {count:>7,} records to {dataset.topic} ({partitions} partitions) "
             f"in {time.monotonic() - started:.1f} s")
    return produced


def _clear(lake: LakeLocation) -> None:
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
    header = (
        f"{'dataset':<24} {'produced':>9} {'records':>9} {'rows in table':>13} {'files':>5} {'MB':>7} "
        f"{'records/s':>10}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row.dataset:<24} {row.produced:>9,} {row.records:>9,} {row.table_rows:>13,} {row.files:>5} "
            f"{row.mb:>7.1f} {row.records_per_s:>10,.0f}"
        )
    return "\n".join(lines)
