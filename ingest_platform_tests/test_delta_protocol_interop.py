"""The offset protocol across engines: deltalake (delta-rs) and delta-spark on the same Delta tables.

Real tables in ``tmp_path``, one shared local SparkSession (delta-spark jars from Maven Central, cached under
``~/.cache/ingest_platform/ivy``). The ledger is one Delta ``txn`` action per Kafka partition, app id
``<dataset>-<partition>``, version = last offset covered (see ingest_platform/lake/ledger.py).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaProtocolError

from ingest_platform.lake.ledger import app_id, ledger_transactions, read_ledger

DATASET = "orders"
PARTITION_COLUMNS = ["year", "month", "day", "hour"]
SPARK = (pytest.mark.spark, pytest.mark.slow)


def spark_test(func):
    """Marks a test that needs the shared SparkSession: ``spark`` and ``slow``."""
    for mark in SPARK:
        func = mark(func)
    return func


# ------------------------------------------------------------------------------------------------------------
# Helpers

STRUCT = pa.struct([("a", pa.int64()), ("b", pa.string())])


def platform_table(first_key: int, rows: int = 3, tz: str | None = "UTC") -> pa.Table:
    """Rows with the platform's column types; ``tz=None`` makes ``ts`` a timestamp without time zone."""
    keys = range(first_key, first_key + rows)
    stamps = [dt.datetime(2024, 5, 1, 12, 0, k % 60, 123456, tzinfo=dt.timezone.utc) for k in keys]
    if tz is None:
        stamps = [s.replace(tzinfo=None) for s in stamps]
    return pa.table(
        {
            "k": pa.array(list(keys), pa.int64()),
            "x": pa.array([k * 1.5 if k % 3 else None for k in keys], pa.float64()),
            "s": pa.array([f"s{k}" if k % 4 else None for k in keys], pa.string()),
            "b": pa.array([bool(k % 2) if k % 5 else None for k in keys], pa.bool_()),
            "ts": pa.array(stamps, pa.timestamp("us", tz=tz)),
            "raw": pa.array([bytes([k % 256, 0]) if k % 3 else None for k in keys], pa.binary()),
            "st": pa.array([{"a": k, "b": None if k % 2 else "x"} if k % 4 else None for k in keys], STRUCT),
            "li": pa.array([list(range(k % 3)) if k % 5 else None for k in keys], pa.list_(pa.int64())),
            "year": pa.array([2024] * rows, pa.int32()),
            "month": pa.array([5] * rows, pa.int32()),
            "day": pa.array([1] * rows, pa.int32()),
            "hour": pa.array([12 + k % 2 for k in keys], pa.int32()),
        }
    )


def rows(table: pa.Table) -> list[dict]:
    """Rows sorted by key, columns in a fixed order: comparable across engines."""
    columns = sorted(table.column_names)
    return sorted(table.select(columns).to_pylist(), key=lambda row: row["k"])


def deltalake_append(target: Path | DeltaTable, table: pa.Table, last_offsets: dict[int, int]) -> None:
    """The embedded engine's commit: rows + one txn action per partition. Pass the DeltaTable the ledger was
    read from to get delta-rs' conflict check against that snapshot."""
    write_deltalake(
        target if isinstance(target, DeltaTable) else str(target),
        table,
        mode="append",
        partition_by=PARTITION_COLUMNS,
        commit_properties=CommitProperties(
            app_transactions=ledger_transactions(DATASET, last_offsets),
            custom_metadata={"engine": "delta-rs"},
        ),
    )


def app_ids(partitions=range(4)) -> list[str]:
    return [app_id(DATASET, p) for p in partitions]


def ledger_of(path: Path) -> dict[int, int]:
    return read_ledger(DeltaTable(str(path)), DATASET, range(4))


def commit_json(path: Path, version: int) -> list[dict]:
    log_file = path / "_delta_log" / f"{version:020d}.json"
    return [json.loads(line) for line in log_file.read_text().splitlines()]


def parquet_files(path: Path) -> set[Path]:
    return set(path.rglob("*.parquet")) - set((path / "_delta_log").rglob("*"))


def spark_df(spark, table: pa.Table):
    return spark.createDataFrame(table)


@pytest.fixture
def deltalake_table(tmp_path: Path) -> Path:
    """A table created by deltalake: 6 rows, ledger orders-0 = 9, orders-1 = 19, orders-2 = 4."""
    path = tmp_path / "orders"
    deltalake_append(path, platform_table(0, rows=6), {0: 9, 1: 19, 2: 4})
    return path


