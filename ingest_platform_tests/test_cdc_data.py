"""Debezium test data (ingest_platform/dev/cdc_data.py): envelopes, positions, tombstones, the expected state."""

from __future__ import annotations

import base64
import json
from collections import Counter
from decimal import Decimal

import pytest

from ingest_platform.dev.cdc_data import (
    COLUMNS,
    decode,
    expected_state,
    mysql_events,
    out_of_order,
    position,
    postgres_events,
    scenario,
    soft_delete_state,
)

CONNECTORS = [mysql_events, postgres_events]
#: insert 4, update 1, delete 2, re-insert 2, update 1 again, after a snapshot of 1..3
HAND_PLAN = [("r", 1), ("r", 2), ("r", 3), ("c", 4), ("u", 1), ("d", 2), ("c", 2), ("u", 1)]


def changes(events):
    return [decode(value) for _, value in events if value is not None]


@pytest.mark.parametrize("render", CONNECTORS)
def test_positions_follow_change_order(render):
    plan = scenario(keys=50, changes=400, hot_key_updates=20, seed=3)
    envelopes = changes(render(plan, binlog_file_bytes=20_000) if render is mysql_events else render(plan))
    positions = [position(e) for e in envelopes]
    snapshot = [p for p, e in zip(positions, envelopes) if e["op"] == "r"]
    streamed = [p for p, e in zip(positions, envelopes) if e["op"] != "r"]
    assert len(snapshot) == 50 and len(set(snapshot)) == 1  # reads carry the position the snapshot started at
    assert all(a < b for a, b in zip(streamed, streamed[1:]))  # strictly increasing, as strings
    assert snapshot[0] < streamed[0]
    assert positions == sorted(positions)
    if render is mysql_events:
        files = {e["source"]["file"] for e in envelopes}
        assert {"mysql-bin.000003", "mysql-bin.000004"} <= files  # rolled over to the next binlog file
        assert any(e["source"]["row"] > 0 for e in envelopes)  # multi-row binlog events
        assert all(e["source"]["gtid"] is None for e in envelopes if e["op"] == "r")
    else:
        assert all(isinstance(e["source"]["lsn"], int) for e in envelopes)
        first, current = json.loads(envelopes[-1]["source"]["sequence"])
        assert int(first) < int(current) == envelopes[-1]["source"]["lsn"]
    times = [e["ts_ms"] for e in envelopes]
    assert times == sorted(times) and all(e["ts_ms"] >= e["source"]["ts_ms"] for e in envelopes)


@pytest.mark.parametrize("render", CONNECTORS)
def test_snapshot_reads_come_first_and_the_last_is_marked(render):
    envelopes = changes(render(HAND_PLAN))
    assert [e["op"] for e in envelopes] == ["r", "r", "r", "c", "u", "d", "c", "u"]
    assert [e["source"]["snapshot"] for e in envelopes] == ["true", "true", "last"] + ["false"] * 5
    assert all(e["transaction"] is None and e["source"]["db"] == "inventory" for e in envelopes)


@pytest.mark.parametrize("render", CONNECTORS)
def test_expected_state_of_a_hand_checked_scenario(render):
    events = render(HAND_PLAN)
    envelopes = changes(events)
    state = expected_state(events)
    assert sorted(state.rows) == [1, 2, 3, 4]
    assert state.rows[1] == envelopes[7]["after"]  # the second update of 1
    assert state.rows[1]["updated_at"] == envelopes[7]["source"]["ts_ms"]
    assert state.rows[2] == envelopes[6]["after"] != envelopes[1]["after"]  # the re-insert, not the snapshot row
    assert state.rows[3] == envelopes[2]["after"] and state.rows[4] == envelopes[3]["after"]
    assert set(state.rows[4]) == set(COLUMNS)
    assert state.deleted == {}
    assert (state.changes, state.tombstones, state.events) == (8, 1, 9) and len(events) == 9
    assert state.by_op == {"r": 3, "c": 2, "u": 2, "d": 1}


