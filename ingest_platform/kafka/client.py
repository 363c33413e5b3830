"""Kafka client settings and the few offset reads the engines need.

Settings follow the tuning guide (shared/seed/ingestion-performance-guide.md), translated to librdkafka's
names; docs/DESIGN.md §5 lists them. Credentials are passed in ``security`` and never printed: the
``KafkaConnection`` repr hides every value whose key looks secret.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

#: Consumer fetch settings from the guide ("Kafka Consumer Optimization").
CONSUMER_TUNING: dict[str, Any] = {
    "fetch.min.bytes": 1_048_576,  # 1 MB
    "fetch.wait.max.ms": 500,  # the guide's fetch.max.wait.ms
    "max.partition.fetch.bytes": 10_485_760,  # 10 MB
    "socket.receive.buffer.bytes": 1_048_576,
    "socket.send.buffer.bytes": 1_048_576,
    "socket.timeout.ms": 60_000,  # the guide's request.timeout.ms
    "session.timeout.ms": 30_000,
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


class KafkaReadError(RuntimeError):
    """Kafka could not be read (broker unreachable, topic missing, fetch error)."""


@dataclass(frozen=True)
class KafkaConnection:
    """Where the brokers are and how to authenticate (librdkafka ``security.*``/``sasl.*``/``ssl.*`` keys)."""

    bootstrap_servers: str
    security: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float = 30.0

    def __repr__(self) -> str:
        shown = {k: ("***" if any(m in k for m in _SECRET_MARKERS) else v) for k, v in self.security.items()}
        return f"KafkaConnection(bootstrap_servers={self.bootstrap_servers!r}, security={shown})"

    def base_config(self) -> dict[str, Any]:
        return {"bootstrap.servers": self.bootstrap_servers, **self.security}

    def consumer_config(self, group_id: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return {
            **self.base_config(),
            **CONSUMER_TUNING,
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


def topic_partitions(consumer: Consumer, topic: str, timeout_s: float) -> list[int]:
    """Partition ids of ``topic``; a clear error when the topic does not exist or the broker is unreachable."""
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s)
    except KafkaException as error:
        raise KafkaReadError(f"cannot read metadata of topic '{topic}': {error.args[0].str()}") from None
    info = metadata.topics.get(topic)
    if info is None or info.error is not None or not info.partitions:
        reason = info.error.str() if info is not None and info.error is not None else "it has no partitions"
        raise KafkaReadError(f"topic '{topic}' is not available: {reason} (create it, or fix 'topic' in the catalog)")
    return sorted(info.partitions)


def watermarks(consumer: Consumer, topic: str, partitions: list[int], timeout_s: float) -> dict[int, tuple[int, int]]:
    """``{partition: (earliest, high watermark)}`` read from the broker now (not cached)."""
    result = {}
    for partition in partitions:
        try:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=timeout_s, cached=False
            )
        except KafkaException as error:
            raise KafkaReadError(
                f"cannot read the offsets of {topic}[{partition}]: {error.args[0].str()}"
            ) from None
        result[partition] = (int(low), int(high))
    return result


#: How long the monitoring commit to a consumer group is retried on retriable errors.
GROUP_COMMIT_RETRY_S = 15.0


def commit_group_offsets(
    consumer: Consumer, topic: str, next_offsets: Mapping[int, int], what: str, log: logging.Logger
) -> bool:
    """Commit ``next_offsets`` (partition -> next offset to read) to the consumer's group, for monitoring only
    (docs/DESIGN.md §2 step 6): retried while the coordinator moves or loads, then logged, never raised."""
    offsets = [TopicPartition(topic, p, o) for p, o in sorted(next_offsets.items())]
    deadline = time.monotonic() + GROUP_COMMIT_RETRY_S
    while True:
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
            return True
        except KafkaException as error:
            # e.g. __consumer_offsets is created on the group's first commit: NOT_COORDINATOR for a moment.
            if error.args[0].retriable() and time.monotonic() < deadline:
                time.sleep(0.2)
                continue
            log.warning(
                f"{what}: the Delta commit succeeded but committing offsets to the consumer group failed ({error}); "
                "lag monitors will lag behind until the next run"
            )
            return False
