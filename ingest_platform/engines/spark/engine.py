"""The Spark engine: the same run and the same table protocol as the embedded engine, on pyspark.

One run (docs/DESIGN.md §2, §4 and §9): the shared plan (ledger from the table, watermarks captured at start,
ranges capped by ``max_records_per_run``); a batch read of exactly those offsets with spark-sql-kafka
(``startingOffsets``/``endingOffsets`` as JSON); values decoded with ``from_json`` against the table's schema
(JSON objects, or Debezium row images); records that cannot be applied go to ``<name>_dlq`` within
``max_dlq_ratio``, before the main commit. Appends are ONE Delta commit holding the data files and one ``txn``
action per partition, written through delta-spark's ``OptimisticTransaction``. Upserts reduce the batch to the
last change per key and MERGE it copy-on-write in ONE commit with every partition's ``txn`` (``merge.py``;
delta-spark's MERGE command records one ``txn`` per commit). The consumer group is committed afterwards,
for monitoring only.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from ingest_platform.catalog import DERIVED_PARTITIONS, Dataset, FieldType, is_reserved
from ingest_platform.engines import connect_schema
from ingest_platform.engines.changes import (
    CDC_DELETED,
    CDC_DELETED_AT,
    CDC_OP,
    CDC_POSITION,
    DELETE_OP,
    quote_spark,
)
from ingest_platform.engines.report import PartitionProgress, RunReport, run_outcome
from ingest_platform.engines.run_plan import IngestError, RunPlan, plan_run
from ingest_platform.engines.spark import changes as sc
from ingest_platform.engines.spark.merge import SparkUpsert
from ingest_platform.engines.spark.new_fields import (
    UNKNOWN_FIELDS,
    UNKNOWN_KEY_FIELDS,
    collected_names,
    distinct_names,
    unknown_names,
)
from ingest_platform.engines.spark.transaction import DeltaTransaction, headline, is_conflict
from ingest_platform.kafka.client import CONSUMER_TUNING, GroupOffsetCommitter, KafkaConnection
from ingest_platform.lake.commit import ConcurrentWriterError, LakeWriteError
from ingest_platform.lake.dead_letters import BadRecord, write_dead_letters
from ingest_platform.lake.ledger import app_id
from ingest_platform.lake.storage import is_s3, s3a_conf, spark_path
from ingest_platform.lake.tables import LakeLocation, commit_stats

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

ENGINE_NAME = "spark"
#: Preferred data-file size, as in the embedded engine, clamped to the dataset's file-size target.
PREFERRED_FILE_MB = 256
#: Bad records named in a failure message.
NAMED_BAD_RECORDS = 5
#: What delta-spark's ``createIfNotExists`` raises while another writer is creating the same table: its
#: ``_delta_log`` exists but holds no version 0 yet, or the folder is being written (docs/DESIGN.md §2).
_CREATING_ELSEWHERE = ("DELTA_TABLE_NOT_FOUND", "DELTA_CREATE_TABLE_WITH_NON_EMPTY_LOCATION")
#: How long a first run waits for another writer's table creation to become visible.
TABLE_CREATION_WAIT_S = 30.0


#: spark-sql-kafka reads bounded offset ranges of records already in the log: the broker need not wait for more.
BOUNDED_READ_FETCH_WAIT_MS = 10


def kafka_source_options(kafka: KafkaConnection) -> dict[str, str]:
    """spark-sql-kafka options: brokers, credentials and the guide's consumer fetch settings (``kafka.*``)."""
    options = {f"kafka.{key}": str(value) for key, value in kafka.security.items()}
    options["kafka.bootstrap.servers"] = kafka.bootstrap_servers
    names = {"fetch.wait.max.ms": "fetch.max.wait.ms", "socket.timeout.ms": "request.timeout.ms"}  # Java names
    for key, value in CONSUMER_TUNING.items():  # LIBRDKAFKA_PREFETCH is librdkafka's alone
        options[f"kafka.{names.get(key, key)}"] = str(value)
    # spark-sql-kafka reads a fixed offset range per partition, one consumer per partition task, and the records
    # are already in the log: the guide's fetch.min.bytes (1 MiB) would only make each partition's last fetch
    # wait fetch.max.wait.ms (a fixed cost per Kafka partition; docs/DESIGN.md §5). Even at 1 byte, each
    # partition's read still waited one fetch.max.wait.ms: the consumer's fetch past the range's end (where no
    # record is coming) is held by the broker that long (500 ms: 2,000 records in 96 partitions read in 26 s,
    # in 24 partitions 12.4 s; 1.8 s at 10 ms). Data already in the log never needs the broker to wait.
    options["kafka.fetch.min.bytes"] = "1"
    options["kafka.fetch.max.wait.ms"] = str(BOUNDED_READ_FETCH_WAIT_MS)
    options["kafka.isolation.level"] = "read_committed"
    options["failOnDataLoss"] = "true"
    return options


class SparkEngine:
    name = ENGINE_NAME

    def __init__(self, kafka: KafkaConnection, lake: LakeLocation, spark: SparkSession, log=None):
        self.kafka = kafka
        self.lake = lake
        self.spark = spark
        self.log = log or logging.getLogger(__name__)

    def run(self, dataset: Dataset, run_id: str | None = None) -> RunReport:
        started = time.monotonic()
        uri = self.lake.table_uri(dataset.table_path)
        report = RunReport(dataset=dataset.name, engine=ENGINE_NAME, table_uri=uri)
        consumer = self.kafka.consumer(dataset.group_id)
        try:
            plan = plan_run(dataset, consumer, self.lake, self.kafka.timeout_s)
            report.lag_after = plan.lag_after
            if plan.total == 0:
                self.log.info(f"{dataset.name}: no new records in {dataset.topic}; nothing to commit")
            else:
                self.log.info(f"{dataset.name}: reading {plan.total} records from {plan.describe(dataset.topic)}")
                if plan.data_loss:
                    self.log.warning(
                        f"{dataset.name}: records deleted by Kafka retention before ingestion were skipped "
                        f"(on_data_loss: skip): {plan.describe_data_loss(dataset.topic)}"
                    )
                spark_run = _SparkRun(self, dataset, plan, report, run_id or uuid.uuid4().hex)
                try:
                    spark_run.execute()
                except (IngestError, LakeWriteError) as error:  # say what the run committed before failing
                    raise type(error)(f"{error} {run_outcome(dataset.topic, spark_run.committed)}") from None
                _commit_group(self.kafka, dataset, plan, self.log)
        finally:
            consumer.close()
        report.duration_s = time.monotonic() - started
        return report


