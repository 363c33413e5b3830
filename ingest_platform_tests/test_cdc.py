"""CDC datasets on both engines against the real broker: Debezium upserts, deletes, the dead-letter table,
schema policies (docs/DESIGN.md §9). The table must end equal to the source table, and the Spark engine's
equal to the embedded engine's from the same topic."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from ingest_platform.dev import cdc_data
from ingest_platform.engines.embedded import batch_writer
from ingest_platform.engines.embedded.engine import EmbeddedEngine
from ingest_platform.engines.run_plan import IngestError
from ingest_platform.engines.spark import engine as spark_engine
from ingest_platform.engines.spark.engine import SparkEngine
from ingest_platform.lake import health
from ingest_platform.lake.commit import run_metadata_of
from ingest_platform.lake.dead_letters import read_dead_letters
from ingest_platform.lake.tables import LakeLocation
from ingest_platform_tests.cdc_helpers import (
    cdc_dataset,
    expected_rows,
    expected_soft_rows,
    reconciles,
    table_state,
)
from ingest_platform_tests.helpers import dataset_from_yaml, read_table

pytestmark = pytest.mark.kafka
ENGINES = ["embedded", pytest.param("spark", marks=[pytest.mark.spark, pytest.mark.slow])]


def comparable(lake: LakeLocation, dataset, key: str = "id") -> list[dict]:
    """The whole table but ``_ingested_at``, by key (column order does not matter)."""
    frame = read_table(lake.table_uri(dataset.table_path)).drop("_ingested_at")
    return frame.select(sorted(frame.columns)).sort(key).to_dicts()


@pytest.fixture(params=ENGINES)
def engine(request) -> str:
    return request.param


@pytest.fixture
def run(request, engine, kafka, lake):
    """One run of a dataset on the engine under test."""
    if engine == "embedded":
        return lambda dataset, run_id=None: EmbeddedEngine(kafka, lake).run(dataset, run_id=run_id)
    spark = request.getfixturevalue("spark")
    return lambda dataset, run_id=None: SparkEngine(kafka, lake, spark).run(dataset, run_id=run_id)


def same_as_embedded(kafka, lake, engine: str, dataset) -> bool:
    """The Spark engine's table equals the embedded engine's from the same topic (all but ``_ingested_at``)."""
    if engine == "embedded":
        return True
    twin = dataset.model_copy(update={"name": f"{dataset.name}_embedded"})
    EmbeddedEngine(kafka, lake).run(twin)
    return comparable(lake, dataset) == comparable(lake, twin)


def history_metadata(lake: LakeLocation, dataset) -> list[dict]:
    """Run metadata of the table's commits, oldest first."""
    entries = lake.open_table(dataset.table_path).history()
    return [m for m in (run_metadata_of(e) for e in sorted(entries, key=lambda e: e["version"])) if m]


def test_mysql_changes_end_as_the_source_table(kafka, make_topic, lake, run, engine):
    """Snapshot, inserts, updates, deletes with tombstones and one key updated 8 times in a row, on two
    partitions: the first run creates the table, the second MERGEs (embedded: per batch of 5 KB; Spark: the run's
    batch in one commit with both partitions' txn). The table equals the source table (and the Spark engine's
    the embedded engine's); the counts reconcile; a rerun commits nothing."""
    topic = make_topic(2)
    events = cdc_data.mysql_events(cdc_data.scenario(keys=15, changes=40, hot_key_updates=8, seed=3), topic=topic)
    half = len(events) // 2
    cdc_data.produce_events(kafka, topic, events[:half])
    dataset = cdc_dataset(topic, max_batch_bytes=5_000)
    first = run(dataset)
    assert first.commits and first.rows_inserted > 0
    cdc_data.produce_events(kafka, topic, events[half:])

    report = run(dataset)

    assert table_state(lake, dataset) == expected_rows(events)
    state = cdc_data.expected_state(events)
    assert first.records + report.records == len(events)
    assert first.skipped + report.skipped == state.tombstones and first.applied + report.applied == state.changes
    assert report.dead_lettered == 0 and reconciles(report) and reconciles(first)
    assert len(report.commits) == 1 if engine == "spark" else len(report.commits) > 1  # Spark: one per run
    assert report.rows_updated > 0 and report.rows_deleted > 0
    metadata = history_metadata(lake, dataset)[-len(report.commits):]
    assert {p for m in metadata for p in m["ranges"]} == {"0", "1"} and all(m["key"] == ["id"] for m in metadata)
    assert sum(m["records"] for m in metadata) == report.records
    assert all(m["records"] == m["applied"] + m["dead_lettered"] + m["skipped"] for m in metadata)
    assert run(dataset).commits == []  # exactly once: nothing new, nothing committed
    table = lake.open_table(dataset.table_path)
    findings = health.evaluate(dataset, table, lake.table_uri(dataset.table_path), names=["no_loss", "key_unique"])
    assert all(f.passed for f in findings.values()), findings
    assert same_as_embedded(kafka, lake, engine, dataset)


