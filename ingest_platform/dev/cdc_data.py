"""Realistic Debezium change events (MySQL and Postgres connectors) for tests and the demo (docs/DESIGN.md §9).

A *plan* is the logical change stream of table ``users``: ``[("r", 1), ("r", 2), ("c", 3), ("u", 1), ("d", 2)]``
(snapshot reads first, then creates, updates, deletes by id). ``mysql_events``/``postgres_events`` render a
plan as Kafka records ``Event(key, value)`` the way the connectors write them with the JSON converter (with or
without its ``schema``/``payload`` wrapper), each delete followed by its tombstone. ``expected_state`` replays
records in source-position order to the table an upsert must end with. Everything is deterministic for a seed.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, NamedTuple

from ingest_platform.dev.demo_data import produce
from ingest_platform.engines.changes import position_of
from ingest_platform.kafka.client import KafkaConnection

VERSION = "2.7.3.Final"
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z: a fixed clock keeps the events reproducible
MYSQL_TOPIC = "mysql.inventory.users"  # <topic.prefix>.<database>.<table>
POSTGRES_TOPIC = "pg.public.users"  # <topic.prefix>.<schema>.<table>
COLUMNS = ("id", "first_name", "last_name", "email", "status", "balance", "updated_at", "credit", "is_active",
           "birthday", "last_login")  # fmt: skip

Change = tuple[str, int]  # (op, id)


class Event(NamedTuple):
    key: bytes
    value: bytes | None  # None: a tombstone


# --- plans -----------------------------------------------------------------------------------------------------


def scenario(keys: int = 100, changes: int = 200, *, updates: float = 0.6, deletes: float = 0.15,
             hot_key_updates: int = 0, reinserts: bool = True, seed: int = 7) -> list[Change]:  # fmt: skip
    """Snapshot reads of ids 1..``keys``, then ``changes`` random changes: ``updates`` and ``deletes`` are their
    shares, the rest inserts (with ``reinserts``, half of them re-insert a deleted id). ``hot_key_updates``
    updates of one id in a row are added halfway through."""
    rng = random.Random(seed)
    plan: list[Change] = [("r", i) for i in range(1, keys + 1)]
    live, deleted, next_id = list(range(1, keys + 1)), [], keys + 1
    for n in range(changes + 1):
        if n == changes // 2 and hot_key_updates and live:
            plan += [("u", rng.choice(live))] * hot_key_updates
        if n == changes:
            break
        roll = rng.random()
        if live and roll < deletes:
            ident = live.pop(rng.randrange(len(live)))
            deleted.append(ident)
            plan.append(("d", ident))
        elif live and roll < deletes + updates:
            plan.append(("u", rng.choice(live)))
        else:
            if reinserts and deleted and rng.random() < 0.5:
                ident = deleted.pop(rng.randrange(len(deleted)))
            else:
                ident, next_id = next_id, next_id + 1
            live.append(ident)
            plan.append(("c", ident))
    return plan


_FIRST = ("Anne", "Sally", "Edward", "Kenji", "Amara", "Lucas", "Mei", "Oskar", "Priya", "Tom", "Zofia", "Luis")
_LAST = ("Kretchmar", "Thomas", "Walker", "Tanaka", "Okafor", "Moreau", "Chen", "Lindqvist", "Rao", "Novak")
_STATUSES = ("active", "pending", "suspended", "closed")


class _Step(NamedTuple):
    op: str
    ident: int
    before: dict | None  # full images; connectors trim them
    after: dict | None
    group: int  # -1: snapshot; else a transaction of 1-3 changes of one op (MySQL: one multi-row binlog event)
    row: int  # index in the group
    commit_ms: int  # source.ts_ms
    processed_ms: int  # the envelope's ts_ms: when the connector processed it (in change order)
    last_read: bool  # the snapshot's last read


def _user(rng: random.Random, ident: int, status: str, balance: float, updated_at: int) -> dict:
    """One row as the connectors send it (Debezium's defaults): ``credit`` DECIMAL(10,2) as base64 bytes,
    ``is_active`` TINYINT(1) as 0/1, ``birthday`` DATE as epoch days (before 1970 too), ``last_login``
    TIMESTAMP as ISO text with zone."""
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    credit = rng.randrange(-500_000, 10**9)
    login = None if rng.random() < 0.2 else updated_at - rng.randrange(0, 86_400_000)
    return {"id": ident, "first_name": first, "last_name": last, "email": f"{first}.{last}.{ident}@example.com".lower(),
            "status": status, "balance": balance, "updated_at": updated_at,
            "credit": base64.b64encode(credit.to_bytes(5, "big", signed=True)).decode(),
            "is_active": rng.choice((0, 1)), "birthday": rng.choice((None, rng.randrange(-15_000, 15_000))),
            "last_login": None if login is None else _iso(login)}  # fmt: skip


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _steps(plan: Sequence[Change], seed: int, start_ms: int) -> Iterator[_Step]:
    """Row images, transactions and commit times of a plan; the same for both connectors."""
    rng = random.Random(seed)
    reads = sum(1 for op, _ in plan if op == "r")
    rows: dict[int, dict] = {}
    ms, group, row, size, group_op, group_ids = start_ms + reads // 100, -1, 0, 0, "", set()
    processed = start_ms
    for index, (op, ident) in enumerate(plan):
        if op not in ("r", "c", "u", "d") or (op == "r") != (index < reads) or (op in "rc") == (ident in rows):
            raise ValueError(f"plan step {index} {(op, ident)}: reads come first, 'c'/'r' a new id, 'u'/'d' a live one")
        if op == "r":
            rows[ident] = _user(rng, ident, rng.choice(_STATUSES[:2]), round(rng.uniform(0, 5000), 2),
                                start_ms - rng.randrange(60_000, 90 * 86_400_000))  # last changed before the snapshot
            processed = max(processed, start_ms + index // 100 + rng.randrange(2, 40))
            yield _Step(op, ident, None, rows[ident], -1, 0, start_ms + index // 100, processed, index == reads - 1)
            continue
        if row + 1 >= size or op != group_op or ident in group_ids:  # a new transaction
            group, row, size, group_op, group_ids = group + 1, 0, rng.choice((1, 1, 1, 2, 3)), op, set()
            ms += rng.randrange(1, 50)
        else:
            row += 1
        group_ids.add(ident)
        before = rows.pop(ident, None)
        after = None
        if op == "c":
            after = _user(rng, ident, "pending", 0.0, ms)
        elif op == "u":
            after = dict(before, updated_at=ms)
            what = rng.choice(("balance", "balance", "balance", "status", "email"))
            if what == "balance":
                after["balance"] = round(after["balance"] + rng.uniform(-250, 400), 2)
            elif what == "status":
                after["status"] = rng.choice([s for s in _STATUSES if s != before["status"]])
            else:
                after["email"] = f"{after['first_name']}.{after['last_name']}{rng.randrange(100)}@mail.example".lower()
        if after is not None:
            rows[ident] = after
        processed = max(processed, ms + rng.randrange(2, 40))
        yield _Step(op, ident, before, after, group, row, ms, processed, False)


# --- connectors ------------------------------------------------------------------------------------------------


def mysql_events(plan: Sequence[Change], *, wrapped: bool = False, seed: int = 7, start_ms: int = START_MS,
                 topic: str = MYSQL_TOPIC, binlog_file_bytes: int = 1_048_576,
                 first_binlog: int = 3) -> list[Event]:  # fmt: skip
    """The MySQL connector's records (binlog_row_image=FULL: full ``before`` images). Snapshot reads all carry
    the binlog position the snapshot started at, as Debezium's do; a binlog file rolls over to the next one
    past ``binlog_file_bytes``. ``first_binlog`` numbers the first file (a later stream starts past an earlier one)."""
    rng = random.Random(seed + 1)
    binlog, pos, gtid, thread, group = first_binlog, 157, 1040, None, -1
    events: list[Event] = []
    for step in _steps(plan, seed, start_ms):
        if step.group != group:  # the next transaction: GTID, table map and rows events before it
            group, gtid, thread = step.group, gtid + 1, rng.choice((11, 14, 23))
            pos += rng.randrange(250, 700)
            if pos > binlog_file_bytes:
                binlog, pos = binlog + 1, 157
        snapshot = step.group < 0
        source = _source("mysql", topic, step, db="inventory") | {
            "table": "users", "server_id": 0 if snapshot else 223344,
            "gtid": None if snapshot else f"5f2d6c1e-9d3a-11ef-8b1a-0242ac120002:{gtid}",
            "file": f"mysql-bin.{binlog:06d}", "pos": pos, "row": step.row,
            "thread": None if snapshot else thread, "query": None,
        }  # fmt: skip
        events += _records(topic, step, step.before, step.after, source, wrapped, _MYSQL_ROW, _MYSQL_SOURCE)
    return events


def postgres_events(plan: Sequence[Change], *, wrapped: bool = False, seed: int = 7, start_ms: int = START_MS,
                    topic: str = POSTGRES_TOPIC, replica_identity_full: bool = False) -> list[Event]:  # fmt: skip
    """The Postgres connector's records (pgoutput). With REPLICA IDENTITY DEFAULT an update has no ``before``
    and a delete's ``before`` holds only the key, other columns null. Snapshot reads share one LSN."""
    rng = random.Random(seed + 1)
    lsn, tx, commit, group = 24_023_128, 780, None, -1
    events: list[Event] = []
    for step in _steps(plan, seed, start_ms):
        if step.group != group and step.group >= 0:
            group, tx = step.group, tx + rng.randrange(1, 4)
            commit = lsn + rng.randrange(40, 120)  # the previous transaction's commit record
            lsn = commit + rng.randrange(40, 200)
        elif step.group >= 0:
            lsn += rng.randrange(56, 400)
        before = step.before
        if not replica_identity_full and step.op == "u":
            before = None
        elif not replica_identity_full and step.op == "d":
            before = {name: step.ident if name == "id" else None for name in COLUMNS}
        source = _source("postgresql", topic, step, db="inventory") | {
            "sequence": json.dumps([None if commit is None else str(commit), str(lsn)], separators=(",", ":")),
            "schema": "public", "table": "users", "txId": tx, "lsn": lsn, "xmin": None,
        }  # fmt: skip
        events += _records(topic, step, before, step.after, source, wrapped, _PG_ROW, _PG_SOURCE)
    return events


def _source(connector: str, topic: str, step: _Step, db: str) -> dict:
    snapshot = "false" if step.group >= 0 else "last" if step.last_read else "true"
    return {"version": VERSION, "connector": connector, "name": topic.split(".")[0], "ts_ms": step.commit_ms,
            "snapshot": snapshot, "db": db, "sequence": None, "ts_us": step.commit_ms * 1000,
            "ts_ns": step.commit_ms * 1_000_000}  # fmt: skip


def _records(topic, step, before, after, source, wrapped, row_schema, source_schema) -> list[Event]:
    ts = step.processed_ms
    payload = {"before": before, "after": after, "source": source, "op": step.op, "ts_ms": ts,
               "ts_us": ts * 1000, "ts_ns": ts * 1_000_000, "transaction": None}  # fmt: skip
    key: dict[str, Any] = {"id": step.ident}
    if wrapped:
        key = {"schema": _struct([_f("id", "int32", False)], f"{topic}.Key", False), "payload": key}
        payload = {"schema": _envelope_schema(topic, row_schema, source_schema), "payload": payload}
    record = Event(_json(key), _json(payload))
    return [record, Event(record.key, None)] if step.op == "d" else [record]


# --- the JSON converter's schemas ------------------------------------------------------------------------------


def _f(column: str, kind: str, optional: bool = True, **extra: Any) -> dict:
    return {"type": kind, "optional": optional, **extra, "field": column}


def _struct(fields: list[dict], name: str, optional: bool, **extra: Any) -> dict:
    return {"type": "struct", "fields": fields, "optional": optional, "name": name, **extra}


def _envelope_schema(topic: str, row: list[dict], source: dict) -> dict:
    image = {"type": "struct", "fields": row, "optional": True, "name": f"{topic}.Value"}
    block = [_f("id", "string", False), _f("total_order", "int64", False), _f("data_collection_order", "int64", False)]
    return _struct([
        {**image, "field": "before"}, {**image, "field": "after"},
        {**source, "field": "source"},
        _f("op", "string", False), _f("ts_ms", "int64"), _f("ts_us", "int64"), _f("ts_ns", "int64"),
        {**_struct(block, "event.block", True, version=1), "field": "transaction"},
    ], f"{topic}.Envelope", False, version=2)  # fmt: skip


_TIMESTAMP = {"name": "io.debezium.time.Timestamp", "version": 1}
_ENUM = {"name": "io.debezium.data.Enum", "version": 1}
#: Columns with DEFAULTs of different JSON types (text, base64, a number, ISO text), as real Connect schemas
#: carry them: the schema part of a wrapped event cannot be JSON-inferred (docs/DESIGN.md §9.5).
_TYPED_COLUMNS = [
    _f("credit", "bytes", False, name="org.apache.kafka.connect.data.Decimal", version=1,
       parameters={"scale": "2", "connect.decimal.precision": "10"}, default="AA=="),
    _f("is_active", "int16", False, default=1),
    _f("birthday", "int32", True, name="io.debezium.time.Date", version=1, default=7305),
    _f("last_login", "string", True, name="io.debezium.time.ZonedTimestamp", version=1,
       default="1970-01-01T00:00:00Z"),
]  # fmt: skip
_MYSQL_ROW = [
    _f("id", "int32", False), _f("first_name", "string", False), _f("last_name", "string", False),
    _f("email", "string", False), _f("status", "string", False, **_ENUM, parameters={"allowed": ",".join(_STATUSES)},
                                     default="pending"),
    _f("balance", "double"), _f("updated_at", "int64", False, **_TIMESTAMP), *_TYPED_COLUMNS,
]  # fmt: skip
_PG_ROW = [_f("id", "int32", False)] + [_f(n, "string") for n in COLUMNS[1:5]] + [
    _f("balance", "double"), _f("updated_at", "int64", True, **_TIMESTAMP), *_TYPED_COLUMNS]  # fmt: skip
_COMMON_SOURCE = [
    _f("version", "string", False), _f("connector", "string", False), _f("name", "string", False),
    _f("ts_ms", "int64", False),
    _f("snapshot", "string", True, **_ENUM, parameters={
        "allowed": "true,first,first_in_data_collection,last_in_data_collection,last,false,incremental"},
       default="false"),
    _f("db", "string", False), _f("sequence", "string"), _f("ts_us", "int64"), _f("ts_ns", "int64"),
]  # fmt: skip
_MYSQL_SOURCE = _struct(_COMMON_SOURCE + [
    _f("table", "string"), _f("server_id", "int64", False), _f("gtid", "string"), _f("file", "string", False),
    _f("pos", "int64", False), _f("row", "int32", False), _f("thread", "int64"), _f("query", "string"),
], "io.debezium.connector.mysql.Source", False)  # fmt: skip
_PG_SOURCE = _struct(_COMMON_SOURCE + [
    _f("schema", "string", False), _f("table", "string", False), _f("txId", "int64"), _f("lsn", "int64"),
    _f("xmin", "int64"),
], "io.debezium.connector.postgresql.Source", False)  # fmt: skip


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


# --- reading events back: positions and the expected table -----------------------------------------------------


def decode(data: bytes | None) -> dict | None:
    """A key or value as JSON, without the JSON converter's wrapper; None for a tombstone. With the wrapper,
    row images hold typed values (``typed``), as a table typed by the Connect schema does."""
    if data is None:
        return None
    value = json.loads(data)
    if isinstance(value, dict) and "schema" in value and isinstance(value.get("payload"), dict):
        payload = value["payload"]
        images = {f["field"]: f for f in value["schema"].get("fields", []) if f.get("field") in ("before", "after")}
        for name, image_schema in images.items():
            if payload.get(name) is not None:
                payload[name] = {k: typed(v, _field_schema(image_schema, k)) for k, v in payload[name].items()}
        return payload
    return value


def _field_schema(struct: dict, name: str) -> dict:
    return next((f for f in struct.get("fields", []) if f.get("field") == name), {})


def typed(value: Any, schema: dict) -> Any:
    """A Connect JSON value as the column value of docs/DESIGN.md §9.5 (the tests' reference, in plain Python)."""
    if value is None:
        return None
    name = schema.get("name")
    if name == "org.apache.kafka.connect.data.Decimal":
        unscaled = int.from_bytes(base64.b64decode(value), "big", signed=True)
        return Decimal(unscaled).scaleb(-int(schema["parameters"]["scale"]))
    if name == "io.debezium.time.Timestamp":
        return datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(milliseconds=value)
    if name == "io.debezium.time.ZonedTimestamp":
        return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(timezone.utc)
    if name == "io.debezium.time.Date":
        return date(1970, 1, 1) + timedelta(days=value)
    return value


def position(envelope: dict) -> str | None:
    """The sortable source position of an envelope (docs/DESIGN.md §9.1)."""
    return position_of(envelope.get("source"), envelope.get("ts_ms"))


@dataclass
class ExpectedState:
    """The source table after all changes. Keys: the message key's value (a tuple for compound keys)."""

    rows: dict[Any, dict] = field(default_factory=dict)  # live keys -> last row image
    deleted: dict[Any, dict] = field(default_factory=dict)  # keys whose last change is a delete -> last image
    changes: int = 0
    tombstones: int = 0
    by_op: dict[str, int] = field(default_factory=dict)

    @property
    def events(self) -> int:
        return self.changes + self.tombstones


def expected_state(events: Iterable[tuple[bytes | None, bytes | None]]) -> ExpectedState:
    """Replay changes in source-position order (ties: list order), deletes removing the row."""
    state = ExpectedState()
    changes = []
    for index, (key, value) in enumerate(events):
        if value is None:
            state.tombstones += 1
            continue
        envelope = decode(value)
        changes.append((position(envelope), index, decode(key), envelope))
    for _, _, key_fields, envelope in sorted(changes, key=lambda c: c[:2]):
        op = envelope["op"]
        state.changes += 1
        state.by_op[op] = state.by_op.get(op, 0) + 1
        image = dict((envelope["before"] if op == "d" else envelope["after"]) or {})
        image.update({k: v for k, v in key_fields.items() if image.get(k) is None})  # DESIGN §9.1 "Key"
        key = tuple(key_fields.values())
        key = key[0] if len(key) == 1 else key
        if op == "d":
            last = state.rows.pop(key, None)  # a key-only `before` (Postgres) keeps the last values it had
            state.deleted[key] = last if last is not None else image
        else:
            state.rows[key] = image
            state.deleted.pop(key, None)
    return state


def soft_delete_state(events: Iterable[tuple[bytes | None, bytes | None]]) -> dict[Any, dict]:
    """``delete_mode: soft``: every key ever seen, its last image and ``_cdc_deleted``.

    A deleted key keeps the values it had before its delete. (Exception: a Postgres key inserted and deleted
    within one batch, with REPLICA IDENTITY DEFAULT, is inserted from its key-only ``before``: nulls.)"""
    state = expected_state(events)
    return {**{k: {**row, "_cdc_deleted": True} for k, row in state.deleted.items()},
            **{k: {**row, "_cdc_deleted": False} for k, row in state.rows.items()}}  # fmt: skip


# --- delivering them -------------------------------------------------------------------------------------------


def out_of_order(events: Sequence[Event], keys: int = 3, *, include_deleted: bool = False,
                 seed: int = 7) -> tuple[list[Event], list[Event]]:  # fmt: skip
    """Split ``events`` (in change order) into ``(on_time, late)``: for ``keys`` keys with two changes or more,
    every change but the newest (with its tombstones) moves to ``late``. Producing ``on_time`` and then ``late``
    delivers older changes after newer ones of the same key; the upsert guard must ignore them (§9.2).

    Keys whose newest change is a delete are picked only with ``include_deleted``: under ``delete_mode: hard``
    nothing protects a deleted key from an older change arriving later (§9.2), so only soft deletes hold."""
    by_key: dict[bytes, list[int]] = {}
    for index, (key, _) in enumerate(events):
        by_key.setdefault(key, []).append(index)
    eligible = []
    for key, indexes in by_key.items():
        changes = [i for i in indexes if events[i].value is not None]
        if len(changes) >= 2 and (include_deleted or decode(events[changes[-1]].value)["op"] != "d"):
            eligible.append((key, changes[-1]))
    rng = random.Random(seed)
    moved: set[int] = set()
    for key, newest in rng.sample(eligible, min(keys, len(eligible))):
        moved.update(i for i in by_key[key] if i < newest)
    return [e for i, e in enumerate(events) if i not in moved], [events[i] for i in sorted(moved)]


def produce_events(kafka: KafkaConnection, topic: str, events: Iterable[tuple[bytes, bytes | None]]) -> int:
    """Produce in list order and wait for the acks. The key picks the partition (librdkafka's default
    partitioner hashes the key bytes), so one key's changes stay in order in one partition."""
    return produce(kafka, topic, iter(events))