@dataclass
class _Counts:
    """What a run's batch holds (records = applied + dead-lettered + tombstones); records also per partition.
    A run is one commit, so its figures are the batch's totals."""

    records: dict[int, int] = field(default_factory=dict)  # per Kafka partition
    tombstones: int = 0  # null values: covered, skipped, never written
    bad: int = 0  # records that cannot be applied
    type_mismatches: int = 0  # of the bad: a field whose type differs from the table's
    fields: set[str] = field(default_factory=set)  # field names of the records (row images) to look at
    key_fields: list[str] = field(default_factory=list)  # field names of the message keys (Debezium upserts)
    bytes: int = 0
    oldest_micros: int | None = None  # the oldest Kafka timestamp
    oldest_event_micros: int | None = None  # upserts: the oldest event time of the changes

    @property
    def total(self) -> int:
        return sum(self.records.values())

    @property
    def applied(self) -> int:
        return self.total - self.tombstones - self.bad

    def figures(self) -> dict[str, int]:
        """The run metadata's counts for the run's commit."""
        return {"records": self.total, "applied": self.applied, "dead_lettered": self.bad,
                "skipped": self.tombstones, "tombstones": self.tombstones}  # fmt: skip


class _SparkRun(SparkUpsert):
    def __init__(
        self,
        engine: SparkEngine,
        dataset: Dataset,
        plan: RunPlan,
        report: RunReport,
        run_id: str,
        source: DataFrame | None = None,
        extra_metadata: dict | None = None,
    ):
        """``source``: the Kafka rows of ``plan``'s ranges already read (a streaming micro-batch, docs/DESIGN.md
        §10.10), instead of a batch read; ``extra_metadata`` joins the commits' run metadata."""
        self.given_source = source
        self.extra_metadata = dict(extra_metadata or {})
        self.engine = engine
        self.spark = engine.spark
        self.dataset = dataset
        self.plan = plan
        self.report = report
        self.run_id = run_id
        self.started_at = time.time()  # run metadata: the throughput check divides records by commit - start
        self.uri = engine.lake.table_uri(dataset.table_path)
        self.path = spark_path(self.uri)  # s3:// -> s3a://
        if is_s3(self.uri):  # this run's endpoint and credentials (and the guide's S3A tuning) for the S3A connector
            hadoop = self.spark._jsc.hadoopConfiguration()  # type: ignore[attr-defined]
            for key, value in s3a_conf(engine.lake.storage_options).items():
                hadoop.set(key, value)
        min_mb, max_mb = dataset.slo.file_size_mb.min, dataset.slo.file_size_mb.max
        self.target_file_bytes = int(min(max_mb, max(min_mb, PREFERRED_FILE_MB)) * 1024 * 1024)
        # PERMISSIVE decoding (bad values become dead letters) only when the dataset can use it; otherwise
        # FAILFAST: the fast path of plain appends, failing on the first bad value.
        self.tolerant = dataset.max_dlq_ratio > 0 or dataset.schema_evolution == "strict"
        self.ledger = dict(plan.ledger)
        self.counts = _Counts()
        self.committed: list[tuple[int, dict]] = []  # (version, ranges) of this run's data commits
        self.table_existed = self._table_exists()  # a run that creates the table takes the batch's schema
        self.created_table = False  # this run created it (a rewrite after new fields finds it there)
        self._types: dict[str, FieldType] | None = None  # declared types: the catalog's and Connect's (§9.5)
        self._read_types: dict = {}
        self._types_source: DataFrame | None = None

    @property
    def _read_ranges(self):
        return [r for r in self.plan.ranges if r.count]

    def execute(self) -> None:
        if self.dataset.mode == "upsert":
            self._execute_upsert()
        else:
            self._execute_append()
        self.report.partitions = [
            PartitionProgress(
                partition=r.partition,
                first_offset=r.start,
                last_offset=r.end - 1 if r.count else self.plan.ledger.get(r.partition, r.start - 1),
                records=self.counts.records.get(r.partition, 0),
            )
            for r in self.plan.ranges
        ]
        counts, report = self.counts, self.report
        report.records = counts.total
        report.skipped = counts.tombstones
        report.dead_lettered = counts.bad
        report.applied = report.records - report.skipped - report.dead_lettered
        report.bytes_read = counts.bytes

    # -- append: one pass, one commit -------------------------------------------------------------------------

    def _execute_append(self) -> None:
        source = self._source()
        self._types_source = source
        known = self._known_fields()
        ignored: set[str] = set()  # fields that are null in every record so far: no type to give them yet
        if not self.table_existed:
            if not self.dataset.fields:  # first run without a declared schema: one extra pass to infer it
                known, ignored = self._learn_fields(self._texts(self._prepared(source), ()), known, None)
            # With one, the declared fields are the schema, and a field the catalog does not declare is found
            # while the batch is written, like a new field later (its type inferred, the batch written again).
            if self.tolerant or self.dataset.format == "debezium":
                self._check_bad_before_creating(source, known)

        def decoded() -> DataFrame:  # the batch as last decoded; made again only when it has bad records
            return self._decoded(self._prepared(source), known, ())

        while True:
            txn, files = self._write_files(source, known)
            self._check_schema_policy(source, known, ())
            self._dead_letters(decoded, known, write=False)  # above max_dlq_ratio: fail before adding columns
            learned = self._evolve(source, known, ignored, ())
            if learned is None:
                break
            if learned[0] == known:  # the new fields are null in every record: no column yet, the files stand
                ignored = learned[1]
                break
            # Fields the table does not know: the files just written are dropped (never committed), the new
            # fields' types are inferred from the batch and the batch is written again. Rare: schema changes.
            known, ignored = learned
        self._dead_letters(decoded, known)
        self._commit(txn, files)

    def _check_bad_before_creating(self, source: DataFrame, known: dict) -> None:
        """A first run above ``max_dlq_ratio`` fails before it creates the table (one more pass, first run only;
        the planned offsets stand in for the records, the exact check follows the write)."""
        decoded = self._decoded(self._prepared(source), known, ())
        self._read_metrics(decoded.agg(*self._record_aggregates()).first().asDict())
        self._dead_letters(lambda: decoded, known, write=False, records=self.plan.total)

    def _write_files(self, source: DataFrame, known: dict):
        """Decode and write the batch's data files in a new transaction; nothing is committed yet."""
        from pyspark.sql import functions as F

        # A JSON append without dead letters: every record decodes or fails the job, so no figure needs the decoded
        # record, and the new-field check reads the values with the source's figures, in ONE observation before
        # the decoding. An observation after it would copy every decoded row once more (docs/DESIGN.md §4).
        early = self.dataset.format == "json" and not self._record_aggregates()
        observed, source_metrics = self._observe_source(source, known if early else None)
        prepared = self._prepared(observed)
        decoded, metrics = self._decoded(prepared, known, ()), [source_metrics]
        if not early:
            decoded, record_metrics = self._observe_records(decoded, known)
            metrics.append(record_metrics)
        data = self._table_rows(decoded)
        self._ensure_table(data)
        data = self._size_files(self._to_table_schema(data), kafka_tasks=len(self._read_ranges))
        txn = self._transaction()
        try:
            files = txn.write(data)
        except Exception as error:  # py4j wraps Spark's failure (FAILFAST decoding, event-time parsing)
            raise IngestError(self._explain_failure(error, prepared.where(F.col(sc.ERROR).isNull()))) from None
        self._read_metrics(*(observation.get for observation in metrics))
        return txn, files

    def _observe_source(self, source: DataFrame, known: dict | None = None):
        """The batch with its figures collected while it is written (Spark ``observe``: no extra pass); with
        ``known``, also the names of fields the table does not know, read from the JSON values."""
        from pyspark.sql import Observation
        from pyspark.sql import functions as F

        names = []
        if known is not None:  # inside the aggregate: the Kafka rows reach the observation as read, no projection
            found = unknown_names(source, "value", known, good=F.col("value").isNotNull())
            names = [distinct_names(found).alias("fields")]
        observation = Observation(f"ingest-{self.run_id}-{uuid.uuid4().hex[:8]}")
        observed = source.observe(
            observation,
            F.sum(F.coalesce(F.length("value"), F.lit(0)) + F.coalesce(F.length("key"), F.lit(0))).alias("bytes"),
            F.unix_micros(F.min("timestamp")).alias("oldest_micros"),
            *self._source_counts(),
            *names,
        )
        return observed, observation

    def _observe_records(self, decoded: DataFrame, known: dict):
        """The decoded batch with its figures collected while it is written, among them the names of fields the
        table does not know: computed per record in a projection (compiled with the decoding), so that the
        observed aggregate only collects the few records that have any."""
        from pyspark.sql import Observation

        names = {UNKNOWN_FIELDS: sc.TEXT}
        if self.dataset.format == "debezium" and not self.dataset.key:
            names[UNKNOWN_KEY_FIELDS] = sc.KEY_TEXT
        filled = list(known) if self.dataset.format == "json" else []  # Debezium: key fields fill columns too
        for column, text in names.items():
            decoded = decoded.withColumn(column, unknown_names(decoded, text, known, filled))
        observation = Observation(f"records-{self.run_id}-{uuid.uuid4().hex[:8]}")
        observed = decoded.observe(observation, *self._record_aggregates(), *collected_names(names))
        return observed.drop(*names), observation

    def _record_aggregates(self) -> list[Column]:
        """Over decoded records: bad records and type mismatches (when decoding can find any)."""
        from pyspark.sql import functions as F

        error = F.col(sc.ERROR)
        aggregates = []
        if self.tolerant or self.dataset.format == "debezium" or self.dataset.mode == "upsert":
            aggregates = [
                F.sum(F.when(error == sc.TYPE_MISMATCH, 1).otherwise(0)).alias("type_mismatches"),
                F.sum(F.when(error.isNotNull(), 1).otherwise(0)).alias("bad"),
            ]  # else every record decodes (a bad one fails the job): nothing to count
        return aggregates

    def _source_counts(self) -> list[Column]:
        """Records per Kafka partition and tombstones, over the Kafka rows."""
        from pyspark.sql import functions as F

        partition = F.col("partition")
        records = [F.sum(F.when(partition == r.partition, 1).otherwise(0)).alias(f"records_{r.partition}")
                   for r in self._read_ranges]  # fmt: skip
        return [*records, F.sum(F.when(F.col("value").isNull(), 1).otherwise(0)).alias("tombstones")]

    def _read_metrics(self, *metrics: dict) -> None:
        """Fill ``self.counts`` from observed or aggregated figures (``records_<partition>`` per partition)."""
        counts = self.counts
        for values in metrics:
            for r in self._read_ranges:
                if f"records_{r.partition}" in values:
                    counts.records[r.partition] = int(values[f"records_{r.partition}"] or 0)
            for name in ("tombstones", "bad"):
                if name in values:
                    setattr(counts, name, int(values[name] or 0))
            if "fields" in values:
                counts.fields = set(values["fields"] or [])
            if "key_fields" in values:  # message keys' fields are columns too (they fill the row image)
                counts.key_fields = sorted(values["key_fields"] or [])
                counts.fields |= set(counts.key_fields)
            if "type_mismatches" in values:
                counts.type_mismatches = int(values["type_mismatches"] or 0)
            if "bytes" in values:
                counts.bytes = int(values["bytes"] or 0)
            for name in ("oldest_micros", "oldest_event_micros"):
                if name in values:
                    setattr(counts, name, values[name])

    def _commit(self, txn: DeltaTransaction, files, key=None, removed=(), merge_metrics=None) -> int:
        """One Delta commit: the files (and removed files of a MERGE) plus one ``txn`` per partition (the
        ledger), with the run's metadata."""
        advancing = {**self.plan.accepted, **{r.partition: r.end - 1 for r in self._read_ranges}}
        ledger = {app_id(self.dataset.name, partition): last for partition, last in advancing.items()}
        run = self._metadata(advancing, key)
        version = txn.commit(files, ledger, run, removed=removed, merge_metrics=merge_metrics)
        self.ledger.update(advancing)
        self.committed.append((version, run["ranges"]))
        stats = self._record_commit(version)
        self._record_lag(stats.oldest_event_time)
        if merge_metrics is None:
            self.report.rows_written += stats.rows
            self.report.rows_inserted += stats.rows if self.dataset.mode == "upsert" else 0
            self.engine.log.info(
                f"{self.dataset.name}: committed version {version}: {stats.rows} rows, {stats.files} files"
            )
        return version

    def _transaction(self) -> DeltaTransaction:
        """A transaction on the table whose ledger is still where the run read it (else another writer moved it)."""
        txn = DeltaTransaction(self.spark, self.path, f"dataset '{self.dataset.name}'")
        txn.check_ledger({app_id(self.dataset.name, r.partition): self.ledger.get(r.partition, -1)
                          for r in self._read_ranges})  # fmt: skip
        return txn

    def _metadata(self, advancing: dict[int, int], key=None) -> dict:
        """The commit's ``ingest_platform.run`` metadata (docs/DESIGN.md §2, §9.3)."""
        dataset = self.dataset
        metadata = {
            "run_id": self.run_id, "engine": ENGINE_NAME, "topic": dataset.topic,
            "started_at": round(self.started_at, 3),
            "ranges": {str(r.partition): [r.start, advancing[r.partition]] for r in self.plan.ranges
                       if r.partition in advancing},
            **self.counts.figures(),
            **self.extra_metadata,
        }  # fmt: skip
        if key:
            metadata["key"] = list(key)
        if self.plan.data_loss_metadata(advancing):  # on_data_loss: skip — the gaps this commit moves past
            metadata["data_loss"] = self.plan.data_loss_metadata(advancing)
        return metadata

    def _record_commit(self, version: int):
        stats = commit_stats(self.uri, version, self.engine.lake.storage_options)
        self.report.commits.append(version)
        self.report.files_written += stats.files
        self.report.bytes_written += stats.bytes
        return stats

    def _record_lag(self, oldest_event: datetime | None) -> None:
        """Event-to-commit lag: the changes' oldest event time (upserts: a MERGE also rewrites old rows), else
        the files' statistics (no extra pass), else the oldest Kafka timestamp."""
        micros = self.counts.oldest_event_micros
        oldest = datetime.fromtimestamp(micros / 1e6, timezone.utc) if micros is not None else oldest_event
        if oldest is None and self.counts.oldest_micros is not None:
            oldest = datetime.fromtimestamp(self.counts.oldest_micros / 1e6, timezone.utc)
        if oldest is not None:
            lag = (datetime.now(timezone.utc) - oldest).total_seconds()
            self.report.max_event_to_commit_lag_s = max(lag, self.report.max_event_to_commit_lag_s or lag)

    # -- decoding ---------------------------------------------------------------------------------------------

    def _source(self) -> DataFrame:
        """Exactly the planned offsets, read in one batch (the guide's ``kafka.*`` consumer settings).

        ``assign``, not ``subscribe``: a partition without new records is not read at all (spark-sql-kafka
        refuses offsets for a subset of the subscribed partitions)."""
        if self.given_source is not None:
            return self.given_source
        dataset = self.dataset
        starting = {dataset.topic: {str(r.partition): r.start for r in self._read_ranges}}
        ending = {dataset.topic: {str(r.partition): r.end for r in self._read_ranges}}
        return (
            self.spark.read.format("kafka")
            .options(**kafka_source_options(self.engine.kafka))
            .option("assign", json.dumps({dataset.topic: [r.partition for r in self._read_ranges]}))
            .option("startingOffsets", json.dumps(starting))
            .option("endingOffsets", json.dumps(ending))
            .load()
        )

    def _prepared(self, source: DataFrame) -> DataFrame:
        """Records with a value (tombstones are only counted), with their JSON text and envelope columns.
        ``source``: the Kafka rows, or a batch already prepared (an upsert's persisted one, ``sc.prepare``):
        then only the tombstones are left out."""
        from pyspark.sql import functions as F

        if self._types_source is None:
            self._types_source = source  # the batch whose Connect schemas type its columns
        if is_prepared(source):
            return source.where(F.col("value").isNotNull())
        return sc.prepare(source.where(F.col("value").isNotNull()), self.dataset)

    def _field_types(self, connect_schemas: list[str] | None = None) -> dict[str, FieldType]:
        """Declared column types: the row types of the batch's Connect schemas (Debezium with the wrapper:
        each distinct schema text is collected once and mapped), overridden by the catalog's ``schema:``.
        ``connect_schemas``: those texts, already collected by a pass that had other work (an upsert's figures);
        else a pass of their own collects them."""
        from pyspark.sql import functions as F

        if self._types is not None:
            return self._types
        connect: dict[str, FieldType] = {}
        if connect_schemas is None and self.dataset.format == "debezium" and self._types_source is not None:
            column = F.col(sc.CONNECT_SCHEMA)
            rows = (self._prepared(self._types_source).where(column.isNotNull())
                    .groupBy(F.xxhash64(column)).agg(F.first(column).alias("schema")).collect())  # fmt: skip
            connect_schemas = [row["schema"] for row in rows]
        if connect_schemas:
            cache = connect_schema.SchemaCache()
            try:
                for text in sorted(connect_schemas, key=len):
                    connect.update(cache.image_types(text.encode()))
            except connect_schema.ConnectSchemaError as error:
                raise IngestError(f"dataset '{self.dataset.name}', records {self.plan.describe(self.dataset.topic)}: "
                                  f"{error}. Nothing was committed.") from None  # fmt: skip
        self._read_types = {name: sc.spark_read_type(kind, exact=True) for name, kind in connect.items()}
        for name, kind in self.dataset.fields.items():
            if name not in connect:
                self._read_types[name] = sc.spark_read_type(kind, exact=False)
        self._types = {**connect, **self.dataset.fields}
        return self._types

    def _texts(self, prepared: DataFrame, key) -> DataFrame:
        """The JSON objects whose fields become columns: values, or row images (and message keys)."""
        from pyspark.sql import functions as F

        texts = prepared.where(F.col(sc.ERROR).isNull()).select(F.col(sc.TEXT).alias("v"))
        if sc.KEY_TEXT in prepared.columns and not self.dataset.key:
            texts = texts.unionByName(prepared.select(F.col(sc.KEY_TEXT).alias("v")))
        return texts.where(F.json_object_keys(F.col("v")).isNotNull())

    def _known_fields(self, field_types: dict[str, FieldType] | None = None) -> dict:
        """Record fields with their types: the table's, overridden by the declared ones (``field_types``, else
        the batch's Connect schemas, then the catalog's ``schema:``)."""
        types = self._field_types() if field_types is None else field_types
        declared = {name: sc.spark_type(kind) for name, kind in types.items()}
        return {**self._table_record_fields(), **declared}

    def _learn_fields(self, texts: DataFrame, known: dict, only: set[str] | None) -> tuple[dict, set[str]]:
        """Known fields plus the inferred types of ``only`` (or of every field the batch has, when None)."""
        from pyspark.sql import types as T

        inferred = {f.name: f.dataType for f in self._infer(texts).fields if only is None or f.name in only}
        inferred.pop("_corrupt_record", None)
        learned = {**{k: v for k, v in inferred.items() if not isinstance(v, T.NullType)}, **known}
        ignored = {k for k, v in inferred.items() if isinstance(v, T.NullType) and k not in known}
        return learned, ignored

    def _evolve(self, source: DataFrame, known: dict, ignored: set[str], key) -> tuple[dict, set[str]] | None:
        """New fields of the batch under the dataset's schema policy: learned (additive), or None when the
        known fields stay."""
        new = sorted(name for name in self.counts.fields if name not in known and name not in ignored)
        reserved = [name for name in new if is_reserved(name)]
        if reserved:
            raise IngestError(
                f"dataset '{self.dataset.name}', records {self.plan.describe(self.dataset.topic)}: records carry "
                f"field(s) {reserved}, names reserved for the engine's columns. Rename them in the producer."
            )
        if not new or self.dataset.schema_evolution != "additive":
            return None  # strict failed already on new fields with values; quarantine dead-letters their records
        self.engine.log.info(f"{self.dataset.name}: new fields {new}: inferring their types")
        return self._learn_fields(self._texts(self._prepared(source), key), known, set(new))

    def _check_schema_policy(self, source: DataFrame, known: dict, key) -> None:
        """``strict``: a new field or a changed type fails the run, naming every one (docs/DESIGN.md §9.4)."""
        from pyspark.sql import types as T

        dataset = self.dataset
        if dataset.schema_evolution != "strict" or not self.table_existed:
            return
        new = [name for name in self.counts.fields if name not in known]
        if not new and not self.counts.type_mismatches:
            return
        batch = {f.name: f.dataType for f in self._infer(self._texts(self._prepared(source), key)).fields}
        added = [f"'{name}' ({batch[name].simpleString()})" for name in sorted(new)
                 if name in batch and not isinstance(batch[name], T.NullType)]  # fmt: skip
        changed = [
            f"'{name}' ({batch[name].simpleString()}, the table stores {known[name].simpleString()})"
            for name in sorted(batch) if name in known and not _compatible(batch[name], known[name])
        ]  # fmt: skip
        parts = ([f"new field(s) {', '.join(added)}"] if added else []) + (
            [f"changed type(s) {', '.join(changed)}"] if changed else []
        )
        if not parts:
            return  # only fields that are null in every record: nothing to add yet
        raise IngestError(
            f"dataset '{dataset.name}', records {self.plan.describe(dataset.topic)} do not match the table's schema "
            f"(schema_evolution: strict): {'; '.join(parts)}. Change the table deliberately (ALTER TABLE … ADD "
            "COLUMNS), or use schema_evolution: additive or quarantine, then re-run."
        )

    def _infer(self, json_rows: DataFrame):
        """JSON schema inference over the batch (only when fields appear that the table does not have)."""
        from pyspark.sql import DataFrame as PyDataFrame

        jvm = self.spark._jvm
        strings = getattr(json_rows._jdf, "as")(jvm.org.apache.spark.sql.Encoders.STRING())  # Dataset[String]
        inferred = PyDataFrame(self.spark._jsparkSession.read().json(strings), self.spark)
        return inferred.schema

    def _table_record_fields(self) -> dict:
        if not self._table_exists():
            return {}
        schema = self._table_schema()
        skip = set(self.dataset.partition_by) & set(DERIVED_PARTITIONS)
        return {f.name: f.dataType for f in schema.fields if f.name not in skip and not is_reserved(f.name)}

    def _table_exists(self) -> bool:
        return self.plan.table is not None or self._delta_log().tableExists()

    def _delta_log(self):
        jvm = self.spark._jvm
        return jvm.org.apache.spark.sql.delta.DeltaLog.forTable(self.spark._jsparkSession, self.path)

    def _decoded(self, prepared: DataFrame, known: dict, key) -> DataFrame:
        """The table's columns for every record, plus ``ERROR`` (why a record cannot be applied) and the raw
        value and JSON text (for the dead-letter table)."""
        from pyspark.sql import functions as F

        dataset = self.dataset
        types = self._field_types()
        read_types = {name: kind for name, kind in self._read_types.items() if name in known}
        frame = sc.decode(prepared, known, self.tolerant, read_types)
        record = {name: F.col(f"_kafka_record.`{name}`") for name in known}
        reasons = []
        for name, read in read_types.items():
            record[name], reason = sc.typed_column(record[name], read, types[name], name)
            reasons.append(reason)
        if reasons:  # a value its declared type cannot hold makes the record bad (docs/DESIGN.md §9.5)
            frame = frame.withColumn(sc.ERROR, F.coalesce(F.col(sc.ERROR), *reasons))
        if sc.KEY_TEXT in frame.columns:
            # Debezium without a catalog key: the message key's fields fill the columns the image lacks.
            frame = frame.withColumn("_kafka_key_record", F.from_json(F.col(sc.KEY_TEXT), _struct(known)))
            for name in known:
                record[name] = F.coalesce(record[name], F.col(f"_kafka_key_record.`{name}`"))
        event_time = self._event_time(frame, known)
        derived = {
            "year": F.year(event_time), "month": F.month(event_time), "day": F.dayofmonth(event_time),
            "hour": F.hour(event_time), "date": F.to_date(event_time),
        }  # fmt: skip
        columns = [column.alias(name) for name, column in record.items()]
        columns += [derived[name].cast("int" if name != "date" else "date").alias(name)
                    for name in dataset.partition_by if name in derived]  # fmt: skip
        columns += [
            F.col("topic").alias("_kafka_topic"),
            F.col("partition").cast("int").alias("_kafka_partition"),
            F.col("offset").cast("long").alias("_kafka_offset"),
            F.col("timestamp").alias("_kafka_timestamp"),
            F.col("key").alias("_kafka_key"),
            event_time.alias("_event_time"),
            F.current_timestamp().alias("_ingested_at"),
        ]
        if dataset.format == "debezium":
            columns += [F.col(CDC_OP), F.col(CDC_POSITION)]
            if dataset.delete_mode == "soft":
                deleted = F.col(CDC_OP) == DELETE_OP
                columns += [deleted.alias(CDC_DELETED), F.when(deleted, event_time).alias(CDC_DELETED_AT)]
        helpers = [sc.TEXT, sc.ERROR] + ([sc.KEY_TEXT] if sc.KEY_TEXT in frame.columns else [])
        decoded = frame.select(*columns, F.col("value").alias("_kafka_value"), *helpers)
        return self._check_records(decoded, known, key)

    def _check_records(self, decoded: DataFrame, known: dict, key) -> DataFrame:
        """Dead-letter reasons that need the decoded row: quarantined new fields, a missing key (upserts)."""
        from pyspark.sql import functions as F

        if self.dataset.schema_evolution == "quarantine":
            unknown = sc.unknown_fields(list(known))
            reason = F.concat(F.lit("field '"), F.element_at(unknown, 1),
                              F.lit("' is not in the table (schema_evolution: quarantine)"))  # fmt: skip
            decoded = sc.with_error(decoded, F.size(unknown) > 0, reason)
        if self.dataset.mode == "upsert":
            missing, reason = sc.missing_key(key, decoded.columns)
            decoded = sc.with_error(decoded, missing, reason)
        return decoded

    def _event_time(self, frame: DataFrame, known: dict) -> Column:
        """``event_time_field`` parsed; else Debezium's source time; else the Kafka timestamp."""
        from pyspark.sql import functions as F

        dataset = self.dataset
        fallbacks = [F.col("timestamp")]
        if dataset.format == "debezium":
            fallbacks.insert(0, F.timestamp_millis(F.col(sc.SOURCE_MS)))
        if dataset.event_time_field and dataset.event_time_field in known:
            location = F.concat(
                F.lit(f"dataset '{dataset.name}', record {dataset.topic}["), F.col("partition").cast("string"),
                F.lit("] offset "), F.col("offset").cast("string"),
            )  # fmt: skip
            raw = F.when(F.col(sc.ERROR).isNull(), F.col(f"_kafka_record.`{dataset.event_time_field}`"))
            parsed = _parse_event_time(raw, known[dataset.event_time_field], location, dataset.event_time_field)
            fallbacks.insert(0, parsed)
        return F.coalesce(*fallbacks) if len(fallbacks) > 1 else fallbacks[0]

    @staticmethod
    def _table_rows(decoded: DataFrame) -> DataFrame:
        from pyspark.sql import functions as F

        return decoded.where(F.col(sc.ERROR).isNull()).drop("_kafka_value", sc.TEXT, sc.ERROR, sc.KEY_TEXT)

    # -- dead letters -----------------------------------------------------------------------------------------

    def _dead_letters(self, decoded, known: dict, write: bool = True, records: int | None = None) -> None:
        """Bad records over ``max_dlq_ratio`` fail the run (nothing committed); else they go to the DLQ first
        (``write``). ``decoded`` makes the decoded batch (only called when there are bad records to read)."""
        dataset = self.dataset
        bad = self.counts.bad
        records = self.counts.total if records is None else records
        over = bad > dataset.max_dlq_ratio * records
        if not bad or not (over or write):
            return
        dead = self._collect_bad(decoded(), known, limit=NAMED_BAD_RECORDS if over else None)
        if over:
            named = "; ".join(f"record {dataset.topic}[{r.partition}] offset {r.offset}: {r.error}" for r in dead)
            raise IngestError(
                f"dataset '{dataset.name}': {bad} of {records} records cannot be applied, more than max_dlq_ratio "
                f"{dataset.max_dlq_ratio:g} allows: {named}{'; …' if bad > len(dead) else ''}. Fix the producer (or "
                "the catalog's key/schema:), or raise max_dlq_ratio to send such records to the dead-letter table "
                f"{dataset.dlq_table_path}."
            )
        if not write:
            return
        covered = {r.partition: r.end - 1 for r in self._read_ranges}
        run = {"run_id": self.run_id, "engine": ENGINE_NAME, "topic": dataset.topic,
               "started_at": round(self.started_at, 3),
               "ranges": {str(r.partition): [r.start, r.end - 1] for r in self._read_ranges}}  # fmt: skip
        version, added = write_dead_letters(self.engine.lake, dataset, dead, covered, run)
        if version is not None:
            self.report.dlq_commits.append(version)
        self.engine.log.warning(
            f"{dataset.name}: {bad} records dead-lettered to {dataset.dlq_table_path} ({added} new, version {version})"
        )

    def _collect_bad(self, decoded: DataFrame, known: dict, limit: int | None) -> list[BadRecord]:
        """The bad records on the driver (few: bounded by max_dlq_ratio, or ``limit`` when failing)."""
        from pyspark.sql import functions as F

        bad = decoded.where(F.col(sc.ERROR).isNotNull()).select(
            "_kafka_partition", "_kafka_offset", F.unix_millis("_kafka_timestamp").alias("ms"), "_kafka_key",
            "_kafka_value", sc.TEXT, sc.ERROR,
        ).orderBy("_kafka_partition", "_kafka_offset")  # fmt: skip
        rows = bad.limit(limit).collect() if limit else bad.collect()
        return [
            BadRecord(
                partition=row["_kafka_partition"], offset=row["_kafka_offset"], timestamp_ms=row["ms"],
                key=_bytes(row["_kafka_key"]), value=_bytes(row["_kafka_value"]),
                error=sc.explain(row[sc.ERROR], _bytes(row["_kafka_value"]), row[sc.TEXT], known),
            )
            for row in rows
        ]  # fmt: skip

    # -- writing ----------------------------------------------------------------------------------------------

    def _to_table_schema(self, data: DataFrame) -> DataFrame:
        """Exactly the table's columns, cast to its types; a column the batch lacks is null."""
        from pyspark.sql import functions as F

        table_schema = self._table_schema()
        return data.select(
            *[(F.col(f"`{f.name}`") if f.name in data.columns else F.lit(None)).cast(f.dataType).alias(f.name)
              for f in table_schema.fields]
        )  # fmt: skip

    def _ensure_table(self, data: DataFrame) -> None:
        """Create the table (schema, partitioning) or add new top-level columns, as metadata-only commits."""
        from pyspark.sql import types as T

        dataset = self.dataset
        if not self.table_existed and not self.created_table:
            from delta.tables import DeltaTable as SparkDeltaTable

            builder = SparkDeltaTable.createIfNotExists(self.spark).location(self.path).addColumns(data.schema)
            if dataset.partition_by:
                builder = builder.partitionedBy(*dataset.partition_by)
            if dataset.description:
                builder = builder.comment(dataset.description)
            # The batch was decoded for no table: a table another writer created meanwhile (seen racing, or kept
            # by createIfNotExists with other columns) may order its struct fields otherwise, and Spark casts
            # structs by position. Such a run loses as a concurrent writer; one with the batch's exact columns
            # goes on, and its guarded commit decides (docs/DESIGN.md §2 "Table creation").
            if self._create_table(builder) or _columns(self._table_schema()) != _columns(data.schema):
                raise ConcurrentWriterError(
                    f"dataset '{dataset.name}': another writer created the table {self.path} while this run was "
                    "reading its first records; another writer is ingesting this dataset. The next run goes on "
                    "from that table's ledger."
                )
            self.created_table = True
            return
        if self.plan.table is not None:
            existing = list(self.plan.table.metadata().partition_columns)
            if existing != list(dataset.partition_by):
                raise IngestError(
                    f"dataset '{dataset.name}': {self.path} is partitioned by {existing}, the catalog says "
                    f"partition_by: {list(dataset.partition_by)}. Restore the catalog's partition_by, or write a new "
                    "table."
                )
        current = {f.name: f.dataType for f in self._table_schema().fields}
        added = []
        for field_ in data.schema.fields:
            if field_.name not in current:
                if isinstance(field_.dataType, T.NullType):
                    continue
                added.append(f"{quote_spark(field_.name)} {field_.dataType.simpleString()}")
            elif not _compatible(field_.dataType, current[field_.name]):
                raise IngestError(
                    f"dataset '{dataset.name}': field '{field_.name}' has type {field_.dataType.simpleString()} in "
                    f"records {self.plan.describe(dataset.topic)}, but the table stores it as "
                    f"{current[field_.name].simpleString()}. Fix the producer, or declare the field's type under "
                    "'schema:' in the catalog."
                )
        if added:
            self.spark.sql(f"ALTER TABLE delta.`{self.path}` ADD COLUMNS ({', '.join(added)})")

    def _table_schema(self):
        return self.spark.read.format("delta").load(self.path).schema

    def _create_table(self, builder) -> bool:
        """Create the table (version 0, metadata only). False: this run created it at once. True: another writer
        was creating it too, and the table may be theirs. A racing creator shows as a conflict (it wrote version 0
        first) or as a table half there (its ``_delta_log`` without version 0): wait, at most
        ``TABLE_CREATION_WAIT_S``, until its table is visible."""
        deadline = time.monotonic() + TABLE_CREATION_WAIT_S
        raced = False
        while True:
            try:
                builder.execute()  # createIfNotExists: once the other creator's table is there, it is kept
                return raced
            except Exception as error:  # py4j's AnalysisException / delta-spark's conflict exceptions
                failed = f"dataset '{self.dataset.name}': creating its Delta table at {self.path} failed"
                if not (is_conflict(error) or any(name in str(error) for name in _CREATING_ELSEWHERE)):
                    raise LakeWriteError(
                        f"{failed}: {headline(error)[:300]}. The folder must be empty or hold this dataset's Delta "
                        "table, and the lake writable by this run: fix that and run again."
                    ) from None
                raced = True
                if self.engine.lake.open_table(self.dataset.table_path) is not None:
                    return True
                if time.monotonic() >= deadline:
                    raise LakeWriteError(
                        f"{failed}: the folder looks like a table being created by another writer "
                        f"({headline(error)[:300]}), but no version 0 appeared within {TABLE_CREATION_WAIT_S:.0f} s. "
                        "If no other run of this dataset is writing, a creator died half-way or the folder holds "
                        "other files: it holds no committed Delta version, so clear it and run again."
                    ) from None
            time.sleep(0.2)

    def _size_files(self, data: DataFrame, extra_bytes: int = 0, kafka_tasks: int | None = None) -> DataFrame:
        """Output files per batch = max(1, data size / target file size) (the guide's file-size rule), written
        by as many tasks as keep the cluster busy. ``extra_bytes``: rows rewritten besides the batch's (a MERGE's
        touched files). ``kafka_tasks``: ``data`` comes straight from that many Kafka read tasks (an append)."""
        from pyspark.sql import functions as F

        partition_by = list(self.dataset.partition_by)
        if kafka_tasks is not None and not partition_by:
            # Each Kafka read task writes its file, as the guide's plain streaming job does: no shuffle, and as many
            # tasks as Kafka partitions to spread over the cores (a coalesce to the cores' count was 1.2x slower on
            # 2 cores, 500K records: one slow task holds a core's whole share). Small files: compaction (§8).
            return data
        files = max(1, int((self._expected_output_bytes() + extra_bytes) / self.target_file_bytes))
        if partition_by and files == 1:
            return data.repartition(*partition_by)
        if partition_by:
            return data.repartition(files, *partition_by, F.pmod(F.col("_kafka_offset"), F.lit(files)))
        return data.repartition(files)

    def _expected_output_bytes(self) -> float:
        """Planned records x the table's Parquet bytes per row (0 for a new table: one file per partition)."""
        table = self.engine.lake.open_table(self.dataset.table_path)
        if table is None:
            return 0.0
        import pyarrow as pa
        import pyarrow.compute as pc

        actions = pa.table(table.get_add_actions(flatten=True))
        if actions.num_rows == 0:
            return 0.0
        rows = pc.sum(actions["num_records"]).as_py() or 0
        size = pc.sum(actions["size_bytes"]).as_py() or 0
        return self.plan.total * size / rows if rows else 0.0

    def _explain_job_failure(self, error: Exception, what: str) -> str:
        """A Spark job that failed for another reason than a record (executors lost beyond Spark's retries, the
        store unreachable): what failed, that nothing was committed, and that the next run retries it."""
        return (
            f"dataset '{self.dataset.name}': the Spark job {what} records {self.plan.describe(self.dataset.topic)} "
            f"failed: {headline(error)[:500]}. Nothing was committed; the next run reads the same offsets again."
        )

    def _explain_failure(self, error: Exception, rows: DataFrame) -> str:
        """Turn Spark's decoding failure into the embedded engine's message: which record, which field."""
        from pyspark.sql import functions as F

        text = str(error)
        marker = "INGEST_PLATFORM_ERROR:"
        if marker in text:
            return text.split(marker, 1)[1].split("\n", 1)[0].strip()
        if not any(sign in text for sign in _DECODING_FAILURES):
            return self._explain_job_failure(error, "decoding and writing")
        dataset = self.dataset
        keys = F.json_object_keys(F.col(sc.TEXT))  # null for invalid JSON or a non-object
        corrupt = (
            rows.select("partition", "offset", "value", sc.TEXT, keys.alias("k"))
            .where(F.col("k").isNull() & F.col(sc.TEXT).isNotNull())
            .orderBy("partition", "offset")
            .first()
        )
        if corrupt is not None:
            return (
                f"dataset '{dataset.name}', record {dataset.topic}[{corrupt['partition']}] offset {corrupt['offset']}: "
                f"value is not a valid JSON object: {bytes(corrupt['value'])[:120]!r}."
            )
        # Every value is a JSON object: a field's type differs from the table's. Infer the batch to name it.
        table = {f.name: f.dataType for f in self._table_schema().fields}
        batch = self._infer(rows.where(F.col(sc.TEXT).isNotNull()).select(F.col(sc.TEXT).alias("v")))
        conflicts = [
            f"field '{f.name}' has type {f.dataType.simpleString()} in the records, but the table stores it as "
            f"{table[f.name].simpleString()}"
            for f in batch.fields if f.name in table and not _compatible(f.dataType, table[f.name])
        ]  # fmt: skip
        what = "; ".join(conflicts) or f"Spark could not decode them ({text.splitlines()[0][:300]})"
        return (
            f"dataset '{dataset.name}', records {self.plan.describe(dataset.topic)}: {what}. Fix the producer, or "
            "declare the field's type under 'schema:' in the catalog."
        )


