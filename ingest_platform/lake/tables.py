"""Where a dataset's Delta table lives, and reading what one commit wrote."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pyarrow.fs as pafs
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError, TableNotFoundError

from ingest_platform.lake.storage import S3Config, describe_access_error, filesystem, is_s3, s3_uri


class LakeAccessError(RuntimeError):
    """The lake cannot be reached (missing bucket, bad credentials, wrong endpoint); nothing was written."""


@dataclass(frozen=True)
class LakeLocation:
    """The lake root (a local folder or an object-store URI) and the storage options to reach it."""

    root: str
    storage_options: Mapping[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:  # storage options may hold credentials
        return f"LakeLocation(root={self.root!r})"

    def table_uri(self, table_path: str) -> str:
        return f"{self.root.rstrip('/')}/{table_path}"

    def open_table(self, table_path: str) -> DeltaTable | None:
        """The table's latest snapshot, or None when no table exists there yet."""
        uri = self.table_uri(table_path)
        try:
            return DeltaTable(uri, storage_options=dict(self.storage_options) or None)
        except TableNotFoundError:
            return None
        except OSError as error:  # deltalake's I/O errors (S3: missing bucket, refused credentials, no route)
            if "://" not in self.root:
                raise
            raise LakeAccessError(describe_access_error(uri, self.storage_options, error)) from None

    def filesystem(self, table_path: str = "") -> tuple[pafs.FileSystem, str]:
        """A pyarrow filesystem with this location's endpoint and credentials, and the table's path in it."""
        return filesystem(self.table_uri(table_path).rstrip("/"), self.storage_options)


def lake_location(root: str, s3: S3Config | None = None, environ: Mapping[str, str] | None = None) -> LakeLocation:
    """The lake at ``root``: a local folder needs no options; ``s3://`` gets them from ``s3`` or the environment."""
    if not is_s3(root):
        return LakeLocation(root)
    config = s3 if s3 is not None else S3Config.from_env(environ)
    return LakeLocation(s3_uri(root), config.storage_options())


@dataclass(frozen=True)
class CommitStats:
    files: int
    bytes: int
    rows: int
    oldest_event_time: datetime | None = None  # min of the files' ``_event_time`` statistics, when collected


def commit_stats(table_uri: str, version: int, storage_options: Mapping[str, str] | None = None) -> CommitStats:
    """Files, bytes and rows added by one commit, read from that commit's log entry (O(commit), not O(table))."""
    fs, base = filesystem(table_uri, storage_options)
    with fs.open_input_stream(f"{base}/_delta_log/{version:020d}.json") as stream:
        lines = stream.read().decode("utf-8").splitlines()
    files = size = rows = 0
    oldest: datetime | None = None
    for line in lines:
        add = json.loads(line).get("add") if line.strip() else None
        if add:
            files += 1
            size += int(add.get("size", 0))
            stats = json.loads(add["stats"]) if add.get("stats") else {}
            rows += int(stats.get("numRecords", 0))
            low = (stats.get("minValues") or {}).get("_event_time")
            if isinstance(low, str):
                when = datetime.fromisoformat(low.replace("Z", "+00:00"))
                when = when if when.tzinfo else when.replace(tzinfo=timezone.utc)
                oldest = when if oldest is None else min(oldest, when)
    return CommitStats(files=files, bytes=size, rows=rows, oldest_event_time=oldest)


class TableRowCount:
    """A table's row count from its add actions' statistics (``DeltaTable.count()``), kept cheap for a caller
    that asks repeatedly (a stream's materialization reports): one handle, brought up to date by reading only
    the log entries added since the last call. None while the table does not exist or cannot be read."""

    def __init__(self, lake: LakeLocation, table_path: str):
        self.lake = lake
        self.table_path = table_path
        self._table: DeltaTable | None = None

    def rows(self) -> int | None:
        try:
            if self._table is None:
                self._table = self.lake.open_table(self.table_path)
            else:
                self._table.update_incremental()
            return None if self._table is None else self._table.count()
        except (DeltaError, LakeAccessError, OSError):
            self._table = None
            return None