@pytest.mark.parametrize("render", CONNECTORS)
def test_a_deleted_key_leaves_the_state_and_soft_deletes_keep_its_last_values(render):
    events = render([("r", 1), ("r", 2), ("u", 1), ("d", 1)])
    last = changes(events)[2]["after"]
    state = expected_state(events)
    assert list(state.rows) == [2] and state.deleted == {1: last}
    soft = soft_delete_state(events)
    assert soft[1] == {**last, "_cdc_deleted": True}  # also for Postgres, whose delete carries only the key
    assert soft[2]["_cdc_deleted"] is False


def test_the_same_plan_gives_the_same_rows_in_both_connectors():
    plan = scenario(keys=30, changes=200, seed=11)
    assert expected_state(mysql_events(plan, seed=5)).rows == expected_state(postgres_events(plan, seed=5)).rows
    assert mysql_events(plan, seed=5) == mysql_events(plan, seed=5)
    assert mysql_events(plan, seed=5) != mysql_events(plan, seed=6)


@pytest.mark.parametrize("render", CONNECTORS)
def test_wrapped_and_plain_forms_decode_to_the_same_payload(render):
    """The same payload; with the wrapper its row images read as the Connect schema types them."""
    plain, wrapped = render(HAND_PLAN), render(HAND_PLAN, wrapped=True)
    assert len(plain) == len(wrapped)
    for (key, value), (wrapped_key, wrapped_value) in zip(plain, wrapped):
        assert decode(wrapped_key) == decode(key) == json.loads(key)
        assert (wrapped_value is None) == (value is None)
        if value is not None:
            bare, typed = decode(value), decode(wrapped_value)
            assert {k: v for k, v in typed.items() if k not in ("before", "after")} == {
                k: v for k, v in bare.items() if k not in ("before", "after")}  # fmt: skip
            image = typed["after"] or typed["before"]
            raw = bare["after"] or bare["before"]
            assert image.keys() == raw.keys() and image["email"] == raw["email"]
            if image["credit"] is not None:
                unscaled = int.from_bytes(base64.b64decode(raw["credit"]), "big", signed=True)
                assert image["credit"] == Decimal(unscaled) / 100
            assert image["updated_at"] is None or image["updated_at"].tzinfo is not None
        if value is None:
            continue
        envelope = json.loads(wrapped_value)
        schema = envelope["schema"]
        assert [f["field"] for f in schema["fields"]] == list(envelope["payload"])
        images = {f["field"]: f for f in schema["fields"]}
        assert [f["field"] for f in images["after"]["fields"]] == list(COLUMNS)
        assert [f["field"] for f in images["source"]["fields"]] == list(envelope["payload"]["source"])
        assert json.loads(wrapped_key)["schema"]["fields"] == [{"type": "int32", "optional": False, "field": "id"}]


@pytest.mark.parametrize("render", CONNECTORS)
def test_a_tombstone_follows_each_delete(render):
    events = render(scenario(keys=40, changes=300, deletes=0.3, seed=9))
    deletes = [i for i, (_, value) in enumerate(events) if value is not None and decode(value)["op"] == "d"]
    tombstones = [i for i, (_, value) in enumerate(events) if value is None]
    assert deletes and tombstones == [i + 1 for i in deletes]
    assert all(events[i].key == events[i + 1].key for i in deletes)
    assert expected_state(events).tombstones == len(deletes)


def test_postgres_images_with_replica_identity_default_and_full():
    envelopes = changes(postgres_events(HAND_PLAN))
    update, delete = envelopes[4], envelopes[5]
    assert update["before"] is None  # DEFAULT: no old image for updates
    assert delete["after"] is None
    assert delete["before"] == {"id": 2, **{name: None for name in COLUMNS[1:]}}
    full = changes(postgres_events(HAND_PLAN, replica_identity_full=True))
    assert full[4]["before"] == full[0]["after"] and full[5]["before"] == full[1]["after"]
    mysql = changes(mysql_events(HAND_PLAN))
    assert mysql[5]["before"] == mysql[1]["after"]  # MySQL (binlog_row_image=FULL): the whole row


