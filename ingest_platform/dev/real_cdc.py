"""A real change stream: a MariaDB table with realistic column types, changed by a deterministic workload and
published by Debezium twice — with and without the JSON converter's schema/payload wrapper (docs/DESIGN.md §9).

``capture(bootstrap, CdcWorkload(...))`` starts a private MariaDB and a Kafka Connect worker against the given
broker, creates ``inventory.customers`` (BIGINT key, VARCHAR with non-ASCII text, ENUM, DECIMAL(12,2),
TINYINT(1), DATETIME(3), TIMESTAMP(6), DATE, DOUBLE, TEXT with NULLs, JSON, VARBINARY; DEFAULTs of several
types, so the Connect schema's ``default`` values have mixed JSON types), loads a snapshot, starts two
connectors (``wrapped``: ``schemas.enable=true``; ``bare``: ``false``), then streams inserts, updates (hot keys,
multi-row statements), deletes (with their tombstones) and re-inserts of deleted ids in transactions, with an
``ALTER TABLE … ADD COLUMN`` halfway. It waits (with a deadline) until both topics hold every expected event,
reads ``SELECT *`` of the final table and stops both services. The result names the topics, the source rows
and the event counts. Tests and benchmarks share it; ``pymysql`` (a dev dependency) is the SQL client.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from ingest_platform.dev.local_connect import LocalConnect, mariadb_connector
from ingest_platform.dev.local_mariadb import LocalMariaDB

DATABASE = "inventory"
TABLE = "customers"
KEY = "id"
WRAPPED_PREFIX = "wrapped"  # topic <prefix>.inventory.customers, JsonConverter schemas.enable=true
BARE_PREFIX = "bare"  # schemas.enable=false
TIERS = ("free", "pro", "enterprise")
DDL = f"""CREATE TABLE {TABLE} (
  id BIGINT NOT NULL PRIMARY KEY,
  name VARCHAR(100) NOT NULL,
  tier ENUM('free','pro','enterprise') NOT NULL DEFAULT 'free',
  balance DECIMAL(12,2) NOT NULL DEFAULT 0.00,
  is_active TINYINT(1) NOT NULL DEFAULT 1,
  created_at DATETIME(3) NOT NULL DEFAULT '2000-01-01 00:00:00.000',
  updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
  birthday DATE NULL DEFAULT '1990-01-01',
  score DOUBLE NULL DEFAULT 0.5,
  notes TEXT NULL,
  attributes JSON NULL,
  token VARBINARY(16) NOT NULL DEFAULT x'00'
)"""
#: The column the workload adds halfway (NULL for the rows it never touches again, as in ``SELECT *``).
ADDED_COLUMN = ("discount", "DECIMAL(5,3) NULL")
#: The catalog ``schema:`` that reads the bare (unwrapped) events into the same column types as the wrapper.
BARE_SCHEMA = {
    "balance": {"type": "decimal(12,2)", "encoding": "base64"},
    "discount": {"type": "decimal(5,3)", "encoding": "base64"},
    "created_at": {"type": "timestamp", "unit": "ms"},
    "updated_at": "timestamp",
    "birthday": "date",
    "is_active": "boolean",
    "token": {"type": "binary", "encoding": "base64"},
}
_NAMES = ("Zoë Ångström", "Łukasz Wróbel", "Søren Kierkegaard", "李雷", "Ангелина Иванова", "José Núñez",
          "Ömer Çelik", "Nguyễn Văn An", "Ana 🙂 Lima", "O'Brien \"Bob\"", "Plain Name")  # fmt: skip
_NOTES = ("VIP", "call back 📞", "línea 1\nlínea 2", 'quote "x" and \\ slash', "ok", "")


@dataclass(frozen=True)
class CdcWorkload:
    """How much to change: ``snapshot_rows`` rows before the connectors start, then ``transactions``
    transactions of 1–4 statements (the ALTER after half of them); ``hot_keys`` ids get ``hot_updates``
    single-row updates each, spread through the stream."""

    snapshot_rows: int = 200
    transactions: int = 150
    hot_keys: int = 2
    hot_updates: int = 40
    partitions: int = 2
    seed: int = 13


@dataclass
class CdcCapture:
    """What ``capture`` produced: the two topics, the events in each, and the source table's final rows."""

    wrapped_topic: str
    bare_topic: str
    events: int  # records per topic (change events + tombstones)
    by_op: dict[str, int]
    rows: list[dict[str, Any]]  # SELECT * ORDER BY id, as pymysql returns it (Decimal, datetime, date, bytes)
    columns: list[str]
    timings: dict[str, float] = field(default_factory=dict)


def topic(prefix: str) -> str:
    return f"{prefix}.{DATABASE}.{TABLE}"