@pytest.mark.parametrize("wrapped", [False, True], ids=["plain", "wrapped"])
def test_postgres_events_with_key_only_deletes(kafka, make_topic, lake, run, wrapped):
    """With and without the JSON converter's schema/payload wrapper; REPLICA IDENTITY DEFAULT: deletes carry
    only the key in ``before``, updates no ``before``."""
    topic = make_topic(1)
    events = cdc_data.postgres_events(cdc_data.scenario(keys=10, changes=30, seed=11), topic=topic, wrapped=wrapped)
    cdc_data.produce_events(kafka, topic, events[:12])
    dataset = cdc_dataset(topic)
    run(dataset)
    cdc_data.produce_events(kafka, topic, events[12:])

    report = run(dataset)

    assert table_state(lake, dataset) == expected_rows(events)
    assert reconciles(report) and report.dead_lettered == 0
    positions = read_table(lake.table_uri(dataset.table_path))["_cdc_position"].to_list()
    assert all(p.startswith("pg:") and len(p) == 23 for p in positions)


def test_wrapped_events_take_their_connect_types_also_when_dead_lettering(kafka, make_topic, lake, run, engine):
    """The generator's wrapped events carry Connect schemas with DEFAULTs of mixed JSON types and logical
    types (Decimal bytes, Date, ZonedTimestamp, Timestamp): the columns take those types, the values equal
    the source's, and ``max_dlq_ratio: 0.01`` (which used to crash on them) changes nothing; the bare events
    of the same plan with the matching ``schema:`` give the same table."""
    import datetime as dt
    from decimal import Decimal

    plan = cdc_data.scenario(keys=12, changes=30, hot_key_updates=4, seed=21)
    wrapped_topic, bare_topic = make_topic(2), make_topic(2)
    wrapped = cdc_data.mysql_events(plan, wrapped=True, topic=wrapped_topic)
    cdc_data.produce_events(kafka, wrapped_topic, wrapped)
    cdc_data.produce_events(kafka, bare_topic, cdc_data.mysql_events(plan, topic=bare_topic))
    typed = cdc_dataset(wrapped_topic, name="typed", max_dlq_ratio=0.01)
    schema = {"credit": {"type": "decimal(10,2)", "encoding": "base64"}, "updated_at": {"type": "timestamp",
              "unit": "ms"}, "birthday": "date", "last_login": "timestamp"}  # fmt: skip
    declared = cdc_dataset(bare_topic, name="declared", max_dlq_ratio=0.01, schema=schema)

    reports = [run(typed), run(declared)]

    assert all(r.dead_lettered == 0 and reconciles(r) for r in reports)
    expected = expected_rows(wrapped)  # cdc_data.decode types wrapped images (a plain-Python reference)
    assert table_state(lake, typed) == expected
    assert table_state(lake, declared) == expected
    row = next(r for r in expected.values() if r["birthday"] is not None and r["last_login"] is not None)
    assert isinstance(row["credit"], Decimal) and isinstance(row["birthday"], dt.date)
    assert isinstance(row["updated_at"], dt.datetime) and row["last_login"].tzinfo is not None


