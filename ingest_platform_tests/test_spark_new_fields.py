"""The per-record new-field check (docs/DESIGN.md §4): its shortcut (as many keys as decoded values) never hides a
new key, whatever else the record has or lacks."""

from __future__ import annotations

import pytest

from ingest_platform.engines.spark import changes as sc
from ingest_platform.engines.spark.new_fields import unknown_names

pytestmark = [pytest.mark.spark, pytest.mark.slow]


def test_the_shortcut_finds_every_new_key_and_skips_only_records_of_known_keys(spark):
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
    }
    rows = spark.createDataFrame([(case, text) for case, text in texts.items()], "case string, text string")
    schema = T.StructType([T.StructField(name, dtype) for name, dtype in known.items()])
    decoded = (
        rows.withColumn(sc.ERROR, F.lit(None).cast("string"))
        .withColumn("r", F.from_json("text", schema))
        .select("case", "text", sc.ERROR, *[F.col(f"r.{name}").alias(name) for name in known])
    )
    fast = decoded.select("case", unknown_names("text", known, list(known)).alias("u")).collect()
    full = decoded.select("case", unknown_names("text", known).alias("u")).collect()
    found = {row["case"]: row["u"] for row in fast}
    assert found == {row["case"]: row["u"] for row in full}
    assert found == {
        "all known": None, "some known": None, "a new key": ["extra"], "a missing key and a new one": ["extra"],
        "a known null and a new key": ["extra"], "only a new key": ["extra"], "a key twice": None,
        "a key twice and a new key": ["extra"],
    }  # fmt: skip
