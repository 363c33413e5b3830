"""No hang (docs/DESIGN.md §2 "Deadlines"): every Kafka call has a deadline, the monitoring group commit never
holds a run past its own, and errors right after a broker restart are retried, then fail clearly.

These stop and restart a broker, so they use a private one (the session broker serves the other tests)."""

from __future__ import annotations

import logging
import threading

import pytest

from ingest_platform.dev.demo_data import produce, records
from ingest_platform.dev.local_kafka import LocalKafka, create_topic
from ingest_platform.engines.embedded.engine import EmbeddedEngine
from ingest_platform.engines.run_plan import IngestError
from ingest_platform.kafka.client import GroupOffsetCommitter, KafkaConnection, watermarks
from ingest_platform_tests.helpers import json_dataset, read_table

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

#: Far above every deadline involved (5 s calls, 10 s group commit, 5 s idle): reaching it means a hang.
HANG_S = 90


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    """A private broker in a kept state dir: a restart keeps its topics and its port."""
    local = LocalKafka(tmp_path_factory.mktemp("private-kafka"), heap="512m")
    local.start()
    yield local
    local.stop()


@pytest.fixture
def running(broker):
    if not broker.is_running():
        broker.start()
    return broker


def _in_thread(work) -> tuple[threading.Thread, dict]:
    box: dict = {}

    def run() -> None:
        try:
            box["result"] = work()
        except Exception as error:  # noqa: BLE001 - handed to the test
            box["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(HANG_S)
    return thread, box


class _StopBrokerAfterFirstCommit(logging.Handler):
    def __init__(self, broker: LocalKafka):
        super().__init__()
        self.broker, self.warnings = broker, []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            self.warnings.append(record.getMessage())
        if "committed version" in record.getMessage() and self.broker.is_running():
            self.broker.stop()


def test_a_broker_stopped_mid_run_never_hangs_the_run(running, tmp_path):
    """The broker goes away right after the first Delta commit: the group commit that follows gives up at its
    deadline (it used to wait forever), and the run ends: done from what it had fetched, or failed naming the
    cause. Either way what it committed stands."""
    kafka = KafkaConnection(running.bootstrap, timeout_s=5)
    topic = "deadline.mid-run"
    create_topic(running.bootstrap, topic, 2)
    produce(kafka, topic, records("orders", 3000))
    dataset = json_dataset(topic, max_batch_bytes=100_000)
    log = logging.getLogger("test.deadlines.mid_run")
    log.setLevel(logging.INFO)
    stopper = _StopBrokerAfterFirstCommit(running)
    log.addHandler(stopper)
    lake_root = tmp_path / "lake"
    from ingest_platform.lake.tables import LakeLocation

    try:
        thread, box = _in_thread(lambda: EmbeddedEngine(kafka, LakeLocation(str(lake_root)), log=log,
                                                        idle_timeout_s=5).run(dataset))  # fmt: skip
    finally:
        log.removeHandler(stopper)
    assert not thread.is_alive(), f"the run still hangs after {HANG_S} s"
    assert not running.is_running()
    assert any("monitoring commit to the consumer group" in w and "the run goes on without it" in w
               for w in stopper.warnings), stopper.warnings  # fmt: skip
    frame = read_table(str(lake_root / dataset.table_path))
    assert frame.select("_kafka_partition", "_kafka_offset").n_unique() == frame.height > 0
    if "error" in box:
        message = str(box["error"])
        assert isinstance(box["error"], IngestError), repr(box["error"])
        assert "no records arrived for 5 s" in message and "Connection refused" in message, message
        assert "this run committed" in message
    else:
        assert box["result"].records == 3000 == frame.height


def test_a_run_right_after_a_broker_restart_retries_not_leader_errors(running, lake):
    """For a second or so after a restart partitions answer 'Not leader for partition': retried, not fatal."""
    kafka = KafkaConnection(running.bootstrap, timeout_s=15)
    topic = "deadline.restart"
    create_topic(running.bootstrap, topic, 6)
    produce(kafka, topic, records("clicks", 600))
    dataset = json_dataset(topic)
    for attempt in range(2):
        consumer = kafka.consumer("deadline.restart")  # connected before: asks the moment the broker is back
        consumer.list_topics(topic, timeout=10)
        running.stop()
        running.start()
        assert sum(high for _, high in watermarks(consumer, topic, list(range(6)), 15).values()) == 600
        consumer.close()
        report = EmbeddedEngine(KafkaConnection(running.bootstrap, timeout_s=15), lake).run(dataset)
        assert report.records == (600 if attempt == 0 else 0)
    assert read_table(lake.table_uri(dataset.table_path)).height == 600


def test_a_broker_that_stays_down_fails_the_run_at_the_deadline_naming_the_cause(running, lake):
    address = running.bootstrap
    running.stop()
    kafka = KafkaConnection(address, timeout_s=6)
    thread, box = _in_thread(lambda: EmbeddedEngine(kafka, lake).run(json_dataset("deadline.down")))
    assert not thread.is_alive()
    message = str(box["error"])
    assert isinstance(box["error"], IngestError) and "cannot read metadata of topic 'deadline.down'" in message
    assert "Connection refused" in message and "tried" in message, message
    assert "Nothing was committed by this run" not in message or "cannot read" in message


def test_the_monitoring_group_commit_gives_up_at_its_deadline(running):
    address = running.bootstrap
    create_topic(address, "deadline.group", 1)
    warnings: list[str] = []
    log = logging.getLogger("test.deadlines.group")
    log.addHandler(type("H", (logging.Handler,), {"emit": lambda self, r: warnings.append(r.getMessage())})())
    committer = GroupOffsetCommitter(KafkaConnection(address, timeout_s=5), "g.deadline", "deadline.group", log,
                                     timeout_s=4)  # fmt: skip
    committer.commit({0: 0}, "dataset 'x'")
    assert committer.close()  # up: the group holds it
    committer = GroupOffsetCommitter(KafkaConnection(address, timeout_s=5), "g.deadline", "deadline.group", log,
                                     timeout_s=4)  # fmt: skip
    running.stop()
    thread, box = _in_thread(lambda: [committer.commit({0: n}, "dataset 'x'") for n in range(1, 50)])
    assert not thread.is_alive() and box["result"]  # handing over never waits for the broker
    thread, box = _in_thread(committer.close)
    assert not thread.is_alive() and box["result"] is False  # gave up at its deadline
    # Given up by the attempt at its deadline ("failed (...)") or by close() while one was still out ("got no
    # answer within 4 s"), whichever came first on a loaded machine; either way the cause is named.
    gave_up = [w for w in warnings if "monitoring commit to the consumer group" in w]
    assert gave_up and any("Connection refused" in w for w in gave_up), warnings
    assert all("the table is correct" in w.lower() for w in gave_up)
