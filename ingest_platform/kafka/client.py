"""The Kafka client the product uses: connection settings, clients that report their cause, deadlines.

* **Settings** follow the tuning guide (shared/seed/ingestion-performance-guide.md), translated to
  librdkafka's names; docs/DESIGN.md §5 lists them. Credentials come from one place for every entry point
  (``KafkaConnection.from_env``: the ``INGEST_KAFKA_*`` variables, ``SECURITY_ENV``) and are never printed:
  the ``KafkaConnection`` repr hides every value whose key looks secret.
* **Causes**: clients made here (``KafkaConnection.consumer``/``admin``) keep librdkafka's error and log
  callbacks (``ClientProblems``), so a failure names its cause (``SASL authentication error: ...``) instead
  of librdkafka's summary (``Local: Broker transport failure``).
* **Deadlines** (docs/DESIGN.md §2 "Deadlines"): every call has one (``KafkaConnection.timeout_s``); errors
  that pass by themselves (leadership moving after a broker restart, a coordinator loading, a broker
  briefly unreachable: ``RETRIABLE``) are retried with bounded backoff until it, then fail naming the cause.
  The monitoring commit to the consumer group runs on a thread of its own and never holds a run past its
  deadline (``GroupOffsetCommitter``).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

#: Consumer fetch settings from the guide ("Kafka Consumer Optimization").
CONSUMER_TUNING: dict[str, Any] = {
    "fetch.min.bytes": 1_048_576,  # 1 MB
    "fetch.wait.max.ms": 500,  # the guide's fetch.max.wait.ms
    "max.partition.fetch.bytes": 10_485_760,  # 10 MB
    "socket.receive.buffer.bytes": 1_048_576,
    "socket.send.buffer.bytes": 1_048_576,
    "socket.timeout.ms": 60_000,  # the guide's request.timeout.ms
    "session.timeout.ms": 30_000,
    # The most one fetch response carries (the Java client's default is 50 MiB); spark-sql-kafka's consumers
    # take this value, confluent-kafka's take LIBRDKAFKA_PREFETCH's.
    "fetch.max.bytes": 16_777_216,
}

#: librdkafka's prefetch, bounded (docs/DESIGN.md §2 "Memory"); confluent-kafka consumers only (the Java
#: client has no such queue). librdkafka queues up to queued.max.messages.kbytes of fetched records (default
#: 64 MiB) and, below that, fetches again: one response of up to fetch.max.bytes, counted compressed. A
#: snappy response is decompressed into one buffer per producer batch (~64 KiB: below the mmap threshold,
#: so from malloc's arenas), ~4x its size here: with 16 MiB responses a run waiting on its commit held
#: ~120 MiB of them, and the arenas kept the space once freed (benchmarks/memory_bench.py). 4 MiB responses
#: hold a quarter of that; the queue stays at 16 MiB (the records fetched ahead while a batch is decoded).
LIBRDKAFKA_PREFETCH: dict[str, Any] = {
    "queued.max.messages.kbytes": 16_384,
    "fetch.max.bytes": 4_194_304,
}

#: Producer batching from the guide ("High-Throughput Producer Settings"). The guide's acks=1 cannot be
#: combined with enable.idempotence (librdkafka refuses it), so idempotent producers use acks=all.
PRODUCER_TUNING: dict[str, Any] = {
    "acks": "all",
    "enable.idempotence": True,
    "max.in.flight.requests.per.connection": 5,
    "batch.size": 65_536,
    "linger.ms": 10,
    "compression.type": "snappy",
    "queue.buffering.max.kbytes": 131_072,  # the guide's buffer.memory 128 MB
}

_SECRET_MARKERS = ("password", "secret", "key", "token", "jaas")

#: The environment variables every entry point reads Kafka's address and security settings from (the CLI,
#: the Dagster resources, the stream process, the demo tools), and the librdkafka keys they set.
BOOTSTRAP_ENV = "INGEST_KAFKA_BOOTSTRAP"
SECURITY_ENV: dict[str, str] = {
    "INGEST_KAFKA_SECURITY_PROTOCOL": "security.protocol",
    "INGEST_KAFKA_SASL_MECHANISM": "sasl.mechanism",
    "INGEST_KAFKA_SASL_USERNAME": "sasl.username",
    "INGEST_KAFKA_SASL_PASSWORD": "sasl.password",
    "INGEST_KAFKA_SSL_CA_LOCATION": "ssl.ca.location",
}
DEFAULT_TIMEOUT_S = 30.0

#: Errors that pass by themselves within seconds: retried with backoff until the call's deadline.
RETRIABLE = frozenset({
    KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE, KafkaError.FENCED_LEADER_EPOCH,
    KafkaError.UNKNOWN_LEADER_EPOCH, KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError.REQUEST_TIMED_OUT, KafkaError.NETWORK_EXCEPTION,
    KafkaError.NOT_ENOUGH_REPLICAS, KafkaError.OFFSET_NOT_AVAILABLE, KafkaError.KAFKA_STORAGE_ERROR,
    KafkaError._TIMED_OUT, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._UNKNOWN_PARTITION,
    KafkaError._WAIT_COORD,
})  # fmt: skip
#: Errors that name the cause of a failed connection; never retried (a wrong password stays wrong).
_CAUSES = (KafkaError._AUTHENTICATION, KafkaError._SSL, KafkaError.SASL_AUTHENTICATION_FAILED)
#: First and longest pause between retries.
BACKOFF_S = (0.1, 2.0)
#: The longest one attempt may wait: librdkafka blocks a metadata request for its whole timeout even when a
#: connection already failed for good (refused credentials), so attempts are short and the callbacks are
#: looked at between them.
ATTEMPT_S = 5.0

_librdkafka_log = logging.getLogger("ingest_platform.kafka.librdkafka")


class KafkaReadError(RuntimeError):
    """Kafka could not be read (broker unreachable, authentication failed, topic missing, fetch error)."""


@dataclass(frozen=True)
class KafkaConnection:
    """Where the brokers are and how to authenticate (librdkafka ``security.*``/``sasl.*``/``ssl.*`` keys);
    ``timeout_s`` is the deadline of each Kafka call, retries included."""

    bootstrap_servers: str
    security: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __repr__(self) -> str:
        shown = {k: ("***" if any(m in k for m in _SECRET_MARKERS) else v) for k, v in self.security.items()}
        return f"KafkaConnection(bootstrap_servers={self.bootstrap_servers!r}, security={shown})"

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, bootstrap: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> KafkaConnection:  # fmt: skip
        """The connection every entry point uses: ``bootstrap`` (e.g. a ``--bootstrap`` option), else
        ``INGEST_KAFKA_BOOTSTRAP`` (settings.py's default without it), and the security settings of
        ``SECURITY_ENV``."""
        from ingest_platform.settings import DEFAULT_KAFKA_BOOTSTRAP

        env = os.environ if environ is None else environ
        return cls(
            bootstrap_servers=bootstrap or env.get(BOOTSTRAP_ENV) or DEFAULT_KAFKA_BOOTSTRAP,
            security=security_settings({name: env.get(name) for name in SECURITY_ENV}),
            timeout_s=timeout_s,
        )

    def base_config(self) -> dict[str, Any]:
        return {"bootstrap.servers": self.bootstrap_servers, **self.security}

    def consumer_config(self, group_id: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return {
            **self.base_config(),
            **CONSUMER_TUNING,
            **LIBRDKAFKA_PREFETCH,
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": False,
            "auto.offset.reset": "error",  # positions always come from the ledger; never guess
            "isolation.level": "read_committed",
            **(overrides or {}),
        }

    def producer_config(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return {**self.base_config(), **PRODUCER_TUNING, **(overrides or {})}

    def consumer(self, group_id: str, overrides: Mapping[str, Any] | None = None) -> IngestConsumer:
        """A consumer with the guide's settings whose failures name their cause (``.problems``)."""
        problems = ClientProblems()
        consumer = IngestConsumer({**self.consumer_config(group_id, overrides), **problems.callbacks()})
        consumer.problems = problems
        return consumer

    def admin(self, timeout_s: float | None = None) -> IngestAdminClient:
        """An AdminClient whose failures name their cause (``.problems``); socket timeout ``timeout_s``."""
        problems = ClientProblems()
        socket_ms = int((timeout_s or self.timeout_s) * 1000)
        admin = IngestAdminClient({**self.base_config(), "socket.timeout.ms": socket_ms, **problems.callbacks()})
        admin.problems = problems
        return admin


def security_settings(values: Mapping[str, str | None]) -> dict[str, str]:
    """librdkafka keys for the set values of ``SECURITY_ENV``'s variables (keyed by variable name)."""
    return {SECURITY_ENV[name]: value for name, value in values.items() if value}


class ClientProblems:
    """What librdkafka reported through its error and log callbacks, most recent last (bounded).

    librdkafka summarises a failed request as ``Local: Broker transport failure`` and reports why (a failed
    SASL handshake, refused credentials, a refused connection) only through these callbacks, which
    ``poll``/``consume`` serve. Log lines also go, at their level, to the ``ingest_platform.kafka.librdkafka``
    logger instead of stderr.
    """

    def __init__(self, keep: int = 50):
        self.errors: deque[KafkaError] = deque(maxlen=keep)
        self.log_lines: deque[str] = deque(maxlen=keep)
        self._logger = logging.Logger("librdkafka")  # not registered: one per client, dropped with it
        self._logger.addHandler(_Keep(self))

    def callbacks(self) -> dict[str, Any]:
        return {"error_cb": self.errors.append, "logger": self._logger}

    def serve(self, client: Consumer | AdminClient) -> None:
        """Deliver queued callbacks now (a failed blocking call leaves them queued). Not for a consumer with
        assigned partitions: its ``poll`` could return a record, which would be lost; its own ``consume``
        calls serve them."""
        try:
            if isinstance(client, Consumer) and client.assignment():
                return
            client.poll(0)
        except (KafkaException, RuntimeError):
            pass

    def cause(self) -> str | None:
        """The most telling reported problem: an authentication or TLS failure, else the latest connection
        error (``Connect to ... failed: Connection refused``), else None."""
        for wanted in (lambda e: e.code() in _CAUSES, lambda e: e.code() == KafkaError._TRANSPORT):
            for error in reversed(self.errors):
                if wanted(error):
                    return error.str()
        return None

    def authentication_failed(self) -> bool:
        return any(e.code() in _CAUSES for e in self.errors)


class _Keep(logging.Handler):
    """Keeps librdkafka's warnings and forwards each distinct line once at its level (repeats at DEBUG:
    librdkafka repeats a failure on every reconnect, hundreds of times a minute)."""

    _VARYING = re.compile(r"\s*\(after \d+ms.*$")  # librdkafka's timing and repeat count

    def __init__(self, problems: ClientProblems):
        super().__init__()
        self.problems = problems
        self.seen: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            self.problems.log_lines.append(message)
        key = self._VARYING.sub("", message)
        first = key not in self.seen and len(self.seen) < 1000
        self.seen.add(key)
        _librdkafka_log.log(record.levelno if first else logging.DEBUG, message)


class IngestConsumer(Consumer):
    """A ``Consumer`` that keeps what librdkafka reported (``KafkaConnection.consumer``)."""

    problems: ClientProblems


class IngestAdminClient(AdminClient):
    """An ``AdminClient`` that keeps what librdkafka reported (``KafkaConnection.admin``)."""

    problems: ClientProblems


def describe_failure(error: KafkaError, client: Consumer | AdminClient | None = None) -> str:
    """librdkafka's error text, followed by the cause its callbacks reported when they say more."""
    text = error.str()
    problems: ClientProblems | None = getattr(client, "problems", None)
    if problems is None:
        return text
    problems.serve(client)
    cause = problems.cause()
    if cause and cause not in text:
        text = f"{cause} (librdkafka: {text})"
    return text


T = TypeVar("T")


def with_deadline(what: str, call: Callable[[float], T], timeout_s: float,
                  client: Consumer | AdminClient | None = None) -> T:  # fmt: skip
    """``call(remaining seconds)`` retried on ``RETRIABLE`` errors with exponential backoff (``BACKOFF_S``)
    until ``timeout_s`` has passed; then, or on any other error, ``KafkaReadError`` naming ``what`` and the
    cause. An authentication failure is never retried."""
    deadline = time.monotonic() + timeout_s
    pause, attempts = BACKOFF_S[0], 0
    while True:
        attempts += 1
        try:
            return call(max(0.1, min(ATTEMPT_S, deadline - time.monotonic())))
        except KafkaException as exception:
            error = exception.args[0]
            problems: ClientProblems | None = getattr(client, "problems", None)
            if problems is not None:
                problems.serve(client)
            retriable = error.code() in RETRIABLE and not (problems and problems.authentication_failed())
            if retriable and time.monotonic() + pause < deadline:
                time.sleep(pause)
                pause = min(pause * 2, BACKOFF_S[1])
                continue
            tried = f" (tried {attempts} times over {timeout_s:.0f} s)" if retriable else ""
            raise KafkaReadError(f"{what}: {describe_failure(error, client)}{tried}") from None


def topic_partitions(consumer: Consumer, topic: str, timeout_s: float) -> list[int]:
    """Partition ids of ``topic``; a clear error when the topic does not exist or the broker is unreachable."""
    metadata = with_deadline(f"cannot read metadata of topic '{topic}'",
                             lambda left: consumer.list_topics(topic, timeout=left), timeout_s, consumer)  # fmt: skip
    info = metadata.topics.get(topic)
    if info is None or info.error is not None or not info.partitions:
        reason = info.error.str() if info is not None and info.error is not None else "it has no partitions"
        raise KafkaReadError(f"topic '{topic}' is not available: {reason} (create it, or fix 'topic' in the catalog)")
    return sorted(info.partitions)


def watermarks(consumer: Consumer, topic: str, partitions: list[int], timeout_s: float) -> dict[int, tuple[int, int]]:
    """``{partition: (earliest, high watermark)}`` read from the broker now (not cached); all partitions
    within one deadline of ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    result = {}
    for partition in partitions:
        low, high = with_deadline(
            f"cannot read the offsets of {topic}[{partition}]",
            lambda left, p=partition: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=left,
                                                                     cached=False),
            max(0.1, deadline - time.monotonic()), consumer,
        )  # fmt: skip
        result[partition] = (int(low), int(high))
    return result


#: How long a run waits for its last monitoring commit to a consumer group (``GroupOffsetCommitter.close``),
#: and how long retriable commit errors are retried.
GROUP_COMMIT_TIMEOUT_S = 10.0


class GroupOffsetCommitter:
    """Commits a dataset's next offsets to its consumer group, for monitoring only (docs/DESIGN.md §2 step 6),
    on a thread and a consumer of its own, so that the group commit never holds a run or a stream.

    librdkafka's commit has no deadline: it waits for the group coordinator, for good while the broker is
    down (``commit(asynchronous=False)`` hung runs; ``close()`` of a consumer with a pending asynchronous
    commit hangs the same way; the AdminClient's ``alter_consumer_group_offsets`` aborts the process when
    the connection drops mid-request, librdkafka PR #5397). So ``commit`` only hands offsets over and returns;
    the thread sends the newest (offsets handed over meanwhile are merged) as an asynchronous commit and
    polls for its outcome until ``timeout_s`` (the polls also deliver librdkafka's errors: the cause a
    warning names), retrying retriable errors (the coordinator moving or loading); a failure is logged,
    never raised, and its offsets go with the next attempt. ``close`` waits at most ``timeout_s`` for the
    last ones and never calls into the thread's consumer (confluent-kafka serialises the calls on one client:
    any call waits for a blocked one); the consumer is closed by its thread, which may stay blocked there
    until the broker answers (a daemon thread: it never holds the process).
    """

    def __init__(self, kafka: KafkaConnection, group_id: str, topic: str, log: logging.Logger,
                 timeout_s: float = GROUP_COMMIT_TIMEOUT_S):  # fmt: skip
        self.kafka, self.group_id, self.topic, self.log, self.timeout_s = kafka, group_id, topic, log, timeout_s
        self.failures = 0  # attempts that gave up
        self._pending: dict[int, int] = {}  # handed over, not sent yet
        self._unsent: dict[int, int] = {}  # of failed attempts: sent with the next one
        self._what = ""
        self._busy = False
        self._closing = False
        self._thread: threading.Thread | None = None
        self._problems: ClientProblems | None = None  # the thread's consumer's: read, never served, from here
        self._outcome: dict[str, KafkaError | None] = {}  # the asynchronous commit's result (on_commit)
        self._changed = threading.Condition()

    def commit(self, next_offsets: Mapping[int, int], what: str) -> None:
        """Hand over ``next_offsets`` (partition -> next offset to read); returns at once."""
        if not next_offsets:
            return
        with self._changed:
            _merge(self._pending, next_offsets)
            self._what = what
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=f"group-{self.group_id}", daemon=True)
                self._thread.start()
            self._changed.notify_all()

    def close(self) -> bool:
        """Wait at most ``timeout_s`` for the offsets handed over (and those of failed attempts) to be sent;
        True when the group holds every one of them."""
        deadline = time.monotonic() + self.timeout_s
        with self._changed:
            if self._thread is None:
                return True
            self._closing = True  # unsent offsets of failed attempts get one last attempt (see _work)
            self._changed.notify_all()
            while (self._pending or self._busy) and time.monotonic() < deadline:
                self._changed.wait(max(0.0, deadline - time.monotonic()))
            if self._busy:
                self.log.warning(
                    f"{self._what}: the monitoring commit to the consumer group {self.group_id} got no answer "
                    f"within {self.timeout_s:.0f} s (last Kafka error: {self._cause or 'none'}); the run goes on "
                    "without it: lag monitors lag behind until the next commit. The table is correct: its ledger "
                    "is the read position."
                )
            return not (self._pending or self._busy or self._unsent)

    @property
    def _cause(self) -> str | None:
        """What the thread's polls delivered so far (calling into its consumer would wait for its call)."""
        return self._problems.cause() if self._problems is not None else None

    def _committed(self, error: KafkaError | None, _partitions) -> None:
        self._outcome["error"] = error

    def _work(self) -> None:
        # Never assigned: it only commits (its polls return no records).
        consumer = self.kafka.consumer(self.group_id, {"on_commit": self._committed})
        self._problems = consumer.problems
        try:
            while True:
                with self._changed:
                    while not self._pending and not (self._closing and self._unsent):
                        if self._closing:
                            return
                        self._changed.wait()
                    offsets = _merge(dict(self._unsent), self._pending)
                    self._pending, self._unsent, self._busy = {}, {}, True
                    what, last = self._what, self._closing
                sent = self._send(consumer, offsets, what)
                with self._changed:
                    self._busy = False
                    if not sent:
                        self._unsent = _merge(offsets, self._unsent)
                    self._changed.notify_all()
                    if last and not sent:
                        return  # the last attempt failed: close() reports it
        finally:
            consumer.close()  # nothing pending any more: returns at once

    def _send(self, consumer: IngestConsumer, next_offsets: Mapping[int, int], what: str) -> bool:
        offsets = [TopicPartition(self.topic, p, o) for p, o in sorted(next_offsets.items())]
        try:
            with_deadline(f"committing offsets to the consumer group {self.group_id}",
                          lambda left: self._commit_within(consumer, offsets, left), self.timeout_s,
                          consumer)  # fmt: skip
            return True
        except KafkaReadError as error:
            self.failures += 1
            self.log.warning(
                f"{what}: the Delta commit succeeded but the monitoring commit to the consumer group failed "
                f"({error}); lag monitors will lag behind until the next commit. The table is correct: its "
                "ledger is the read position."
            )
            return False


    def _commit_within(self, consumer: IngestConsumer, offsets: list[TopicPartition], timeout_s: float) -> None:
        """One asynchronous commit, polled for its outcome for at most ``timeout_s``; its error raised as
        ``KafkaException`` (``with_deadline`` retries the retriable ones), no answer as ``_TIMED_OUT``."""
        self._outcome.clear()
        consumer.commit(offsets=offsets, asynchronous=True)
        deadline = time.monotonic() + timeout_s
        while "error" not in self._outcome and time.monotonic() < deadline:
            consumer.poll(min(0.2, max(0.0, deadline - time.monotonic())))  # serves on_commit and the errors
        if "error" not in self._outcome:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "no answer from the group coordinator"))
        error = self._outcome["error"]
        if error is not None:
            raise KafkaException(error)


def _merge(into: dict[int, int], offsets: Mapping[int, int]) -> dict[int, int]:
    """Per partition the larger offset (offsets only move forward)."""
    for partition, offset in offsets.items():
        into[partition] = max(offset, into.get(partition, offset))
    return into
