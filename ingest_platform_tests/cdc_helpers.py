"""Helpers of the CDC tests of both engines: Debezium datasets and the table compared with the source."""

from __future__ import annotations

import json

from ingest_platform.catalog import Dataset
from ingest_platform.dev import cdc_data
from ingest_platform.lake.tables import LakeLocation
from ingest_platform_tests.helpers import dataset_from_yaml, read_table


def cdc_dataset(topic: str, name: str = "users", **extra: object) -> Dataset:
    fields = {"name": name, "source": "inventory", "topic": topic, "format": "debezium", "mode": "upsert", **extra}
    return dataset_from_yaml("datasets:\n  - " + json.dumps(fields))


def table_state(lake: LakeLocation, dataset: Dataset, key: str = "id", extra: tuple[str, ...] = ()) -> dict:
    """key -> the source columns (and ``extra``) of each row, read by an independent reader (polars)."""
    frame = read_table(lake.table_uri(dataset.table_path))
    columns = [c for c in cdc_data.COLUMNS if c in frame.columns] + list(extra)
    return {row[key]: row for row in frame.select(columns).to_dicts()}


def expected_rows(events, columns=cdc_data.COLUMNS) -> dict:
    """key -> the source columns of every live key, after replaying ``events`` in source order."""
    return {k: {c: row.get(c) for c in columns} for k, row in cdc_data.expected_state(events).rows.items()}


def expected_soft_rows(events) -> dict:
    """``delete_mode: soft``: every key ever seen with its last values and ``_cdc_deleted``."""
    return {
        k: {**{c: row.get(c) for c in cdc_data.COLUMNS}, "_cdc_deleted": row["_cdc_deleted"]}
        for k, row in cdc_data.soft_delete_state(events).items()
    }


def reconciles(report) -> bool:
    return report.records == report.applied + report.dead_lettered + report.skipped
