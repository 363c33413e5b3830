"""Spark upserts (docs/DESIGN.md §9.2): the batch reduced to the last change per key and MERGEd into the table
in ONE commit that carries every Kafka partition's ``txn``, whatever the partition count.

delta-spark's MERGE command records one ``txn`` per commit, so the engine MERGEs copy-on-write through the
transaction API (``transaction.DeltaTransaction``), the way delta-spark's MERGE works inside:

1. the data files holding a key of the batch are found (the table's key columns, semi-joined with the batch's
   keys; the whole table is registered as read, so a concurrent commit fails ours);
2. those files are read and full-outer-joined with the batch on the key; §9.2's clauses (the SQL conditions of
   ``changes.merge_clauses``, the ones the embedded engine's MERGE uses) decide per row: copy, keep (the guard
   held the change back), update, delete, soft-delete or insert;
3. the result is written as new files, and one commit adds them, removes the touched files and records every
   partition's ``txn`` (and MERGE operation metrics like delta-spark's own).

``SparkUpsert`` is the upsert half of the Spark run (``engines/spark/engine.py``); it shares the run's reading,
decoding and checks.
"""

from __future__ import annotations

from functools import reduce
from typing import TYPE_CHECKING

from ingest_platform.engines.changes import CDC_OP, DELETE_OP, merge_clauses, order_column, quote_spark
from ingest_platform.engines.run_plan import IngestError
from ingest_platform.engines.spark import changes as sc
from ingest_platform.engines.spark.new_fields import distinct_names, unknown_names
from ingest_platform.engines.spark.transaction import DeltaTransaction
from ingest_platform.lake.commit import MergeClauses

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

#: What the MERGE does with a row of the join of touched files (t) and the batch (s).
COPY, KEEP, UPDATE, DELETE, SOFT_DELETE, INSERT, SKIP = "copy", "keep", "update", "delete", "soft", "insert", "skip"
WRITTEN = (COPY, KEEP, UPDATE, SOFT_DELETE, INSERT)
ACTION = "_kafka_merge_action"


