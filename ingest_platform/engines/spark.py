"""The Spark engine: the same run and the same table protocol as the embedded engine, on pyspark.

One run (docs/DESIGN.md §2 and §4): the shared plan (ledger from the table, watermarks captured at start,
ranges capped by ``max_records_per_run``); a batch read of exactly those offsets with spark-sql-kafka
(``startingOffsets``/``endingOffsets`` as JSON); JSON decoded with ``from_json`` against the table's schema
(new top-level fields are inferred and added as nullable columns, a type change fails naming the field);
then ONE Delta commit holding the data files and one ``txn`` action per partition, written through
delta-spark's ``OptimisticTransaction`` (its public writer records only one ``txn`` per commit). The
consumer group is committed afterwards, for monitoring only, exactly as in the embedded engine.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from confluent_kafka import Consumer

from ingest_platform.catalog import Dataset
from ingest_platform.engines.report import PartitionProgress, RunReport
from ingest_platform.engines.run_plan import IngestError, RunPlan, plan_run
from ingest_platform.kafka.client import CONSUMER_TUNING, KafkaConnection, commit_group_offsets
from ingest_platform.lake.commit import RUN_METADATA_KEY, ConcurrentWriterError
from ingest_platform.lake.ledger import app_id
from ingest_platform.lake.storage import is_s3, s3a_conf, spark_path
from ingest_platform.lake.tables import LakeLocation, commit_stats

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

ENGINE_NAME = "spark"
#: Preferred data-file size, as in the embedded engine, clamped to the dataset's file-size target.
PREFERRED_FILE_MB = 256
DERIVED = ("year", "month", "day", "hour", "date")
_SPARK_TYPES = {
    "string": "string", "long": "bigint", "integer": "int", "double": "double", "float": "float",
    "boolean": "boolean", "timestamp": "timestamp", "date": "date", "binary": "binary",
}  # fmt: skip


def kafka_source_options(kafka: KafkaConnection) -> dict[str, str]:
    """spark-sql-kafka options: brokers, credentials and the guide's consumer fetch settings (``kafka.*``)."""
    options = {f"kafka.{key}": str(value) for key, value in kafka.security.items()}
    options["kafka.bootstrap.servers"] = kafka.bootstrap_servers
    names = {"fetch.wait.max.ms": "fetch.max.wait.ms", "socket.timeout.ms": "request.timeout.ms"}  # Java names
    for key, value in CONSUMER_TUNING.items():
        options[f"kafka.{names.get(key, key)}"] = str(value)
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
        if dataset.format != "json" or dataset.mode != "append":
            raise IngestError(
                f"dataset '{dataset.name}': format '{dataset.format}' with mode '{dataset.mode}' is not supported by "
                "the Spark engine yet (json + append is)."
            )
        started = time.monotonic()
        uri = self.lake.table_uri(dataset.table_path)
        report = RunReport(dataset=dataset.name, engine=ENGINE_NAME, table_uri=uri)
        consumer = Consumer(self.kafka.consumer_config(dataset.group_id))
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
                _SparkRun(self, dataset, plan, report, run_id or uuid.uuid4().hex).execute()
                _commit_group(consumer, dataset, plan, self.log)
        finally:
            consumer.close()
        report.duration_s = time.monotonic() - started
        return report