#: Signs of a record Spark could not decode (FAILFAST from_json, a cast of a value); other failures are the
#: job's (a lost executor beyond its retries, an unreachable store).
_DECODING_FAILURES = ("MALFORMED_RECORD", "Malformed records", "CANNOT_PARSE_JSON", "CAST_INVALID_INPUT")


def is_prepared(frame: DataFrame) -> bool:
    """Whether ``frame`` is a batch ``sc.prepare`` already gave its text and error columns."""
    return sc.ERROR in frame.columns


def _struct(fields: dict):
    from pyspark.sql import types as T

    return T.StructType([T.StructField(name, dtype, True) for name, dtype in fields.items()])


def _bytes(value) -> bytes | None:
    return bytes(value) if value is not None else None


def _columns(schema) -> dict[str, str]:
    """Each top-level column's type, nested fields in their order (nullability aside)."""
    return {f.name: f.dataType.simpleString() for f in schema.fields}


def _compatible(batch_type, table_type) -> bool:
    from pyspark.sql import types as T

    if batch_type == table_type or isinstance(batch_type, T.NullType):
        return True
    numeric = (T.ByteType, T.ShortType, T.IntegerType, T.LongType)
    if isinstance(batch_type, numeric) and isinstance(table_type, numeric + (T.FloatType, T.DoubleType)):
        return True
    if isinstance(batch_type, T.FloatType) and isinstance(table_type, T.DoubleType):
        return True
    if isinstance(batch_type, T.StringType) and isinstance(table_type, T.TimestampType | T.DateType):
        return True
    return False