class SparkUpsert:
    """The upsert steps of ``spark._SparkRun`` (a mixin: it uses the run's state and its shared steps)."""

    def _execute_upsert(self) -> None:
        from pyspark import StorageLevel

        # Several passes read the batch (figures, bad records, the touched files, the MERGE): read Kafka once,
        # into as many Spark partitions as the cluster runs tasks at once, not one per Kafka partition, so that
        # each later pass costs the same whatever the topic's partition count (docs/DESIGN.md §9.2 "Cost").
        # What is persisted is the batch with its envelope parsed (``sc.prepare``: row image, op, position,
        # Connect schema, error): the figures, the Connect types, schema inference and the decoding all read it,
        # instead of each parsing every envelope again.
        tasks = min(len(self._read_ranges), self.spark.sparkContext.defaultParallelism)
        batch = sc.prepare(self._source().coalesce(max(1, tasks)), self.dataset)
        batch = batch.persist(StorageLevel.MEMORY_AND_DISK)
        reduced = decoded = None
        try:
            prepared = self._prepared(batch)
            key, known = self._key_and_fields(batch, prepared)
            # Cached: later filters on the decoded rows would otherwise be pushed below the decoding and copy its
            # from_json calls into the filter; the first pass fills the cache.
            decoded = self._decoded(prepared, known, key).persist(StorageLevel.MEMORY_AND_DISK)
            self._count_bad(decoded, prepared)
            self._check_schema_policy(batch, known, key)  # strict: a changed type fails before any commit
            self._dead_letters(lambda: decoded, known)
            reduced = sc.last_change_per_key(self._table_rows(decoded), key, order_column(self.dataset))
            reduced = reduced.persist(StorageLevel.MEMORY_AND_DISK)
            if not self.table_existed:
                self._create_from_first_batch(reduced, key)
            else:
                self._merge_batch(reduced, key)
        finally:
            for frame in (batch, decoded, reduced):
                if frame is not None:
                    frame.unpersist()

    def _key_and_fields(self, batch: DataFrame, prepared: DataFrame) -> tuple[list[str], dict]:
        """The batch's figures, its key columns, and the record fields under the schema policy (no commit)."""
        self._count(batch)
        key = list(self.dataset.key) or self.counts.key_fields
        if not key and self.counts.total > self.counts.tombstones:
            raise IngestError(
                f"dataset '{self.dataset.name}', records {self.plan.describe(self.dataset.topic)}: no key: the "
                "records carry no message key and the catalog sets no key: [...]."
            )
        known, ignored = self._known_fields(), set()
        if not self.table_existed and not self.dataset.fields:  # a declared schema is the first run's (§4)
            known, ignored = self._learn_fields(self._texts(prepared, key), known, None)
        self._check_schema_policy(batch, known, key)  # strict: a new field fails before any commit
        learned = self._evolve(batch, known, ignored, key)
        return key, learned[0] if learned else known

    def _count_bad(self, decoded: DataFrame, prepared: DataFrame) -> None:
        """Bad records per partition and the changes' oldest event time (one job over the cached batch)."""
        from pyspark.sql import functions as F

        good = F.when(F.col(sc.ERROR).isNull(), F.col("_event_time"))
        oldest = F.unix_micros(F.min(good)).alias("oldest_event_micros")
        try:
            self._read_metrics(decoded.agg(*self._record_aggregates(), oldest).first().asDict())
        except Exception as error:  # py4j wraps Spark's failure (FAILFAST decoding, event-time parsing)
            raise IngestError(self._explain_failure(error, prepared.where(F.col(sc.ERROR).isNull()))) from None

    def _count(self, batch: DataFrame) -> None:
        """Records, tombstones, bytes per partition, the record fields the table lacks, the field names of the
        message keys and the distinct Connect schemas (which declare column types, docs/DESIGN.md §9.5): one
        job over the prepared ``batch``. Tombstones have no JSON text, and a Debezium tombstone is no envelope,
        so they add no field. A field a Connect schema declares is known: found here before those types are,
        it is not counted as new."""
        from pyspark.sql import functions as F

        connect = self.dataset.format == "debezium" and sc.CONNECT_SCHEMA in batch.columns
        known = self._known_fields(self.dataset.fields if connect else None)  # Connect types: collected below
        names = [distinct_names(unknown_names(batch, sc.TEXT, known)).alias("fields")]
        if sc.KEY_TEXT in batch.columns:
            names.append(sc.field_names(sc.KEY_TEXT).alias("key_fields"))
        if connect:
            names.append(F.collect_set(F.col(sc.CONNECT_SCHEMA)).alias("connect_schemas"))
        values = batch.agg(
            F.sum(F.coalesce(F.length("value"), F.lit(0)) + F.coalesce(F.length("key"), F.lit(0))).alias("bytes"),
            F.unix_micros(F.min("timestamp")).alias("oldest_micros"),
            *self._source_counts(),
            *names,
        ).first().asDict()  # fmt: skip
        self._read_metrics(values)
        if connect:
            self.counts.fields -= set(self._field_types(list(values["connect_schemas"] or [])))

    def _create_from_first_batch(self, reduced: DataFrame, key: list[str]) -> None:
        """A missing table is created by an append of the reduced batch (hard deletes dropped), one commit."""
        from pyspark.sql import functions as F

        rows = reduced
        if self.dataset.format == "debezium" and self.dataset.delete_mode == "hard":
            rows = rows.where(F.col(CDC_OP) != DELETE_OP)
        self._ensure_table(rows)
        txn = self._transaction()
        self._commit(txn, txn.write(self._size_files(self._to_table_schema(rows))), key)

    def _merge_batch(self, reduced: DataFrame, key: list[str]) -> None:
        """The copy-on-write MERGE of the reduced batch: one commit with every partition's ``txn``."""
        self._ensure_table(reduced)  # new columns first (metadata-only commit), so the MERGE needs no evolution
        changes = self._to_table_schema(reduced)
        clauses = merge_clauses(self.dataset, key, changes.columns, quote_spark)
        txn = self._transaction()
        files = None
        touched: list = []
        metrics = {"numSourceRows": 0}
        if self.counts.applied:
            touched = touched_files(txn, changes, key)
            target = txn.frame_of(touched) if touched else None
            rows, observation = merged_rows(target, changes, key, clauses)
            touched_bytes = sum(int(add.size()) for add in touched)
            try:
                files = txn.write(self._size_files(rows, extra_bytes=touched_bytes))
            except Exception as error:  # py4j wraps Spark's failure
                raise IngestError(self._explain_job_failure(error, "MERGE")) from None
            metrics = merge_metrics(observation.get, len(touched), files.size())
        version = self._commit(txn, files, key, removed=touched, merge_metrics=metrics)
        inserted, updated, deleted = (metrics.get(f"numTargetRows{what}", 0) for what in ("Inserted", "Updated",
                                                                                            "Deleted"))  # fmt: skip
        self.report.rows_inserted += inserted
        self.report.rows_updated += updated
        self.report.rows_deleted += deleted
        self.report.rows_written += inserted + updated
        self.engine.log.info(
            f"{self.dataset.name}: MERGE committed version {version}: {inserted} inserted, {updated} updated, "
            f"{deleted} deleted, {len(touched)} files rewritten"
        )


