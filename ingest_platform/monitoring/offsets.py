"""What the brokers say about many topics at once: partitions, topic ids, earliest and log-end offsets.

Offsets only, never message data: one metadata request, one ``describe_topics`` (topic ids, which change
when a topic is deleted and recreated) and two ``list_offsets`` requests (earliest, latest) batched across
every topic, each with a short timeout. A topic that is missing or cannot be read is reported per topic; it
does not fail the others. docs/DESIGN.md §7.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException, TopicCollection, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from ingest_platform.kafka.client import KafkaConnection, describe_failure

#: Seconds a sensor waits for any one broker request: sensors must stay far below Dagster's 60 s tick timeout.
DEFAULT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class TopicOffsets:
    """One topic now: ``{partition: (earliest, log end)}`` and its id (None when it could not be read)."""

    topic: str
    marks: dict[int, tuple[int, int]] = field(default_factory=dict)
    topic_id: str | None = None
    error: str | None = None

    @property
    def partitions(self) -> int:
        return len(self.marks)


def admin_client(kafka: KafkaConnection, timeout_s: float = DEFAULT_TIMEOUT_S) -> AdminClient:
    return kafka.admin(timeout_s)


def read_topic_offsets(
    kafka: KafkaConnection | AdminClient,
    topics: Iterable[str],
    timeout_s: float = DEFAULT_TIMEOUT_S,
    with_ids: bool = True,
) -> dict[str, TopicOffsets]:
    """Partitions, earliest and log-end offsets (and ids) of ``topics``, batched in a few broker requests."""
    admin = kafka if isinstance(kafka, AdminClient) else admin_client(kafka, timeout_s)
    wanted = sorted(set(topics))
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException as error:
        message = f"cannot read the cluster metadata: {describe_failure(error.args[0], admin)}"
        return {t: TopicOffsets(t, error=message) for t in wanted}
    result: dict[str, TopicOffsets] = {}
    partitions: list[TopicPartition] = []
    for topic in wanted:
        info = metadata.topics.get(topic)
        if info is None or info.error is not None or not info.partitions:
            reason = info.error.str() if info is not None and info.error is not None else "it does not exist"
            result[topic] = TopicOffsets(topic, error=f"topic '{topic}' is not available: {reason}")
        else:
            partitions += [TopicPartition(topic, p) for p in sorted(info.partitions)]
    readable = sorted({tp.topic for tp in partitions})
    ids = _topic_ids(admin, readable, timeout_s) if with_ids and readable else {}
    earliest, errors = _list_offsets(admin, partitions, OffsetSpec.earliest(), timeout_s)
    latest, more_errors = _list_offsets(admin, partitions, OffsetSpec.latest(), timeout_s)
    errors.update(more_errors)
    for topic in readable:
        if topic in errors:
            result[topic] = TopicOffsets(topic, topic_id=ids.get(topic), error=errors[topic])
            continue
        marks = {
            tp.partition: (earliest[(topic, tp.partition)], latest[(topic, tp.partition)])
            for tp in partitions
            if tp.topic == topic
        }
        result[topic] = TopicOffsets(topic, marks=marks, topic_id=ids.get(topic))
    return result


def _topic_ids(admin: AdminClient, topics: list[str], timeout_s: float) -> dict[str, str]:
    ids: dict[str, str] = {}
    futures = admin.describe_topics(TopicCollection(topics), request_timeout=timeout_s)
    for topic, future in futures.items():
        try:
            ids[topic] = str(future.result(timeout=timeout_s).topic_id)
        except Exception:  # noqa: BLE001 - a topic deleted in between: no id, the offsets say the rest
            continue
    return ids


def _list_offsets(
    admin: AdminClient, partitions: list[TopicPartition], spec: OffsetSpec, timeout_s: float
) -> tuple[dict[tuple[str, int], int], dict[str, str]]:
    """The offsets of ``partitions``; retriable errors (a leader not elected yet right after a topic is created,
    a leader moving) are asked again until ``timeout_s``, then reported per topic."""
    offsets: dict[tuple[str, int], int] = {}
    errors: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    while partitions:
        left = max(0.1, deadline - time.monotonic())
        futures = admin.list_offsets({tp: spec for tp in partitions}, request_timeout=left)
        retry: list[TopicPartition] = []
        for tp, future in futures.items():
            try:
                offsets[(tp.topic, tp.partition)] = int(future.result(timeout=left).offset)
            except KafkaException as error:
                if error.args[0].retriable() and time.monotonic() + 0.2 < deadline:
                    retry.append(tp)
                    continue
                kafka_error = error.args[0]
                cause = (_no_answer(admin, timeout_s, kafka_error) if kafka_error.code() == KafkaError._TIMED_OUT
                         else describe_failure(kafka_error, admin))  # fmt: skip
                errors.setdefault(tp.topic, f"cannot read the offsets of {tp.topic}[{tp.partition}]: {cause}")
            except FutureTimeout:
                errors.setdefault(tp.topic, f"cannot read the offsets of {tp.topic}[{tp.partition}]: "
                                            f"{_no_answer(admin, timeout_s)}")  # fmt: skip
            except Exception as error:  # noqa: BLE001 - reported per topic, never raised
                errors.setdefault(tp.topic, f"cannot read the offsets of {tp.topic}[{tp.partition}]: {error!r}")
        partitions = retry
        if retry:
            time.sleep(0.2)
    return offsets, errors


def _no_answer(admin: AdminClient, timeout_s: float, error: KafkaError | None = None) -> str:
    """A listing that got no answer by its deadline: the deadline, librdkafka's reported cause, what to check."""
    cause = describe_failure(error, admin) if error is not None else None
    if cause is None and getattr(admin, "problems", None) is not None:
        admin.problems.serve(admin)
        cause = admin.problems.cause()
    return (f"no answer from the brokers within {timeout_s:.0f} s" + (f" ({cause})" if cause else "")
            + "; check that Kafka is up and reachable from here")  # fmt: skip


def records_waiting(kafka: KafkaConnection, topic: str, dataset: str, table, timeout_s: float = DEFAULT_TIMEOUT_S
                    ) -> int | str:  # fmt: skip
    """Records of ``topic`` not yet in the table by its ledger (``table``: a DeltaTable or None), or why they
    cannot be counted (the broker unreachable, the topic missing)."""
    from ingest_platform.lake.ledger import read_ledger
    from ingest_platform.monitoring.lag import dataset_lag

    offsets = read_topic_offsets(kafka, [topic], timeout_s, with_ids=False)[topic]
    if offsets.error is not None:
        return offsets.error
    return dataset_lag(read_ledger(table, dataset, offsets.marks), offsets.marks).total