def test_late_older_changes_never_overwrite_newer_rows(kafka, make_topic, lake, run):
    """Run 1 gets the newest change of some keys; run 2 gets their older changes late: the guard ignores
    them, and the ledger still moves past them."""
    topic = make_topic(1)
    events = cdc_data.mysql_events(cdc_data.scenario(keys=8, changes=30, seed=5), topic=topic)
    on_time, late = cdc_data.out_of_order(events, keys=3)
    assert late
    cdc_data.produce_events(kafka, topic, on_time)
    dataset = cdc_dataset(topic)
    run(dataset)
    cdc_data.produce_events(kafka, topic, late)

    report = run(dataset)

    assert report.applied == sum(1 for e in late if e.value is not None)
    assert report.rows_updated == 0 and report.rows_inserted == 0  # the guard held every late change back
    assert table_state(lake, dataset) == expected_rows(events)
    assert lake.open_table(dataset.table_path).transaction_version("users-0") == len(events) - 1


def test_soft_deletes_keep_the_row_flagged(kafka, make_topic, lake, run, engine):
    """Two runs (the second MERGEs soft deletes): every key flagged as the source says, with the values it
    had before its delete."""
    topic = make_topic(1)
    events = cdc_data.mysql_events(cdc_data.scenario(keys=10, changes=40, seed=8), topic=topic)
    dataset = cdc_dataset(topic, delete_mode="soft")
    reports = []
    for part in (events[:20], events[20:]):
        cdc_data.produce_events(kafka, topic, part)
        reports.append(run(dataset))

    assert table_state(lake, dataset, extra=("_cdc_deleted",)) == expected_soft_rows(events)
    frame = read_table(lake.table_uri(dataset.table_path))
    deleted = frame.filter(frame["_cdc_deleted"])
    assert deleted.height == len(cdc_data.expected_state(events).deleted) > 0
    assert deleted["_cdc_deleted_at"].null_count() == 0 and set(deleted["_cdc_op"]) == {"d"}
    assert reports[1].rows_deleted == 0 and reports[1].rows_updated > 0  # soft deletes are updates
    assert same_as_embedded(kafka, lake, engine, dataset)


def test_bad_records_go_to_the_dead_letter_table_once(kafka, make_topic, lake, run, engine, monkeypatch):
    """A malformed value, an unknown op and a change without a key are dead-lettered; a crash between the
    DLQ commit and the main commit re-reads the batch without dead-lettering anything twice."""
    topic = make_topic(1)
    events = cdc_data.mysql_events(cdc_data.scenario(keys=8, changes=20, seed=2), topic=topic)
    truncate = json.dumps({"op": "t", "before": None, "after": None, "ts_ms": 1, "source": {"file": "f", "pos": 1}})
    no_key = json.dumps({"op": "c", "before": None, "after": {"first_name": "nokey"}, "ts_ms": 2, "source": None})
    bad = [(b'{"id": 999}', b"{not json"), (b'{"id": 998}', truncate.encode()), (None, no_key.encode())]
    cdc_data.produce_events(kafka, topic, events[:15] + bad + events[15:])
    dataset = cdc_dataset(topic, key=["id"], max_dlq_ratio=0.2)

    def crash(*_args, **_kwargs):
        raise OSError("crash between the DLQ commit and the main commit")

    with monkeypatch.context() as patch:
        if engine == "spark":
            patch.setattr(spark_engine._SparkRun, "_commit", crash)
        else:
            patch.setattr(batch_writer, "append_with_ledger", crash)  # the first commit creates the table
        with pytest.raises(OSError):
            run(dataset)
    table = lake.open_table(dataset.table_path)
    assert table is None or table.transaction_version("users-0") is None  # the main table holds nothing
    assert read_dead_letters(lake, dataset).num_rows == 3

    report = run(dataset)

    letters = read_dead_letters(lake, dataset).sort_by("offset").to_pylist()
    assert [row["offset"] for row in letters] == [15, 16, 17]  # still once each
    assert letters[0]["error"].startswith("value is not valid JSON")
    assert letters[1]["error"] == "unknown Debezium op 't' (only c, r, u and d change rows)"
    assert letters[2]["error"] == "no value for key field(s) id"
    assert letters[0]["key_base64"] == "eyJpZCI6IDk5OX0="  # base64 of the raw key
    assert report.dead_lettered == 3 and reconciles(report) and report.dlq_commits == []  # all there already
    assert table_state(lake, dataset) == expected_rows(events)
    assert run(dataset).commits == [] and read_dead_letters(lake, dataset).num_rows == 3