# ------------------------------------------------------------------------------------------------------------
# a. delta-spark reads a deltalake table and its ledger


@spark_test
def test_spark_reads_deltalake_rows_and_ledger(spark, deltalake_table: Path) -> None:
    from ingest_platform.engines.spark.session import spark_read_ledger

    expected = rows(DeltaTable(str(deltalake_table)).to_pyarrow_table())
    assert rows(spark.read.format("delta").load(str(deltalake_table)).toArrow()) == expected
    assert len(expected) == 6

    want = {"orders-0": 9, "orders-1": 19, "orders-2": 4}  # orders-3: never seen, absent
    assert spark_read_ledger(spark, str(deltalake_table), app_ids()) == want
    # Delta Kernel's public API (a delta-spark runtime dependency) agrees with delta-spark's snapshot.
    assert spark_read_ledger(spark, str(deltalake_table), app_ids(), via="kernel") == want
    assert spark_read_ledger(spark, str(deltalake_table.parent / "missing"), app_ids()) == {}
    assert spark_read_ledger(spark, str(deltalake_table.parent / "missing"), app_ids(), via="kernel") == {}


# ------------------------------------------------------------------------------------------------------------
# b. delta-spark honours the ledger deltalake wrote


@spark_test
def test_spark_skips_append_already_in_deltalake_ledger(spark, deltalake_table: Path) -> None:
    from ingest_platform.engines.spark.session import spark_append_with_offsets, spark_read_ledger

    path = str(deltalake_table)
    version_before = DeltaTable(path).version()
    batch = spark_df(spark, platform_table(100))

    # Recorded version (19) and an older one: delta-spark skips the write, no commit, no error.
    spark_append_with_offsets(batch, path, "orders-1", 19, user_metadata="replay")
    spark_append_with_offsets(batch, path, "orders-1", 7, user_metadata="older")
    assert DeltaTable(path).version() == version_before
    assert DeltaTable(path).to_pyarrow_table().num_rows == 6

    spark_append_with_offsets(batch, path, "orders-1", 29, user_metadata="next")
    table = DeltaTable(path)
    assert table.version() == version_before + 1
    assert table.to_pyarrow_table().num_rows == 9
    assert spark_read_ledger(spark, path, app_ids()) == {"orders-0": 9, "orders-1": 29, "orders-2": 4}


# ------------------------------------------------------------------------------------------------------------
# c. deltalake / polars / pyarrow read what delta-spark wrote


@spark_test
def test_deltalake_reads_spark_commit(spark, deltalake_table: Path) -> None:
    pl = pytest.importorskip("polars")
    from ingest_platform.engines.spark.session import spark_append_with_offsets

    path = str(deltalake_table)
    before = DeltaTable(path).to_pyarrow_table()
    batch = platform_table(100)
    spark_append_with_offsets(spark_df(spark, batch), path, "orders-2", 14, user_metadata='{"run": "r2"}')

    table = DeltaTable(path)
    assert table.transaction_version("orders-2") == 14
    assert table.transaction_version("orders-0") == 9
    assert read_ledger(table, DATASET, range(4)) == {0: 9, 1: 19, 2: 14}
    assert table.history(1)[0]["userMetadata"] == '{"run": "r2"}'

    expected = rows(pa.concat_tables([before, batch]))
    assert rows(table.to_pyarrow_table()) == expected
    assert rows(pl.read_delta(path).to_arrow()) == expected

    # The txn action delta-spark wrote, as stored in the log.
    txns = [a["txn"] for a in commit_json(deltalake_table, table.version()) if "txn" in a]
    assert [(t["appId"], t["version"]) for t in txns] == [("orders-2", 14)]
    assert isinstance(txns[0].get("lastUpdated"), int)


# ------------------------------------------------------------------------------------------------------------
# d. deltalake continues a table delta-spark committed to; column types and protocol both ways


@spark_test
def test_deltalake_continues_after_spark_commit(spark, deltalake_table: Path) -> None:
    from ingest_platform.engines.spark.session import spark_append_with_offsets, spark_read_ledger

    path = str(deltalake_table)
    spark_append_with_offsets(spark_df(spark, platform_table(100)), path, "orders-1", 29)
    deltalake_append(deltalake_table, platform_table(200), {0: 15, 2: 8})

    want = {0: 15, 1: 29, 2: 8}
    assert ledger_of(deltalake_table) == want
    spark_ledger = {f"orders-{p}": v for p, v in want.items()}
    assert spark_read_ledger(spark, path, app_ids()) == spark_ledger
    assert spark_read_ledger(spark, path, app_ids(), via="kernel") == spark_ledger
    assert spark.read.format("delta").load(path).count() == 12
    assert DeltaTable(path).version() == 2


