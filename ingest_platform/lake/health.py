"""Is a dataset's Delta table healthy against the tuning guide's targets? (docs/DESIGN.md §8)

Plain functions over a table and its Delta log, no Dagster: each returns a ``Finding`` (passed, a one-line
summary, plain-number metadata). The Dagster layer (``ingest_platform/defs/checks.py``) turns them into asset
check results; tests call them directly too.

Sources: the snapshot's add actions (file sizes, row counts), the Delta log's commitInfo (each ingest commit's
``ingest_platform.run`` metadata: run id, records, skipped, per-partition ranges, start time, recorded
retention loss), the ledger (``txn`` versions) and, for latency and key uniqueness, the table's rows.
commitInfo is not kept in checkpoints: once old log files are cleaned up (``delta.logRetentionDuration``,
30 days) history-based figures cover what is left, and the metadata says from which version.
"""

from __future__ import annotations

import functools
import json
import operator
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

from ingest_platform.catalog import Dataset
from ingest_platform.lake.commit import run_metadata_of
from ingest_platform.lake.ledger import read_ledger
from ingest_platform.lake.tables import commit_stats

MB = 1024 * 1024
#: file_size fails when more than this share of the files are small files that compaction could merge.
SMALL_FILE_TOLERANCE = 0.10
#: Records/s is judged only for runs of at least this many seconds' worth of records at the target rate;
#: smaller runs are dominated by fixed start-up cost (consumer, metadata, plan), not by throughput.
MIN_JUDGED_SECONDS_OF_DATA = 1.0
#: Preferred data-file size (the guide's 256 MB Parquet block), clamped to the dataset's file-size target.
PREFERRED_FILE_MB = 256


@dataclass(frozen=True)
class Finding:
    passed: bool
    summary: str
    metadata: dict[str, object] = field(default_factory=dict)


def target_file_bytes(dataset: Dataset) -> int:
    """The engines' (and compaction's) file size: 256 MB clamped into the dataset's [min, max] target."""
    low, high = dataset.slo.file_size_mb.min, dataset.slo.file_size_mb.max
    return int(min(high, max(low, PREFERRED_FILE_MB)) * MB)


# --- the Delta log ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IngestCommit:
    version: int
    timestamp: datetime
    run: dict  # the commit's ``ingest_platform.run`` metadata


@dataclass(frozen=True)
class History:
    """The ingest commits still described by the Delta log, oldest first."""

    commits: list[IngestCommit]
    earliest_version: int | None  # oldest version whose commitInfo is still readable
    latest_version: int

    @property
    def complete(self) -> bool:
        return self.earliest_version == 0

    def last_run(self) -> list[IngestCommit]:
        """The commits of the most recent ingest run (one run may write several commits)."""
        if not self.commits:
            return []
        run_id = self.commits[-1].run.get("run_id")
        return [c for c in self.commits if c.run.get("run_id") == run_id]

    def describe(self) -> dict[str, object]:
        return {"history_from_version": self.earliest_version, "history_complete": self.complete}


def read_history(table: DeltaTable) -> History:
    entries = table.history()
    commits = []
    for entry in entries:
        run = run_metadata_of(entry)
        if run is not None and "ranges" in run:
            stamp = datetime.fromtimestamp(int(entry["timestamp"]) / 1000, timezone.utc)
            commits.append(IngestCommit(version=int(entry["version"]), timestamp=stamp, run=run))
    commits.sort(key=lambda c: c.version)
    earliest = min((int(e["version"]) for e in entries), default=None)
    return History(commits=commits, earliest_version=earliest, latest_version=table.version())


def add_actions(table: DeltaTable) -> pa.Table:
    """The snapshot's data files (path, size, modification time, partition values, stats), one row each."""
    return pa.table(table.get_add_actions(flatten=True))


# --- file_size ----------------------------------------------------------------------------------------------