def test_above_max_dlq_ratio_the_run_fails_and_commits_nothing(kafka, make_topic, lake, run):
    topic = make_topic(1)
    events = cdc_data.mysql_events(cdc_data.scenario(keys=5, changes=5, seed=4), topic=topic)
    cdc_data.produce_events(kafka, topic, events + [(b'{"id": 1}', b"garbage")])
    for ratio in (0, 0.01):
        with pytest.raises(IngestError) as failure:
            run(cdc_dataset(topic, max_dlq_ratio=ratio))
        assert f"record {topic}[0] offset {len(events)}: value is not valid JSON" in str(failure.value)
        assert "max_dlq_ratio" in str(failure.value) and "Nothing was committed" in str(failure.value)
    dataset = cdc_dataset(topic)
    assert lake.open_table(dataset.table_path) is None and read_dead_letters(lake, dataset) is None


def _with_new_column(events: list, start: int) -> list:
    """The source table gains a column ``tier``: changes from ``start`` on carry it."""
    changed = []
    for index, (key, value) in enumerate(events):
        if value is not None and index >= start:
            envelope = json.loads(value)
            if envelope["after"]:
                envelope["after"]["tier"] = "gold"
            value = json.dumps(envelope).encode()
        changed.append(cdc_data.Event(key, value))
    return changed


@pytest.mark.parametrize("policy", ["additive", "strict", "quarantine"])
def test_schema_policies_on_a_new_column(kafka, make_topic, lake, run, policy):
    topic = make_topic(1)
    events = _with_new_column(cdc_data.mysql_events(cdc_data.scenario(keys=8, changes=20, seed=6), topic=topic), 15)
    cdc_data.produce_events(kafka, topic, events[:15])
    dataset = cdc_dataset(topic, schema_evolution=policy, max_dlq_ratio=0.9 if policy == "quarantine" else 0)
    run(dataset)
    before = lake.open_table(dataset.table_path).version()
    cdc_data.produce_events(kafka, topic, events[15:])
    carrying = sum(1 for e in events[15:] if e.value is not None and json.loads(e.value)["after"])

    if policy == "strict":
        with pytest.raises(IngestError, match=r"schema_evolution: strict\): new field\(s\) 'tier' \(string\)"):
            run(dataset)
        assert lake.open_table(dataset.table_path).version() == before
        return
    report = run(dataset)
    columns = pa.schema(lake.open_table(dataset.table_path).schema().to_arrow()).names
    if policy == "additive":
        assert "tier" in columns and report.dead_lettered == 0
        assert read_table(lake.table_uri(dataset.table_path))["tier"].drop_nulls().len() > 0
        assert table_state(lake, dataset) == expected_rows(events)
    else:
        assert "tier" not in columns and report.dead_lettered == carrying > 0
        errors = set(read_dead_letters(lake, dataset)["error"].to_pylist())
        assert errors == {"field 'tier' is not in the table (schema_evolution: quarantine)"}
    assert reconciles(report)


def test_json_append_dead_letters_bad_values(kafka, make_topic, lake, run):
    """Plain JSON appends dead-letter too (max_dlq_ratio > 0): not JSON, not an object, a changed type."""
    topic = make_topic(1)
    dataset = dataset_from_yaml(
        f"datasets:\n  - {{name: orders, source: shop, topic: {topic}, format: json, max_dlq_ratio: 0.5}}"
    )
    values = [b'{"id": 1, "qty": 3}', b'{"id": 2', None, b"[1, 2]", b'{"id": 3, "qty": 4}']
    cdc_data.produce_events(kafka, topic, [(None, value) for value in values])
    first = run(dataset)
    assert (first.records, first.applied, first.dead_lettered, first.skipped) == (5, 2, 2, 1)
    assert first.rows_written == 2 and len(first.dlq_commits) == 1
    cdc_data.produce_events(kafka, topic, [(None, b'{"id": 4, "qty": "three"}'), (None, b'{"id": 5, "qty": 6}')])

    second = run(dataset)

    assert (second.records, second.applied, second.dead_lettered) == (2, 1, 1) and reconciles(second)
    letters = read_dead_letters(lake, dataset).sort_by("offset").to_pylist()
    assert [row["offset"] for row in letters] == [1, 3, 5]
    assert letters[0]["error"].startswith("value is not valid JSON")
    assert letters[1]["error"] == "value must be a JSON object, got list"
    assert letters[2]["error"] == "field 'qty' has type string, the table stores bigint"
    assert sorted(read_table(lake.table_uri(dataset.table_path))["id"].to_list()) == [1, 3, 5]
    metadata = history_metadata(lake, dataset)
    assert [(m["records"], m["applied"], m["dead_lettered"], m["skipped"]) for m in metadata] == [
        (5, 2, 2, 1), (2, 1, 1, 0)
    ]  # fmt: skip


