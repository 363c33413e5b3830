"""Delta commits through delta-spark's ``OptimisticTransaction``: data files added, files removed and one ``txn``
action per Kafka partition, in ONE commit (docs/DESIGN.md §2, §4, §9.2).

delta-spark's public writers record one ``txn`` per commit (``txnAppId``/``txnVersion``); its internal
transaction API records any number, which is how the Spark engine keeps the protocol's one commit per batch:

    txn = DeltaTransaction(spark, path, what)
    txn.check_ledger(expected)            # txnVersion per app id: compared, and registered as read
    files = txn.write(frame)              # data files, not visible until the commit
    txn.commit(files, ledger, metadata)   # + updateSetTransaction per app id

``write_batch`` is that sequence for one DataFrame already in the table's schema: what a Structured Streaming
``foreachBatch`` writer calls per micro-batch (the ledger it passes is the batch's last offset per partition).
Upserts read the files their keys touch (``files``/``frame_of``), write the merged rows and remove those files
in the same commit (``commit(..., removed=...)``, a copy-on-write MERGE).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ingest_platform.lake.commit import RUN_METADATA_KEY, ConcurrentWriterError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

#: The operation metrics a MERGE commit reports (the names delta-spark's own MERGE writes into commitInfo).
MERGE_METRICS = ("numSourceRows", "numTargetRowsInserted", "numTargetRowsUpdated", "numTargetRowsDeleted",
                 "numTargetRowsCopied", "numOutputRows", "numTargetFilesAdded", "numTargetFilesRemoved")  # fmt: skip


class LedgerMovedError(ConcurrentWriterError):
    """The table's ledger is not where the run expected it: another writer ingests the dataset."""


#: What delta-spark's conflict check raises when another writer committed first: ``Concurrent*Exception``,
#: ``ProtocolChangedException`` (e.g. two creators of version 0), ``MetadataChangedException``.
_CONFLICTS = ("Concurrent", "ProtocolChangedException", "MetadataChangedException")


def is_conflict(error: Exception) -> bool:
    """Whether delta-spark refused a commit because another writer committed first (its conflict check), from
    the Python class, the Java class (py4j) or the message."""
    java = getattr(error, "java_exception", None)
    text = f"{type(error).__name__}: {error}" + (f" {java.getClass().getName()}" if java is not None else "")
    return any(name in text for name in _CONFLICTS)


def headline(error: BaseException) -> str:
    """An error's first non-empty line (a py4j error's Java message), to quote inside a message that explains it."""
    java = getattr(error, "java_exception", None)
    text = str(java.getMessage()) if java is not None else str(error)
    return next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)


def scala_none(jvm):
    """Scala's ``None``, for JVM calls that take an ``Option``."""
    return getattr(getattr(jvm.scala, "None$"), "MODULE$")


def scala_seq(jvm, items):
    """A Scala immutable ``Seq`` of JVM objects."""
    values = jvm.java.util.ArrayList()
    for item in items:
        values.add(item)
    return jvm.org.apache.spark.api.python.PythonUtils.toSeq(values)


def append_operation(jvm, user_metadata: str):
    """``DeltaOperations.Write`` (append) carrying ``userMetadata``, for commits through the internal API."""
    none = scala_none(jvm)
    write_op = getattr(getattr(jvm.org.apache.spark.sql.delta.DeltaOperations, "Write$"), "MODULE$")
    return write_op.apply(
        jvm.org.apache.spark.sql.SaveMode.Append, none, none, jvm.scala.Option.apply(user_metadata),
        none, none, none, none, none,
    )  # fmt: skip


