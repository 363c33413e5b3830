"""Spark column expressions for change records and bad records (docs/DESIGN.md §9).

The Spark twin of ``engines/embedded/debezium.py`` and ``engines/changes.py``: Debezium envelopes (with or without the
JSON converter's ``schema``/``payload`` wrapper) become a row image as JSON text, an op, a source position
(the exact string of ``changes.position_of``) and an event time; records that cannot be applied get a reason
in the ``ERROR`` column instead of failing the job. Reasons Spark cannot phrase (why a value is not JSON, which
field has the wrong type) are sentinels that ``explain`` rewrites on the driver, for the few bad records only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ingest_platform.catalog import Dataset, FieldType
from ingest_platform.engines.changes import (
    APPLIED_OPS,
    CDC_OP,
    CDC_POSITION,
    DELETE_OP,
    POSITION_DIGITS,
    ROW_DIGITS,
)

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

# Helper columns. Record fields may not start with ``_kafka_`` (docs/DESIGN.md §3), so these never clash.
TEXT = "_kafka_text"  # the JSON object decoded into the row: the value (JSON) or the row image (Debezium)
KEY_TEXT = "_kafka_key_text"  # the message key's JSON object, unwrapped (Debezium without a catalog key)
SOURCE_MS = "_kafka_source_ms"  # Debezium: source.ts_ms, else the envelope's ts_ms
ERROR = "_kafka_error"  # why the record cannot be applied; null when it can
CORRUPT = "_kafka_corrupt"  # from_json's corrupt-record column (PERMISSIVE decoding)
#: Sentinels in ``ERROR`` that ``explain`` turns into the embedded engine's wording on the driver.
UNDECODABLE = "\x00undecodable"
TYPE_MISMATCH = "\x00type-mismatch"
_ENVELOPE_FIELDS = ("payload", "op", "before", "after", "source", "ts_ms", "schema")
_SOURCE_FIELDS = ("lsn", "file", "pos", "row", "ts_ms")


def prepare(rows: DataFrame, dataset: Dataset) -> DataFrame:
    """Kafka rows with a non-null value -> plus ``TEXT`` and ``ERROR`` (and the Debezium columns).

    JSON values are checked by ``decode``; a Debezium envelope is always read PERMISSIVE (its fields as text).
    """
    from pyspark.sql import functions as F

    if dataset.format == "debezium":
        return _prepare_debezium(rows, with_key=not dataset.key)
    return rows.withColumn(TEXT, F.col("value").cast("string")).withColumn(ERROR, F.lit(None).cast("string"))


def _strings(names: Sequence[str], corrupt: bool = False):
    from pyspark.sql import types as T

    fields = [T.StructField(name, T.StringType(), True) for name in names]
    return T.StructType(fields + ([T.StructField(CORRUPT, T.StringType(), True)] if corrupt else []))


def _permissive(corrupt: bool = True) -> dict[str, str]:
    return {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT} if corrupt else {"mode": "PERMISSIVE"}


def _prepare_debezium(rows: DataFrame, with_key: bool) -> DataFrame:
    """Envelope -> row image text, ``_cdc_op``, ``_cdc_position``, source time, and what is wrong with it.

    Nested objects are read as their JSON text (a string field keeps the raw JSON), so the envelope is
    parsed once and the row image is decoded like a JSON value, against the table's schema.
    """
    from pyspark.sql import functions as F

    outer = F.from_json(F.col("value").cast("string"), _strings(_ENVELOPE_FIELDS, corrupt=True), _permissive())
    frame = rows.withColumn("_kafka_outer", outer)
    wrapped = F.coalesce(F.col("_kafka_outer.payload").startswith("{"), F.lit(False))
    inner = F.from_json(F.col("_kafka_outer.payload"), _strings(_ENVELOPE_FIELDS), _permissive(False))
    envelope = F.when(wrapped, inner).otherwise(F.col("_kafka_outer").dropFields(CORRUPT))
    frame = frame.withColumn("_kafka_envelope", envelope)
    op = F.col("_kafka_envelope.op")
    image = F.when(op == DELETE_OP, F.col("_kafka_envelope.before")).otherwise(F.col("_kafka_envelope.after"))
    source = F.from_json(F.col("_kafka_envelope.source"), _strings(_SOURCE_FIELDS), _permissive(False))
    frame = frame.withColumn("_kafka_source", source)
    envelope_ms = F.col("_kafka_envelope.ts_ms").cast("long")
    error = (
        F.when(F.col(f"_kafka_outer.{CORRUPT}").isNotNull(), F.lit(UNDECODABLE))
        .when(op.isNull(), F.lit("not a Debezium change event: no 'op' field"))
        .when(~op.isin(*APPLIED_OPS), F.concat(F.lit("unknown Debezium op '"), op,
                                               F.lit("' (only c, r, u and d change rows)")))
        .when((op != DELETE_OP) & F.col("_kafka_envelope.after").isNull(),
              F.lit("change event without an 'after' row image"))
        .when(image.isNotNull() & F.json_object_keys(image).isNull(),
              F.lit("the row image ('after', or 'before' of a delete) is not a JSON object"))
    )  # fmt: skip
    frame = frame.select(
        *rows.columns,
        F.when(wrapped, F.col("_kafka_outer.schema")).alias(CONNECT_SCHEMA),
        image.alias(TEXT),
        op.alias(CDC_OP),
        position(F.col("_kafka_source"), envelope_ms).alias(CDC_POSITION),
        F.coalesce(F.col("_kafka_source.ts_ms").cast("long"), envelope_ms).alias(SOURCE_MS),
        error.alias(ERROR),
    )
    return frame.withColumn(KEY_TEXT, message_key_text()) if with_key else frame


def position(source: Column, envelope_ms: Column) -> Column:
    """``changes.position_of`` as a Spark column (``source``: a struct of the source fields as strings)."""
    from pyspark.sql import functions as F

    def digits(value: Column, width: int) -> Column:
        return F.lpad(value.cast("long").cast("string"), width, "0")

    postgres = F.concat(F.lit("pg:"), digits(source["lsn"], POSITION_DIGITS))
    row = F.coalesce(source["row"].cast("long"), F.lit(0))
    mysql = F.concat(
        F.lit("mysql:"), source["file"], F.lit(":"), digits(source["pos"], POSITION_DIGITS), F.lit(":"),
        digits(row, ROW_DIGITS),
    )  # fmt: skip
    by_time = F.concat(F.lit("ts:"), digits(envelope_ms, POSITION_DIGITS))
    return F.coalesce(postgres, mysql, by_time)  # concat is null when a part is: the first complete form wins


def message_key_text() -> Column:
    """The message key as a JSON object's text, unwrapped from the JSON converter's ``payload``; else null."""
    from pyspark.sql import functions as F

    text = F.col("key").cast("string")
    payload = F.from_json(text, _strings(["payload"]), _permissive(False))["payload"]
    plain = F.when(F.json_object_keys(text).isNotNull(), text)
    return F.when(F.coalesce(payload.startswith("{"), F.lit(False)), payload).otherwise(plain)


def decode(prepared: DataFrame, known: Mapping[str, object], tolerant: bool,
           read_types: Mapping[str, object] | None = None) -> DataFrame:  # fmt: skip
    """``prepared`` plus the record struct ``_kafka_record`` (fields = ``known``, read as ``read_types`` where
    given: declared types are converted afterwards, ``typed_column``), and ``ERROR`` updated.

    Tolerant decoding is PERMISSIVE: a value that is not a JSON object, or whose field does not fit the
    column's type, gets a sentinel reason; otherwise from_json is FAILFAST and such a value fails the job.
    """
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    fields = [T.StructField(name, dtype, True) for name, dtype in {**known, **(read_types or {})}.items()]
    if tolerant:
        fields.append(T.StructField(CORRUPT, T.StringType(), True))
    options = _permissive() if tolerant else {"mode": "FAILFAST"}
    text = F.when(F.col(ERROR).isNull(), F.col(TEXT))  # records already known to be bad are not parsed
    frame = prepared.withColumn("_kafka_record", F.from_json(text, T.StructType(fields), options))
    if not tolerant:
        return frame
    bad_value = F.when(F.json_object_keys(F.col(TEXT)).isNull(), F.lit(UNDECODABLE)).otherwise(F.lit(TYPE_MISMATCH))
    error = F.coalesce(F.col(ERROR), F.when(F.col(f"_kafka_record.{CORRUPT}").isNotNull(), bad_value))
    return frame.withColumn(ERROR, error)


def with_error(frame: DataFrame, condition: Column, reason: Column) -> DataFrame:
    """Give records that are still good but meet ``condition`` the ``reason``."""
    from pyspark.sql import functions as F

    return frame.withColumn(ERROR, F.coalesce(F.col(ERROR), F.when(condition, reason)))


def unknown_fields(known: Sequence[str]) -> Column:
    """Top-level fields with a value (not null) that the table does not have, sorted (quarantine)."""
    from pyspark.sql import functions as F

    fields = F.from_json(F.col(TEXT), "map<string,string>")
    present = F.map_keys(F.map_filter(fields, lambda _name, value: value.isNotNull()))
    unknown = F.array_except(F.coalesce(present, F.array().cast("array<string>")), F.array(*map(F.lit, known)))
    return F.array_sort(unknown)


def missing_key(key: Sequence[str], columns_present: Sequence[str]) -> tuple[Column, Column]:
    """(some key column is null, the reason naming the null ones) over the output's key columns."""
    from pyspark.sql import functions as F

    columns = [F.col(f"`{name}`") if name in columns_present else F.lit(None) for name in key]
    condition = F.lit(False)
    for column in columns:
        condition = condition | column.isNull()
    return condition, F.lit(f"no value for key field(s) {', '.join(key)}")


