"""The Spark transaction's ledger check (docs/DESIGN.md §4): read from the version checksum without a Spark job,
and still registered as read, so a concurrent commit of the same partition's ``txn`` fails the commit."""

from __future__ import annotations

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from ingest_platform.engines.spark.transaction import DeltaTransaction, LedgerMovedError, write_batch
from ingest_platform.lake.commit import ConcurrentWriterError
from ingest_platform_tests.helpers import spark_jobs_of

pytestmark = [pytest.mark.spark, pytest.mark.slow]


def test_the_ledger_check_reads_the_checksum_and_a_concurrent_txn_still_fails_the_commit(spark, tmp_path):
    path = str(tmp_path / "t")
    spark.createDataFrame([(0, 0)], "p int, o long").write.format("delta").save(path)
    batch = spark.createDataFrame([(0, 1), (1, 0)], "p int, o long")
    write_batch(spark, path, batch, {"t-0": 1, "t-1": 0}, {"t-0": -1, "t-1": -1}, {}, "test")

    txn = DeltaTransaction(spark, path, "test")
    assert txn.recorded_from_checksum(["t-0", "t-1", "t-2"]) == {"t-0": 1, "t-1": 0, "t-2": -1}
    _, jobs = spark_jobs_of(spark, "ledger-check", lambda: txn.check_ledger({"t-0": 1, "t-1": 0}))
    assert jobs == 0  # no log replay
    with pytest.raises(LedgerMovedError, match="moved from 0 to 1 for t-0"):
        txn.check_ledger({"t-0": 0})
    files = txn.write(spark.createDataFrame([(0, 2)], "p int, o long"))
    # Another writer commits t-0 after this transaction read it: this commit must lose.
    write_batch(spark, path, spark.createDataFrame([(0, 2)], "p int, o long"), {"t-0": 2}, {"t-0": 1}, {}, "other")
    with pytest.raises(ConcurrentWriterError, match="lost to a concurrent writer"):
        txn.commit(files, {"t-0": 2, "t-1": 0}, {})
    table = DeltaTable(path)
    assert table.transaction_version("t-0") == 2 and table.to_pyarrow_table().num_rows == 4


def test_a_version_without_a_checksum_falls_back_to_the_log(spark, tmp_path):
    """deltalake writes no ``.crc``: the check asks delta-spark's snapshot state instead, with the same answer."""
    path = str(tmp_path / "t")
    spark.createDataFrame([(0, 0)], "p int, o long").write.format("delta").save(path)
    write_batch(spark, path, spark.createDataFrame([(0, 1)], "p int, o long"), {"t-0": 1}, {"t-0": -1}, {}, "test")
    write_deltalake(path, pa.table({"p": pa.array([0], pa.int32()), "o": pa.array([2], pa.int64())}), mode="append")
    txn = DeltaTransaction(spark, path, "test")
    assert txn.recorded_from_checksum(["t-0"]) is None
    txn.check_ledger({"t-0": 1})
    with pytest.raises(LedgerMovedError):
        txn.check_ledger({"t-0": 0})


def test_the_files_of_a_merge_come_from_the_checksum_and_a_concurrent_append_still_fails_the_commit(spark, tmp_path):
    """``files()`` (the touched-file search of a MERGE) lists the snapshot's files from the version checksum
    without a Spark job, the same files as the log; the whole table is still registered as read."""
    path = str(tmp_path / "t")
    spark.createDataFrame([(0, 0)], "p int, o long").write.format("delta").save(path)
    write_batch(spark, path, spark.createDataFrame([(1, 1)], "p int, o long"), {"t-0": 1}, {"t-0": -1}, {}, "test")
    txn = DeltaTransaction(spark, path, "test")
    files, jobs = spark_jobs_of(spark, "merge-files", txn.files)
    assert jobs == 0  # no state reconstruction of the log
    assert sorted(str(add.path()) for add in files) == table_paths(path) and len(files) == 2
    written = txn.write(spark.createDataFrame([(0, 5)], "p int, o long"))
    # Another writer appends after this transaction listed the table: this commit (it removes files) must lose.
    write_deltalake(path, pa.table({"p": pa.array([2], pa.int32()), "o": pa.array([2], pa.int64())}), mode="append")
    with pytest.raises(ConcurrentWriterError, match="lost to a concurrent writer"):
        txn.commit(written, {"t-0": 2}, {}, removed=files[:1])
    assert DeltaTable(path).to_pyarrow_table().num_rows == 3


def test_files_of_a_version_without_a_checksum_come_from_the_log(spark, tmp_path):
    """deltalake writes no ``.crc``: ``files()`` asks delta-spark's snapshot state, with the same answer."""
    path = str(tmp_path / "t")
    spark.createDataFrame([(0, 0)], "p int, o long").write.format("delta").save(path)
    write_deltalake(path, pa.table({"p": pa.array([0], pa.int32()), "o": pa.array([2], pa.int64())}), mode="append")
    files = DeltaTransaction(spark, path, "test").files()
    assert sorted(str(add.path()) for add in files) == table_paths(path) and len(files) == 2


def table_paths(path: str) -> list[str]:
    return sorted(DeltaTable(path).get_add_actions().column("path").to_pylist())
