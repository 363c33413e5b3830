"""Where a dataset's Delta table lives, and reading what one commit wrote."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pyarrow.fs as pafs
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError


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
        try:
            return DeltaTable(self.table_uri(table_path), storage_options=dict(self.storage_options) or None)
        except TableNotFoundError:
            return None


@dataclass(frozen=True)
class CommitStats:
    files: int
    bytes: int
    rows: int
    oldest_event_time: datetime | None = None  # min of the files' ``_event_time`` statistics, when collected


def commit_stats(table_uri: str, version: int) -> CommitStats:
    """Files, bytes and rows added by one commit, read from that commit's log entry (O(commit), not O(table))."""
    filesystem, base = pafs.FileSystem.from_uri(table_uri)
    with filesystem.open_input_stream(f"{base}/_delta_log/{version:020d}.json") as stream:
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
