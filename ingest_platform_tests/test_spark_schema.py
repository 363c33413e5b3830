"""New fields and declared schemas on the Spark engine's one-pass append (docs/DESIGN.md §3, §4): a field the
table does not know is never lost, however rare; a first run whose catalog declares the schema reads once."""

from __future__ import annotations

import json

import pytest

from ingest_platform.dev.demo_data import produce, records
from ingest_platform.engines.spark import jvm_functions
from ingest_platform.engines.spark.engine import SparkEngine
from ingest_platform_tests.helpers import dataset_from_yaml, json_dataset, read_table, spark_jobs_of

pytestmark = [pytest.mark.spark, pytest.mark.kafka, pytest.mark.slow]


@pytest.mark.parametrize("check", ["jvm", "spark_builtin"])
def test_a_new_field_in_one_record_of_a_large_batch_is_never_lost(kafka, lake, make_topic, spark, monkeypatch, check):
    """30,000 records; one in the middle carries a field the table lacks, and another a top-level field named like
    a field nested in a struct column (``shipping.city``): both become columns holding exactly their value. With
    the platform's JVM scan, and with Spark's built-in expression (a session without the jar): the steady-state
    append checks the raw values, before decoding."""
    if check == "spark_builtin":
        monkeypatch.setattr(jvm_functions, "enabled", lambda: False)
    topic = make_topic(partitions=3)
    dataset = json_dataset(topic, name=f"rare_{check}")
    engine = SparkEngine(kafka, lake, spark)
    produce(kafka, topic, records("padded400", 300, seed=1))
    engine.run(dataset)  # the table and its schema: shipping is a struct with a city
    batch = list(records("padded400", 30_000, seed=2, start=300))
    for index, (name, value) in ((12_345, ("gift_note", "wrap it")), (23_456, ("city", "Ghent"))):
        key, raw = batch[index]
        batch[index] = (key, json.dumps({**json.loads(raw), name: value}).encode())
    produce(kafka, topic, iter(batch))

    report = engine.run(dataset)

    assert report.records == 30_000 and len(report.commits) == 1
    frame = read_table(lake.table_uri(dataset.table_path))
    assert frame.height == 30_300
    assert frame["gift_note"].drop_nulls().to_list() == ["wrap it"]
    assert frame["city"].drop_nulls().to_list() == ["Ghent"]
    assert "city" in frame["shipping"].struct.fields  # the nested one is still there


def test_a_steady_state_append_is_one_spark_job(kafka, lake, make_topic, spark):
    """Schema known, table there: the run is the one job that reads Kafka, decodes, looks for new fields and writes
    (no count, no collect, no log replay for the ledger check); a new field then costs the second write."""
    topic = make_topic(partitions=3)
    dataset = json_dataset(topic, name="one_job")
    engine = SparkEngine(kafka, lake, spark)
    produce(kafka, topic, records("padded400", 300, seed=1))
    engine.run(dataset)
    produce(kafka, topic, records("padded400", 3_000, seed=2, start=300))
    report, jobs = spark_jobs_of(spark, "steady", lambda: engine.run(dataset))
    assert report.records == 3_000 and len(report.commits) == 1
    assert jobs == 1
    key, raw = next(iter(records("padded400", 1, seed=3, start=3_300)))
    produce(kafka, topic, [(key, json.dumps({**json.loads(raw), "gift_wrap": "X1"}).encode())])
    report, jobs = spark_jobs_of(spark, "new-field", lambda: engine.run(dataset))
    assert report.records == 1
    assert read_table(lake.table_uri(dataset.table_path))["gift_wrap"].drop_nulls().to_list() == ["X1"]
    assert jobs > 1  # the batch written again, with the new column (its type inferred)


def test_a_first_run_with_a_declared_schema_reads_the_batch_once(kafka, lake, make_topic, spark):
    topic = make_topic(partitions=2)
    produce(kafka, topic, [(None, json.dumps({"id": i, "name": f"n{i}", "score": i / 2}).encode()) for i in range(500)])

    def dataset(name: str, schema: str):
        return dataset_from_yaml(f"""
            datasets:
              - {{name: {name}, source: declared, topic: {topic}, format: json{schema}}}
        """)

    engine = SparkEngine(kafka, lake, spark)
    declared = dataset("declared", ", schema: {id: long, name: string, score: double}")
    inferred = dataset("inferred", "")
    first, declared_jobs = spark_jobs_of(spark, "declared", lambda: engine.run(declared))
    second, inferred_jobs = spark_jobs_of(spark, "inferred", lambda: engine.run(inferred))
    assert first.records == second.records == 500
    assert declared_jobs < inferred_jobs  # no inference pass over the batch
    assert read_table(lake.table_uri(declared.table_path)).sort("id").select("id", "name", "score").to_dicts() == [
        {"id": i, "name": f"n{i}", "score": i / 2} for i in range(500)
    ]
    # A field the catalog does not declare is still found on a first run: inferred, the batch written again.
    topic2 = make_topic(partitions=1)
    produce(kafka, topic2, [(None, b'{"id": 1, "name": "a", "extra": true}')])
    partial = dataset_from_yaml(f"datasets:\n  - {{name: partial, source: declared, topic: {topic2}, format: json, "
                                "schema: {id: long}}")  # fmt: skip
    assert engine.run(partial).records == 1
    (row,) = read_table(lake.table_uri(partial.table_path)).select("id", "name", "extra").to_dicts()
    assert row == {"id": 1, "name": "a", "extra": True}


def test_a_first_upsert_with_a_declared_schema_infers_nothing_and_still_finds_new_fields(kafka, lake, make_topic,
                                                                                          spark):  # fmt: skip
    """The upsert path (§9.2) follows the same rule: declared fields are the first run's schema, no inference job;
    a field the catalog does not declare is inferred and kept."""
    topic = make_topic(partitions=2)
    changes = [{"id": i % 300, "name": f"n{i}", "score": i / 2} for i in range(600)]
    produce(kafka, topic, [(str(change["id"]).encode(), json.dumps(change).encode()) for change in changes])

    def dataset(name: str, schema: str):
        return dataset_from_yaml(f"""
            datasets:
              - {{name: {name}, source: declared, topic: {topic}, format: json, mode: upsert, key: [id]{schema}}}
        """)

    engine = SparkEngine(kafka, lake, spark)
    declared = dataset("declared_upsert", ", schema: {id: long, name: string, score: double}")
    inferred = dataset("inferred_upsert", "")
    first, declared_jobs = spark_jobs_of(spark, "declared-upsert", lambda: engine.run(declared))
    second, inferred_jobs = spark_jobs_of(spark, "inferred-upsert", lambda: engine.run(inferred))
    assert first.records == second.records == 600
    assert declared_jobs < inferred_jobs  # no inference pass over the batch
    rows = read_table(lake.table_uri(declared.table_path)).sort("id").select("id", "name", "score").to_dicts()
    assert rows == [{"id": i, "name": f"n{i + 300}", "score": (i + 300) / 2} for i in range(300)]  # last per key
    topic2 = make_topic(partitions=1)
    produce(kafka, topic2, [(b"1", b'{"id": 1, "name": "a", "extra": true}')])
    partial = dataset_from_yaml(f"datasets:\n  - {{name: partial_upsert, source: declared, topic: {topic2}, "
                                "format: json, mode: upsert, key: [id], schema: {id: long}}")  # fmt: skip
    assert engine.run(partial).records == 1
    (row,) = read_table(lake.table_uri(partial.table_path)).select("id", "name", "extra").to_dicts()
    assert row == {"id": 1, "name": "a", "extra": True}