def last_change_per_key(changes: DataFrame, key: Sequence[str], order: str | None) -> DataFrame:
    """One row per key: the last by (order column, Kafka partition, offset), nulls counting as newest.

    Same rule as ``changes.last_change_per_key`` (ascending with nulls last, take the last = descending with
    nulls first, take the first).
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    ordering = ([F.col(f"`{order}`").desc_nulls_first()] if order else []) + [
        F.col("_kafka_partition").desc(), F.col("_kafka_offset").desc(),
    ]  # fmt: skip
    window = Window.partitionBy(*[F.col(f"`{name}`") for name in key]).orderBy(*ordering)
    ranked = changes.withColumn("_kafka_rank", F.row_number().over(window))
    return ranked.where(F.col("_kafka_rank") == 1).drop("_kafka_rank")


# -- on the driver: the reasons of the few bad records ----------------------------------------------------


def explain(error: str, value: bytes | None, text: str | None, known: Mapping[str, object]) -> str:
    """The reason a bad record is dead-lettered, in the embedded engine's wording."""
    if error == UNDECODABLE:
        return _why_not_an_object(value)
    if error == TYPE_MISMATCH:
        return _why_mismatch(text, known)
    return error


def _why_not_an_object(value: bytes | None) -> str:
    try:
        parsed = json.loads(value or b"")
    except ValueError as error:
        return f"value is not valid JSON ({error})"
    if not isinstance(parsed, dict):
        return f"value must be a JSON object, got {type(parsed).__name__}"
    return "value is not a JSON object Spark can read"


