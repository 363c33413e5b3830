"""CDC datasets on the embedded engine against the real broker: Debezium upserts, deletes, the dead-letter
table and the schema policies (docs/DESIGN.md §9). The table must end equal to the source table."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from ingest_platform import cdc_data
from ingest_platform.engines.embedded import EmbeddedEngine
from ingest_platform.engines.run_plan import IngestError
from ingest_platform.lake import health
from ingest_platform.lake.dead_letters import read_dead_letters
from ingest_platform.lake.tables import LakeLocation
from ingest_platform_tests.helpers import dataset_from_yaml, read_table

pytestmark = pytest.mark.kafka


def cdc_dataset(topic: str, **extra: object) -> object:
    fields = {"name": "users", "source": "inventory", "topic": topic, "format": "debezium", "mode": "upsert", **extra}
    return dataset_from_yaml("datasets:\n  - " + json.dumps(fields))


def table_state(lake: LakeLocation, dataset, key: str = "id", extra: tuple[str, ...] = ()) -> dict:
    """key -> the source columns (and ``extra``) of each row, read by an independent reader (polars)."""
    frame = read_table(lake.table_uri(dataset.table_path))
    columns = [c for c in cdc_data.COLUMNS if c in frame.columns] + list(extra)
    return {row[key]: row for row in frame.select(columns).to_dicts()}


def expected_rows(events, columns=cdc_data.COLUMNS) -> dict:
    return {k: {c: row.get(c) for c in columns} for k, row in cdc_data.expected_state(events).rows.items()}


def reconciles(report) -> bool:
    return report.records == report.applied + report.dead_lettered + report.skipped


@pytest.fixture
def lake(tmp_path) -> LakeLocation:
    return LakeLocation(str(tmp_path / "lake"))


def run(kafka, lake, dataset, **options):
    return EmbeddedEngine(kafka, lake, **options).run(dataset)


def test_mysql_snapshot_then_changes_end_as_the_source_table(kafka, make_topic, lake):
    """Snapshot reads, inserts, updates, deletes with tombstones, re-inserts and one key updated 25 times
    in a row, over 3 partitions and several batches: the table equals the source, the counts reconcile."""
    topic = make_topic(3)
    plan = cdc_data.scenario(keys=60, changes=240, hot_key_updates=25, seed=3)
    events = cdc_data.mysql_events(plan, topic=topic, binlog_file_bytes=40_000)
    cdc_data.produce_events(kafka, topic, events)
    dataset = cdc_dataset(topic, max_batch_bytes=40_000)

    report = run(kafka, lake, dataset)

    assert table_state(lake, dataset) == expected_rows(events)
    state = cdc_data.expected_state(events)
    assert report.records == len(events)
    assert report.skipped == state.tombstones and report.applied == state.changes
    assert report.dead_lettered == 0 and reconciles(report)
    assert len(report.commits) > 1  # several batches: MERGEs after the first commit created the table
    assert report.rows_updated > 0 and report.rows_deleted > 0
    assert run(kafka, lake, dataset).commits == []  # exactly once: nothing new, nothing committed
    table = lake.open_table(dataset.table_path)
    findings = health.evaluate(dataset, table, lake.table_uri(dataset.table_path), names=["no_loss", "key_unique"])
    assert all(f.passed for f in findings.values()), findings


@pytest.mark.parametrize("wrapped", [False, True], ids=["plain", "wrapped"])
def test_postgres_events_with_key_only_deletes(kafka, make_topic, lake, wrapped):
    """REPLICA IDENTITY DEFAULT: deletes carry only the key in ``before``; updates have no ``before``."""
    topic = make_topic(2)
    events = cdc_data.postgres_events(cdc_data.scenario(keys=20, changes=60, seed=11), topic=topic, wrapped=wrapped)
    cdc_data.produce_events(kafka, topic, events)
    dataset = cdc_dataset(topic)

    report = run(kafka, lake, dataset)

    assert table_state(lake, dataset) == expected_rows(events)
    assert reconciles(report) and report.dead_lettered == 0
    positions = read_table(lake.table_uri(dataset.table_path))["_cdc_position"].to_list()
    assert all(p.startswith("pg:") for p in positions)


def test_late_older_changes_never_overwrite_newer_rows(kafka, make_topic, lake):
    """Run 1 gets the newest change of some keys; run 2 gets their older changes late: they are ignored."""
    topic = make_topic(1)
    events = cdc_data.mysql_events(cdc_data.scenario(keys=15, changes=60, seed=5), topic=topic)
    on_time, late = cdc_data.out_of_order(events, keys=4)
    assert late
    cdc_data.produce_events(kafka, topic, on_time)
    dataset = cdc_dataset(topic)
    run(kafka, lake, dataset)
    cdc_data.produce_events(kafka, topic, late)

    report = run(kafka, lake, dataset)

    assert report.applied == sum(1 for e in late if e.value is not None)
    assert report.rows_updated == 0 and report.rows_inserted == 0  # the guard held every late change back
    assert table_state(lake, dataset) == expected_rows(events)
    assert lake.open_table(dataset.table_path).transaction_version("users-0") == len(events) - 1


def test_soft_deletes_keep_the_row_flagged(kafka, make_topic, lake):
    topic = make_topic(2)
    events = cdc_data.mysql_events(cdc_data.scenario(keys=20, changes=80, seed=8), topic=topic)
    cdc_data.produce_events(kafka, topic, events)
    dataset = cdc_dataset(topic, delete_mode="soft")

    run(kafka, lake, dataset)

    state = table_state(lake, dataset, extra=("_cdc_deleted",))
    expected = cdc_data.soft_delete_state(events)
    assert state == {k: {**{c: row.get(c) for c in cdc_data.COLUMNS}, "_cdc_deleted": row["_cdc_deleted"]}
                     for k, row in expected.items()}  # fmt: skip
    frame = read_table(lake.table_uri(dataset.table_path))
    deleted = frame.filter(frame["_cdc_deleted"])
    assert deleted.height == len(cdc_data.expected_state(events).deleted) > 0
    assert deleted["_cdc_deleted_at"].null_count() == 0 and set(deleted["_cdc_op"]) == {"d"}


def test_bad_records_go_to_the_dead_letter_table_once(kafka, make_topic, lake, monkeypatch):
    """A malformed value, an unknown op and a change without a key are dead-lettered; a crash between the
    DLQ commit and the main commit re-reads the batch without dead-lettering anything twice."""
    topic = make_topic(1)
    events = cdc_data.mysql_events(cdc_data.scenario(keys=10, changes=30, seed=2), topic=topic)
    truncate = json.dumps({"op": "t", "before": None, "after": None, "ts_ms": 1, "source": {"file": "f", "pos": 1}})
    no_key = json.dumps({"op": "c", "before": None, "after": {"first_name": "nokey"}, "ts_ms": 2, "source": None})
    bad = [(b'{"id": 999}', b"{not json"), (b'{"id": 998}', truncate.encode()), (None, no_key.encode())]
    cdc_data.produce_events(kafka, topic, events[:20] + bad + events[20:])
    dataset = cdc_dataset(topic, key=["id"], max_dlq_ratio=0.2)

    import ingest_platform.engines.embedded as embedded

    real_append = embedded.append_with_ledger
    monkeypatch.setattr(embedded, "append_with_ledger", lambda *a, **k: (_ for _ in ()).throw(OSError("crash")))
    with pytest.raises(OSError):
        run(kafka, lake, dataset)
    assert lake.open_table(dataset.table_path) is None  # the main table was never written
    assert read_dead_letters(lake, dataset).num_rows == 3
    monkeypatch.setattr(embedded, "append_with_ledger", real_append)

    report = run(kafka, lake, dataset)

    letters = read_dead_letters(lake, dataset).sort_by("offset").to_pylist()
    assert [row["offset"] for row in letters] == [20, 21, 22]  # still once each
    assert "not valid JSON" in letters[0]["error"]
    assert "unknown Debezium op 't'" in letters[1]["error"]
    assert "no value for key field(s) id" in letters[2]["error"]
    assert letters[0]["key_base64"] == "eyJpZCI6IDk5OX0="  # base64 of the raw key
    assert report.dead_lettered == 3 and reconciles(report)
    assert table_state(lake, dataset) == expected_rows(events)


def test_above_max_dlq_ratio_the_run_fails_and_commits_nothing(kafka, make_topic, lake):
    topic = make_topic(1)
    events = cdc_data.mysql_events(cdc_data.scenario(keys=5, changes=5, seed=4), topic=topic)
    cdc_data.produce_events(kafka, topic, events + [(b'{"id": 1}', b"garbage")])
    for ratio in (0, 0.01):
        with pytest.raises(IngestError) as failure:
            run(kafka, lake, cdc_dataset(topic, max_dlq_ratio=ratio))
        assert f"[0] offset {len(events)}: value is not valid JSON" in str(failure.value)
        assert "max_dlq_ratio" in str(failure.value) and "Nothing was committed" in str(failure.value)
    dataset = cdc_dataset(topic)
    assert lake.open_table(dataset.table_path) is None and read_dead_letters(lake, dataset) is None


def _with_new_column(events: list, topic: str) -> list:
    """The source table gains a column ``tier``: changes after the first 30 events carry it."""
    changed = []
    for index, (key, value) in enumerate(events):
        if value is not None and index >= 30:
            envelope = json.loads(value)
            if envelope["after"]:
                envelope["after"]["tier"] = "gold"
            value = json.dumps(envelope).encode()
        changed.append(cdc_data.Event(key, value))
    return changed


@pytest.mark.parametrize("policy", ["additive", "strict", "quarantine"])
def test_schema_policies_on_a_new_column(kafka, make_topic, lake, policy):
    topic = make_topic(1)
    events = _with_new_column(cdc_data.mysql_events(cdc_data.scenario(keys=10, changes=40, seed=6), topic=topic), topic)
    cdc_data.produce_events(kafka, topic, events[:30])
    options = {"schema_evolution": policy, "max_dlq_ratio": 0.9 if policy == "quarantine" else 0}
    dataset = cdc_dataset(topic, **options)
    run(kafka, lake, dataset)
    before = lake.open_table(dataset.table_path).version()
    cdc_data.produce_events(kafka, topic, events[30:])
    carrying = sum(1 for e in events[30:] if e.value is not None and json.loads(e.value)["after"])

    if policy == "strict":
        with pytest.raises(IngestError, match=r"schema_evolution: strict\): new field\(s\) 'tier'"):
            run(kafka, lake, dataset)
        assert lake.open_table(dataset.table_path).version() == before
        return
    report = run(kafka, lake, dataset)
    columns = pa.schema(lake.open_table(dataset.table_path).schema().to_arrow()).names
    if policy == "additive":
        assert "tier" in columns and report.dead_lettered == 0
        assert read_table(lake.table_uri(dataset.table_path))["tier"].drop_nulls().len() > 0
    else:
        assert "tier" not in columns and report.dead_lettered == carrying
        errors = set(read_dead_letters(lake, dataset)["error"].to_pylist())
        assert errors == {"field 'tier' is not in the table (schema_evolution: quarantine)"}
    assert reconciles(report)


def test_a_changed_type_is_dead_lettered_per_record(kafka, make_topic, lake):
    """``balance`` arrives as text in one change: only that change goes to the DLQ."""
    topic = make_topic(1)
    events = cdc_data.mysql_events(cdc_data.scenario(keys=8, changes=20, seed=9), topic=topic)
    cdc_data.produce_events(kafka, topic, events[:8])
    dataset = cdc_dataset(topic, max_dlq_ratio=0.5)
    run(kafka, lake, dataset)
    rest = list(events[8:])
    index = next(i for i, e in enumerate(rest) if e.value and json.loads(e.value)["op"] == "u")
    envelope = json.loads(rest[index].value)
    envelope["after"]["balance"] = "a lot"
    rest[index] = cdc_data.Event(rest[index].key, json.dumps(envelope).encode())
    cdc_data.produce_events(kafka, topic, rest)

    report = run(kafka, lake, dataset)

    assert report.dead_lettered == 1 and reconciles(report)
    (letter,) = read_dead_letters(lake, dataset).to_pylist()
    assert letter["offset"] == 8 + index and "balance" in letter["error"]


def test_json_upsert_keeps_the_row_with_the_highest_ordering_field(kafka, make_topic, lake):
    topic = make_topic(2)
    records = [
        (b"a", {"sku": "a", "price": 1.0, "version": 1}),
        (b"a", {"sku": "a", "price": 3.0, "version": 3}),
        (b"b", {"sku": "b", "price": 5.0, "version": 1}),
        (b"a", {"sku": "a", "price": 2.0, "version": 2}),  # older, arrives last
    ]
    cdc_data.produce_events(kafka, topic, [(k, json.dumps(v).encode()) for k, v in records])
    dataset = dataset_from_yaml(
        f"datasets:\n  - {{name: prices, source: shop, topic: {topic}, format: json, mode: upsert, key: [sku], "
        "ordering_field: version}"
    )
    run(kafka, lake, dataset)
    cdc_data.produce_events(kafka, topic, [(b"b", json.dumps({"sku": "b", "price": 4.0, "version": 0}).encode()),
                                           (b"c", json.dumps({"sku": "c", "price": 9.0, "version": 1}).encode())])
    run(kafka, lake, dataset)

    frame = read_table(lake.table_uri(dataset.table_path))
    assert sorted(zip(frame["sku"], frame["price"])) == [("a", 3.0), ("b", 5.0), ("c", 9.0)]


def test_debezium_append_keeps_every_change(kafka, make_topic, lake):
    topic = make_topic(1)
    events = cdc_data.mysql_events(cdc_data.scenario(keys=5, changes=15, seed=1), topic=topic)
    cdc_data.produce_events(kafka, topic, events)
    dataset = cdc_dataset(topic, mode="append")

    report = run(kafka, lake, dataset)

    frame = read_table(lake.table_uri(dataset.table_path))
    state = cdc_data.expected_state(events)
    assert frame.height == state.changes == report.rows_written
    assert dict(frame["_cdc_op"].value_counts().iter_rows()) == state.by_op
