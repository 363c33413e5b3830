"""A shard group's settings and which of its coordination partitions serves which dataset (docs/DESIGN.md
§12 "Dataset -> partition").

``shard_of(name, P)`` is Kafka's default partitioner applied to the dataset's name: ``murmur2(utf-8 bytes) &
0x7fffffff mod P``, the Java client's ``Utils.murmur2``/``toPositive`` and librdkafka's ``murmur2``
partitioner. It depends on nothing but the name and P, so every worker computes the same map from its own
catalog, and a worker whose catalog gained or lost datasets (a rolling update) still maps every other dataset
to the same partition. Pure: no Kafka, no lake.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from ingest_platform.catalog import Dataset

DEFAULT_PARTITIONS = 64
DEFAULT_SESSION_TIMEOUT_S = 30.0
#: A shard group's name becomes part of a topic and a consumer group name.
GROUP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$")


@dataclass(frozen=True)
class ShardSettings:
    group: str  # the shard group (one StatefulSet): names the coordination topic and the consumer group
    partitions: int = DEFAULT_PARTITIONS  # P: fixed for the group's lifetime (more than replicas ever wanted)
    session_timeout_s: float = DEFAULT_SESSION_TIMEOUT_S  # a killed worker's datasets move after this
    replication_factor: int | None = None  # of the coordination topic when a worker creates it: min(3, brokers)

    def __post_init__(self) -> None:
        if not GROUP_NAME.match(self.group):
            raise ValueError(f"shard group {self.group!r}: use letters, digits, '-' and '_' (at most 100)")
        if self.partitions < 1:
            raise ValueError(f"shard group {self.group!r}: at least one coordination partition, not {self.partitions}")

    @property
    def topic(self) -> str:
        return f"ingest-platform.shards.{self.group}"

    @property
    def consumer_group(self) -> str:
        return f"ingest-platform.workers.{self.group}"


_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's 32-bit murmur2 (``org.apache.kafka.common.utils.Utils.murmur2``), as a signed int like Java's."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    full = length - length % 4
    for i in range(0, full, 4):
        k = data[i] | data[i + 1] << 8 | data[i + 2] << 16 | data[i + 3] << 24
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    rest = length % 4
    if rest == 3:
        h ^= data[full + 2] << 16
    if rest >= 2:
        h ^= data[full + 1] << 8
    if rest >= 1:
        h ^= data[full]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def shard_of(name: str, partitions: int) -> int:
    """The coordination partition of the dataset ``name`` among ``partitions``."""
    if partitions < 1:
        raise ValueError(f"a shard group needs at least one coordination partition, not {partitions}")
    return (murmur2(name.encode("utf-8")) & 0x7FFFFFFF) % partitions


def shard_map(datasets: Iterable[Dataset], partitions: int) -> dict[int, tuple[Dataset, ...]]:
    """``{partition: datasets}`` for the partitions that serve at least one dataset."""
    shards: dict[int, list[Dataset]] = {}
    for dataset in datasets:
        shards.setdefault(shard_of(dataset.name, partitions), []).append(dataset)
    return {p: tuple(sorted(found, key=lambda d: d.name)) for p, found in sorted(shards.items())}
