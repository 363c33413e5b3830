"""Change records without Kafka: positions, last change per key, envelopes, tolerant decoding (DESIGN §9)."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from ingest_platform.engines import connect_schema
from ingest_platform.engines.changes import (
    last_change_per_key,
    merge_clauses,
    order_column,
    position_column,
    position_of,
    quote_datafusion,
    quote_spark,
)
from ingest_platform.engines.embedded import decode
from ingest_platform.engines.embedded.debezium import read_events
from ingest_platform_tests.helpers import dataset_from_yaml

MYSQL = {"connector": "mysql", "file": "mysql-bin.000003", "pos": 154, "row": 2, "ts_ms": 1_764_000_000_000}
POSTGRES = {"connector": "postgresql", "lsn": 24023128, "ts_ms": 1_764_000_000_000}


def test_position_orders_changes_as_the_source_does():
    """String order of positions = change order: binlog file, then position, then row; LSNs numerically."""
    positions = [
        position_of({**MYSQL, "pos": 9, "row": 0}, None),
        position_of({**MYSQL, "pos": 154, "row": 0}, None),
        position_of({**MYSQL, "pos": 154, "row": 2}, None),
        position_of({**MYSQL, "pos": 1_000_000, "row": 0}, None),
        position_of({**MYSQL, "file": "mysql-bin.000004", "pos": 4, "row": 0}, None),
    ]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    assert position_of({"lsn": 99}, None) < position_of({"lsn": 100}, None)
    assert position_of(None, 5) == "ts:00000000000000000005"
    assert position_of({}, None) is None


def test_position_column_matches_the_reference_for_every_source_kind():
    sources = [MYSQL, {**MYSQL, "row": None}, POSTGRES, {"connector": "sqlserver"}, None]
    ts = [1, 2, 3, 4, None]
    kind = pa.struct([("file", pa.string()), ("pos", pa.int64()), ("row", pa.int32()), ("lsn", pa.int64())])
    column = pa.array([{k: s.get(k) for k in ("file", "pos", "row", "lsn")} if s else None for s in sources], kind)
    assert position_column(column, pa.array(ts, pa.int64()), 5).to_pylist() == [
        position_of(s, t) for s, t in zip(sources, ts)
    ]


def test_last_change_per_key_follows_the_order_column_then_the_offset():
    rows = pa.table(
        {
            "id": [1, 1, 2, 1, 2, 3, 3],
            "v": ["a", "b", "x", "c", "y", "p", "q"],
            "_cdc_position": ["p2", "p3", "p1", "p1", "p1", "p5", "p5"],  # key 1: a late p1 must not win
            "_kafka_partition": [0] * 7,
            "_kafka_offset": [0, 1, 2, 3, 4, 5, 6],
        }
    )
    last = last_change_per_key(rows, ["id"], "_cdc_position")
    assert sorted(zip(last["id"].to_pylist(), last["v"].to_pylist())) == [(1, "b"), (2, "y"), (3, "q")]
    by_offset = last_change_per_key(rows, ["id"], None)
    assert sorted(zip(by_offset["id"].to_pylist(), by_offset["v"].to_pylist())) == [(1, "c"), (2, "y"), (3, "q")]


def test_merge_clauses_guard_and_delete_modes():
    yaml = "datasets:\n  - {name: users, source: s, topic: t, format: debezium, mode: upsert, delete_mode: %s}"
    hard = merge_clauses(dataset_from_yaml(yaml % "hard"), ["id"], ["id", "_cdc_op"], quote_datafusion)
    assert hard.on == 't."id" = s."id"'
    assert 's."_cdc_position" >= t."_cdc_position"' in hard.update_all_when
    assert hard.delete_when and hard.insert_when == "s.\"_cdc_op\" <> 'd'"
    columns = ["id", "name", "_cdc_op", "_cdc_deleted"]
    soft = merge_clauses(dataset_from_yaml(yaml % "soft"), ["id"], columns, quote_spark)
    assert soft.delete_when is None and soft.insert_when is None
    assert soft.soft_delete_set == {
        "name": "COALESCE(s.`name`, t.`name`)",  # the delete's before image, unless it only holds the key
        "_cdc_op": "s.`_cdc_op`",
        "_cdc_deleted": "s.`_cdc_deleted`",
    }
    plain = dataset_from_yaml(
        "datasets:\n  - {name: u, source: s, topic: t, format: json, mode: upsert, key: [id], ordering_field: ts}"
    )
    assert order_column(plain) == "ts"
    assert merge_clauses(plain, ["id"], ["id", "ts"], quote_datafusion).delete_when is None


def _events(values: list[dict | str]) -> list[bytes]:
    return [v.encode() if isinstance(v, str) else json.dumps(v).encode() for v in values]


def test_envelopes_give_row_images_ops_and_problems_per_event():
    values = _events(
        [
            {"op": "c", "before": None, "after": {"id": 1, "name": "a"}, "source": MYSQL, "ts_ms": 5},
            {"op": "d", "before": {"id": 2, "name": None}, "after": None, "source": POSTGRES, "ts_ms": 6},
            {"op": "t", "before": None, "after": None, "source": MYSQL, "ts_ms": 7},
            {"op": "u", "before": None, "after": None, "source": MYSQL, "ts_ms": 8},
            {"id": 3},
        ]
    )
    events = read_events(decode.read_json_values(values, pa.schema([])))
    assert events.images["id"].to_pylist()[:2] == [1, 2]
    assert events.op.to_pylist()[:2] == ["c", "d"]
    assert events.position.to_pylist()[:2] == [position_of(MYSQL, 5), position_of(POSTGRES, 6)]
    assert events.event_ms.to_pylist()[:2] == [MYSQL["ts_ms"], POSTGRES["ts_ms"]]
    assert sorted(events.bad) == [2, 3, 4]
    assert "unknown Debezium op 't'" in events.bad[2]
    assert "without an 'after' row image" in events.bad[3]
    assert "no 'op' field" in events.bad[4]


def test_wrapped_and_plain_envelopes_read_the_same():
    """The wrapper is split off the bytes (``connect_schema.split``, never parsed as rows); the payload reads
    as the plain envelope does."""
    plain = {"op": "u", "before": {"id": 7, "n": "x"}, "after": {"id": 7, "n": "y"}, "source": MYSQL, "ts_ms": 1}
    schema = {"type": "struct", "optional": False, "name": "mysql.inventory.users.Envelope", "fields": []}
    wrapped = {"schema": schema, "payload": plain}
    values = _events([plain, wrapped])
    assert connect_schema.split(values[0]) is None
    payloads = [values[0], connect_schema.split(values[1]).payload]
    read = [read_events(decode.read_json_values([v], pa.schema([]))) for v in payloads]
    assert read[0].images.to_pylist() == read[1].images.to_pylist() == [{"id": 7, "n": "y"}]
    assert read[0].position.to_pylist() == read[1].position.to_pylist()


@pytest.mark.parametrize(
    ("bad", "reason"),
    [("not json", "not valid JSON"), ("[1, 2]", "must be a JSON object"), ('{"qty": "three"}', "field 'qty'")],
)
def test_tolerant_decoding_sets_bad_values_aside_and_keeps_the_rest(bad, reason):
    values = [json.dumps({"qty": i}).encode() for i in range(37)]
    values[23] = bad.encode()
    table, good, problems = decode.decode_json_tolerant(values, pa.schema([("qty", pa.int64())]))
    assert list(problems) == [23] and reason in problems[23]
    assert good == [i for i in range(37) if i != 23]
    assert table["qty"].to_pylist() == good
