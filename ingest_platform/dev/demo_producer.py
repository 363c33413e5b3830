"""Records for the demo topics: a backlog at start, then a gentle steady stream (``make dev``).

One ``Feed`` per catalog dataset makes its records: the demo generators for ``orders``, ``clicks`` and
``payments``, Debezium MySQL change events for a ``format: debezium`` dataset (the demo's ``users``), and
order-like JSON for any other JSON dataset (a dataset added to the demo catalog later gets records too).
Event times lie at most ``DEMO_SPREAD_S`` before the moment a record is made, so a healthy platform meets
its latency SLO on the first screen. ``SteadyProducer`` sends ``rate`` records per second to every topic
from one background thread until stopped: batch datasets then flow through the lag sensor, continuous ones
through their stream.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

from confluent_kafka import Producer

from ingest_platform.catalog import Dataset
from ingest_platform.dev.cdc_data import decode, expected_state, mysql_events, scenario
from ingest_platform.dev.demo_data import GENERATORS, records
from ingest_platform.kafka.client import KafkaConnection

_log = logging.getLogger(__name__)

#: Event times lie up to this many seconds before the moment each record is made.
DEMO_SPREAD_S = 5.0
#: The CDC stream's hot key: one user updated this many times in a row (in the backlog).
CDC_HOT_KEY_UPDATES = 50
#: Changes after the snapshot in a Debezium backlog (~15 ms of commit time each).
MAX_BACKLOG_CHANGES = 4_000
#: Changes per steady Debezium chunk: a few re-read rows (Debezium's incremental snapshot), then their changes.
CHUNK_KEYS = 3

Record = tuple[bytes | None, bytes | None]


class Feed:
    """The records of one dataset's topic; ``backlog`` first, then ``next`` as often as wanted."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def backlog(self, count: int) -> tuple[list[Record], int, str]:
        """``count`` records to start with, the rows the table must then hold, and what they are."""
        raise NotImplementedError

    def next(self, count: int) -> list[Record]:
        """About ``count`` more records, continuing the backlog."""
        raise NotImplementedError


class JsonFeed(Feed):
    def __init__(self, dataset: Dataset, kind: str):
        super().__init__(dataset)
        self.kind, self.index = kind, 0

    def _make(self, count: int, seed: int) -> list[Record]:
        made = list(records(self.kind, count, seed=seed, start=self.index, spread_s=DEMO_SPREAD_S, live=True))
        self.index += count
        return made

    def backlog(self, count: int) -> tuple[list[Record], int, str]:
        return self._make(count, seed=7), count, "records"

    def next(self, count: int) -> list[Record]:
        return self._make(count, seed=8)


class ChangeFeed(Feed):
    """Debezium MySQL events of table ``users``: a snapshot and changes, then chunks that re-read a few live
    rows (``op: r``, as an incremental snapshot does) and update, delete or insert them. Each chunk lives in
    a later binlog file, so source positions keep increasing."""

    def __init__(self, dataset: Dataset):
        super().__init__(dataset)
        self.live: list[int] = []
        self.next_id = 1
        self.chunk = 0

    def backlog(self, count: int) -> tuple[list[Record], int, str]:
        """A snapshot of ``count`` users, then up to MAX_BACKLOG_CHANGES changes: their commit times span
        about 15 ms each, and they end just before now, so the backlog's latency stays within a minute."""
        plan = scenario(keys=count, changes=min(count, MAX_BACKLOG_CHANGES), hot_key_updates=CDC_HOT_KEY_UPDATES)
        # Recent commit times: the events are deterministic for a start time, so make them once to learn the
        # span of their commit times, then again to end one second before now.
        span_ms = _last_commit_ms(mysql_events(plan, start_ms=0, topic=self.dataset.topic))
        events = mysql_events(plan, start_ms=int(time.time() * 1000) - span_ms - 1_000, topic=self.dataset.topic)
        state = expected_state(events)
        self.live = sorted(state.rows)
        self.next_id = max([ident for _, ident in plan], default=0) + 1
        ops = ", ".join(f"{n:,} {op}" for op, n in sorted(state.by_op.items()))
        return list(events), len(state.rows), f"Debezium events ({ops}, {state.tombstones:,} tombstones)"

    def next(self, count: int) -> list[Record]:
        self.chunk += 1
        touched = self.live[self.chunk % max(1, len(self.live)):][:CHUNK_KEYS] or self.live[:CHUNK_KEYS]
        plan = [("r", ident) for ident in touched]
        for n in range(max(1, count - len(touched))):
            if n % 10 == 9 and len(touched) > 1 and len(self.live) > 10:
                gone = touched.pop()
                self.live.remove(gone)
                plan.append(("d", gone))
            elif n % 10 == 4:
                plan.append(("c", self.next_id))
                self.live.append(self.next_id)
                self.next_id += 1
            elif touched:
                plan.append(("u", touched[n % len(touched)]))
        events = mysql_events(plan, start_ms=int(time.time() * 1000), seed=1000 + self.chunk,
                              topic=self.dataset.topic, first_binlog=1000 + self.chunk)  # fmt: skip
        return list(events)


def _last_commit_ms(events: list) -> int:
    return max(decode(value)["source"]["ts_ms"] for _, value in events if value is not None)


def feed_for(dataset: Dataset) -> Feed:
    if dataset.format == "debezium":
        return ChangeFeed(dataset)
    return JsonFeed(dataset, dataset.name if dataset.name in GENERATORS else "orders")


class SteadyProducer:
    """``rate`` records per second to every feed's topic, from one thread, until ``stop()``.

    Delivery failures (broker down) are logged and counted, never raised: the stream resumes when the broker
    answers again; each flush waits at most ``flush_timeout_s``.
    """

    def __init__(self, kafka: KafkaConnection, feeds: Iterable[Feed], rate: float = 2.0,
                 flush_timeout_s: float = 10.0, on_error: Callable[[str], None] | None = None):  # fmt: skip
        self.kafka, self.feeds, self.rate = kafka, list(feeds), rate
        self.flush_timeout_s = flush_timeout_s
        self.on_error = on_error or (lambda message: _log.warning(message))
        self.produced = {feed.dataset.name: 0 for feed in self.feeds}
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-steady-producer", daemon=True)

    def start(self) -> SteadyProducer:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        producer = Producer(self.kafka.producer_config())
        owed = {feed.dataset.name: 0.0 for feed in self.feeds}
        last = time.monotonic()
        while not self._stop.wait(1.0):
            now = time.monotonic()
            for feed in self.feeds:
                owed[feed.dataset.name] += self.rate * (now - last)
                count = int(owed[feed.dataset.name])
                if count < 1:
                    continue
                owed[feed.dataset.name] -= count
                for key, value in feed.next(count):
                    self._send(producer, feed, key, value)
            last = now
            producer.poll(0)
        remaining = producer.flush(self.flush_timeout_s)
        if remaining:
            self.on_error(f"steady producer: {remaining} records undelivered at stop")

    def _send(self, producer: Producer, feed: Feed, key: bytes | None, value: bytes | None) -> None:
        def delivered(error, _message) -> None:
            if error is None:
                self.produced[feed.dataset.name] += 1
            else:
                self.errors += 1
                self.on_error(f"steady producer: {feed.dataset.topic}: {error.str()}")

        try:
            producer.produce(feed.dataset.topic, key=key, value=value, on_delivery=delivered)
        except BufferError:  # the local queue is full (broker unreachable for a while): drop, say so
            self.errors += 1
            self.on_error(f"steady producer: local queue full, a record for {feed.dataset.topic} dropped")
