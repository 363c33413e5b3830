"""The per-record new-field check (docs/DESIGN.md §4): the platform's JVM scan (``UnknownKeys``) and Spark's
built-in expression (with its shortcut: as many keys as decoded values) find the same new keys, whatever else the
record has or lacks."""

from __future__ import annotations

import pytest

from ingest_platform.engines.spark import changes as sc
from ingest_platform.engines.spark import jvm_functions
from ingest_platform.engines.spark.new_fields import unknown_names

pytestmark = [pytest.mark.spark, pytest.mark.slow]


def test_the_jvm_scan_and_spark_s_expressions_find_every_new_key_and_only_those(spark, monkeypatch):
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    known = {"id": T.LongType(), "name": T.StringType(), "tags": T.ArrayType(T.StringType())}
    texts = {
        "all known": '{"id": 1, "name": "a", "tags": ["x"]}',
        "some known": '{"id": 2}',
        "a new key": '{"id": 3, "name": "b", "tags": [], "extra": 1}',
        "a missing key and a new one": '{"id": 4, "name": "c", "extra": true}',
        "a known null and a new key": '{"id": 5, "name": null, "tags": ["y"], "extra": "z"}',
        "only a new key": '{"extra": {"name": 1}}',
        "a key twice": '{"id": 6, "id": 7, "name": "d"}',
        "a key twice and a new key": '{"id": 8, "name": "e", "name": "f", "extra": 0}',
        "braces and quotes in strings": '{"name": "}{\\"extra\\": 1,", "tags": ["]", "it\'s"], "id": 9}',
        "new keys deep and escaped": '{ "id" : 10 , "x\\u0041" : {"name": [1, {"id": 2}]}, "n\\"q" :null }',
        "spaced, new key last": '\n{\t"id":11,\r\n "tags":[ ], "extra" : -1.5e3 }\n',
        "not an object": '[1, 2]',
        "a known key escaped, a non-ASCII new key": '{"n\\u0061me": "é", "ünï€": "✓", "tags": ["ü"]}',
        "cut short": '{"id": 12, "extra": ',
    }
    rows = spark.createDataFrame([(case, text) for case, text in texts.items()], "case string, text string")
    schema = T.StructType([T.StructField(name, dtype) for name, dtype in known.items()])
    decoded = (
        rows.withColumn(sc.ERROR, F.lit(None).cast("string"))
        .withColumn("r", F.from_json("text", schema))
        .select("case", "text", sc.ERROR, *[F.col(f"r.{name}").alias(name) for name in known])
    )

    def found(names) -> dict:
        return {row["case"]: row["u"] for row in decoded.select("case", names.alias("u")).collect()}

    assert jvm_functions.unknown_keys(spark, "text", known) is not None, "the session lacks the platform jar"
    scanned = found(unknown_names(decoded, "text", known, list(known)))  # on the cluster's executors
    monkeypatch.setattr(jvm_functions, "enabled", lambda: False)
    assert jvm_functions.unknown_keys(spark, "text", known) is None
    shortcut = found(unknown_names(decoded, "text", known, list(known)))
    full = found(unknown_names(decoded, "text", known))
    assert scanned == shortcut == full
    assert scanned == {
        "all known": None, "some known": None, "a new key": ["extra"], "a missing key and a new one": ["extra"],
        "a known null and a new key": ["extra"], "only a new key": ["extra"], "a key twice": None,
        "a key twice and a new key": ["extra"], "braces and quotes in strings": None,
        "new keys deep and escaped": ["xA", 'n"q'], "spaced, new key last": ["extra"], "not an object": None,
        "cut short": None, "a known key escaped, a non-ASCII new key": ["ünï€"],
    }  # fmt: skip
