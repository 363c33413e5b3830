"""Appending or merging rows and their offsets into a Delta table in one commit (docs/DESIGN.md §2, §9.2)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, WriterProperties, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, SchemaMismatchError

from ingest_platform.lake.ledger import ledger_transactions, read_ledger
from ingest_platform.lake.tables import LakeLocation

#: Parquet settings from the guide: snappy, 1 MB pages.
WRITER_PROPERTIES = WriterProperties(compression="SNAPPY", data_page_size_limit=1_048_576)
RUN_METADATA_KEY = "ingest_platform.run"


class LakeWriteError(RuntimeError):
    """A Delta commit failed; the table and its ledger are unchanged."""


class ConcurrentWriterError(LakeWriteError):
    """Another writer advanced the dataset's ledger while this run was reading."""


class LakeSchemaError(LakeWriteError):
    """The rows do not fit the table (schema or partitioning): retrying the same rows cannot succeed."""


@dataclass(frozen=True)
class AppendRequest:
    dataset: str
    table_path: str
    partition_by: Sequence[str]
    rows: pa.Table
    covered: Mapping[int, int]  # partition -> last offset covered by this commit (inclusive)
    expected_ledger: Mapping[int, int]  # what the ledger must still say for those partitions
    run_metadata: Mapping[str, object]
    target_file_size: int
    description: str | None = None


@dataclass(frozen=True)
class MergeClauses:
    """A MERGE of a batch (alias ``s``) into the table (alias ``t``), as SQL text (built by engines/changes.py)."""

    on: str
    update_all_when: str  # matched, not a delete, guard holds: update every column
    delete_when: str | None  # hard deletes: matched delete, guard holds
    soft_delete_when: str | None  # soft deletes: matched delete, guard holds: update ``soft_delete_set``
    soft_delete_set: dict[str, str]
    insert_when: str | None  # not matched: insert all columns when this holds (None: always)


def append_with_ledger(lake: LakeLocation, request: AppendRequest, table: DeltaTable | None = None) -> int:
    """Append ``request.rows`` and advance the ledger in one Delta commit; returns the commit's version.

    A missing table is first created empty (``create_empty_table``), so that the data commit always goes
    through a loaded ``DeltaTable``, whose conflict check fails a racing writer of the same ledger app ids.
    ``table``: a handle of the existing table that the caller keeps between commits (a stream's or a run's
    writer): it is brought up to date (only the log entries added since are read) instead of loading the
    table again, and the commit's version is the handle's version after the write.
    """
    uri = lake.table_uri(request.table_path)
    kept = table is not None
    if table is not None:
        with _mapped_errors(request.dataset, f"reading {uri}"):
            table.update_incremental()
    else:
        table = lake.open_table(request.table_path) or create_empty_table(lake, request)
    _check_before_commit(table, request, uri)
    token = uuid.uuid4().hex
    metadata = {**request.run_metadata, "commit_token": token}
    with _mapped_errors(request.dataset, f"the Delta commit to {uri}"):
        write_deltalake(
            table,
            request.rows,
            mode="append",
            partition_by=list(request.partition_by) or None,
            schema_mode="merge",
            storage_options=dict(lake.storage_options) or None,
            target_file_size=request.target_file_size,
            writer_properties=WRITER_PROPERTIES,
            commit_properties=_commit_properties(request, metadata),
        )
    if kept:
        # The write leaves the handle at its own commit (checked against the commits' run ids in test_stream.py).
        return table.version()
    return _version_of(lake, request.table_path, token)


def create_empty_table(lake: LakeLocation, request: AppendRequest) -> DeltaTable:
    """Create the table as version 0 with the rows' schema and the catalog's partitioning: no data, no ledger
    (docs/DESIGN.md §2 "Table creation"). Returns the table as it is now.

    A creating commit has no snapshot to be checked against, so delta-rs would retry a lost one as the next
    version (a second CREATE over the winner's table). With no retries it can only ever be version 0: of
    racing creators exactly one writes it, the others find the table and go on to the guarded append, where
    the ledger comparison and the conflict check decide which data commit stands.
    """
    uri = lake.table_uri(request.table_path)
    try:
        DeltaTable.create(
            uri,
            request.rows.schema,
            mode="error",
            partition_by=list(request.partition_by) or None,
            name=request.dataset,
            description=request.description,
            storage_options=dict(lake.storage_options) or None,
            commit_properties=CommitProperties(max_commit_retries=0),
        )
    except (DeltaError, OSError) as error:
        table = lake.open_table(request.table_path)  # another writer created it first: use theirs
        if table is None:
            raise LakeWriteError(
                f"dataset '{request.dataset}': creating the table {uri} failed: {error}. This commit was not written."
            ) from None
        return table
    table = lake.open_table(request.table_path)
    assert table is not None
    return table


