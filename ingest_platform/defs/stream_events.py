"""What a stream process looks like in Dagster (docs/DESIGN.md §10.8): its commits as asset materializations,
its datasets' health as the asset check ``stream``.

``StreamEvents`` sits between a ``StreamProcess`` (``on_commit``, ``on_state``: called on the stream's threads,
they only enqueue) and whoever writes to Dagster — the stream job's op (``defs/streams.py``, yields the events
into its run) or an external worker's reporter (``defs/stream_reporter.py``, runless events). ``take()``
returns the Dagster events due now: the materialization summaries of the core
(``streaming/summaries.py``: one per commit while commits are rarer than ``materialization_interval_s``, else
one per interval), and a ``stream`` check evaluation when a dataset starts (passed) or stops on an error
(failed, ERROR, the message as its description) — the asset turns red in the UI while its group streams on.
"""

from __future__ import annotations

import queue
from collections.abc import Iterable

import dagster as dg

from ingest_platform.catalog import Dataset
from ingest_platform.defs.assets import table_metadata
from ingest_platform.lake.tables import LakeLocation, TableRowCount
from ingest_platform.streaming.events import FAILED, RUNNING, CommitEvent, DatasetState
from ingest_platform.streaming.summaries import CommitSummary, MaterializationSummaries

#: The asset check that says whether the stream serves a continuous dataset (reported, never computed).
STREAM_CHECK = "stream"

StreamEvent = dg.AssetMaterialization | dg.AssetCheckEvaluation


def summary_materialization(dataset: Dataset, summary: CommitSummary, row_count: int | None, runner: str,
                            schema: tuple[str, list[str]] | None = None) -> dg.AssetMaterialization:  # fmt: skip
    """The standard ``dagster/*`` metadata of the batch materializations (the column schema from ``schema``:
    the Delta schema JSON and partition columns), and the same plottable names (records, rows_written, bytes,
    files_written, records_per_s), plus the stream's own figures."""
    versions = (f"{summary.first_version}" if summary.commits == 1
                else f"{summary.first_version}–{summary.last_version}")  # fmt: skip
    metadata: dict[str, dg.MetadataValue] = {
        **table_metadata(dataset, summary.table_uri, row_count, schema),
        "commits": dg.MetadataValue.int(summary.commits),
        "delta_versions": dg.MetadataValue.text(versions),
        "last_version": dg.MetadataValue.int(summary.last_version),
        "records": dg.MetadataValue.int(summary.records),
        "rows_written": dg.MetadataValue.int(summary.rows),
        "applied": dg.MetadataValue.int(summary.applied),
        "skipped": dg.MetadataValue.int(summary.skipped),
        "dead_lettered": dg.MetadataValue.int(summary.dead_letters),
        "bytes": dg.MetadataValue.int(summary.bytes),
        "files_written": dg.MetadataValue.int(summary.files),
        "bytes_written": dg.MetadataValue.int(summary.bytes_written),
        "records_per_s": dg.MetadataValue.float(round(summary.records_per_s, 1)),
        "window_s": dg.MetadataValue.float(round(summary.window_s, 1)),
        "commit_duration_max_s": dg.MetadataValue.float(round(summary.commit_duration_max_s, 3)),
        "offsets": dg.MetadataValue.json({str(p): {"first": r[0], "last": r[1]}
                                          for p, r in sorted(summary.ranges.items())}),  # fmt: skip
        "stream_group": dg.MetadataValue.text(summary.pipeline),
        "stream_runner": dg.MetadataValue.text(runner),
    }
    for name, value in (("latency_p50_s", summary.latency_p50_s), ("latency_p99_s", summary.latency_p99_s)):
        if value is not None:
            metadata[name] = dg.MetadataValue.float(round(value, 3))
    for name in ("rows_inserted", "rows_updated", "rows_deleted"):
        if getattr(summary, name):
            metadata[name] = dg.MetadataValue.int(getattr(summary, name))
    if summary.last_dlq_version is not None:
        metadata["dlq_version"] = dg.MetadataValue.int(summary.last_dlq_version)
    description = (f"{summary.commits} stream commit{'s' if summary.commits != 1 else ''} (Delta version "
                   f"{versions}): {summary.records:,} records over {summary.window_s:,.0f} s")  # fmt: skip
    return dg.AssetMaterialization(asset_key=dataset.asset_path, description=description, metadata=metadata)


def stream_check_evaluation(dataset: Dataset, state: DatasetState, where: str) -> dg.AssetCheckEvaluation:
    """Passed when the dataset's loop runs; failed (ERROR) with the loop's message when it stopped on an error."""
    failed = state.status == FAILED
    description = (f"stopped on an error in {where}: {state.error}; the other datasets of stream group "
                   f"'{dataset.pipeline}' go on. Fix the cause and restart the group's stream (it resumes from the "
                   "table's ledger)") if failed else f"streaming in {where}"  # fmt: skip
    metadata: dict[str, dg.MetadataValue] = {
        "status": dg.MetadataValue.text(state.status),
        "stream_group": dg.MetadataValue.text(dataset.pipeline),
    }
    if failed and state.error_kind:
        metadata["error_kind"] = dg.MetadataValue.text(state.error_kind)
    return dg.AssetCheckEvaluation(
        asset_key=dg.AssetKey(dataset.asset_path), check_name=STREAM_CHECK, passed=not failed,
        severity=dg.AssetCheckSeverity.ERROR, description=description, metadata=metadata,
    )  # fmt: skip


class StreamEvents:
    """One stream process's commits and states, turned into Dagster events by ``take()`` (one reader)."""

    def __init__(self, datasets: Iterable[Dataset], lake: LakeLocation, runner: str, where: str):
        self.lake = lake
        self.runner = runner  # "dagster" or "external": the stream_runner, shown on each materialization
        self.where = where  # "Dagster run <id>" or "external stream worker <host>": said on the check
        self.datasets: dict[str, Dataset] = {}
        self.summaries = MaterializationSummaries()
        self._row_counts: dict[str, TableRowCount] = {}
        self._states: queue.SimpleQueue[DatasetState] = queue.SimpleQueue()
        self.failed: dict[str, str] = {}  # dataset -> message, for the caller's logs
        for dataset in datasets:
            self.watch(dataset)

    def watch(self, dataset: Dataset) -> None:
        self.datasets[dataset.name] = dataset
        self.summaries.watch(dataset)
        self._row_counts.setdefault(dataset.name, TableRowCount(self.lake, dataset.table_path))

    # -- the stream's callbacks (its threads; they only enqueue) -------------------------------------------------

    def on_commit(self, event: CommitEvent) -> None:
        self.summaries.add(event)

    def on_state(self, state: DatasetState) -> None:
        self._states.put(state)

    # -- the reporter --------------------------------------------------------------------------------------------

    def take(self, final: bool = False) -> list[StreamEvent]:
        """The events due now (``final``: everything pending, the stream has stopped)."""
        events: list[StreamEvent] = []
        while True:
            try:
                state = self._states.get_nowait()
            except queue.Empty:
                break
            dataset = self.datasets.get(state.dataset)
            if dataset is None or state.status not in (RUNNING, FAILED):
                continue
            if state.status == FAILED:
                self.failed[state.dataset] = state.error or "failed"
            events.append(stream_check_evaluation(dataset, state, self.where))
        for summary in self.summaries.flush() if final else self.summaries.due():
            dataset = self.datasets.get(summary.dataset)
            if dataset is not None:
                table = self._row_counts[dataset.name]
                rows = table.rows()
                events.append(summary_materialization(dataset, summary, rows, self.runner, table.schema()))
        return events