def check_file_size(dataset: Dataset, table: DeltaTable) -> Finding:
    """Data files inside [min, max] MB. Small files only count against the table when compaction could
    merge them (two or more small files in one table partition): a partition whose whole content is below the
    minimum cannot do better, and failing for it would re-trigger a compaction that changes nothing."""
    low, high = dataset.slo.file_size_mb.min, dataset.slo.file_size_mb.max
    files = add_actions(table)
    sizes = [s / MB for s in files["size_bytes"].to_pylist()]
    partition_columns = [c for c in files.column_names if c.startswith("partition.")]
    keys = list(zip(*(files[c].to_pylist() for c in partition_columns))) if partition_columns else [()] * len(sizes)
    small_per_partition: dict[tuple, int] = defaultdict(int)
    for key, size in zip(keys, sizes):
        if size < low:
            small_per_partition[key] += 1
    small = sum(small_per_partition.values())
    compactable = sum(n for n in small_per_partition.values() if n >= 2)
    large = sum(1 for s in sizes if s > high)
    count = len(sizes)
    metadata: dict[str, object] = {
        "files": count,
        "total_mb": round(sum(sizes), 3),
        "median_mb": round(statistics.median(sizes), 3) if sizes else 0.0,
        "p10_mb": round(_quantile(sizes, 0.10), 3),
        "p90_mb": round(_quantile(sizes, 0.90), 3),
        "min_target_mb": low,
        "max_target_mb": high,
        "small_files": small,
        "small_file_ratio": round(small / count, 4) if count else 0.0,
        "compactable_small_files": compactable,
        "large_files": large,
        "table_partitions": len(set(keys)),
    }
    passed = large == 0 and compactable <= SMALL_FILE_TOLERANCE * count
    if not count:
        return Finding(True, "no data files yet", metadata)
    summary = (
        f"{count} files, median {metadata['median_mb']} MB (p10 {metadata['p10_mb']}, p90 {metadata['p90_mb']}); "
        f"{small} below {low:g} MB ({compactable} compactable), {large} above {high:g} MB"
    )
    return Finding(passed, summary, metadata)


