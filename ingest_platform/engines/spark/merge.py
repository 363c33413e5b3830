"""Spark upserts (docs/DESIGN.md §9.2): the batch reduced to the last change per key, then one MERGE per
Kafka partition, each commit carrying that partition's ``txn``.

delta-spark's MERGE records one idempotent ``txn`` per commit, set through session confs (delta PR #1555),
so a run cannot MERGE all partitions in one commit as the embedded engine does. ``SparkUpsert`` is the
upsert half of the Spark run (``engines/spark/engine.py``); it shares the run's reading, decoding and checks.
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING

from ingest_platform.engines.changes import CDC_OP, DELETE_OP, merge_clauses, order_column, quote_spark
from ingest_platform.engines.run_plan import IngestError
from ingest_platform.engines.spark import changes as sc
from ingest_platform.engines.spark.session import append_operation, scala_none
from ingest_platform.lake.commit import RUN_METADATA_KEY, ConcurrentWriterError, run_metadata_of
from ingest_platform.lake.ledger import app_id, read_ledger

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

TXN_APP_ID = "spark.databricks.delta.write.txnAppId"
TXN_VERSION = "spark.databricks.delta.write.txnVersion"
USER_METADATA = "spark.databricks.delta.commitInfo.userMetadata"


class SparkUpsert:
    """The upsert steps of ``spark._SparkRun`` (a mixin: it uses the run's state and its shared steps)."""

    def _execute_upsert(self) -> None:
        from pyspark import StorageLevel

        # Several passes read the batch (figures, bad records, one MERGE per partition): read Kafka once.
        source = self._source().persist(StorageLevel.MEMORY_AND_DISK)
        reduced = decoded = None
        try:
            prepared = self._prepared(source)
            key, known = self._key_and_fields(source, prepared)
            # Cached: later filters on the decoded rows would otherwise be pushed below the envelope parsing
            # and copy its from_json calls into the filter (hundreds per row); the first pass fills the cache.
            decoded = self._decoded(prepared, known, key).persist(StorageLevel.MEMORY_AND_DISK)
            self._count_bad(decoded, prepared)
            self._check_schema_policy(source, known, key)  # strict: a changed type fails before any commit
            self._dead_letters(lambda: decoded, known)
            reduced = sc.last_change_per_key(self._table_rows(decoded), key, order_column(self.dataset))
            reduced = reduced.persist(StorageLevel.MEMORY_AND_DISK)
            if not self.table_existed:
                self._create_from_first_batch(reduced, key)
            else:
                self._merge_partitions(reduced, key)
        finally:
            source.unpersist()
            for frame in (decoded, reduced):
                if frame is not None:
                    frame.unpersist()

    def _key_and_fields(self, source: DataFrame, prepared: DataFrame) -> tuple[list[str], dict]:
        """The batch's figures, its key columns, and the record fields under the schema policy (no commit)."""
        self._count(source)
        key = list(self.dataset.key) or self.counts.key_fields
        if not key and self.counts.total(self.counts.records) > self.counts.total(self.counts.tombstones):
            raise IngestError(
                f"dataset '{self.dataset.name}', records {self.plan.describe(self.dataset.topic)}: no key: the "
                "records carry no message key and the catalog sets no key: [...]."
            )
        known, ignored = self._known_fields(), set()
        if not self.table_existed:
            known, ignored = self._learn_fields(self._texts(prepared, key), known, None)
        self._check_schema_policy(source, known, key)  # strict: a new field fails before any commit
        learned = self._evolve(source, known, ignored, key)
        return key, learned[0] if learned else known

    def _count_bad(self, decoded: DataFrame, prepared: DataFrame) -> None:
        """Bad records per partition and the changes' oldest event time (one job over the cached batch)."""
        from pyspark.sql import functions as F

        good = F.when(F.col(sc.ERROR).isNull(), F.col("_event_time"))
        oldest = F.unix_micros(F.min(good)).alias("oldest_event_micros")
        try:
            self._read_metrics(decoded.agg(*self._record_aggregates(fields=False), oldest).first().asDict())
        except Exception as error:  # py4j wraps Spark's failure (FAILFAST decoding, event-time parsing)
            raise IngestError(self._explain_failure(error, prepared.where(F.col(sc.ERROR).isNull()))) from None

    def _count(self, source: DataFrame) -> None:
        """Records, tombstones, bytes per partition, and the field names of records and message keys (one job;
        tombstones have no JSON text, and a Debezium tombstone is no envelope, so they add no field)."""
        from pyspark.sql import functions as F

        prepared = sc.prepare(source, self.dataset)
        names = [sc.field_names(sc.TEXT).alias("fields")]
        if sc.KEY_TEXT in prepared.columns:
            names.append(sc.field_names(sc.KEY_TEXT).alias("key_fields"))
        self._read_metrics(prepared.agg(
            F.sum(F.coalesce(F.length("value"), F.lit(0)) + F.coalesce(F.length("key"), F.lit(0))).alias("bytes"),
            F.unix_micros(F.min("timestamp")).alias("oldest_micros"),
            *self._per_partition("records", "partition", F.lit(True)),
            *self._per_partition("tombstones", "partition", F.col("value").isNull()),
            *names,
        ).first().asDict())  # fmt: skip

    def _create_from_first_batch(self, reduced: DataFrame, key: list[str]) -> None:
        """A missing table is created by an append of the reduced batch (hard deletes dropped), one commit."""
        from pyspark.sql import functions as F

        rows = reduced
        if self.dataset.format == "debezium" and self.dataset.delete_mode == "hard":
            rows = rows.where(F.col(CDC_OP) != DELETE_OP)
        self._ensure_table(rows)
        txn = self._delta_log().startTransaction()
        for r in self._read_ranges:
            self._check_ledger(r.partition, int(txn.txnVersion(app_id(self.dataset.name, r.partition))))
        files = txn.writeFiles(self._size_files(self._to_table_schema(rows))._jdf)
        self._commit(txn, files, key)

    def _merge_partitions(self, reduced: DataFrame, key: list[str]) -> None:
        from pyspark.sql import functions as F

        self._ensure_table(reduced)  # new columns first (metadata-only commit), so the MERGE needs no evolution
        source = self._to_table_schema(reduced)
        clauses = merge_clauses(self.dataset, key, source.columns, quote_spark)
        self._merge_source = None  # the reduced batch, computed once by the first MERGE (see _merge)
        for r in self._read_ranges:
            changes = lambda p=r.partition: self._checkpointed(source).where(F.col("_kafka_partition") == p)  # noqa: E731
            self._merge_partition(r.partition, r.end - 1, changes, clauses, key)

    def _checkpointed(self, source: DataFrame) -> DataFrame:
        """``source`` computed once for all MERGEs. Each MERGE materialises its source, and that does not use a
        persisted frame's cache: every MERGE decoded and reduced the whole batch again."""
        if self._merge_source is None:
            self._merge_source = source.localCheckpoint(eager=True)
        return self._merge_source

    def _merge_partition(self, partition: int, last: int, changes, clauses, key: list[str]) -> None:
        """One commit for one Kafka partition: its changes MERGEd, its ``txn`` recorded, or only the ``txn``."""
        dataset = self.dataset
        app = app_id(dataset.name, partition)
        table = self.engine.lake.open_table(dataset.table_path)
        self._check_ledger(partition, read_ledger(table, dataset.name, [partition]).get(partition, -1))
        token = uuid.uuid4().hex
        metadata = {**self._metadata({partition: last}, key), "commit_token": token}
        merged = None
        if self.counts.applied(partition):
            self._merge(changes, clauses, app, last, metadata)
            merged = self._find_commit(token)
        if merged is None:
            # No change to apply (tombstones or dead letters only), or a MERGE that did not commit: the ledger
            # still moves past these offsets, in a commit of the txn alone.
            version, metrics = self._commit_ledger_only(partition, app, last, metadata), {}
        else:
            version, metrics = merged
        self.ledger[partition] = last
        self.committed.append((version, metadata["ranges"]))
        stats = self._record_commit(version)
        inserted, updated, deleted = (int(metrics.get(f"numTargetRows{what}", 0)) for what in
                                      ("Inserted", "Updated", "Deleted"))  # fmt: skip
        self.report.rows_inserted += inserted
        self.report.rows_updated += updated
        self.report.rows_deleted += deleted
        self.report.rows_written += inserted + updated
        self._record_lag(stats.oldest_event_time)
        self.engine.log.info(
            f"{dataset.name}: committed version {version} for partition {partition}: {inserted} inserted, "
            f"{updated} updated, {deleted} deleted"
        )

    def _merge(self, changes, clauses, app: str, last: int, metadata: dict) -> None:
        """delta-spark MERGE (aliases t, s) carrying the partition's ``txn`` and the run metadata. ``changes``
        makes the partition's changes (the first call computes the batch: its failure is the MERGE's)."""
        from delta.tables import DeltaTable as SparkDeltaTable

        conf = self.spark.conf
        conf.set(TXN_APP_ID, app)
        conf.set(TXN_VERSION, str(last))
        conf.set(USER_METADATA, json.dumps({RUN_METADATA_KEY: metadata}, sort_keys=True))
        try:
            merger = SparkDeltaTable.forPath(self.spark, self.path).alias("t").merge(changes().alias("s"), clauses.on)
            merger = merger.whenMatchedUpdateAll(condition=clauses.update_all_when)
            if clauses.delete_when:
                merger = merger.whenMatchedDelete(condition=clauses.delete_when)
            if clauses.soft_delete_when:
                merger = merger.whenMatchedUpdate(condition=clauses.soft_delete_when, set=clauses.soft_delete_set)
            merger.whenNotMatchedInsertAll(condition=clauses.insert_when).execute()
        except Exception as error:  # py4j wraps Delta's exceptions
            failure = ConcurrentWriterError if "Concurrent" in str(error) else IngestError
            raise failure(
                f"dataset '{self.dataset.name}': the MERGE into {self.path} failed: {str(error).splitlines()[0]}. "
                "This commit was not written."
            ) from None
        finally:
            for name in (TXN_APP_ID, TXN_VERSION, USER_METADATA):
                conf.unset(name)

    def _find_commit(self, token: str) -> tuple[int, dict] | None:
        """The version and operation metrics of the commit whose run metadata carries ``token``."""
        table = self.engine.lake.open_table(self.dataset.table_path)
        for entry in table.history(20) if table is not None else []:
            if (run_metadata_of(entry) or {}).get("commit_token") == token:
                return int(entry["version"]), dict(entry.get("operationMetrics") or {})
        return None

    def _commit_ledger_only(self, partition: int, app: str, last: int, metadata: dict) -> int:
        """A commit of the partition's ``txn`` alone (no data), through delta-spark's transaction API."""
        jvm = self.spark._jvm
        txn = self._delta_log().startTransaction()
        self._check_ledger(partition, int(txn.txnVersion(app)))
        txn.updateSetTransaction(app, last, scala_none(jvm))
        nothing = getattr(getattr(jvm.scala.collection.immutable, "Nil$"), "MODULE$")
        return int(txn.commit(nothing, append_operation(jvm, json.dumps({RUN_METADATA_KEY: metadata}, sort_keys=True))))