def _parse_event_time(raw, dtype, location, name: str):
    """Same rules as the embedded engine: ISO-8601 with or without zone (none = UTC), epoch s or ms (> 1e11)."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    if isinstance(dtype, T.TimestampType):
        return raw
    if isinstance(dtype, T.NumericType):
        seconds = F.when(F.abs(raw) > 1e11, raw / 1000.0).otherwise(raw.cast("double"))
        return F.timestamp_micros((seconds * 1_000_000).cast("long"))
    text = raw.cast("string")
    parsed = text.try_cast("timestamp")  # ISO-8601 with Z/offset, without zone (session zone: UTC), date only
    problem = F.lit(f": field '{name}' is not an ISO-8601 timestamp: ")
    failure = F.raise_error(F.concat(F.lit("INGEST_PLATFORM_ERROR:"), location, problem, text))
    return F.when(text.isNotNull() & parsed.isNull(), failure).otherwise(parsed)


def _commit_group(kafka: KafkaConnection, dataset: Dataset, plan: RunPlan, log) -> None:
    """Monitoring only, after the Delta commit (docs/DESIGN.md §2 step 6); bounded by its deadline."""
    next_offsets = {r.partition: r.end for r in plan.ranges if r.count}
    group = GroupOffsetCommitter(kafka, dataset.group_id, dataset.topic, log)
    group.commit(next_offsets, f"dataset '{dataset.name}'")
    group.close()