def _quantile(values: list[float], q: float) -> float:
    """Nearest-rank quantile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q * (len(ordered) - 1)))))]


# --- throughput_slo -----------------------------------------------------------------------------------------


def check_throughput(dataset: Dataset, history: History) -> Finding:
    """Records/s of the last run: its records / (its last commit's time - its start)."""
    target = dataset.slo.throughput_rps
    run = history.last_run()
    if not run:
        return Finding(True, "no ingest run in the table's history yet", {"target_rps": target, **history.describe()})
    records = sum(int(c.run.get("records", 0)) for c in run)
    started = run[0].run.get("started_at")
    metadata: dict[str, object] = {"run_id": str(run[0].run.get("run_id")), "records": records, "target_rps": target,
                                   "commits": len(run)}  # fmt: skip
    if started is None:
        return Finding(True, "the last run recorded no start time (older engine version): not judged", metadata)
    duration = max((run[-1].timestamp.timestamp() - float(started)), 1e-3)
    rate = records / duration
    metadata.update(duration_s=round(duration, 3), records_per_s=round(rate, 1))
    if records < target * MIN_JUDGED_SECONDS_OF_DATA:
        return Finding(True, f"{records} records in the last run: too few to judge {target:g} records/s", metadata)
    verdict = "≥" if rate >= target else "<"
    return Finding(rate >= target, f"{rate:,.0f} records/s {verdict} target {target:,.0f}", metadata)


# --- latency_slo --------------------------------------------------------------------------------------------


def check_latency(dataset: Dataset, table: DeltaTable, history: History) -> Finding:
    """p95 of (commit time - ``_event_time``) over the rows the last run wrote."""
    target = dataset.slo.latency_s
    run = history.last_run()
    if not run:
        return Finding(True, "no ingest run in the table's history yet", {"target_s": target, **history.describe()})
    lags = _run_latencies(table, run)
    metadata: dict[str, object] = {"run_id": str(run[0].run.get("run_id")), "rows": len(lags), "target_s": target}
    if not lags:
        return Finding(True, "the last run wrote no rows with an event time", metadata)
    p95 = _quantile(lags, 0.95)
    metadata.update(p50_s=round(_quantile(lags, 0.5), 3), p95_s=round(p95, 3), max_s=round(max(lags), 3))
    verdict = "≤" if p95 <= target else ">"
    return Finding(p95 <= target, f"p95 event→commit {p95:,.1f} s {verdict} target {target:g} s", metadata)


def _run_latencies(table: DeltaTable, run: list[IngestCommit]) -> list[float]:
    """Seconds from each row's event time to its commit, for the rows of ``run``'s commits (found by their
    partition/offset ranges in the current snapshot, so a compaction in between does not matter)."""

    def rows_of(commit: IngestCommit) -> pc.Expression:
        terms = [
            (pc.field("_kafka_partition") == int(p)) & (pc.field("_kafka_offset") >= int(first))
            & (pc.field("_kafka_offset") <= int(last))
            for p, (first, last) in commit.run["ranges"].items()
        ]  # fmt: skip
        return functools.reduce(operator.or_, terms, pc.scalar(False))

    wanted = functools.reduce(operator.or_, (rows_of(c) for c in run), pc.scalar(False))
    rows = table.to_pyarrow_dataset().to_table(
        columns=["_kafka_partition", "_kafka_offset", "_event_time"], filter=wanted
    )
    lags: list[float] = []
    micros = pc.cast(rows["_event_time"], pa.int64())  # UTC microseconds
    for commit in run:
        mine = pc.drop_null(pc.filter(micros, _mask(rows, commit)))
        committed = int(commit.timestamp.timestamp() * 1_000_000)
        lags.extend(pc.divide(pc.subtract(committed, mine).cast(pa.float64()), 1e6).to_pylist())
    return lags


def _mask(rows: pa.Table, commit: IngestCommit) -> pa.ChunkedArray:
    partition, offset = rows["_kafka_partition"], rows["_kafka_offset"]
    mask = pa.chunked_array([pa.array([False] * rows.num_rows, pa.bool_())])
    for p, (first, last) in commit.run["ranges"].items():
        inside = pc.and_(
            pc.equal(partition, int(p)), pc.and_(pc.greater_equal(offset, int(first)), pc.less_equal(offset, int(last)))
        )
        mask = pc.or_(mask, inside)
    return mask


# --- freshness ----------------------------------------------------------------------------------------------


#: A continuous dataset's freshness limit without ``slo.freshness_s``: this many trigger intervals (a batch
#: closes one interval after its first record) plus the time a commit may take, retries included.
FRESHNESS_TRIGGERS = 3
FRESHNESS_COMMIT_ALLOWANCE_S = 60.0


def freshness_limit(dataset: Dataset) -> tuple[float | None, str]:
    """(limit in seconds or None, where it comes from): ``slo.freshness_s``; for a continuous dataset without
    it, ``FRESHNESS_TRIGGERS`` × ``trigger_interval_s`` + ``FRESHNESS_COMMIT_ALLOWANCE_S``; else none."""
    if dataset.slo.freshness_s is not None:
        return dataset.slo.freshness_s, "slo.freshness_s"
    if dataset.continuous:
        limit = FRESHNESS_TRIGGERS * dataset.trigger_interval_s + FRESHNESS_COMMIT_ALLOWANCE_S
        return limit, (f"{FRESHNESS_TRIGGERS} × trigger_interval_s ({dataset.trigger_interval_s:g} s) + "
                       f"{FRESHNESS_COMMIT_ALLOWANCE_S:g} s")  # fmt: skip
    return None, "no limit set (slo.freshness_s)"


def check_freshness(dataset: Dataset, history: History, now: datetime | None = None,
                    waiting: Callable[[], int | str] | None = None) -> Finding:  # fmt: skip
    """Age of the last ingest commit against ``freshness_limit``. Without a limit the age is reported and the
    check passes. A stream makes no commit while its topic is idle: for a continuous dataset older than its
    limit, ``waiting`` (records not yet in the table, or why they cannot be counted) tells an idle topic
    (passes) from a stalled stream (fails); when they cannot be counted the age is reported, not judged."""
    limit, source = freshness_limit(dataset)
    now = now or datetime.now(timezone.utc)
    metadata: dict[str, object] = {"limit_s": limit if limit is not None else "none", "limit_from": source,
                                   **history.describe()}  # fmt: skip
    if not history.commits:
        passed = limit is None
        return Finding(passed, "no ingest commit in the table's available history", metadata)
    last = history.commits[-1]
    age = (now - last.timestamp).total_seconds()
    metadata.update(age_s=round(age, 1), last_commit_version=last.version, last_commit_at=last.timestamp.isoformat())
    if limit is None:
        return Finding(True, f"last commit {age:,.0f} s ago; {source}", metadata)
    if age <= limit:
        return Finding(True, f"last commit {age:,.0f} s ago ≤ limit {limit:g} s ({source})", metadata)
    stale = f"last commit {age:,.0f} s ago > limit {limit:g} s ({source})"
    if not dataset.continuous or waiting is None:
        return Finding(False, stale, metadata)
    lag = waiting()
    if isinstance(lag, str):
        metadata["judged"] = False
        return Finding(True, f"{stale}, but whether records wait cannot be told ({lag}): not judged", metadata)
    metadata["records_waiting"] = lag
    if lag == 0:
        return Finding(True, f"{stale}, but the topic holds nothing new: an idle stream makes no commits", metadata)
    return Finding(False, f"{stale} while {lag:,} records wait in the topic: is the stream running?", metadata)


# --- no_loss ------------------------------------------------------------------------------------------------


def check_no_loss(
    dataset: Dataset,
    table: DeltaTable,
    table_uri: str,
    history: History,
    storage_options: Mapping[str, str] | None = None,
) -> Finding:
    """The ledger is contiguous per partition and every consumed record is accounted for.

    Per Kafka partition, each ingest commit's range must start right after the previous one ended (a gap is
    allowed only where a commit recorded it under ``data_loss``, i.e. retention deleted it); a partition first
    read by a later run than the table's first starts at 0 (it was added to the topic later), and the ledger
    (``txn`` version) must equal the last range's end. Per commit, records consumed = rows written +
    dead-lettered + skipped (append tables; rows from the commit's add actions). For append tables with the
    whole history readable, the snapshot's row count must equal the rows all ingest commits added.
    """
    segments: dict[int, list[tuple[int, int, int, str]]] = defaultdict(list)  # p -> (first, last, version, kind)
    problems: list[dict[str, object]] = []
    lost_records = 0
    rows_added = 0
    unknown_skipped = 0
    for commit in history.commits:
        for partition, (first, last) in commit.run.get("data_loss", {}).items():
            segments[int(partition)].append((int(first), int(last), commit.version, "loss"))
            lost_records += int(last) - int(first) + 1
        for partition, (first, last) in commit.run["ranges"].items():
            segments[int(partition)].append((int(first), int(last), commit.version, "data"))
        if dataset.mode == "upsert":
            problem = _upsert_counts_problem(commit)
            if problem:
                problems.append(problem)
        if dataset.mode == "append":
            rows = commit_stats(table_uri, commit.version, storage_options).rows
            rows_added += rows
            consumed = int(commit.run.get("records", 0))
            dead = int(commit.run.get("dead_lettered", 0))
            skipped = commit.run.get("skipped")
            if skipped is None:
                unknown_skipped += 1
                if rows + dead > consumed:
                    problems.append({"version": commit.version, "problem": "rows + dead-lettered > consumed",
                                     "consumed": consumed, "rows": rows, "dead_lettered": dead})  # fmt: skip
            elif consumed != rows + dead + int(skipped):
                problems.append({"version": commit.version, "problem": "consumed != rows + dead-lettered + skipped",
                                 "consumed": consumed, "rows": rows, "dead_lettered": dead,
                                 "skipped": int(skipped)})  # fmt: skip
    gaps = overlaps = 0
    last_of: dict[int, int] = {}
    run_of = {c.version: c.run.get("run_id") for c in history.commits}
    first_run = run_of[history.commits[0].version] if history.commits else None
    for partition, parts in sorted(segments.items()):
        parts.sort(key=lambda s: (s[2], s[0]))
        previous: int | None = None
        first, _, version, kind = parts[0]
        if history.complete and first > 0 and kind == "data" and run_of[version] != first_run:
            # Begun after the table's first run: the partition was added later and starts at 0 (DESIGN §2).
            gaps += 1
            problems.append({"partition": partition, "version": version, "problem": "gap",
                             "expected_first": 0, "first": first})  # fmt: skip
        for first, last, version, _kind in parts:
            if previous is not None and first != previous + 1:
                what = "gap" if first > previous + 1 else "overlap"
                gaps += what == "gap"
                overlaps += what == "overlap"
                problems.append({"partition": partition, "version": version, "problem": what,
                                 "expected_first": previous + 1, "first": first})  # fmt: skip
            previous = last if previous is None else max(previous, last)
        last_of[partition] = previous  # type: ignore[assignment]
    ledger = read_ledger(table, dataset.name, last_of)
    for partition, last in sorted(last_of.items()):
        if ledger.get(partition) != last:
            problems.append({"partition": partition, "problem": "ledger differs from the last committed range",
                             "ledger": ledger.get(partition), "last_range_end": last})  # fmt: skip
    table_rows = sum(n or 0 for n in add_actions(table)["num_records"].to_pylist())
    metadata: dict[str, object] = {
        "commits_checked": len(history.commits),
        "partitions": len(last_of),
        "gaps": gaps,
        "overlaps": overlaps,
        "retention_loss_records": lost_records,
        "table_rows": table_rows,
        "ledger": {str(p): o for p, o in sorted(ledger.items())},
        **history.describe(),
    }
    if unknown_skipped:
        metadata["commits_without_skipped_count"] = unknown_skipped
    if dataset.mode == "append" and history.complete:
        metadata["rows_added_by_ingest_commits"] = rows_added
        if rows_added != table_rows:
            problems.append({"problem": "table rows differ from the rows ingest commits added",
                             "table_rows": table_rows, "rows_added": rows_added})  # fmt: skip
    if problems:
        metadata["problems"] = problems[:20]
        metadata["problem_count"] = len(problems)
        first = problems[0]
        return Finding(False, f"{len(problems)} problem(s); first: {json.dumps(first)}", metadata)
    scope = "whole history" if history.complete else f"history from version {history.earliest_version}"
    note = f", {lost_records} records lost to retention (recorded)" if lost_records else ""
    return Finding(True, f"{len(history.commits)} commits contiguous on {len(last_of)} partitions ({scope}){note}",
                   metadata)  # fmt: skip


def _upsert_counts_problem(commit: IngestCommit) -> dict[str, object] | None:
    """Upsert commits: records consumed = changes applied + dead-lettered + skipped (rows are not comparable:
    a MERGE updates and deletes)."""
    run = commit.run
    if "applied" not in run:
        return None
    counts = {name: int(run.get(name, 0)) for name in ("records", "applied", "dead_lettered", "skipped")}
    if counts["records"] == counts["applied"] + counts["dead_lettered"] + counts["skipped"]:
        return None
    return {"version": commit.version, "problem": "consumed != applied + dead-lettered + skipped", **counts}


# --- key_unique ---------------------------------------------------------------------------------------------


def check_key_unique(dataset: Dataset, table: DeltaTable, history: History | None = None) -> Finding:
    """No key of an upsert table appears twice (reads the key columns only).

    The key is the catalog's, else (Debezium keyed by the message key) the one the last commit recorded.
    """
    keys = list(dataset.key)
    if not keys and history is not None and history.commits:
        keys = list(history.commits[-1].run.get("key") or [])
    if not keys:
        return Finding(True, "no key recorded yet (no upsert commit)", {})
    metadata: dict[str, object] = {"key": ", ".join(keys)}
    missing = [k for k in keys if k not in table.schema().to_arrow().names]
    if missing:
        return Finding(False, f"key column(s) {missing} missing from the table", metadata)
    rows = table.to_pyarrow_dataset().to_table(columns=keys)
    counts = rows.group_by(keys).aggregate([([], "count_all")])
    duplicated = counts.filter(pc.greater(counts["count_all"], 1))
    metadata.update(rows=rows.num_rows, distinct_keys=counts.num_rows, duplicated_keys=duplicated.num_rows,
                    surplus_rows=rows.num_rows - counts.num_rows)  # fmt: skip
    if duplicated.num_rows:
        metadata["sample"] = [{k: _plain(v) for k, v in row.items()} for row in duplicated.slice(0, 5).to_pylist()]
        return Finding(False, f"{duplicated.num_rows} keys appear more than once", metadata)
    return Finding(True, f"{counts.num_rows} keys, each once", metadata)


def _plain(value: object) -> object:
    return value if isinstance(value, (int, float, str, bool, type(None))) else str(value)


# --- all of them --------------------------------------------------------------------------------------------

FILE_SIZE = "file_size"
THROUGHPUT_SLO = "throughput_slo"
LATENCY_SLO = "latency_slo"
FRESHNESS = "freshness"
NO_LOSS = "no_loss"
KEY_UNIQUE = "key_unique"
ALL_CHECKS = (FILE_SIZE, THROUGHPUT_SLO, LATENCY_SLO, FRESHNESS, NO_LOSS, KEY_UNIQUE)


def check_names(dataset: Dataset) -> tuple[str, ...]:
    """The checks a dataset has: ``key_unique`` only for upsert datasets."""
    return tuple(name for name in ALL_CHECKS if name != KEY_UNIQUE or dataset.mode == "upsert")


def evaluate(
    dataset: Dataset, table: DeltaTable | None, table_uri: str, names: Iterable[str] | None = None,
    now: datetime | None = None, storage_options: Mapping[str, str] | None = None,
    waiting: Callable[[], int | str] | None = None,
) -> dict[str, Finding]:  # fmt: skip
    """Run the named checks (default: all of the dataset's) against the table; no table -> nothing ingested
    yet: every check passes except a set ``slo.freshness_s`` (and a continuous dataset's derived limit while
    records wait). ``waiting``: see ``check_freshness``."""
    selected = [n for n in check_names(dataset) if names is None or n in set(names)]
    if table is None:
        found = {name: Finding(True, f"no table at {table_uri} yet", {"table_uri": table_uri}) for name in selected}
        if FRESHNESS in found and (dataset.slo.freshness_s is not None or dataset.continuous):
            lag = waiting() if dataset.slo.freshness_s is None and waiting is not None else None
            if not (isinstance(lag, str) or lag == 0):
                found[FRESHNESS] = Finding(False, f"no table at {table_uri} yet"
                                           + (f" while {lag:,} records wait in the topic" if lag else ""),
                                           {"table_uri": table_uri})  # fmt: skip
        return found
    needs_history = set(selected) - {FILE_SIZE, KEY_UNIQUE} or (KEY_UNIQUE in selected and not dataset.key)
    history = read_history(table) if needs_history else None
    runners: Mapping[str, object] = {
        FILE_SIZE: lambda: check_file_size(dataset, table),
        THROUGHPUT_SLO: lambda: check_throughput(dataset, history),
        LATENCY_SLO: lambda: check_latency(dataset, table, history),
        FRESHNESS: lambda: check_freshness(dataset, history, now, waiting),
        NO_LOSS: lambda: check_no_loss(dataset, table, table_uri, history, storage_options),
        KEY_UNIQUE: lambda: check_key_unique(dataset, table, history),
    }
    return {name: runners[name]() for name in selected}  # type: ignore[operator]