@spark_test
def test_platform_types_deltalake_table_written_by_spark(spark, tmp_path: Path) -> None:
    path = tmp_path / "types_rs"
    deltalake_append(path, platform_table(0), {0: 2})
    protocol = DeltaTable(str(path)).protocol()
    assert (protocol.min_reader_version, protocol.min_writer_version) == (1, 2)
    assert protocol.reader_features is None and protocol.writer_features is None

    files_before = parquet_files(path)
    batch = platform_table(10)
    spark_df(spark, batch).write.format("delta").mode("append").save(str(path))

    table = DeltaTable(str(path))
    protocol = table.protocol()  # delta-spark does not upgrade the protocol on append
    assert (protocol.min_reader_version, protocol.min_writer_version) == (1, 2)
    assert protocol.writer_features is None
    assert table.metadata().partition_columns == PARTITION_COLUMNS
    assert rows(table.to_pyarrow_table()) == rows(pa.concat_tables([platform_table(0), batch]))
    # Spark wrote timestamps like deltalake does (INT64 micros, UTC), not INT96: see build_local_spark.
    new_files = parquet_files(path) - files_before
    assert new_files and all("year=2024" in str(f) for f in new_files)
    assert {pq.read_schema(f).field("ts").type for f in new_files} == {pa.timestamp("us", tz="UTC")}


@spark_test
def test_platform_types_spark_table_written_by_deltalake(spark, tmp_path: Path) -> None:
    from ingest_platform.engines.spark.session import spark_append_with_offsets

    path = tmp_path / "types_spark"
    first = platform_table(0)
    spark_df(spark, first).write.format("delta").partitionBy(*PARTITION_COLUMNS).save(str(path))
    protocol = DeltaTable(str(path)).protocol()
    assert (protocol.min_reader_version, protocol.min_writer_version) == (1, 2)

    schema = DeltaTable(str(path)).schema().to_arrow()
    assert pa.schema(schema).field("ts").type == pa.timestamp("us", tz="UTC")
    assert pa.schema(schema).field("hour").type == pa.int32()

    spark_append_with_offsets(spark_df(spark, platform_table(10)), str(path), "orders-0", 12)
    deltalake_append(path, platform_table(20), {0: 30, 1: 4})
    table = DeltaTable(str(path))
    assert read_ledger(table, DATASET, range(4)) == {0: 30, 1: 4}
    expected = rows(pa.concat_tables([first, platform_table(10), platform_table(20)]))
    assert rows(table.to_pyarrow_table()) == expected
    assert rows(spark.read.format("delta").load(str(path)).toArrow()) == expected


@spark_test
def test_timestamp_without_time_zone_needs_timestamp_ntz_feature(spark, tmp_path: Path) -> None:
    """``pa.timestamp("us")`` is Delta ``timestamp_ntz``: table feature timestampNtz, reader 3 / writer 7.

    Both engines support the feature. Pitfall: pyspark's ``createDataFrame(arrow_table)`` turns a timestamp
    without time zone into Spark TIMESTAMP (with local time zone) unless ``spark.sql.timestampType`` is
    TIMESTAMP_NTZ, and Delta refuses that append ([DELTA_FAILED_TO_MERGE_FIELDS]).
    """
    from pyspark.errors import AnalysisException

    # deltalake creates, delta-spark appends.
    path = tmp_path / "ntz_rs"
    deltalake_append(path, platform_table(0, tz=None), {0: 2})
    protocol = DeltaTable(str(path)).protocol()
    assert (protocol.min_reader_version, protocol.min_writer_version) == (3, 7)
    assert protocol.reader_features == ["timestampNtz"] and protocol.writer_features == ["timestampNtz"]

    naive = platform_table(10, tz=None)
    with pytest.raises(AnalysisException, match="DELTA_FAILED_TO_MERGE_FIELDS"):
        spark.createDataFrame(naive).write.format("delta").mode("append").save(str(path))
    spark.conf.set("spark.sql.timestampType", "TIMESTAMP_NTZ")
    try:
        ntz_df = spark.createDataFrame(naive)
    finally:
        spark.conf.unset("spark.sql.timestampType")
    assert ntz_df.schema["ts"].dataType.typeName() == "timestamp_ntz"
    ntz_df.write.format("delta").mode("append").save(str(path))
    expected = rows(pa.concat_tables([platform_table(0, tz=None), naive]))
    assert rows(DeltaTable(str(path)).to_pyarrow_table()) == expected

    # delta-spark creates (it adds the legacy writer features too), deltalake appends.
    path = tmp_path / "ntz_spark"
    ntz_df.write.format("delta").partitionBy(*PARTITION_COLUMNS).save(str(path))
    protocol = DeltaTable(str(path)).protocol()
    assert (protocol.min_reader_version, protocol.min_writer_version) == (3, 7)
    assert protocol.reader_features == ["timestampNtz"]
    assert set(protocol.writer_features) == {"timestampNtz", "invariants", "appendOnly"}
    deltalake_append(path, platform_table(20, tz=None), {0: 5})
    assert spark.read.format("delta").load(str(path)).count() == 6