class DeltaTransaction:
    """One ``OptimisticTransaction`` on the Delta table at ``path`` (read version = the latest at start); ``what``
    names the dataset in errors."""

    def __init__(self, spark: SparkSession, path: str, what: str):
        self.spark = spark
        self.jvm = spark._jvm  # type: ignore[attr-defined]
        self.path = path
        self.what = what
        self.log = self.jvm.org.apache.spark.sql.delta.DeltaLog.forTable(spark._jsparkSession, path)  # type: ignore[attr-defined]
        self.txn = self.log.startTransaction()

    def recorded(self, app_id: str) -> int:
        """The ``txn`` version the table records for ``app_id`` (-1: none). Registered as read: a concurrent
        commit of the same app id fails this transaction's commit."""
        return int(self.txn.txnVersion(app_id))

    def recorded_from_checksum(self, apps: Sequence[str]) -> dict[str, int] | None:
        """The ``txn`` versions of ``apps`` from the snapshot's version checksum (``<version>.crc``, which
        delta-spark writes on every commit with the table's ``setTransactions``), registered as read like
        ``recorded`` does; None when the snapshot has no such checksum (a version deltalake wrote). ``recorded``
        asks ``Snapshot.transactions``, which replays the whole log in three Spark jobs (~0.5–2 s per run)."""
        checksum = self.txn.snapshot().checksumOpt()
        if not checksum.isDefined() or not checksum.get().setTransactions().isDefined():
            return None
        transactions = checksum.get().setTransactions().get()
        versions = {}
        for i in range(transactions.size()):
            action = transactions.apply(i)
            versions[str(action.appId())] = int(action.version())
        read = self.txn.readTxn()
        for app in apps:  # what OptimisticTransaction.txnVersion does besides the lookup
            getattr(read, "$plus$eq")(app)
        return {app: versions.get(app, -1) for app in apps}

    def check_ledger(self, expected: Mapping[str, int]) -> None:
        """Every app id must still record ``expected`` (-1: nothing); registered as read, so a concurrent commit
        of one of them fails this transaction's commit."""
        from_checksum = self.recorded_from_checksum(sorted(expected))
        for app, version in sorted(expected.items()):
            recorded = from_checksum[app] if from_checksum is not None else self.recorded(app)
            if recorded != version:
                raise LedgerMovedError(
                    f"{self.what}: the ledger of {self.path} moved from {version} to {recorded} for {app} during this "
                    "run; another writer is ingesting this dataset. Nothing more was committed by this run."
                )

    def write(self, frame: DataFrame):
        """Write ``frame`` (the table's columns) as data files of this transaction; nothing is visible yet."""
        return self.txn.writeFiles(frame._jdf)

    def files(self) -> list:
        """Every data file (``AddFile``) of the snapshot; registers a read of the whole table, so a concurrent
        commit that adds or removes files fails this transaction's commit.

        From the snapshot's version checksum when it lists them (delta-spark writes ``allFiles`` into
        ``<version>.crc`` while the table has few files), registered as read the way ``filterFiles`` does it
        (the predicate ``true`` and every file); else ``filterFiles``, whose state reconstruction of the whole
        log is four Spark jobs (1.5–3 s a run here)."""
        checksum = self.txn.snapshot().checksumOpt()
        if checksum.isDefined() and checksum.get().allFiles().isDefined():
            files = checksum.get().allFiles().get()
            everything = self.jvm.org.apache.spark.sql.catalyst.expressions.Literal.TrueLiteral()
            self.txn.trackReadPredicates(scala_seq(self.jvm, [everything]), False, True)
            self.txn.trackFilesRead(files)
        else:
            files = self.txn.filterFiles()
        return [files.apply(i) for i in range(files.size())]

    def frame_of(self, files: Sequence) -> DataFrame:
        """The rows of ``files`` (their partition values included), as Delta reads them."""
        from pyspark.sql import DataFrame as PyDataFrame

        frame = self.log.createDataFrame(self.txn.snapshot(), scala_seq(self.jvm, files), False, scala_none(self.jvm))
        return PyDataFrame(frame, self.spark)

    def absolute_path(self, path: str) -> str:
        """A data file's path as Spark's ``input_file_name()`` gives it (``AddFile.path`` is relative)."""
        operations = self.jvm.org.apache.spark.sql.delta.util.DeltaFileOperations
        return str(operations.absolutePath(self.log.dataPath().toString(), path).toString())

    def commit(
        self,
        files,
        ledger: Mapping[str, int],
        metadata: Mapping[str, object],
        removed: Sequence = (),
        merge_metrics: Mapping[str, int] | None = None,
    ) -> int:
        """Commit ``files`` (from ``write``), the removal of ``removed`` (``AddFile``s) and one ``txn`` per app id
        of ``ledger``; returns the version. ``metadata`` is the run metadata (``ingest_platform.run``): in
        ``userMetadata`` of an append, in the ``tags`` of a MERGE (``merge_metrics`` given), whose commitInfo
        carries those operation metrics like delta-spark's own MERGE."""
        jvm = self.jvm
        for app, version in sorted(ledger.items()):
            self.txn.updateSetTransaction(app, int(version), scala_none(jvm))
        text = json.dumps({RUN_METADATA_KEY: dict(metadata)}, sort_keys=True)
        actions = [files.apply(i) for i in range(files.size())] if files is not None else []
        actions += [add.remove() for add in removed]
        try:
            if merge_metrics is None:
                return int(self.txn.commit(scala_seq(jvm, actions), append_operation(jvm, text)))
            self._register_metrics(merge_metrics)
            tags = jvm.java.util.HashMap()
            tags.put(RUN_METADATA_KEY, json.dumps(dict(metadata), sort_keys=True))
            operation = getattr(getattr(jvm.org.apache.spark.sql.delta.DeltaOperations, "Merge$"), "MODULE$")
            nothing = getattr(getattr(jvm.scala.collection.immutable, "Nil$"), "MODULE$")
            merge = operation.apply(scala_none(jvm), nothing, nothing, nothing)
            to_map = jvm.org.apache.spark.api.python.PythonUtils.toScalaMap
            return int(self.txn.commit(scala_seq(jvm, actions), merge, to_map(tags)))
        except Exception as error:
            if is_conflict(error):
                first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise ConcurrentWriterError(
                    f"{self.what}: the commit to {self.path} lost to a concurrent writer ({first[:300]}); another "
                    "writer is ingesting this dataset. Nothing of this batch was committed."
                ) from None
            raise

    def _register_metrics(self, values: Mapping[str, int]) -> None:
        jvm = self.jvm
        create = jvm.org.apache.spark.sql.execution.metric.SQLMetrics.createMetric
        context = self.spark.sparkContext._jsc.sc()  # type: ignore[attr-defined]
        metrics = jvm.java.util.HashMap()
        for name in MERGE_METRICS:
            metric = create(context, name)
            metric.set(int(values.get(name, 0)))
            metrics.put(name, metric)
        metrics.put("operationNumSourceRows", metrics.get("numSourceRows"))  # the name delta 4.4's commit reads
        scala_metrics = jvm.org.apache.spark.api.python.PythonUtils.toScalaMap(metrics)
        self.txn.registerSQLMetrics(self.spark._jsparkSession, scala_metrics)  # type: ignore[attr-defined]


def write_batch(
    spark: SparkSession,
    path: str,
    frame: DataFrame,
    ledger: Mapping[str, int],
    expected: Mapping[str, int],
    metadata: Mapping[str, object],
    what: str,
) -> int:
    """Append ``frame`` (already in the table's schema) and advance ``ledger`` (app id -> last offset covered) in
    ONE commit, after checking that the table still records ``expected`` (app id -> version, -1 for none) —
    the protocol's commit of one batch (a run's, or a streaming micro-batch's in ``foreachBatch``)."""
    txn = DeltaTransaction(spark, path, what)
    txn.check_ledger(expected)
    return txn.commit(txn.write(frame), ledger, metadata)
