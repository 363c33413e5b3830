"""Crafted Delta tables for the check and maintenance tests: rows and ledger written the way the engines
write them (reserved columns, one ``txn`` per partition, ``ingest_platform.run`` metadata), no Kafka."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone

import pyarrow as pa
from deltalake import CommitProperties, write_deltalake

from ingest_platform.catalog import Dataset
from ingest_platform.engines.embedded.decode import UTC_MICROS
from ingest_platform.lake.commit import RUN_METADATA_KEY
from ingest_platform.lake.ledger import ledger_transactions
from ingest_platform.lake.tables import LakeLocation


def rows(
    offsets: Mapping[int, Sequence[int]], event_age_s: float = 1.0, ids: Sequence[int] | None = None,
    day: int = 1,
) -> pa.Table:  # fmt: skip
    """Rows for the given partition -> offsets; event times ``event_age_s`` before now; ``id`` column."""
    partitions = [p for p, offs in offsets.items() for _ in offs]
    flat = [o for offs in offsets.values() for o in offs]
    now = datetime.now(timezone.utc)
    n = len(flat)
    return pa.table({
        "id": pa.array(list(ids) if ids is not None else [p * 1_000_000 + o for p, o in zip(partitions, flat)],
                       pa.int64()),
        "payload": pa.array([f"row-{p}-{o}" for p, o in zip(partitions, flat)]),
        "day": pa.array([day] * n, pa.int32()),
        "_kafka_topic": pa.array(["t"] * n),
        "_kafka_partition": pa.array(partitions, pa.int32()),
        "_kafka_offset": pa.array(flat, pa.int64()),
        "_kafka_timestamp": pa.array([now - timedelta(seconds=event_age_s)] * n, UTC_MICROS),
        "_kafka_key": pa.array([None] * n, pa.binary()),
        "_event_time": pa.array([now - timedelta(seconds=event_age_s)] * n, UTC_MICROS),
        "_ingested_at": pa.array([now] * n, UTC_MICROS),
    })  # fmt: skip


def commit(
    lake: LakeLocation, dataset: Dataset, data: pa.Table, ranges: Mapping[int, tuple[int, int]],
    records: int | None = None, skipped: int = 0, run_id: str | None = None, started_at: float | None = None,
    data_loss: Mapping[int, tuple[int, int]] | None = None, ledger: Mapping[int, int] | None = None,
    files: int = 1, extra: Mapping[str, object] | None = None,
) -> None:  # fmt: skip
    """One ingest-like commit: ``data``, the ledger at each range's end (or ``ledger``), run metadata like
    the engines' (``started_at`` only when given)."""
    run = {
        "run_id": run_id or uuid.uuid4().hex, "engine": "embedded", "topic": dataset.topic,
        "records": records if records is not None else data.num_rows + skipped, "skipped": skipped,
        "ranges": {str(p): list(r) for p, r in ranges.items()},
    }  # fmt: skip
    run.update(extra or {})
    if started_at is not None:
        run["started_at"] = started_at
    if data_loss:
        run["data_loss"] = {str(p): list(r) for p, r in data_loss.items()}
    covered = dict(ledger) if ledger is not None else {p: last for p, (_, last) in ranges.items()}
    write_deltalake(
        lake.table_uri(dataset.table_path), data, mode="append", partition_by=["day"],
        commit_properties=CommitProperties(
            app_transactions=ledger_transactions(dataset.name, covered),
            custom_metadata={RUN_METADATA_KEY: json.dumps(run)},
        ),
    )  # fmt: skip