class _SparkRun:
    def __init__(self, engine: SparkEngine, dataset: Dataset, plan: RunPlan, report: RunReport, run_id: str):
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

    def execute(self) -> None:
        dataset, plan = self.dataset, self.plan
        source = self._source()
        known = self._known_fields()
        ignored: set[str] = set()  # fields that are null in every record so far: no type to give them yet
        if not self._table_exists():
            known, ignored = self._learn_fields(source, known, None)  # first run: one extra pass for the schema
        while True:
            txn, files, metrics = self._write_files(source, known)
            new = [key for key in metrics["keys"] or [] if key not in known and key not in ignored]
            if not new:
                break
            # Fields the table does not know: the files just written are dropped (never committed), the new
            # fields' types are inferred from the batch and the batch is written again. Rare: schema changes.
            self.engine.log.info(f"{dataset.name}: new fields {new}: inferring their types and writing again")
            known, ignored = self._learn_fields(source, known, set(new))
        self._commit(txn, files, metrics)
        self.report.partitions = [
            PartitionProgress(
                partition=r.partition,
                first_offset=r.start,
                last_offset=r.end - 1 if r.count else plan.ledger.get(r.partition, r.start - 1),
                records=int(metrics.get(f"records_{r.partition}") or 0),
            )
            for r in plan.ranges
        ]

    def _source(self) -> DataFrame:
        """Exactly the planned offsets, read in one batch (the guide's ``kafka.*`` consumer settings)."""
        dataset = self.dataset
        ranges = [r for r in self.plan.ranges if r.count]
        starting = {dataset.topic: {str(r.partition): r.start for r in ranges}}
        ending = {dataset.topic: {str(r.partition): r.end for r in ranges}}
        return (
            self.spark.read.format("kafka")
            .options(**kafka_source_options(self.engine.kafka))
            .option("subscribe", dataset.topic)
            .option("startingOffsets", json.dumps(starting))
            .option("endingOffsets", json.dumps(ending))
            .load()
        )

    # -- decoding ---------------------------------------------------------------------------------------------

    def _known_fields(self) -> dict:
        """Record fields with their types: the table's, overridden by the catalog's declared ``schema:``."""
        from pyspark.sql import types as T

        declared = {name: T._parse_datatype_string(_SPARK_TYPES[kind]) for name, kind in self.dataset.fields.items()}
        return {**self._table_record_fields(), **declared}

    def _learn_fields(self, source: DataFrame, known: dict, only: set[str] | None) -> tuple[dict, set[str]]:
        """Known fields plus the inferred types of ``only`` (or of every field the batch has, when None)."""
        from pyspark.sql import functions as F
        from pyspark.sql import types as T

        values = source.where(F.col("value").isNotNull()).select(F.col("value").cast("string").alias("v"))
        inferred = {f.name: f.dataType for f in self._infer(values).fields if only is None or f.name in only}
        learned = {**{k: v for k, v in inferred.items() if not isinstance(v, T.NullType)}, **known}
        ignored = {k for k, v in inferred.items() if isinstance(v, T.NullType) and k not in known}
        return learned, ignored

    def _infer(self, json_rows: DataFrame):
        """JSON schema inference over the batch (only when fields appear that the table does not have)."""
        from pyspark.sql import DataFrame as PyDataFrame

        jvm = self.spark._jvm
        strings = getattr(json_rows._jdf, "as")(jvm.org.apache.spark.sql.Encoders.STRING())  # Dataset[String]
        inferred = PyDataFrame(self.spark._jsparkSession.read().json(strings), self.spark)
        return inferred.schema

    def _table_record_fields(self) -> dict:
        from ingest_platform.catalog import RESERVED_COLUMNS

        if not self._table_exists():
            return {}
        schema = self.spark.read.format("delta").load(self.path).schema
        skip = set(RESERVED_COLUMNS) | (set(self.dataset.partition_by) & set(DERIVED))
        return {f.name: f.dataType for f in schema.fields if f.name not in skip}

    def _table_exists(self) -> bool:
        return self.plan.table is not None or self._delta_log().tableExists()

    def _delta_log(self):
        jvm = self.spark._jvm
        return jvm.org.apache.spark.sql.delta.DeltaLog.forTable(self.spark._jsparkSession, self.path)

    def _decode(self, rows: DataFrame, known: dict) -> DataFrame:
        from pyspark.sql import functions as F
        from pyspark.sql import types as T

        dataset = self.dataset
        schema = T.StructType([T.StructField(name, dtype, True) for name, dtype in known.items()])
        location = F.concat(
            F.lit(f"dataset '{dataset.name}', record {dataset.topic}["), F.col("partition").cast("string"),
            F.lit("] offset "), F.col("offset").cast("string"),
        )  # fmt: skip
        parsed = F.from_json(F.col("value").cast("string"), schema, {"mode": "FAILFAST"})
        frame = rows.select(parsed.alias("r"), "key", "topic", "partition", "offset", "timestamp")
        record_columns = [F.col(f"r.`{f.name}`").alias(f.name) for f in schema.fields]
        kafka_time = F.col("timestamp")
        event_time: Column = kafka_time
        if dataset.event_time_field and dataset.event_time_field in schema.fieldNames():
            raw = F.col(f"r.`{dataset.event_time_field}`")
            field_type = schema[dataset.event_time_field].dataType
            event_time = F.coalesce(_parse_event_time(raw, field_type, location, dataset.event_time_field), kafka_time)
        derived = {
            "year": F.year(event_time), "month": F.month(event_time), "day": F.dayofmonth(event_time),
            "hour": F.hour(event_time), "date": F.to_date(event_time),
        }  # fmt: skip
        partition_columns = [derived[name].cast("int" if name != "date" else "date").alias(name)
                             for name in dataset.partition_by if name in derived]  # fmt: skip
        reserved = [
            F.col("topic").alias("_kafka_topic"),
            F.col("partition").cast("int").alias("_kafka_partition"),
            F.col("offset").cast("long").alias("_kafka_offset"),
            kafka_time.alias("_kafka_timestamp"),
            F.col("key").alias("_kafka_key"),
            event_time.alias("_event_time"),
            F.current_timestamp().alias("_ingested_at"),
        ]
        return frame.select(*record_columns, *partition_columns, *reserved)

    # -- writing ----------------------------------------------------------------------------------------------

    def _observed(self, source: DataFrame):
        """The batch with its figures collected while it is written (Spark ``observe``: no extra pass)."""
        from pyspark.sql import Observation
        from pyspark.sql import functions as F

        observation = Observation(f"ingest-{self.run_id}-{uuid.uuid4().hex[:8]}")
        per_partition = [
            F.sum(F.when(F.col("partition") == r.partition, 1).otherwise(0)).alias(f"records_{r.partition}")
            for r in self.plan.ranges if r.count
        ]  # fmt: skip
        observed = source.observe(
            observation,
            F.count(F.lit(1)).alias("records"),
            F.sum(F.when(F.col("value").isNull(), 1).otherwise(0)).alias("skipped"),
            F.sum(F.coalesce(F.length("value"), F.lit(0)) + F.coalesce(F.length("key"), F.lit(0))).alias("bytes"),
            F.array_distinct(F.flatten(F.collect_set(F.json_object_keys(F.col("value").cast("string"))))).alias("keys"),
            F.unix_micros(F.min("timestamp")).alias("oldest_micros"),
            *per_partition,
        )
        return observed, observation

    def _write_files(self, source: DataFrame, known: dict):
        """Decode and write the batch's data files in a new transaction; nothing is committed yet."""
        from pyspark.sql import functions as F

        dataset, plan = self.dataset, self.plan
        observed, observation = self._observed(source)
        rows = observed.where(F.col("value").isNotNull())
        data = self._decode(rows, known)
        self._ensure_table(data)
        table_schema = self.spark.read.format("delta").load(self.path).schema
        data = data.select(
            *[(F.col(f"`{f.name}`") if f.name in data.columns else F.lit(None)).cast(f.dataType).alias(f.name)
              for f in table_schema.fields]
        )  # fmt: skip
        data = self._size_files(data)
        txn = self._delta_log().startTransaction()
        for r in plan.ranges:
            if not r.count:
                continue
            recorded = int(txn.txnVersion(app_id(dataset.name, r.partition)))  # also registers the read
            expected = plan.ledger.get(r.partition, -1)
            if recorded != expected:
                raise ConcurrentWriterError(
                    f"dataset '{dataset.name}': the ledger of {self.path} moved from {expected} to {recorded} for "
                    f"partition {r.partition} during this run; another writer is ingesting this dataset. "
                    "Nothing was committed by this run."
                )
        try:
            files = txn.writeFiles(data._jdf)
        except Exception as error:  # py4j wraps Spark's failure (FAILFAST decoding, event-time parsing)
            raise IngestError(self._explain_failure(error, source.where(F.col("value").isNotNull()))) from None
        return txn, files, observation.get

    def _commit(self, txn, files, metrics: dict) -> None:
        """One Delta commit: the files plus one ``txn`` per partition (the ledger), with the run's metadata."""
        dataset, plan = self.dataset, self.plan
        jvm = self.spark._jvm
        none = getattr(getattr(jvm.scala, "None$"), "MODULE$")
        self.report.records = int(metrics["records"] or 0)
        self.report.skipped = int(metrics["skipped"] or 0)
        self.report.bytes_read = int(metrics["bytes"] or 0)
        advancing = {r.partition: r.end - 1 for r in plan.ranges if r.count}
        for partition, last in sorted(advancing.items()):
            txn.updateSetTransaction(app_id(dataset.name, partition), last, none)
        metadata = {
            "run_id": self.run_id, "engine": ENGINE_NAME, "topic": dataset.topic, "records": self.report.records,
            "skipped": self.report.skipped, "started_at": round(self.started_at, 3),
            "ranges": {str(r.partition): [r.start, r.end - 1] for r in plan.ranges if r.count},
        }  # fmt: skip
        if plan.data_loss_metadata(advancing):  # on_data_loss: skip — the gaps this commit moves past
            metadata["data_loss"] = plan.data_loss_metadata(advancing)
        write_op = getattr(getattr(jvm.org.apache.spark.sql.delta.DeltaOperations, "Write$"), "MODULE$")
        operation = write_op.apply(
            jvm.org.apache.spark.sql.SaveMode.Append, none, none,
            jvm.scala.Option.apply(json.dumps({RUN_METADATA_KEY: metadata}, sort_keys=True)),
            none, none, none, none, none,
        )  # fmt: skip
        version = int(txn.commit(files, operation))
        stats = commit_stats(self.uri, version, self.engine.lake.storage_options)
        self.report.commits.append(version)
        self.report.rows_written = stats.rows
        self.report.files_written = stats.files
        self.report.bytes_written = stats.bytes
        # The oldest event time from the files' statistics (no extra pass), else the oldest Kafka timestamp.
        kafka_micros = metrics.get("oldest_micros")
        oldest = stats.oldest_event_time or (
            datetime.fromtimestamp(kafka_micros / 1e6, timezone.utc) if kafka_micros is not None else None
        )
        if oldest is not None:
            self.report.max_event_to_commit_lag_s = (datetime.now(timezone.utc) - oldest).total_seconds()
        self.engine.log.info(f"{dataset.name}: committed version {version}: {stats.rows} rows, {stats.files} files")

    def _ensure_table(self, data: DataFrame) -> None:
        """Create the table (schema, partitioning) or add new top-level columns, as metadata-only commits."""
        from pyspark.sql import types as T

        dataset = self.dataset
        if not self._table_exists():
            from delta.tables import DeltaTable as SparkDeltaTable

            builder = SparkDeltaTable.createIfNotExists(self.spark).location(self.path).addColumns(data.schema)
            if dataset.partition_by:
                builder = builder.partitionedBy(*dataset.partition_by)
            if dataset.description:
                builder = builder.comment(dataset.description)
            builder.execute()
            return
        if self.plan.table is not None:
            existing = list(self.plan.table.metadata().partition_columns)
            if existing != list(dataset.partition_by):
                raise IngestError(
                    f"dataset '{dataset.name}': {self.path} is partitioned by {existing}, the catalog says "
                    f"partition_by: {list(dataset.partition_by)}. Restore the catalog's partition_by, or write a new "
                    "table."
                )
        current = {f.name: f.dataType for f in self.spark.read.format("delta").load(self.path).schema.fields}
        added = []
        for field in data.schema.fields:
            if field.name not in current:
                if isinstance(field.dataType, T.NullType):
                    continue
                added.append(f"`{field.name}` {field.dataType.simpleString()}")
            elif not _compatible(field.dataType, current[field.name]):
                raise IngestError(
                    f"dataset '{dataset.name}': field '{field.name}' has type {field.dataType.simpleString()} in "
                    f"records {self.plan.describe(dataset.topic)}, but the table stores it as "
                    f"{current[field.name].simpleString()}. Fix the producer, or declare the field's type under "
                    "'schema:' in the catalog."
                )
        if added:
            self.spark.sql(f"ALTER TABLE delta.`{self.path}` ADD COLUMNS ({', '.join(added)})")

    def _size_files(self, data: DataFrame) -> DataFrame:
        """Output files per batch = max(1, data size / target file size) (the guide's file-size rule)."""
        from pyspark.sql import functions as F

        files = max(1, int(self._expected_output_bytes() / self.target_file_bytes))
        partition_by = list(self.dataset.partition_by)
        if partition_by and files == 1:
            return data.repartition(*partition_by)
        if partition_by:
            return data.repartition(files, *partition_by, F.pmod(F.col("_kafka_offset"), F.lit(files)))
        # A shuffle, not coalesce(): coalesce would shrink the whole stage (read and decode) to `files` tasks.
        return data.repartition(files)

    def _expected_output_bytes(self) -> float:
        """Planned records x the table's Parquet bytes per row (0 for a new table: one file per partition)."""
        table = self.engine.lake.open_table(self.dataset.table_path)
        if table is None:
            return 0.0
        import pyarrow as pa
        import pyarrow.compute as pc

        actions = pa.table(table.get_add_actions(flatten=True))
        rows = pc.sum(actions["num_records"]).as_py() or 0
        size = pc.sum(actions["size_bytes"]).as_py() or 0
        return self.plan.total * size / rows if rows else 0.0

    def _explain_failure(self, error: Exception, rows: DataFrame) -> str:
        """Turn Spark's decoding failure into the embedded engine's message: which record, which field."""
        from pyspark.sql import functions as F

        text = str(error)
        marker = "INGEST_PLATFORM_ERROR:"
        if marker in text:
            return text.split(marker, 1)[1].split("\n", 1)[0].strip() + " Nothing was committed."
        dataset = self.dataset
        keys = F.json_object_keys(F.col("value").cast("string"))  # null for invalid JSON or a non-object
        corrupt = rows.select("partition", "offset", "value", keys.alias("k")).where(F.col("k").isNull()) \
            .orderBy("partition", "offset").first()
        if corrupt is not None:
            return (
                f"dataset '{dataset.name}', record {dataset.topic}[{corrupt['partition']}] offset {corrupt['offset']}: "
                f"value is not a valid JSON object: {bytes(corrupt['value'])[:120]!r}. Nothing was committed."
            )
        # Every value is a JSON object: a field's type differs from the table's. Infer the batch to name it.
        table = {f.name: f.dataType for f in self.spark.read.format("delta").load(self.path).schema.fields}
        batch = self._infer(rows.select(F.col("value").cast("string").alias("v")))
        conflicts = [
            f"field '{f.name}' has type {f.dataType.simpleString()} in the records, but the table stores it as "
            f"{table[f.name].simpleString()}"
            for f in batch.fields if f.name in table and not _compatible(f.dataType, table[f.name])
        ]  # fmt: skip
        what = "; ".join(conflicts) or f"Spark could not decode them ({text.splitlines()[0][:300]})"
        return (
            f"dataset '{dataset.name}', records {self.plan.describe(dataset.topic)}: {what}. Fix the producer, or "
            "declare the field's type under 'schema:' in the catalog. Nothing was committed."
        )


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


def _commit_group(consumer: Consumer, dataset: Dataset, plan: RunPlan, log) -> None:
    """Monitoring only, after the Delta commit (docs/DESIGN.md §2 step 6)."""
    next_offsets = {r.partition: r.end for r in plan.ranges if r.count}
    commit_group_offsets(consumer, dataset.topic, next_offsets, f"dataset '{dataset.name}'", log)