def test_scenario_features():
    plan = scenario(keys=20, changes=300, updates=0.5, deletes=0.25, hot_key_updates=15, seed=4)
    assert plan[:20] == [("r", i) for i in range(1, 21)]
    ops = [op for op, _ in plan[20:]]
    assert len(ops) == 315 and {"c", "u", "d"} == set(ops)
    runs = [plan[i:i + 15] for i in range(20, len(plan) - 14)]  # fmt: skip
    assert any(len(set(run)) == 1 and run[0][0] == "u" for run in runs)  # the hot key, updated 15 times in a row
    deleted, reinserted = set(), set()
    for op, ident in plan:
        if op == "d":
            deleted.add(ident)
        elif op == "c" and ident in deleted:
            reinserted.add(ident)
    assert reinserted
    assert not any(op == "c" and ident <= 20 for op, ident in scenario(20, 300, reinserts=False, seed=4))


@pytest.mark.parametrize("plan", [[("u", 1)], [("r", 1), ("c", 1)], [("r", 1), ("d", 1), ("u", 1)],
                                  [("c", 1), ("r", 2)], [("x", 1)]])  # fmt: skip
def test_impossible_plans_are_refused(plan):
    with pytest.raises(ValueError, match="plan step"):
        mysql_events(plan)


@pytest.mark.parametrize("render", CONNECTORS)
def test_out_of_order_moves_older_changes_of_some_keys_late(render):
    events = render(scenario(keys=30, changes=300, hot_key_updates=10, seed=2))
    on_time, late = out_of_order(events, keys=5, seed=1)
    assert Counter(on_time + late) == Counter(events)
    for part in (on_time, late):  # each part keeps the change order
        positions = [position(decode(value)) for _, value in part if value is not None]
        assert positions == sorted(positions)
    kept = {key: decode(value) for key, value in on_time if value is not None}  # each key's newest on time
    assert len({key for key, _ in late}) == 5
    for key, value in late:
        if value is not None:
            assert position(decode(value)) < position(kept[key])  # older than what was delivered before it
    # hard deletes cannot guard a deleted key against older changes: such keys are only picked on request
    assert all(kept[key]["op"] != "d" for key, _ in late)
    assert expected_state(on_time + late) == expected_state(events)  # replayed by position, not delivery order
    on_time, late = out_of_order(events, keys=100, include_deleted=True)
    kept = {key: decode(value) for key, value in on_time if value is not None}
    assert any(kept[key]["op"] == "d" for key, _ in late)


def test_wrapped_schemas_carry_defaults_of_mixed_types_as_real_connectors_do():
    """A real MariaDB/MySQL connector puts DEFAULTs of several JSON types into the schema's field entries;
    inferring the schema part with Arrow fails on them (why the engines never do, docs/DESIGN.md §9.5)."""
    import io

    import pyarrow as pa
    import pyarrow.json as pajson

    events = mysql_events(HAND_PLAN, wrapped=True)
    schema = json.loads(events[0].value)["schema"]
    after = next(f for f in schema["fields"] if f["field"] == "after")
    defaults = {type(f["default"]).__name__ for f in after["fields"] if "default" in f}
    assert defaults == {"str", "int"}
    names = {f.get("name") for f in after["fields"]}
    assert {"org.apache.kafka.connect.data.Decimal", "io.debezium.time.Date", "io.debezium.time.ZonedTimestamp",
            "io.debezium.time.Timestamp", "io.debezium.data.Enum"} <= names  # fmt: skip
    with pytest.raises(pa.ArrowInvalid, match="default"):
        pajson.read_json(io.BytesIO(b"\n".join(e.value for e in events if e.value)))