class _Source:
    """The workload's view of the table: which ids are live/deleted, and how many events each op made."""

    def __init__(self, connection: Any, seed: int) -> None:
        self.cursor = connection.cursor()
        self.rng = random.Random(seed)
        self.live: list[int] = []
        self.deleted: list[int] = []
        self.next_id = 1
        self.by_op = {"r": 0, "c": 0, "u": 0, "d": 0}
        self.altered = False
        self.notes = 0

    def row(self, ident: int) -> dict[str, Any]:
        rng = self.rng
        created = datetime(1965, 1, 1) + timedelta(milliseconds=rng.randrange(0, 65 * 365 * 86_400_000))
        return {
            "id": ident,
            "name": rng.choice(_NAMES),
            "tier": rng.choice(TIERS),
            "balance": Decimal(rng.randrange(-10**6, 10**11)) / 100,  # up to 999,999,999.99 and negatives
            "is_active": rng.choice((0, 1)),
            "created_at": created,  # DATETIME(3), before and after 1970
            "birthday": rng.choice((None, date(1950, 1, 1) + timedelta(days=rng.randrange(0, 60 * 365)))),
            "score": rng.choice((None, rng.uniform(-1e6, 1e6), 0.0, 1e-300)),
            "notes": rng.choice((None, None, *_NOTES)),
            "attributes": rng.choice((None, '{"vip": true, "tags": ["a", "ü"]}', '{"n": 1.5}', "[]")),
            "token": rng.randbytes(rng.randrange(1, 17)),
        }

    def insert(self, idents: list[int], op: str) -> None:
        rows = [self.row(i) for i in idents]
        columns = list(rows[0])
        rows_sql = ", ".join(["(" + ", ".join(["%s"] * len(columns)) + ")"] * len(rows))
        self.cursor.execute(f"INSERT INTO {TABLE} ({', '.join(columns)}) VALUES {rows_sql}",
                            [row[c] for row in rows for c in columns])  # fmt: skip
        self.live += idents
        self.by_op[op] += len(idents)

    def update(self, idents: list[int]) -> None:
        """One UPDATE statement that changes every row it matches (MariaDB logs no event for a no-op update)."""
        rng = self.rng
        what = rng.choice(("balance", "tier", "notes", "flip", "discount" if self.altered else "balance"))
        if what == "balance":
            change, args = "balance = balance + %s", [Decimal(rng.choice((-1, 1)) * rng.randrange(1, 50_000)) / 100]
        elif what == "tier":
            change, args = "tier = ELT(MOD(tier + 0, 3) + 1, 'free', 'pro', 'enterprise')", []
        elif what == "notes":
            self.notes += 1
            change, args = "notes = %s", [f"{rng.choice(_NOTES)} #{self.notes}"]
        elif what == "flip":
            change, args = "is_active = 1 - is_active, score = NULL, birthday = NULL", []
        else:
            self.notes += 1
            change, args = "discount = %s, notes = %s", [Decimal(rng.randrange(-99_999, 99_999)) / 1000,
                                                         f"discount #{self.notes}"]  # fmt: skip
        marks = ", ".join(["%s"] * len(idents))
        self.cursor.execute(f"UPDATE {TABLE} SET {change} WHERE id IN ({marks})", [*args, *idents])
        self.by_op["u"] += len(idents)

    def delete(self, idents: list[int]) -> None:
        marks = ", ".join(["%s"] * len(idents))
        self.cursor.execute(f"DELETE FROM {TABLE} WHERE id IN ({marks})", idents)
        for ident in idents:
            self.live.remove(ident)
            self.deleted.append(ident)
        self.by_op["d"] += len(idents)

    def new_ids(self, count: int) -> list[int]:
        ids = list(range(self.next_id, self.next_id + count))
        self.next_id += count
        return ids

    def statement(self) -> None:
        rng = self.rng
        roll = rng.random()
        if roll < 0.45 and self.live:
            self.update(rng.sample(self.live, min(len(self.live), rng.choice((1, 1, 1, 3)))))
        elif roll < 0.65 and len(self.live) > 10:
            self.delete(rng.sample(self.live, rng.choice((1, 1, 2))))
        elif roll < 0.8 and self.deleted:
            ident = self.deleted.pop(rng.randrange(len(self.deleted)))  # a re-insert of a deleted id
            self.insert([ident], "c")
        else:
            self.insert(self.new_ids(rng.choice((1, 1, 2))), "c")


def create_table(source: _Source, workload: CdcWorkload) -> None:
    """The table and its snapshot rows (before the connectors start: they read them as ``r`` events)."""
    source.cursor.execute(DDL)
    ids = source.new_ids(workload.snapshot_rows)
    for start in range(0, len(ids), 100):
        source.insert(ids[start : start + 100], "r")