@spark_test
@pytest.mark.parametrize(
    ("table_property", "missing"),
    [
        ("delta.enableRowTracking", {"DomainMetadata", "RowTracking"}),
        ("delta.enableInCommitTimestamps", {"InCommitTimestamp"}),
        ("delta.enableTypeWidening", {"TypeWidening"}),
    ],
)
def test_deltalake_cannot_write_spark_tables_with_some_features(
    spark, tmp_path: Path, table_property: str, missing: set[str]
) -> None:
    """Opt-in delta-spark table features that deltalake 1.6.6 cannot write (off by default in delta-spark)."""
    path = tmp_path / "feature"
    properties = f"TBLPROPERTIES ('{table_property}' = 'true')"
    spark.sql(f"CREATE TABLE delta.`{path}` (k BIGINT) USING delta {properties}")
    assert DeltaTable(str(path)).transaction_version("orders-0") is None  # reading the ledger still works
    with pytest.raises(CommitFailedError, match=r"Unsupported table features required: \[") as failure:
        write_deltalake(
            str(path),
            pa.table({"k": pa.array([1], pa.int64())}),
            mode="append",
            commit_properties=CommitProperties(app_transactions=[Transaction("orders-0", 1)]),
        )
    listed = re.search(r"\[(.*)\]", str(failure.value)).group(1)  # order varies between runs
    assert set(listed.split(", ")) == missing


@spark_test
def test_deltalake_cannot_read_spark_deletion_vectors(spark, tmp_path: Path) -> None:
    """deletionVectors (reader 3 / writer 7) is no problem for deltalake's appends and ledger, but once a
    delta-spark DELETE/UPDATE/MERGE wrote a deletion vector, deltalake's pyarrow reader refuses the table."""
    pl = pytest.importorskip("polars")
    path = tmp_path / "dv"
    dv_on = "TBLPROPERTIES ('delta.enableDeletionVectors' = 'true')"
    spark.sql(f"CREATE TABLE delta.`{path}` (k BIGINT) USING delta {dv_on}")
    spark.range(10).toDF("k").coalesce(1).write.format("delta").mode("append").save(str(path))
    spark.sql(f"DELETE FROM delta.`{path}` WHERE k < 3")
    assert list(path.glob("deletion_vector_*.bin"))

    small = pa.table({"k": pa.array([100], pa.int64())})
    ledger = CommitProperties(app_transactions=[Transaction("d-0", 1)])
    write_deltalake(str(path), small, mode="append", commit_properties=ledger)
    assert DeltaTable(str(path)).transaction_version("d-0") == 1
    message = r"reader features: \{'deletionVectors'\} but these are not yet supported by the deltalake"
    with pytest.raises(DeltaProtocolError, match=message):
        DeltaTable(str(path)).to_pyarrow_table()
    assert pl.read_delta(str(path)).height == 8  # polars applies the deletion vector
    assert spark.read.format("delta").load(str(path)).count() == 8


# ------------------------------------------------------------------------------------------------------------
# e. Several txn actions in one delta-spark commit


