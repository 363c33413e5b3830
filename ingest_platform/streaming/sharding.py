"""Sharded stream workers: N processes serve one set of continuous datasets, each dataset by exactly one of
them, and scale events hand datasets over without losing or doubling a record (docs/DESIGN.md §12).

Membership is Kafka's consumer-group protocol (cooperative-sticky) on a coordination topic that carries no
data: ``ingest-platform.shards.<group>`` with P partitions, group ``ingest-platform.workers.<group>``. A
worker serves the datasets whose ``shard_of(name, P)`` partition the group coordinator assigned to it
(``shard_map.py``). Revocation drains (``StreamProcess.remove_many``: each loop finishes its in-flight commit
within the stop deadline) before the callback returns, and the cooperative protocol gives a partition to its
new owner only after that. A lost assignment stops its datasets at once. A ledger conflict stops the dataset
(``stop_on_conflict``); the worker then asks the group coordinator whether it still owns the partition (an
offset commit, which the coordinator refuses from a fenced member) and serves it again only if so.

Everything Kafka is called with a deadline: poll, admin requests, ownership checks (answered through the
commit callback or re-sent), and ``close`` (on a helper thread, abandoned after the session timeout).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from ingest_platform.catalog import Dataset
from ingest_platform.kafka.client import KafkaConnection
from ingest_platform.kafka.topics import (
    TopicAdminError,
    TopicSpec,
    admin_client,
    apply_diffs,
    broker_count,
    describe_topics,
    diff_topic,
)
from ingest_platform.lake.tables import LakeLocation
from ingest_platform.streaming.events import CONFLICT, STOPPED, CommitEvent, DatasetState, StreamOutcome
from ingest_platform.streaming.process import StreamProcess, StreamSettings, stop_on_signals
from ingest_platform.streaming.shard_map import ShardSettings, shard_map

#: Longest wait in the membership consumer's poll: bounds how late a conflict, a check or a stop is handled.
POLL_S = 0.2
#: Deadline of admin requests and of one ownership check (re-sent when unanswered).
REQUEST_TIMEOUT_S = 10.0
#: An ownership check that got a passing error (a rebalance in progress, the coordinator moving) is re-sent.
CHECK_RETRY_S = 1.0
#: Answers to an ownership check that mean "this member is not in the group's current generation".
FENCED_CODES = frozenset(
    getattr(KafkaError, name)
    for name in ("UNKNOWN_MEMBER_ID", "ILLEGAL_GENERATION", "FENCED_INSTANCE_ID", "STALE_MEMBER_EPOCH",
                 "FENCED_MEMBER_EPOCH")  # fmt: skip
    if hasattr(KafkaError, name)
)
#: A dataset whose ownership was confirmed after a conflict is served again after 0, 1, 2, 4 … 60 s when the
#: conflicts repeat within this window (a writer outside the shard group); the third is logged as an error.
CONFLICT_WINDOW_S = 600.0
MAX_READD_DELAY_S = 60.0
#: A repeated client error (brokers down) is logged at most this often.
LOG_EVERY_S = 30.0


class ShardError(RuntimeError):
    """The shard group cannot start (coordination topic unusable); the message says what to do."""


def ensure_coordination_topic(kafka: KafkaConnection, settings: ShardSettings) -> None:
    """Create the coordination topic with P partitions if missing; refuse one with another partition count
    (the dataset -> partition map depends on P: two counts would give two owners)."""
    admin = admin_client(kafka)
    timeout = min(kafka.timeout_s, REQUEST_TIMEOUT_S)
    try:
        state = describe_topics(admin, [settings.topic], timeout)[settings.topic]
        if state is None:
            brokers = broker_count(admin, timeout)
            spec = TopicSpec(settings.topic, settings.partitions, settings.replication_factor or min(3, brokers),
                             {"cleanup.policy": "compact"}, ())  # fmt: skip
            try:
                apply_diffs(kafka, [diff_topic(spec, None, brokers)])
            except TopicAdminError:
                state = describe_topics(admin, [settings.topic], timeout)[settings.topic]  # another worker won
                if state is None:
                    raise
    except TopicAdminError as error:
        raise ShardError(f"shard group '{settings.group}': the coordination topic {settings.topic} is not usable: "
                         f"{error}. Create it with {settings.partitions} partitions (cleanup.policy=compact), or "
                         "let the workers create it (they need CREATE on the cluster).") from None  # fmt: skip
    if state is not None and state.partitions != settings.partitions:
        raise ShardError(
            f"shard group '{settings.group}': the coordination topic {settings.topic} has {state.partitions} "
            f"partitions, but --shard-partitions is {settings.partitions}. Every worker of the group must use the "
            f"topic's count (pass --shard-partitions {state.partitions}); changing it moves datasets, so stop the "
            "group, delete the topic, and start every worker with the new count."
        )


@dataclass
class _Check:
    """An ownership check in flight for one coordination partition."""

    partition: int
    sent: float  # monotonic


class ShardedStream:
    """One worker of a shard group: a ``StreamProcess`` whose datasets follow the group's assignment."""

    def __init__(
        self,
        datasets: Iterable[Dataset],
        kafka: KafkaConnection,
        lake: LakeLocation,
        settings: StreamSettings,
        shard: ShardSettings,
        on_commit: Callable[[CommitEvent], None] | None = None,
        on_state: Callable[[DatasetState], None] | None = None,
        log: logging.Logger | None = None,
    ):
        self.kafka = kafka
        self.shard = shard
        self.log = log or logging.getLogger(__name__)
        self.datasets = {d.name: d for d in datasets}
        self.shards = shard_map(self.datasets.values(), shard.partitions)
        self._on_state_callback = on_state
        self.process = StreamProcess([], kafka, lake, replace(settings, stop_on_conflict=True), on_commit,
                                     self._on_state, log=self.log)  # fmt: skip
        self.session = self.process.session
        self.drain_s = self.process.stop_timeout(self.process.trigger_of(d) for d in self.datasets.values())
        self.owned: set[int] = set()  # coordination partitions assigned to this worker
        self.last_poll = time.monotonic()
        self._stop = threading.Event()
        self._conflicts: list[str] = []  # datasets stopped by a ledger conflict (from loop threads)
        self._conflicts_lock = threading.Lock()
        self._checks: dict[int, _Check] = {}
        self._answers: list[tuple[int, KafkaError | None]] = []  # ownership check answers (commit callback)
        self._held: dict[str, int] = {}  # dataset stopped by a conflict -> its partition, until checked
        self._readd_at: dict[str, float] = {}  # confirmed owner: serve again at this monotonic time
        self._conflict_times: dict[str, list[float]] = {}
        self._consumer: Consumer | None = None
        self._logged_error_at = -LOG_EVERY_S

    # -- control -------------------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask ``run`` to stop: drain every dataset, leave the group, return (any thread, or a signal)."""
        self._stop.set()

    def healthz(self) -> tuple[int, dict]:
        """The process's liveness plus the membership loop's: it must poll within the drain deadline + 30 s."""
        status, body = self.process.healthz()
        idle = time.monotonic() - self.last_poll
        limit = self.drain_s + 30.0
        if idle > limit:
            stuck = {**body.get("stuck", {}), "shard membership": f"no poll for {idle:.0f} s (limit {limit:.0f} s)"}
            return 503, {"status": "stuck", "stuck": stuck}
        return status, body

    def serving(self) -> list[str]:
        return sorted(self.process.served())

    # -- running -------------------------------------------------------------------------------------------------

    def run(self, stop_event: threading.Event | None = None, duration_s: float | None = None) -> StreamOutcome:
        """Join the group and serve the assigned datasets until stopped (signals on the main thread) or
        ``duration_s``; then drain every dataset, leave the group and return the process's outcome."""
        ensure_coordination_topic(self.kafka, self.shard)
        restore = stop_on_signals(self._stop, self.log)
        outcome: dict[str, StreamOutcome] = {}
        crashed: list[BaseException] = []

        def serve() -> None:
            try:
                outcome["process"] = self.process.run(keep_alive=True)
            except BaseException as error:  # noqa: BLE001 - re-raised on the caller's thread
                crashed.append(error)

        worker = threading.Thread(target=serve, name="stream-process", daemon=True)
        worker.start()
        consumer = self._consumer = Consumer(self._consumer_config())
        consumer.subscribe([self.shard.topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                           on_lost=self._on_lost)  # fmt: skip
        self.log.info(f"shard {self.shard.group}: worker session {self.session} joining {self.shard.consumer_group} "
                      f"({len(self.datasets)} dataset(s) on {len(self.shards)} of {self.shard.partitions} "
                      "partitions)")  # fmt: skip
        started = time.monotonic()
        reason = "stopped"
        try:
            while not self._stop.is_set() and not (stop_event is not None and stop_event.is_set()):
                if duration_s is not None and time.monotonic() - started >= duration_s:
                    reason = "duration"
                    break
                if not worker.is_alive():
                    break
                self._poll(consumer)
                self._handle_conflicts(consumer)
                self._handle_answers()
                self._resend_checks(consumer)
                self._readd_due()
        finally:
            self._release(self.serving(), self.drain_s, "stopping")
            self._close(consumer)
            self.process.stop()
            worker.join(self.drain_s + 5)
            restore()
        if crashed:
            raise crashed[0]
        return StreamOutcome(reason=reason, states=self.process.states())

    def _consumer_config(self) -> dict:
        session_ms = int(self.shard.session_timeout_s * 1000)
        return self.kafka.consumer_config(self.shard.consumer_group, {
            "partition.assignment.strategy": "cooperative-sticky",
            "session.timeout.ms": session_ms,
            "heartbeat.interval.ms": max(100, min(3000, session_ms // 3)),
            # a revocation drains for up to drain_s inside the callback, i.e. between two polls
            "max.poll.interval.ms": max(session_ms, int((self.drain_s + 30) * 1000)),
            "auto.offset.reset": "latest",  # nothing is read from the coordination topic
            "client.id": f"ingest-platform-shard-{self.session}",
            "on_commit": self._on_commit,
            "error_cb": self._on_error,
        })  # fmt: skip

    def _poll(self, consumer: Consumer) -> None:
        try:
            message = consumer.poll(POLL_S)  # the group's callbacks run here, on this thread
        except KafkaException as error:
            self.log.warning(f"shard {self.shard.group}: polling the group failed: {error}")
            message = None
        if message is not None and message.error() is not None:
            self.log.debug(f"shard {self.shard.group}: {message.error().str()}")
        self.last_poll = time.monotonic()

    def _close(self, consumer: Consumer) -> None:
        """Leave the group (its revoke callback finds nothing left to drain), within the session timeout."""
        closer = threading.Thread(target=_close_quietly, args=(consumer,), name="shard-close", daemon=True)
        closer.start()
        closer.join(self.shard.session_timeout_s + 5)
        if closer.is_alive():
            self.log.warning(f"shard {self.shard.group}: leaving the group did not finish within "
                             f"{self.shard.session_timeout_s:g} s; the coordinator times this member out")  # fmt: skip
        self._consumer = None

    # -- the group's callbacks (on the run thread, inside poll) --------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if not partitions:
            return
        consumer.incremental_assign(partitions)
        consumer.pause(partitions)  # the coordination topic carries no data: nothing to fetch
        numbers = sorted(p.partition for p in partitions)
        self.owned.update(numbers)
        names = [d.name for p in numbers for d in self.shards.get(p, ())]
        self.log.info(f"shard {self.shard.group}: assigned partitions {numbers}: serving "
                      f"{', '.join(names) or 'no dataset'}")  # fmt: skip
        for name in names:
            self._serve(name)

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._give_up([p.partition for p in partitions], self.drain_s, "revoked")

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Others may own these already: stop at once; a commit in flight lands whole or is refused by the guard.
        self._give_up([p.partition for p in partitions], 0.0, "LOST (session timed out or fenced)")

    def _give_up(self, numbers: list[int], timeout_s: float, why: str) -> None:
        if not numbers:
            return
        numbers = sorted(numbers)
        self.owned.difference_update(numbers)
        for number in numbers:
            self._checks.pop(number, None)
        names = [d.name for p in numbers for d in self.shards.get(p, ())]
        self._release(names, timeout_s, f"partitions {numbers} {why}")

    def _release(self, names: list[str], timeout_s: float, why: str) -> None:
        for name in names:
            self._held.pop(name, None)
            self._readd_at.pop(name, None)
        served = [name for name in names if name in self.process.served()]
        started = time.monotonic()
        if served:
            self.process.remove_many(served, timeout_s)
            for name in served:
                self.process.metrics.forget_dataset(self.datasets[name])
        if served:
            self.log.info(f"shard {self.shard.group}: {why}: released {', '.join(served) or 'no dataset'} "
                          f"(drained in {time.monotonic() - started:.2f} s)")  # fmt: skip

    def _serve(self, name: str) -> None:
        if name in self.process.served():
            self.process.remove(name, 1.0)  # an ended loop (stopped by a conflict) is replaced
        self.process.add(self.datasets[name])

    # -- ledger conflicts and ownership checks -------------------------------------------------------------------

    def _on_state(self, state: DatasetState) -> None:
        """On a loop's thread: a conflict is handed to the run thread; the caller's callback is forwarded."""
        if state.status == STOPPED and state.error_kind == CONFLICT:
            with self._conflicts_lock:
                self._conflicts.append(state.dataset)
        if self._on_state_callback is not None:
            self._on_state_callback(state)

    def _handle_conflicts(self, consumer: Consumer) -> None:
        with self._conflicts_lock:
            names, self._conflicts = self._conflicts, []
        for name in names:
            partition = next(p for p, found in self.shards.items() if any(d.name == name for d in found))
            if partition not in self.owned:
                continue  # revoked meanwhile: already released
            self._release([name], 1.0, f"{name}: another writer moved its ledger")
            self._held[name] = partition
            if partition not in self._checks:
                self._send_check(consumer, partition)

    def _send_check(self, consumer: Consumer, partition: int) -> None:
        """Is this worker still a member of the group's current generation? The coordinator accepts an offset
        commit only from one; the answer arrives in ``_on_commit`` (or the check is re-sent)."""
        self._checks[partition] = _Check(partition, time.monotonic())
        try:
            consumer.commit(offsets=[TopicPartition(self.shard.topic, partition, 0)], asynchronous=True)
        except KafkaException as error:
            self._answers.append((partition, error.args[0]))

    def _on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            if tp.topic == self.shard.topic:
                self._answers.append((tp.partition, error if error is not None else tp.error))

    def _handle_answers(self) -> None:
        answers, self._answers = self._answers, []
        for partition, error in answers:
            check = self._checks.pop(partition, None)
            if check is None:
                continue
            held = [name for name, p in self._held.items() if p == partition]
            if error is not None and error.code() in FENCED_CODES:
                self._fenced(error)
            elif error is not None:
                self._checks[partition] = _Check(partition, time.monotonic() - REQUEST_TIMEOUT_S + CHECK_RETRY_S)
            elif partition in self.owned:
                for name in held:
                    self._held.pop(name)
                    self._readd_at[name] = time.monotonic() + self._readd_delay(name)

    def _fenced(self, error: KafkaError) -> None:
        """The coordinator refused this member: every dataset stops now. librdkafka reports the assignment lost
        and rejoins (``_on_lost``, then ``_on_assign``); should it not, each partition is checked again and its
        datasets are served again once a check passes."""
        self.log.error(f"shard {self.shard.group}: the group coordinator no longer counts this worker as a member "
                       f"({error.str()}): it stops every dataset until the group confirms it again")  # fmt: skip
        again = time.monotonic() - REQUEST_TIMEOUT_S + CHECK_RETRY_S
        for partition in sorted(self.owned):
            names = [d.name for d in self.shards.get(partition, ())]
            self._release(names, 0.0, "fenced")
            self._held.update(dict.fromkeys(names, partition))
            self._checks[partition] = _Check(partition, again)

    def _resend_checks(self, consumer: Consumer) -> None:
        now = time.monotonic()
        for partition, check in list(self._checks.items()):
            if partition not in self.owned:
                self._checks.pop(partition)
            elif now - check.sent >= REQUEST_TIMEOUT_S:
                self._send_check(consumer, partition)

    def _readd_delay(self, name: str) -> float:
        now = time.monotonic()
        times = [t for t in self._conflict_times.get(name, []) if now - t < CONFLICT_WINDOW_S] + [now]
        self._conflict_times[name] = times
        if len(times) >= 3:
            self.log.error(f"shard {self.shard.group}: {name}: {len(times)} ledger conflicts in "
                           f"{CONFLICT_WINDOW_S / 60:.0f} min while this worker owns it: another writer outside the "
                           "shard group writes its table (a Dagster stream or batch run, another shard group)")
        return 0.0 if len(times) == 1 else min(MAX_READD_DELAY_S, 2.0 ** (len(times) - 2))

    def _readd_due(self) -> None:
        now = time.monotonic()
        for name, at in list(self._readd_at.items()):
            if at <= now:
                self._readd_at.pop(name)
                self.log.info(f"shard {self.shard.group}: the group confirmed this worker after the conflict: "
                              f"serving {name}")  # fmt: skip
                self._serve(name)

    def _on_error(self, error: KafkaError) -> None:
        now = time.monotonic()
        if now - self._logged_error_at >= LOG_EVERY_S or error.fatal():
            self._logged_error_at = now
            self.log.warning(f"shard {self.shard.group}: Kafka: {error.str()}")


def _close_quietly(consumer: Consumer) -> None:
    try:
        consumer.close()
    except (KafkaException, RuntimeError):
        pass
