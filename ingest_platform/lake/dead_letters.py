"""The dead-letter table ``<name>_dlq``: records a run could not apply, written exactly once (DESIGN §9.3).

It has its own ledger (app ids ``<name>_dlq-<partition>``) and is written before the main commit of the
same batch, only with records above that ledger; a re-read batch therefore finds its bad records already
there and adds none twice. Both engines write it through ``write_dead_letters`` (bad records are few:
``max_dlq_ratio`` bounds them).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import pyarrow as pa

from ingest_platform.catalog import Dataset
from ingest_platform.lake.commit import AppendRequest, append_with_ledger
from ingest_platform.lake.ledger import read_ledger
from ingest_platform.lake.tables import LakeLocation

UTC_MICROS = pa.timestamp("us", tz="UTC")
DLQ_SCHEMA = pa.schema(
    [
        pa.field("topic", pa.string(), nullable=False),
        pa.field("partition", pa.int32(), nullable=False),
        pa.field("offset", pa.int64(), nullable=False),
        pa.field("timestamp", UTC_MICROS),
        pa.field("key_base64", pa.string()),
        pa.field("value_base64", pa.string()),
        pa.field("error", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("ingested_at", UTC_MICROS, nullable=False),
    ]
)
#: Dead-letter tables are small; one file per commit is plenty.
DLQ_TARGET_FILE_BYTES = 128 * 1024 * 1024


@dataclass(frozen=True)
class BadRecord:
    """One Kafka record that could not be applied, and why."""

    partition: int
    offset: int
    timestamp_ms: int | None
    key: bytes | None
    value: bytes | None
    error: str


def dead_letter_rows(topic: str, records: Sequence[BadRecord], run_id: str) -> pa.Table:
    now = datetime.now(timezone.utc)

    def b64(data: bytes | None) -> str | None:
        return base64.b64encode(data).decode("ascii") if data is not None else None

    return pa.table(
        {
            "topic": [topic] * len(records),
            "partition": [r.partition for r in records],
            "offset": [r.offset for r in records],
            "timestamp": [
                datetime.fromtimestamp(r.timestamp_ms / 1000, timezone.utc)
                if r.timestamp_ms is not None and r.timestamp_ms >= 0
                else None
                for r in records
            ],  # fmt: skip
            "key_base64": [b64(r.key) for r in records],
            "value_base64": [b64(r.value) for r in records],
            "error": [r.error for r in records],
            "run_id": [run_id] * len(records),
            "ingested_at": [now] * len(records),
        },
        schema=DLQ_SCHEMA,
    )


def write_dead_letters(
    lake: LakeLocation,
    dataset: Dataset,
    records: Sequence[BadRecord],
    covered: Mapping[int, int],
    run_metadata: Mapping[str, object],
) -> tuple[int | None, int]:
    """Append the records above the DLQ ledger and advance it to ``covered``, in one commit.

    ``covered`` is the batch's partition -> last offset (the main commit's ledger advance). Returns the
    commit's version (None when every record is already there) and how many records it added.
    """
    if not records:
        return None, 0
    table = lake.open_table(dataset.dlq_table_path)
    ledger = read_ledger(table, dataset.dlq_name, covered)
    fresh = [r for r in records if r.offset > ledger.get(r.partition, -1)]
    if not fresh:
        return None, 0
    advancing = {p: last for p, last in covered.items() if last > ledger.get(p, -1)}
    rows = dead_letter_rows(dataset.topic, sorted(fresh, key=lambda r: (r.partition, r.offset)),
                            str(run_metadata.get("run_id", "")))  # fmt: skip
    version = append_with_ledger(
        lake,
        AppendRequest(
            dataset=dataset.dlq_name,
            table_path=dataset.dlq_table_path,
            partition_by=(),
            rows=rows,
            covered=advancing,
            expected_ledger=ledger,
            run_metadata={**run_metadata, "dead_lettered": len(fresh), "of_dataset": dataset.name},
            target_file_size=DLQ_TARGET_FILE_BYTES,
            description=f"Dead letters of dataset '{dataset.name}' (topic {dataset.topic})",
        ),
    )
    return version, len(fresh)


def read_dead_letters(lake: LakeLocation, dataset: Dataset) -> pa.Table | None:
    """The dataset's dead-letter rows (None when it never had one)."""
    table = lake.open_table(dataset.dlq_table_path)
    return table.to_pyarrow_table() if table is not None else None