def touched_files(txn: DeltaTransaction, changes: DataFrame, key: list[str]) -> list:
    """The table's data files (``AddFile``) holding a key of ``changes``: a scan of the key columns only."""
    from pyspark.sql import functions as F

    files = txn.files()
    if not files:
        return []
    by_path = {txn.absolute_path(str(add.path())): add for add in files}
    keys = [F.col(quote_spark(name)) for name in key]
    found = (
        txn.frame_of(files).select(F.input_file_name().alias("_kafka_file"), *keys)
        .join(changes.select(*keys), on=list(key), how="left_semi")
        .select("_kafka_file").distinct().collect()
    )  # fmt: skip
    return [by_path[txn.absolute_path(row["_kafka_file"])] for row in found]


def merged_rows(target: DataFrame | None, changes: DataFrame, key: list[str], clauses: MergeClauses):
    """The rows that replace ``target`` (the touched files' rows) after MERGEing ``changes`` into them, plus an
    observation counting each action. ``target`` None: nothing matches, the changes are inserts."""
    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    columns = changes.columns
    source = changes.withColumn("_kafka_in_source", F.lit(True)).alias("s")
    if target is None:
        target = changes.limit(0)
    target = target.select(*[F.col(quote_spark(c)) for c in columns]).withColumn("_kafka_in_target", F.lit(True))
    on = reduce(lambda a, b: a & b, [F.col(f"t.{quote_spark(k)}") == F.col(f"s.{quote_spark(k)}") for k in key])
    joined = target.alias("t").join(source, on, "full_outer")
    action = _action(F.col("t._kafka_in_target").isNotNull(), F.col("s._kafka_in_source").isNotNull(), clauses)
    joined = joined.select("*", action.alias(ACTION))
    chosen = F.col(ACTION)
    soft = dict(clauses.soft_delete_set or {})

    def value(name: str) -> Column:
        mine, theirs = F.col(f"t.{quote_spark(name)}"), F.col(f"s.{quote_spark(name)}")
        soft_value = F.expr(soft[name]) if name in soft else mine
        return F.when(chosen.isin(UPDATE, INSERT), theirs).when(chosen == SOFT_DELETE, soft_value).otherwise(mine)

    rows = joined.select(*[value(c).alias(c) for c in columns], chosen)
    observation = Observation("merge")
    actions = (COPY, KEEP, UPDATE, DELETE, SOFT_DELETE, INSERT, SKIP)
    counts = [F.sum(F.when(chosen == name, 1).otherwise(0)).alias(name) for name in actions]
    rows = rows.observe(observation, *counts)
    return rows.where(chosen.isin(*WRITTEN)).drop(ACTION), observation


def _action(in_target: Column, in_source: Column, clauses: MergeClauses) -> Column:
    """§9.2 per joined row: the matched clauses in the MERGE's order (update, delete, soft delete), else the
    target row stays; a source row without a target row is inserted when ``insert_when`` holds."""
    from pyspark.sql import functions as F

    insert = F.expr(clauses.insert_when) if clauses.insert_when else F.lit(True)
    action = F.when(~in_source, F.lit(COPY)).when(~in_target, F.when(insert, INSERT).otherwise(SKIP))
    action = action.when(F.expr(clauses.update_all_when), UPDATE)
    if clauses.delete_when:
        action = action.when(F.expr(clauses.delete_when), DELETE)
    if clauses.soft_delete_when:
        action = action.when(F.expr(clauses.soft_delete_when), SOFT_DELETE)
    return action.otherwise(KEEP)


def merge_metrics(counts: dict, files_removed: int, files_added: int) -> dict[str, int]:
    """delta-spark's MERGE operation metrics from the observed actions."""
    n = {name: int(counts.get(name) or 0) for name in (COPY, KEEP, UPDATE, DELETE, SOFT_DELETE, INSERT, SKIP)}
    return {
        "numSourceRows": n[KEEP] + n[UPDATE] + n[DELETE] + n[SOFT_DELETE] + n[INSERT] + n[SKIP],
        "numTargetRowsInserted": n[INSERT], "numTargetRowsUpdated": n[UPDATE] + n[SOFT_DELETE],
        "numTargetRowsDeleted": n[DELETE], "numTargetRowsCopied": n[COPY] + n[KEEP],
        "numOutputRows": sum(n[name] for name in WRITTEN),
        "numTargetFilesAdded": files_added, "numTargetFilesRemoved": files_removed,
    }  # fmt: skip