@spark_test
def test_multi_txn_commit_via_internal_api(spark, deltalake_table: Path) -> None:
    """delta-spark's public writer takes one txnAppId/txnVersion pair per write. Its internal
    OptimisticTransaction can commit several ``txn`` actions (``updateSetTransaction`` per app id), which is
    what a one-commit-per-batch Spark engine would need. Not a public API: no schema checks, no idempotency
    skip (the caller must compare ``txn.txnVersion(app_id)`` itself), table must exist."""
    from pyspark.errors import IllegalArgumentException

    jvm = spark._jvm
    none = getattr(getattr(jvm.scala, "None$"), "MODULE$")
    write_op = getattr(getattr(jvm.org.apache.spark.sql.delta.DeltaOperations, "Write$"), "MODULE$")
    delta_log = jvm.org.apache.spark.sql.delta.DeltaLog.forTable(spark._jsparkSession, str(deltalake_table))
    operation = write_op.apply(
        jvm.org.apache.spark.sql.SaveMode.Append, none, none, jvm.scala.Option.apply("batch-7"),
        none, none, none, none, none,
    )  # fmt: skip

    txn = delta_log.startTransaction()
    assert txn.txnVersion("orders-1") == 19  # also registers the read for conflict detection
    files = txn.writeFiles(spark_df(spark, platform_table(100))._jdf)
    for partition, offset in {0: 39, 1: 49, 2: 34}.items():
        txn.updateSetTransaction(app_id(DATASET, partition), offset, none)
    version = txn.commit(files, operation)

    assert version == 1
    assert ledger_of(deltalake_table) == {0: 39, 1: 49, 2: 34}
    assert DeltaTable(str(deltalake_table)).to_pyarrow_table().num_rows == 9
    actions = commit_json(deltalake_table, 1)
    assert [a["txn"]["appId"] for a in actions if "txn" in a] == app_ids(range(3))
    assert next(a["commitInfo"] for a in actions if "commitInfo" in a)["userMetadata"] == "batch-7"

    txn = delta_log.startTransaction()
    txn.updateSetTransaction("orders-0", 50, none)
    txn.updateSetTransaction("orders-0", 51, none)
    with pytest.raises(IllegalArgumentException, match="Two SetTransaction actions within the same"):
        txn.commit(txn.writeFiles(spark_df(spark, platform_table(200))._jdf), operation)


# ------------------------------------------------------------------------------------------------------------
# 3. Concurrent writers of the same app id


def _stale_pair(tmp_path: Path) -> tuple[str, DeltaTable, DeltaTable]:
    path = str(tmp_path / "concurrent")
    deltalake_append(Path(path), platform_table(0), {0: 9, 1: 9})
    return path, DeltaTable(path), DeltaTable(path)


def test_deltalake_detects_concurrent_commit_of_same_app_id(tmp_path: Path) -> None:
    """Two runs read ledger 9 at the same table version and both commit Transaction(orders-0, 19): the
    second commit fails (delta-rs' conflict checker), because the DeltaTable it read from is passed."""
    path, first, second = _stale_pair(tmp_path)
    assert first.transaction_version("orders-0") == second.transaction_version("orders-0") == 9
    deltalake_append(first, platform_table(10), {0: 19})
    with pytest.raises(CommitFailedError, match="Concurrent transaction failed"):
        deltalake_append(second, platform_table(20), {0: 19})
    table = DeltaTable(path)
    assert table.version() == 1
    assert table.to_pyarrow_table().num_rows == 6
    assert ledger_of(Path(path)) == {0: 19, 1: 9}


def test_deltalake_concurrent_commits_of_other_app_ids_both_succeed(tmp_path: Path) -> None:
    path, first, second = _stale_pair(tmp_path)
    deltalake_append(first, platform_table(10), {0: 19})
    deltalake_append(second, platform_table(20), {1: 19})
    assert ledger_of(Path(path)) == {0: 19, 1: 19}
    assert DeltaTable(path).version() == 2


def test_deltalake_uri_write_does_not_link_the_ledger_read(tmp_path: Path) -> None:
    """Pitfall: ``write_deltalake(uri, ...)`` loads the latest version itself, so a ledger read from an older
    snapshot is not checked: the duplicate commit succeeds. Write through the DeltaTable the ledger was read
    from. deltalake does not compare txn versions either (delta-spark skips version <= recorded)."""
    path, first, second = _stale_pair(tmp_path)
    start_first, start_second = first.transaction_version("orders-0"), second.transaction_version("orders-0")
    deltalake_append(Path(path), platform_table(10), {0: start_first + 10})
    deltalake_append(Path(path), platform_table(20), {0: start_second + 10})  # no error: duplicate data
    assert DeltaTable(path).to_pyarrow_table().num_rows == 9
    deltalake_append(Path(path), platform_table(30), {0: 5})  # a lower version is accepted as well
    assert ledger_of(Path(path)) == {0: 5, 1: 9}


@spark_test
def test_deltalake_detects_concurrent_spark_commit_of_same_app_id(spark, tmp_path: Path) -> None:
    from ingest_platform.engines.spark.session import spark_append_with_offsets

    path, stale, _ = _stale_pair(tmp_path)
    spark_append_with_offsets(spark_df(spark, platform_table(10)), path, "orders-0", 19)
    with pytest.raises(CommitFailedError, match="Concurrent transaction failed"):
        deltalake_append(stale, platform_table(20), {0: 19})
    assert ledger_of(Path(path)) == {0: 19, 1: 9}