def _why_mismatch(text: str | None, known: Mapping[str, object]) -> str:
    try:
        record = json.loads(text or "")
    except ValueError:
        return "value does not fit the table's schema"
    for name, dtype in known.items():
        value = record.get(name) if isinstance(record, dict) else None
        if value is not None and not _fits(value, dtype):
            return f"field '{name}' has type {json_type(value)}, the table stores {dtype.simpleString()}"
    return "value does not fit the table's schema"


def json_type(value: object) -> str:
    """The Spark name of a JSON value's type, as schema inference would give it."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "bigint"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "struct" if isinstance(value, dict) else type(value).__name__


def _fits(value: object, dtype) -> bool:
    """Whether Spark's JSON reader accepts ``value`` for a column of ``dtype`` (strings accept anything)."""
    from pyspark.sql import types as T

    if value is None or isinstance(dtype, T.StringType):
        return True
    if isinstance(dtype, T.BooleanType):
        return isinstance(value, bool)
    if isinstance(dtype, T.ByteType | T.ShortType | T.IntegerType | T.LongType):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(dtype, T.FloatType | T.DoubleType | T.DecimalType):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(dtype, T.TimestampType | T.DateType | T.BinaryType):
        return isinstance(value, str | int) and not isinstance(value, bool)
    if isinstance(dtype, T.ArrayType):
        return isinstance(value, list) and all(_fits(item, dtype.elementType) for item in value)
    if isinstance(dtype, T.StructType):
        return isinstance(value, dict) and all(_fits(value.get(f.name), f.dataType) for f in dtype.fields)
    if isinstance(dtype, T.MapType):
        return isinstance(value, dict) and all(_fits(item, dtype.valueType) for item in value.values())
    return True


