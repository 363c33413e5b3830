"""Shared fixtures: one real local Kafka broker per test session, unique topics per test."""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Callable, Iterator

import pytest

from ingest_platform.kafka.client import KafkaConnection

_topic_numbers = itertools.count()


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[object]:
    """The session's broker: started once (a few seconds), stopped at the end, killed with the session."""
    from ingest_platform.kafka.local_broker import LocalKafka

    with LocalKafka(heap="768m") as broker:
        yield broker


@pytest.fixture
def kafka(kafka_broker) -> KafkaConnection:
    return KafkaConnection(kafka_broker.bootstrap, timeout_s=15)


@pytest.fixture
def make_topic(kafka_broker) -> Callable[..., str]:
    """Create a fresh topic with a unique name; returns the name."""
    from ingest_platform.kafka.local_broker import create_topic

    def make(partitions: int = 1, config: dict[str, str] | None = None, prefix: str = "t") -> str:
        name = f"{prefix}.{next(_topic_numbers)}.{uuid.uuid4().hex[:8]}"
        create_topic(kafka_broker.bootstrap, name, partitions, config)
        return name

    return make


@pytest.fixture
def clean_ingest_env(monkeypatch) -> None:
    """Tests that build definitions must not see the developer's INGEST_* settings."""
    for name in list(os.environ):
        if name.startswith("INGEST_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def spark():
    """The one Spark session of the test run (the engine's local profile: Delta + Kafka connectors)."""
    pytest.importorskip("pyspark")
    pytest.importorskip("delta")
    from ingest_platform.engines.spark_profiles import load_profile
    from ingest_platform.engines.spark_session import spark_for_profile

    session = spark_for_profile(load_profile("local"))
    yield session
    session.stop()