def merge_with_ledger(
    lake: LakeLocation, request: AppendRequest, clauses: MergeClauses, table: DeltaTable | None = None
) -> tuple[int, dict]:
    """MERGE ``request.rows`` into the existing table and advance the ledger in the same commit.

    Returns the commit's version and deltalake's merge metrics (rows inserted, updated, deleted…).
    ``table``: a handle the caller keeps, brought up to date instead of loading the table again.
    """
    uri = lake.table_uri(request.table_path)
    if table is not None:
        with _mapped_errors(request.dataset, f"reading {uri}"):
            table.update_incremental()
    else:
        table = lake.open_table(request.table_path)
    if table is None:
        raise LakeWriteError(f"dataset '{request.dataset}': {uri} does not exist; a MERGE needs the table")
    _check_before_commit(table, request, uri)
    token = uuid.uuid4().hex
    metadata = {**request.run_metadata, "commit_token": token}
    with _mapped_errors(request.dataset, f"the Delta MERGE into {uri}"):
        merger = table.merge(
            source=request.rows,
            predicate=clauses.on,
            source_alias="s",
            target_alias="t",
            merge_schema=True,
            writer_properties=WRITER_PROPERTIES,
            commit_properties=_commit_properties(request, metadata),
        ).when_matched_update_all(predicate=clauses.update_all_when)
        if clauses.delete_when:
            merger = merger.when_matched_delete(predicate=clauses.delete_when)
        if clauses.soft_delete_when:
            merger = merger.when_matched_update(updates=clauses.soft_delete_set, predicate=clauses.soft_delete_when)
        metrics = merger.when_not_matched_insert_all(predicate=clauses.insert_when).execute()
    version = _find_version(lake, request.table_path, token)
    if version is None:
        # Every change lost to the guard (older than the table's rows): deltalake commits nothing, but the
        # ledger must still move past these offsets, so record them in an empty commit.
        empty = pa.schema(table.schema().to_arrow()).empty_table()
        version = append_with_ledger(lake, replace(request, rows=empty))
    return version, metrics


def _commit_properties(request: AppendRequest, metadata: Mapping[str, object]) -> CommitProperties:
    """The ledger advance (one ``txn`` per partition) and the run metadata, for the data's own commit."""
    return CommitProperties(
        app_transactions=ledger_transactions(request.dataset, request.covered),
        custom_metadata={RUN_METADATA_KEY: json.dumps(metadata, sort_keys=True)},
    )


@contextmanager
def _mapped_errors(dataset: str, what: str) -> Iterator[None]:
    """deltalake's failures as ``LakeWriteError`` naming the dataset and the table."""
    try:
        yield
    except CommitFailedError as error:
        if "Concurrent" not in str(error):
            raise LakeWriteError(f"dataset '{dataset}': {what} failed: {error}. This commit was not written.") from None
        raise ConcurrentWriterError(
            f"dataset '{dataset}': {what} lost to a concurrent commit that advanced the same ledger ({error}); "
            "another writer is ingesting this dataset. This commit was not written."
        ) from None
    except SchemaMismatchError as error:
        raise LakeSchemaError(
            f"dataset '{dataset}': the records do not fit the schema ({what}): {error}. This commit was not written."
        ) from None
    except (DeltaError, OSError) as error:
        raise LakeWriteError(f"dataset '{dataset}': {what} failed: {error}. This commit was not written.") from None


def _check_before_commit(table: DeltaTable, request: AppendRequest, uri: str) -> None:
    """Same partitioning as the catalog says, and the ledger still where this run read it."""
    _check_partitioning(table, request, uri)
    with _mapped_errors(request.dataset, f"reading the ledger of {uri}"):
        now = read_ledger(table, request.dataset, request.covered)
    expected = {p: o for p, o in request.expected_ledger.items() if p in request.covered}
    if now != expected:
        raise ConcurrentWriterError(
            f"dataset '{request.dataset}': the ledger of {uri} moved from {expected} to {now} during this run; "
            "another writer is ingesting this dataset. This commit was not written."
        )


def _check_partitioning(table: DeltaTable, request: AppendRequest, uri: str) -> None:
    existing = list(table.metadata().partition_columns)
    if existing != list(request.partition_by):
        raise LakeSchemaError(
            f"dataset '{request.dataset}': {uri} is partitioned by {existing}, the catalog says "
            f"partition_by: {list(request.partition_by)}. Restore the catalog's partition_by, or write a new table."
        )


def _version_of(lake: LakeLocation, table_path: str, token: str) -> int:
    version = _find_version(lake, table_path, token)
    if version is None:
        raise LakeWriteError(f"the commit just written to {lake.table_uri(table_path)} is missing from its history")
    return version


def _find_version(lake: LakeLocation, table_path: str, token: str) -> int | None:
    """The version of the commit carrying ``token`` (another writer may have committed right after it)."""
    table = lake.open_table(table_path)
    assert table is not None
    for entry in table.history(20):
        raw = entry.get(RUN_METADATA_KEY)
        if raw and json.loads(raw).get("commit_token") == token:
            return int(entry["version"])
    return None


def run_metadata_of(entry: Mapping[str, object]) -> dict | None:
    """The ``ingest_platform.run`` metadata of one ``DeltaTable.history()`` entry, if it has one.

    deltalake writes it as a top-level commitInfo field (a JSON string); delta-spark's writer can only set
    ``userMetadata``, where the Spark engine puts ``{"ingest_platform.run": {...}}`` for appends; its MERGE
    commits carry it in commitInfo ``tags`` (a MERGE operation takes no ``userMetadata``).
    """
    raw = entry.get(RUN_METADATA_KEY)
    if isinstance(raw, str):
        return json.loads(raw)
    tags = entry.get("tags")
    if isinstance(tags, Mapping) and isinstance(tags.get(RUN_METADATA_KEY), str):
        return json.loads(tags[RUN_METADATA_KEY])
    user = entry.get("userMetadata")
    if isinstance(user, str) and RUN_METADATA_KEY in user:
        value = json.loads(user).get(RUN_METADATA_KEY)
        return value if isinstance(value, dict) else None
    return None