def field_names(column: str) -> Column:
    """The distinct top-level field names of the JSON objects in ``column``, over good records."""
    from pyspark.sql import functions as F

    names = F.when(F.col(ERROR).isNull(), F.json_object_keys(F.col(column)))
    return F.array_distinct(F.flatten(F.collect_set(names)))


# -- declared types (catalog ``schema:``, Connect schemas): docs/DESIGN.md §9.5 ----------------------------


CONNECT_SCHEMA = "_kafka_connect_schema"  # the JSON converter's ``schema`` text of a wrapped event
_SIMPLE_SPARK = {
    "string": "string", "long": "bigint", "integer": "int", "short": "smallint", "byte": "tinyint",
    "double": "double", "float": "float", "boolean": "boolean", "timestamp": "timestamp", "date": "date",
    "binary": "binary", "time": "string",
}  # fmt: skip


def spark_type(kind: FieldType):
    """The column's Spark type (what the Delta table stores), as ``typed_values.arrow_type`` for Arrow."""
    from pyspark.sql import types as T

    kind = FieldType.parse(kind)
    if kind.kind == "decimal":
        return T.DecimalType(kind.precision, kind.scale)
    if kind.kind == "struct":
        return T.StructType([T.StructField(n, spark_type(c), True) for n, c in (kind.children or {}).items()])
    if kind.kind == "array":
        return T.ArrayType(spark_type(kind.element), True)
    return T._parse_datatype_string(_SIMPLE_SPARK[kind.kind])


def spark_read_type(kind: FieldType, exact: bool):
    """The type ``from_json`` reads the field as: the column type when the JSON form is certain, else text
    (Spark's JSON reader gives a string field the raw text of any value: ``1709210096789`` or ``"AA=="``)."""
    from pyspark.sql import types as T

    kind = FieldType.parse(kind)
    k = kind.kind
    if k in ("string", "long", "integer", "short", "byte", "double", "float", "struct", "array"):
        return spark_type(kind)
    if exact and k == "boolean":
        return T.BooleanType()
    if exact and k in ("timestamp", "time") and kind.unit:
        return T.LongType()
    if exact and k == "date":
        return T.IntegerType()
    return T.StringType()


