"""Helpers of the stream tests: a stream process on a thread, waiting for the table to hold what was produced."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from ingest_platform.catalog import Dataset
from ingest_platform.dev.demo_data import records
from ingest_platform.lake.tables import LakeLocation
from ingest_platform.streaming.events import CommitEvent, StreamOutcome
from ingest_platform.streaming.process import StreamProcess, StreamSettings
from ingest_platform_tests.helpers import read_table

#: Tests stream with short triggers and no background upkeep unless they test it.
FAST = StreamSettings(trigger_interval_s=0.3, metadata_refresh_s=0.5, upkeep=None)


class StreamThread:
    """A ``StreamProcess`` running on a thread; ``events`` collects its commit events."""

    def __init__(self, datasets: list[Dataset], kafka, lake: LakeLocation, settings: StreamSettings = FAST, **kw):
        self.events: list[CommitEvent] = []
        self.process = StreamProcess(datasets, kafka, lake, settings, on_commit=self.events.append, **kw)
        self.outcome: StreamOutcome | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.outcome = self.process.run(keep_alive=True)

    def __enter__(self) -> StreamThread:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self, timeout_s: float = 30) -> StreamOutcome:
        self.process.stop()
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "the stream process did not stop"
        assert self.outcome is not None
        return self.outcome


def wait_for(condition: Callable[[], object], timeout_s: float = 60, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def table_rows(lake: LakeLocation, dataset: Dataset) -> int:
    table = lake.open_table(dataset.table_path)
    return 0 if table is None else table.count()


def assert_exactly_once(lake: LakeLocation, dataset: Dataset, expected: int, id_column: str = "order_id") -> None:
    frame = read_table(lake.table_uri(dataset.table_path))
    assert frame.height == expected, f"{frame.height} rows, expected {expected}"
    assert frame.select("_kafka_partition", "_kafka_offset").n_unique() == expected
    assert frame[id_column].n_unique() == expected


class SteadyProducer(threading.Thread):
    """Produces ``batch`` records to each topic every ``every_s`` until stopped; ``produced`` counts the
    acknowledged ones (``by_topic`` per topic). Ids (``order_id``) are unique within a topic."""

    def __init__(self, kafka, topics: str | Sequence[str], batch: int = 40, every_s: float = 0.1):
        super().__init__(daemon=True)
        self.kafka, self.batch, self.every_s = kafka, batch, every_s
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        self.by_topic = dict.fromkeys(self.topics, 0)
        self.halt = threading.Event()

    @property
    def produced(self) -> int:
        return sum(self.by_topic.values())

    def run(self) -> None:
        from confluent_kafka import Producer

        def delivered(error, message) -> None:
            if error is None:
                self.by_topic[message.topic()] += 1  # acknowledged records only

        producer = Producer(self.kafka.producer_config())
        sent = 0
        while not self.halt.is_set():
            for topic in self.topics:
                for key, value in records("orders", self.batch, seed=sent, start=sent):
                    producer.produce(topic, value=value, key=key, on_delivery=delivered)
            sent += self.batch
            producer.flush(30)
            self.halt.wait(self.every_s)
        producer.flush(60)

    def stop(self) -> int:
        self.halt.set()
        self.join(60)
        return self.produced
