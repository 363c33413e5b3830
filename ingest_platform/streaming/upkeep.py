"""Table upkeep while streaming: checkpoints, compaction of the small files short triggers make, vacuum.

Runs on its own thread, one per stream process, never on a loop's or a commit's thread, so it never blocks
the stream. docs/DESIGN.md §10 "Upkeep" states the rules:

* **Checkpoints.** deltalake 1.6.6 writes a checkpoint by itself after a commit whose version is a multiple
  of ``delta.checkpointInterval`` (default 100: versions 99, 199, … — checked on this machine). The upkeep
  makes the cadence explicit: when the table is ``checkpoint_every`` or more versions past its last
  checkpoint (a failed post-commit hook, commits by another engine), it writes one.
* **Compaction** (Delta OPTIMIZE, ``lake/maintenance.compact``, one table partition per call): a partition
  not written for ``cold_after_s`` is compacted once it holds 2 or more small files; the partition being
  written only once it holds ``hot_min_files`` small files. At most ``max_partitions_per_pass`` partitions
  per dataset per pass. OPTIMIZE rewrites files, never rows, and carries no ``txn``: racing a stream append
  commits both (delta-rs does not see a blind append and a compaction as conflicting; tested). Racing an
  upsert's MERGE, one of the two fails its conflict check: a failed compaction is retried on a later pass,
  a failed MERGE is retried by the loop (the ledger did not move).
* **Vacuum** every ``vacuum_every_s`` with the dataset's ``vacuum_retention_hours``, at least 1 hour: a
  file being written by an in-flight commit is seconds old, so it is never taken for garbage.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from datetime import date, datetime

import pyarrow.compute as pc

from ingest_platform.catalog import Dataset
from ingest_platform.lake.health import add_actions, target_file_bytes
from ingest_platform.lake.maintenance import compact
from ingest_platform.lake.tables import LakeLocation

#: The stream never vacuums with a shorter retention than this (an in-flight commit's files are seconds old).
MIN_VACUUM_RETENTION_HOURS = 1


@dataclass(frozen=True)
class UpkeepSettings:
    every_s: float = 30.0  # how often the upkeep thread looks at each dataset
    checkpoint_every: int = 100  # versions past the last checkpoint that make the upkeep write one
    compact: bool = True
    cold_after_s: float = 300.0  # a partition not written for this long is cold
    hot_min_files: int = 50  # small files that make a partition still being written worth compacting
    max_partitions_per_pass: int = 4
    vacuum_every_s: float = 3600.0


@dataclass
class UpkeepFigures:
    checkpoints: int = 0
    compactions: int = 0
    files_compacted: int = 0
    compaction_failures: int = 0
    vacuums: int = 0
    files_vacuumed: int = 0


class TableUpkeep:
    def __init__(self, lake: LakeLocation, settings: UpkeepSettings, log: logging.Logger | None = None):
        self.lake = lake
        self.settings = settings
        self.log = log or logging.getLogger(__name__)
        self.figures: dict[str, UpkeepFigures] = {}
        self._datasets: dict[str, Dataset] = {}
        self._last_vacuum: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="stream-upkeep", daemon=True)

    def add(self, dataset: Dataset) -> None:
        with self._lock:
            self._datasets[dataset.name] = dataset
            self.figures.setdefault(dataset.name, UpkeepFigures())
            self._last_vacuum.setdefault(dataset.name, time.monotonic())

    def remove(self, name: str) -> None:
        with self._lock:
            self._datasets.pop(name, None)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 0.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _main(self) -> None:
        while not self._stop.wait(self.settings.every_s):
            with self._lock:
                datasets = list(self._datasets.values())
            for dataset in datasets:
                if self._stop.is_set():
                    return
                try:
                    self.tend(dataset)
                except Exception as error:  # noqa: BLE001 - upkeep failures never touch ingestion
                    self.log.warning(f"{dataset.name}: table upkeep failed ({error}); retried on the next pass")

    def tend(self, dataset: Dataset) -> None:
        """One pass over one table: checkpoint, compaction, vacuum (each when due)."""
        figures = self.figures.setdefault(dataset.name, UpkeepFigures())
        table = self.lake.open_table(dataset.table_path)
        if table is None:
            return
        if self._checkpoint_due(dataset, table.version()):
            table.create_checkpoint()
            figures.checkpoints += 1
        if self.settings.compact:
            for filters in self._partitions_to_compact(dataset, table):
                if self._stop.is_set():
                    return
                try:
                    report = compact(self.lake, dataset, filters or None)
                except Exception as error:  # noqa: BLE001 - a conflict with a MERGE: the next pass retries
                    figures.compaction_failures += 1
                    self.log.info(f"{dataset.name}: compaction of {filters or 'the table'} did not commit ({error})")
                    continue
                figures.compactions += 1
                figures.files_compacted += report.files_removed
        if time.monotonic() - self._last_vacuum.get(dataset.name, 0.0) >= self.settings.vacuum_every_s:
            hours = max(dataset.vacuum_retention_hours, MIN_VACUUM_RETENTION_HOURS)
            deleted = self.lake.open_table(dataset.table_path).vacuum(  # type: ignore[union-attr]
                retention_hours=hours, dry_run=False, enforce_retention_duration=False
            )
            self._last_vacuum[dataset.name] = time.monotonic()
            figures.vacuums += 1
            figures.files_vacuumed += len(deleted)

    def _checkpoint_due(self, dataset: Dataset, version: int) -> bool:
        filesystem, base = self.lake.filesystem(f"{dataset.table_path}/_delta_log/_last_checkpoint")
        try:
            with filesystem.open_input_stream(base) as stream:
                last = int(json.loads(stream.read())["version"])
        except (FileNotFoundError, OSError, KeyError, ValueError):
            last = -1
        return version - last >= self.settings.checkpoint_every

    def _partitions_to_compact(self, dataset: Dataset, table) -> list[list[tuple[str, str, str]]]:
        """Table partitions worth an OPTIMIZE now (filters for each), the most small files first."""
        actions = add_actions(table)
        if actions.num_rows < 2:
            return []
        small_limit = min(target_file_bytes(dataset), int(dataset.slo.file_size_mb.min * 1024 * 1024))
        columns = [f"partition.{c}" for c in dataset.partition_by]
        sizes = actions.column("size_bytes")
        small = actions.filter(pc.less(sizes, small_limit))
        if small.num_rows < 2:
            return []
        stamps = small.column("modification_time")
        grouped = small.append_column("_mtime_ms", pc.cast(stamps, "int64")) if columns else None
        now_ms = time.time() * 1000
        candidates: list[tuple[int, list[tuple[str, str, str]]]] = []
        if grouped is None:
            newest = pc.max(pc.cast(stamps, "int64")).as_py() or 0
            hot = now_ms - newest < self.settings.cold_after_s * 1000
            if small.num_rows >= (self.settings.hot_min_files if hot else 2):
                candidates.append((small.num_rows, []))
        else:
            stats = grouped.group_by(columns).aggregate([("_mtime_ms", "max"), ("_mtime_ms", "count")])
            for row in stats.to_pylist():
                hot = now_ms - row["_mtime_ms_max"] < self.settings.cold_after_s * 1000
                if row["_mtime_ms_count"] >= (self.settings.hot_min_files if hot else 2):
                    filters = [(c, "=", _partition_text(row[f"partition.{c}"])) for c in dataset.partition_by]
                    candidates.append((row["_mtime_ms_count"], filters))
        candidates.sort(key=lambda item: -item[0])
        return [filters for _, filters in candidates[: self.settings.max_partitions_per_pass]]


def _partition_text(value: object) -> str:
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    return str(value)
