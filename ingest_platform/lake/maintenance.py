"""Compaction and vacuum of a dataset's table (docs/DESIGN.md §8). No Dagster here.

Compaction is Delta OPTIMIZE (deltalake ``optimize.compact``): per table partition, small files are bin-packed
into files of about the dataset's target size (the engines' 256 MB clamped into ``slo.file_size_mb``). It
rewrites files, not rows: the snapshot's content is unchanged, the commit carries no ``txn`` action, and the
ledger (kept in every snapshot) reads the same afterwards. Appends and OPTIMIZE do not conflict in delta-rs
(checked both ways; see §8), and the Dagster jobs run in the dataset's pool anyway.

Vacuum deletes files that no snapshot within ``vacuum_retention_hours`` (catalog) still references. The
catalog's value rules, also below the table's own ``delta.deletedFileRetentionDuration``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

from deltalake import CommitProperties

from ingest_platform.catalog import Dataset
from ingest_platform.lake.commit import WRITER_PROPERTIES
from ingest_platform.lake.health import target_file_bytes
from ingest_platform.lake.tables import LakeLocation

MAINTENANCE_METADATA_KEY = "ingest_platform.maintenance"


@dataclass(frozen=True)
class CompactionReport:
    dataset: str
    table_uri: str
    version_before: int | None
    version_after: int | None
    files_before: int
    files_after: int
    files_removed: int
    files_added: int
    partitions_optimized: int
    target_file_bytes: int
    duration_s: float

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class VacuumReport:
    dataset: str
    table_uri: str
    retention_hours: int
    files_deleted: int
    duration_s: float

    def as_dict(self) -> dict:
        return asdict(self)


def compact(
    lake: LakeLocation, dataset: Dataset, partition_filters: list[tuple[str, str, str]] | None = None
) -> CompactionReport:
    """Bin-pack the table's small files up to the dataset's target size (no table: nothing to do).

    ``partition_filters`` (deltalake's ``[(column, "=", value), ...]``) limits the work to one table partition.
    """
    started = time.monotonic()
    uri = lake.table_uri(dataset.table_path)
    target = target_file_bytes(dataset)
    table = lake.open_table(dataset.table_path)
    if table is None:
        return CompactionReport(dataset.name, uri, None, None, 0, 0, 0, 0, 0, target, 0.0)
    before_version, before_files = table.version(), len(table.file_uris())
    metrics = table.optimize.compact(
        partition_filters=partition_filters,
        target_size=target,
        writer_properties=WRITER_PROPERTIES,
        commit_properties=CommitProperties(
            custom_metadata={MAINTENANCE_METADATA_KEY: json.dumps({"operation": "compact", "target_size": target})}
        ),
    )
    table.update_incremental()
    return CompactionReport(
        dataset=dataset.name,
        table_uri=uri,
        version_before=before_version,
        version_after=table.version(),
        files_before=before_files,
        files_after=len(table.file_uris()),
        files_removed=int(metrics.get("numFilesRemoved", 0)),
        files_added=int(metrics.get("numFilesAdded", 0)),
        partitions_optimized=int(metrics.get("partitionsOptimized", 0)),
        target_file_bytes=target,
        duration_s=round(time.monotonic() - started, 3),
    )


def vacuum(lake: LakeLocation, dataset: Dataset) -> VacuumReport:
    """Delete files unreferenced for longer than the catalog's ``vacuum_retention_hours``."""
    started = time.monotonic()
    uri = lake.table_uri(dataset.table_path)
    hours = dataset.vacuum_retention_hours
    table = lake.open_table(dataset.table_path)
    deleted: list[str] = []
    if table is not None:
        deleted = table.vacuum(retention_hours=hours, dry_run=False, enforce_retention_duration=False)
    return VacuumReport(dataset.name, uri, hours, len(deleted), round(time.monotonic() - started, 3))