def typed_column(raw: Column, raw_type, kind: FieldType, name: str) -> tuple[Column, Column]:
    """(the value as ``spark_type(kind)``, the reason it does not convert or null): ``typed_values.convert``
    as a Spark expression, so both engines store the same values and dead-letter the same records."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    kind = FieldType.parse(kind)
    k = kind.kind
    text = isinstance(raw_type, T.StringType)
    numeric_text = raw.rlike(r"^-?[0-9]+$") if text else F.lit(True)
    if k == "decimal":
        if text and kind.encoding == "base64":
            value = _decimal_from_base64(raw, kind)
        else:
            exact = raw.try_cast(T.DecimalType(kind.precision, kind.scale))
            wide = raw.try_cast(T.DecimalType(38, min(38, max(kind.scale, 18))))
            value = F.when(exact == wide, exact)  # a cast would round: a value with more digits is bad
    elif k == "timestamp":
        value = _timestamp(raw, text, numeric_text, kind)
    elif k == "date":
        days = raw.try_cast("int") if text else raw
        iso = raw.try_cast("date") if text else F.lit(None).cast("date")
        value = F.when(numeric_text, F.date_from_unix_date(days)).otherwise(iso)
    elif k == "boolean":
        if isinstance(raw_type, T.BooleanType):
            value = raw
        else:
            flag = F.lower(raw.cast("string"))
            value = F.when(flag.isin("1", "true"), F.lit(True)).when(flag.isin("0", "false"), F.lit(False))
    elif k == "binary":
        value = F.try_to_binary(raw, F.lit("base64")) if kind.encoding == "base64" else raw.cast("binary")
    elif k == "time" and not text:
        micros = _micros(raw, kind.unit)
        magnitude = F.abs(micros)
        seconds = F.floor(magnitude / 1_000_000).cast("long")
        value = F.format_string("%s%02d:%02d:%02d.%06d", F.when(micros < 0, "-").otherwise(""),
                                (seconds / 3600).cast("long"), (seconds / 60).cast("long") % 60, seconds % 60,
                                magnitude % 1_000_000)  # fmt: skip
    else:
        value = raw.try_cast(spark_type(kind)) if not isinstance(raw_type, type(spark_type(kind))) else raw
    reason = F.when(raw.isNotNull() & value.isNull(), F.concat(
        F.lit(f"field '{name}' has value '"), F.substring(raw.cast("string"), 1, 60),
        F.lit(f"', which is not a valid {kind}")))  # fmt: skip
    return value.cast(spark_type(kind)), reason


def _micros(raw: Column, unit: str) -> Column:
    """Epoch (or time-of-day) ``unit`` values as whole microseconds (nanoseconds rounded down)."""
    from pyspark.sql import functions as F

    long = raw.cast("long")
    if unit == "ns":
        return F.floor(long.cast("decimal(20,0)") / 1000).cast("long")
    return long * {"s": 1_000_000, "ms": 1000, "us": 1}[unit]


def _timestamp(raw: Column, text: bool, numeric_text: Column, kind: FieldType) -> Column:
    from pyspark.sql import functions as F

    if not text:
        return F.timestamp_micros(_micros(raw, kind.unit or "s"))
    if kind.unit:
        epoch = F.timestamp_micros(_micros(raw, kind.unit))
    else:  # seconds, or milliseconds above 1e11 (the embedded engine's rule)
        number = raw.try_cast("double")
        epoch = F.timestamp_micros(F.when(F.abs(number) > 1e11, number * 1000).otherwise(number * 1e6).cast("long"))
    numeric = numeric_text | raw.rlike(r"^-?[0-9]+\.[0-9]+$")
    return F.when(numeric, epoch).otherwise(raw.try_cast("timestamp"))


def _decimal_from_base64(raw: Column, kind: FieldType) -> Column:
    """Connect's Decimal bytes (base64 of the unscaled big-endian two's complement) as decimal(p, s), exactly:
    the hex digits in four 32-bit chunks (a negative value through its bitwise complement), summed with
    overflow-checked arithmetic, then placed at the scale through its decimal text."""
    from pyspark.sql import functions as F

    hex_digits = F.hex(F.try_to_binary(raw, F.lit("base64")))
    negative = F.substring(hex_digits, 1, 1) >= F.lit("8")
    magnitude = F.lpad(F.when(negative, F.translate(hex_digits, "0123456789ABCDEF", "FEDCBA9876543210"))
                       .otherwise(hex_digits), 32, "0")  # fmt: skip  (longer than 32: rejected below)
    word = F.lit(2**32).cast("decimal(38,0)")
    unsigned = F.lit(0).cast("decimal(38,0)")
    for index in range(4):
        chunk = F.conv(F.substring(magnitude, 8 * index + 1, 8), 16, 10).cast("decimal(38,0)")
        unsigned = F.try_add(F.try_multiply(unsigned, word), chunk)
    unscaled = F.when(negative, -F.try_add(unsigned, F.lit(1).cast("decimal(38,0)"))).otherwise(unsigned)
    digits = F.abs(unscaled).cast("string")
    sign = F.when(unscaled < 0, "-").otherwise("")
    if kind.scale:
        # lpad also cuts longer strings: pad only the short ones
        padded = F.when(F.length(digits) > kind.scale, digits).otherwise(F.lpad(digits, kind.scale + 1, "0"))
        point = F.length(padded) - kind.scale
        text = F.concat(sign, padded.substr(F.lit(1), point), F.lit("."), padded.substr(point + 1, F.lit(kind.scale)))
    else:
        text = F.concat(sign, digits)
    fits = (F.length(hex_digits) <= 32) & unscaled.isNotNull() & (F.length(digits) <= kind.precision)
    return F.when(fits, text.try_cast(f"decimal({kind.precision},{kind.scale})"))