def stream_changes(source: _Source, workload: CdcWorkload) -> None:
    """The streamed changes, in transactions, with hot keys and the ALTER halfway (see ``CdcWorkload``)."""
    connection = source.cursor.connection
    hot = source.rng.sample(source.live, min(workload.hot_keys, len(source.live)))
    hot_plan = [ident for ident in hot for _ in range(workload.hot_updates)]
    for index in range(workload.transactions):
        if index == workload.transactions // 2:
            source.cursor.execute(f"ALTER TABLE {TABLE} ADD COLUMN {ADDED_COLUMN[0]} {ADDED_COLUMN[1]}")
            source.altered = True
        connection.begin()
        for _ in range(source.rng.choice((1, 1, 2, 4))):
            source.statement()
        connection.commit()
        for _ in range(len(hot_plan) // max(1, workload.transactions - index)):
            ident = hot_plan.pop()
            if ident in source.live:
                source.update([ident])
    for ident in hot_plan:
        if ident in source.live:
            source.update([ident])


def source_rows(db: LocalMariaDB) -> tuple[list[str], list[dict[str, Any]]]:
    """``SELECT *`` of the table, ordered by key: (column names, rows)."""
    import pymysql

    connection = pymysql.connect(**db.connect_kwargs(DATABASE), cursorclass=pymysql.cursors.DictCursor)
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT * FROM {TABLE} ORDER BY {KEY}")
            rows = list(cursor.fetchall())
            columns = [d[0] for d in cursor.description]
        return columns, rows
    finally:
        connection.close()


def wait_for_events(bootstrap: str, expected: dict[str, int], connect: LocalConnect, timeout_s: float) -> None:
    """Until each topic holds ``expected[topic]`` records; fails naming the counts and the connectors' states."""
    from confluent_kafka import Consumer, KafkaException

    from ingest_platform.kafka.client import KafkaReadError, topic_partitions, watermarks

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "real-cdc-wait", "log_level": 0})
    deadline = time.monotonic() + timeout_s
    counts: dict[str, int] = {}
    try:
        while True:
            for name in expected:
                try:
                    marks = watermarks(consumer, name, topic_partitions(consumer, name, 5), 5)
                    counts[name] = sum(high - low for low, high in marks.values())
                except (KafkaReadError, KafkaException):
                    counts[name] = 0
            if all(counts[name] >= count for name, count in expected.items()):
                if any(counts[name] > count for name, count in expected.items()):
                    raise RuntimeError(f"the topics hold more events than the workload made: {counts} > {expected}")
                return
            if time.monotonic() > deadline:
                states = {c["name"]: connect.status(c["name"])["connector"]["state"] for c in connect.connectors}
                raise RuntimeError(f"Debezium did not publish every change within {timeout_s:.0f} s: topics hold "
                                   f"{counts}, expected {expected}; connectors {states}")  # fmt: skip
            connect.wait_running(timeout_s=max(1.0, deadline - time.monotonic()))  # fails fast on FAILED
            time.sleep(0.5)
    finally:
        consumer.close()


def capture(bootstrap: str, workload: CdcWorkload = CdcWorkload(), timeout_s: float = 180) -> CdcCapture:
    """Run the workload through MariaDB → Debezium → ``bootstrap`` (both converter settings); see the module."""
    import pymysql

    timings: dict[str, float] = {}
    t0 = time.monotonic()
    topics = (topic(WRAPPED_PREFIX), topic(BARE_PREFIX))
    with LocalMariaDB() as db:
        db.execute(f"CREATE DATABASE {DATABASE} CHARACTER SET utf8mb4")
        connection = pymysql.connect(**db.connect_kwargs(DATABASE), autocommit=True)
        try:
            source = _Source(connection, workload.seed)
            create_table(source, workload)
            timings["mariadb_s"] = time.monotonic() - t0
            connectors = [
                mariadb_connector("wrapped", db, DATABASE, topic_prefix=WRAPPED_PREFIX, schemas_enable=True,
                                  server_id=5401, partitions=workload.partitions),
                mariadb_connector("bare", db, DATABASE, topic_prefix=BARE_PREFIX, schemas_enable=False,
                                  server_id=5402, partitions=workload.partitions),
            ]  # fmt: skip
            t1 = time.monotonic()
            with LocalConnect(bootstrap, connectors) as connect:
                connect.wait_running(timeout_s=timeout_s)
                # Changes made before a connector's snapshot point would be folded into its snapshot reads.
                wait_for_events(bootstrap, dict.fromkeys(topics, workload.snapshot_rows), connect, timeout_s)
                timings["snapshot_s"] = time.monotonic() - t1
                t1 = time.monotonic()
                stream_changes(source, workload)
                ops = source.by_op
                events = ops["r"] + ops["c"] + ops["u"] + 2 * ops["d"]  # each delete is followed by its tombstone
                wait_for_events(bootstrap, dict.fromkeys(topics, events), connect, timeout_s)
                timings["stream_s"] = time.monotonic() - t1
        finally:
            connection.close()
        columns, rows = source_rows(db)
    timings["total_s"] = time.monotonic() - t0
    return CdcCapture(*topics, events, dict(source.by_op), rows, columns, timings)
