"""Fields a batch has that the table does not (docs/DESIGN.md §4): found on every record, exactly, in the pass
that decodes and writes the batch.

A projection compiled with the decoding reads each record's top-level keys and keeps those the known schema
lacks, null when there are none; an aggregate (observed, or in a figures job) collects the few non-null ones.
The keys are read by the platform's JVM function ``UnknownKeys`` (one forward scan of the text,
:mod:`~ingest_platform.engines.spark.jvm_functions`), or, on a session without it, by Spark's
``json_object_keys`` (a second, full parse of each record). Only top-level names count: a new top-level
field named like one nested in a struct column is found too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ingest_platform.engines.spark import changes as sc
from ingest_platform.engines.spark.jvm_functions import unknown_keys

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame


#: Per-record helper columns: the top-level field names of a record (and of its message key) the table lacks.
UNKNOWN_FIELDS = "_kafka_unknown_fields"
UNKNOWN_KEY_FIELDS = "_kafka_unknown_key_fields"


def unknown_names(frame: DataFrame, column: str, known: dict, filled: Sequence[str] = (),
                  good: Column | None = None) -> Column:  # fmt: skip
    """The top-level field names of the JSON object in ``column`` of ``frame`` (text, or its UTF-8 bytes) that are
    not in ``known``, or null when there are none or the record is not ``good`` (default: no ``ERROR`` yet).

    With the platform's ``UnknownKeys`` on the session, that is one scan of the text per record. Otherwise
    Spark's expression reads the object's keys (a second parse of each record); ``filled``: the columns decoded
    from the same object (one per known field, non-null only when the object has that key with a value). When
    the object has exactly as many keys as those columns hold values, every key is a known one (each non-null
    column stands for a distinct known key), so the comparison with the known names (``array_except``, a hash
    set per record) is skipped; any other record — a new key, a known key with null, a key twice — takes it.
    Not for columns filled from elsewhere too (Debezium's message key)."""
    from pyspark.sql import functions as F

    good = F.col(sc.ERROR).isNull() if good is None else good
    scanned = unknown_keys(frame.sparkSession, column, known)
    if scanned is not None:
        return F.when(good, scanned)
    names = F.array(*[F.lit(name) for name in known]) if known else F.array().cast("array<string>")
    keys = F.json_object_keys(F.col(column).cast("string"))
    unknown = F.array_except(keys, names)
    found = F.when(good & (F.size(unknown) > 0), unknown)
    if not filled:
        return found
    values = sum((F.col(f"`{name}`").isNotNull().cast("int") for name in filled), F.lit(0))
    return F.when(F.size(keys) == values, F.lit(None).cast("array<string>")).otherwise(found)


def collected_names(columns) -> list[Column]:
    """Observed aggregates ``fields`` / ``key_fields``: the distinct names of ``UNKNOWN_FIELDS`` /
    ``UNKNOWN_KEY_FIELDS``."""
    from pyspark.sql import functions as F

    alias = {UNKNOWN_FIELDS: "fields", UNKNOWN_KEY_FIELDS: "key_fields"}
    return [distinct_names(F.col(c)).alias(alias[c]) for c in columns]


def distinct_names(found: Column) -> Column:
    """The aggregate of ``found`` (``unknown_names`` per record): every name once (collect_set skips the nulls
    of records without new fields)."""
    from pyspark.sql import functions as F

    return F.array_distinct(F.flatten(F.collect_set(found)))