def test_json_upsert_keeps_the_row_with_the_highest_ordering_field(kafka, make_topic, lake, run):
    topic = make_topic(2)
    records = [
        (b"a", {"sku": "a", "price": 1.0, "version": 1}),
        (b"a", {"sku": "a", "price": 3.0, "version": 3, "note": "x"}),
        (b"b", {"sku": "b", "price": 5.0, "version": 1}),
        (b"a", {"sku": "a", "price": 2.0, "version": 2}),  # older, arrives last
    ]
    cdc_data.produce_events(kafka, topic, [(k, json.dumps(v).encode()) for k, v in records])
    dataset = dataset_from_yaml(
        f"datasets:\n  - {{name: prices, source: shop, topic: {topic}, format: json, mode: upsert, key: [sku], "
        "ordering_field: version}"
    )
    run(dataset)
    later = [(b"b", {"sku": "b", "price": 6.0, "version": 2}), (b"a", {"sku": "a", "price": 0.5, "version": 0})]
    cdc_data.produce_events(kafka, topic, [(k, json.dumps(v).encode()) for k, v in later])

    report = run(dataset)

    rows = read_table(lake.table_uri(dataset.table_path)).sort("sku").select("sku", "price", "version", "note")
    assert rows.to_dicts() == [{"sku": "a", "price": 3.0, "version": 3, "note": "x"},
                               {"sku": "b", "price": 6.0, "version": 2, "note": None}]  # fmt: skip
    assert (report.rows_updated, report.rows_inserted) == (1, 0)


def test_debezium_append_keeps_the_change_log(kafka, make_topic, lake, run):
    """``mode: append``: one row per change (deletes too: their ``before`` image), tombstones skipped."""
    topic = make_topic(1)
    events = cdc_data.postgres_events(cdc_data.scenario(keys=5, changes=12, seed=1), topic=topic)
    cdc_data.produce_events(kafka, topic, events)
    dataset = cdc_dataset(topic, mode="append")

    report = run(dataset)

    state = cdc_data.expected_state(events)
    frame = read_table(lake.table_uri(dataset.table_path)).sort("_kafka_offset")
    assert frame.height == report.rows_written == state.changes and report.skipped == state.tombstones
    assert frame["_cdc_op"].to_list() == [json.loads(e.value)["op"] for e in events if e.value is not None]
    assert frame["id"].null_count() == 0  # a delete's key-only `before` still names the row


def test_a_changed_type_fails_the_run_or_is_dead_lettered(kafka, make_topic, lake, run):
    """``balance`` arrives as text in one change: without dead letters the run fails naming the field and
    commits nothing; with them only that change goes to the DLQ."""
    topic = make_topic(1)
    events = cdc_data.mysql_events(cdc_data.scenario(keys=6, changes=12, seed=9), topic=topic)
    cdc_data.produce_events(kafka, topic, events[:6])
    run(cdc_dataset(topic))
    rest = list(events[6:])
    index = next(i for i, e in enumerate(rest) if e.value and json.loads(e.value)["op"] == "u")
    envelope = json.loads(rest[index].value)
    envelope["after"]["balance"] = "a lot"
    rest[index] = cdc_data.Event(rest[index].key, json.dumps(envelope).encode())
    cdc_data.produce_events(kafka, topic, rest)

    with pytest.raises(IngestError, match=r"field 'balance' has type string.* the table stores (it as )?double"):
        run(cdc_dataset(topic))
    assert lake.open_table(cdc_dataset(topic).table_path).transaction_version("users-0") == 5
    report = run(cdc_dataset(topic, max_dlq_ratio=0.5))

    assert report.dead_lettered == 1 and reconciles(report)
    (letter,) = read_dead_letters(lake, cdc_dataset(topic)).to_pylist()
    assert letter["offset"] == 6 + index
    assert letter["error"] == "field 'balance' has type string, the table stores double"
