"""The catalog's topics with the tuning guide's settings: desired spec, diff against the broker, apply.

``desired_topics`` turns catalog datasets + the capacity planner into one ``TopicSpec`` per topic;
``describe_topics`` reads partitions, replication factor and configs from the broker (AdminClient);
``diff_topic`` (pure) compares them; ``apply_diffs`` creates topics (``create_topics``), adds partitions
(``create_partitions``) and sets configs (``incremental_alter_configs``). Applying twice changes nothing.

Rules (docs/DESIGN.md §6):

* partitions come from the planner and are never decreased: Kafka cannot remove partitions, and deleting and
  recreating the topic would drop its records and invalidate the offsets the tables' ledgers hold;
* replication factor and ``min.insync.replicas`` come from the profile (production 3/2, local 1/1). An
  existing topic's replication factor is not changed here (that is a partition reassignment, an operator's
  job): it is reported as blocked, and ``min.insync.replicas`` is then not raised above the replicas the
  topic has (that would make every ``acks=all`` produce fail);
* every topic gets ``compression.type=snappy``, ``segment.bytes`` 1 GB, ``retention.ms`` 7 days.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
    ResourceType,
)

from ingest_platform.capacity import DEFAULT_SETTINGS, PlannerSettings, plan_dataset
from ingest_platform.catalog import Dataset
from ingest_platform.kafka.client import KafkaConnection, describe_failure

#: Topic-level settings from the guide (broker "Log settings" and "Compression", the kafka-topics example).
GUIDE_TOPIC_CONFIG: dict[str, str] = {
    "compression.type": "snappy",
    "segment.bytes": "1073741824",  # 1 GB segments
    "retention.ms": "604800000",  # 7 days (log.retention.hours=168)
}


class TopicAdminError(RuntimeError):
    """The broker could not be read or changed; the message names the topic and what to do."""


@dataclass(frozen=True)
class TopicProfile:
    """Durability settings per deployment: production is the guide's RF 3 / min.insync 2."""

    name: str
    replication_factor: int
    min_insync_replicas: int


PROFILES: dict[str, TopicProfile] = {
    "production": TopicProfile("production", 3, 2),
    "local": TopicProfile("local", 1, 1),  # a single-node development broker cannot hold more replicas
}


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    config: Mapping[str, str]
    datasets: tuple[str, ...]


@dataclass(frozen=True)
class TopicState:
    name: str
    partitions: int
    replication_factor: int
    config: Mapping[str, str]


@dataclass(frozen=True)
class Change:
    """One difference. ``kind``: create | partitions | config (apply makes them), keep (intentionally left:
    a partition decrease), blocked (needs an operator; ``apply`` exits non-zero)."""

    kind: str
    field: str
    current: Any
    desired: Any
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "field": self.field, "current": self.current, "desired": self.desired,
                "message": self.message}


ACTIONS = ("create", "partitions", "config")


@dataclass
class TopicDiff:
    spec: TopicSpec
    state: TopicState | None
    changes: list[Change] = field(default_factory=list)

    @property
    def actions(self) -> list[Change]:
        return [c for c in self.changes if c.kind in ACTIONS]

    @property
    def blocked(self) -> list[Change]:
        return [c for c in self.changes if c.kind == "blocked"]

    @property
    def up_to_date(self) -> bool:
        return not self.actions and not self.blocked

    def as_dict(self) -> dict[str, Any]:
        return {
            "topic": self.spec.name,
            "datasets": list(self.spec.datasets),
            "exists": self.state is not None,
            "desired": {"partitions": self.spec.partitions, "replication_factor": self.spec.replication_factor,
                        "config": dict(self.spec.config)},
            "current": None if self.state is None else {
                "partitions": self.state.partitions, "replication_factor": self.state.replication_factor,
                "config": {k: self.state.config.get(k) for k in self.spec.config},
            },
            "up_to_date": self.up_to_date,
            "changes": [c.as_dict() for c in self.changes],
        }


# ---------------------------------------------------------------------------------------------------------
# Desired state


def topic_config(profile: TopicProfile) -> dict[str, str]:
    return {**GUIDE_TOPIC_CONFIG, "min.insync.replicas": str(profile.min_insync_replicas)}


def desired_topics(
    datasets: Iterable[Dataset], profile: TopicProfile, settings: PlannerSettings = DEFAULT_SETTINGS
) -> list[TopicSpec]:
    """One spec per topic (datasets sharing a topic get the largest partition count any of them needs)."""
    by_topic: dict[str, list[tuple[str, int]]] = {}
    for dataset in datasets:
        by_topic.setdefault(dataset.topic, []).append((dataset.name, plan_dataset(dataset, settings).partitions))
    return [
        TopicSpec(
            name=topic,
            partitions=max(p for _, p in entries),
            replication_factor=profile.replication_factor,
            config=topic_config(profile),
            datasets=tuple(name for name, _ in entries),
        )
        for topic, entries in by_topic.items()
    ]


# ---------------------------------------------------------------------------------------------------------
# Diff (pure)


def diff_topic(spec: TopicSpec, state: TopicState | None, brokers: int | None = None) -> TopicDiff:
    diff = TopicDiff(spec, state)
    if state is None:
        if brokers is not None and spec.replication_factor > brokers:
            diff.changes.append(Change(
                "blocked", "replication_factor", None, spec.replication_factor,
                f"cannot create: replication factor {spec.replication_factor} needs {spec.replication_factor} "
                f"brokers, the cluster has {brokers} (use --profile local for a single-node development broker)",
            ))
            return diff
        diff.changes.append(Change(
            "create", "topic", None, spec.partitions,
            f"create with {spec.partitions} partitions, replication factor {spec.replication_factor}",
        ))
        diff.changes.extend(
            Change("config", key, None, value, f"{key}={value}") for key, value in spec.config.items()
        )
        return diff

    if spec.partitions > state.partitions:
        diff.changes.append(Change(
            "partitions", "partitions", state.partitions, spec.partitions,
            f"partitions {state.partitions} -> {spec.partitions} (new records of a key may land on another "
            f"partition than its older ones)",
        ))
    elif spec.partitions < state.partitions:
        diff.changes.append(Change(
            "keep", "partitions", state.partitions, spec.partitions,
            f"partitions stay {state.partitions} (the planner needs {spec.partitions}): Kafka cannot decrease "
            f"partitions; recreating the topic would drop its records and the offsets the tables' ledgers hold",
        ))

    rf_short = state.replication_factor < spec.replication_factor
    if state.replication_factor != spec.replication_factor:
        diff.changes.append(Change(
            "blocked", "replication_factor", state.replication_factor, spec.replication_factor,
            f"replication factor is {state.replication_factor}, the profile wants {spec.replication_factor}: "
            f"changing it is a partition reassignment (kafka-reassign-partitions), not done by apply",
        ))

    for key, value in spec.config.items():
        current = state.config.get(key)
        if current == value:
            continue
        if key == "min.insync.replicas" and rf_short and int(value) > state.replication_factor:
            diff.changes.append(Change(
                "blocked", key, current, value,
                f"{key} {current} -> {value} waits for the replication factor ({state.replication_factor} "
                f"replicas cannot satisfy it: every acks=all produce would fail)",
            ))
            continue
        diff.changes.append(Change("config", key, current, value, f"{key}: {current} -> {value}"))
    return diff


# ---------------------------------------------------------------------------------------------------------
# Broker reads and writes


def admin_client(connection: KafkaConnection) -> AdminClient:
    return connection.admin()


def broker_count(admin: AdminClient, timeout_s: float) -> int:
    try:
        return len(admin.list_topics(timeout=timeout_s).brokers)
    except KafkaException as error:
        cause = _kafka_error(error, admin)
        raise TopicAdminError(f"cannot read cluster metadata: {cause} (is the broker up?)") from None


def describe_topics(admin: AdminClient, names: Iterable[str], timeout_s: float = 15) -> dict[str, TopicState | None]:
    """Partitions, replication factor (the fewest replicas any partition has) and every topic config as the
    broker reports it (defaults included); None for a topic that does not exist."""
    names = list(dict.fromkeys(names))
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException as error:
        cause = _kafka_error(error, admin)
        raise TopicAdminError(f"cannot read topic metadata: {cause} (is the broker up?)") from None
    present = {}
    for name in names:
        info = metadata.topics.get(name)
        if info is None or (info.error is not None and info.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART):
            continue
        if info.error is not None:
            raise TopicAdminError(f"topic '{name}': cannot read its metadata: {info.error.str()}")
        present[name] = info
    states: dict[str, TopicState | None] = {name: None for name in names}
    if not present:
        return states
    resources = [ConfigResource(ResourceType.TOPIC, name) for name in present]
    futures = admin.describe_configs(resources, request_timeout=timeout_s)
    for resource, future in futures.items():
        try:
            entries = future.result(timeout=timeout_s)
        except KafkaException as error:
            raise TopicAdminError(f"topic '{resource.name}': cannot read its configs: {_kafka_error(error)}") from None
        info = present[resource.name]
        states[resource.name] = TopicState(
            name=resource.name,
            partitions=len(info.partitions),
            replication_factor=min(len(p.replicas) for p in info.partitions.values()),
            config={key: entry.value for key, entry in entries.items()},
        )
    return states


def plan_topics(connection: KafkaConnection, specs: list[TopicSpec]) -> list[TopicDiff]:
    admin = admin_client(connection)
    brokers = broker_count(admin, connection.timeout_s)
    states = describe_topics(admin, [s.name for s in specs], connection.timeout_s)
    return [diff_topic(spec, states[spec.name], brokers) for spec in specs]


def apply_diffs(connection: KafkaConnection, diffs: list[TopicDiff]) -> list[Change]:
    """Make every action of ``diffs`` (blocked and kept changes are left); returns the changes made."""
    admin = admin_client(connection)
    timeout = connection.timeout_s
    done: list[Change] = []
    for diff in diffs:
        spec = diff.spec
        if any(c.kind == "create" for c in diff.changes):
            new = NewTopic(spec.name, num_partitions=spec.partitions, replication_factor=spec.replication_factor,
                           config=dict(spec.config))
            _wait(admin.create_topics([new], operation_timeout=timeout, request_timeout=timeout)[spec.name],
                  timeout, f"topic '{spec.name}': cannot create it")
            _wait_for_leaders(admin, spec.name, timeout)
            done.extend(c for c in diff.changes if c.kind in ("create", "config"))
            continue
        for change in diff.changes:
            if change.kind == "partitions":
                future = admin.create_partitions([NewPartitions(spec.name, int(change.desired))],
                                                 operation_timeout=timeout, request_timeout=timeout)[spec.name]
                _wait(future, timeout, f"topic '{spec.name}': cannot add partitions")
                done.append(change)
        configs = [c for c in diff.changes if c.kind == "config"]
        if configs:
            resource = ConfigResource(ResourceType.TOPIC, spec.name, incremental_configs=[
                ConfigEntry(c.field, str(c.desired), incremental_operation=AlterConfigOpType.SET) for c in configs
            ])
            future = admin.incremental_alter_configs([resource], request_timeout=timeout)[resource]
            _wait(future, timeout, f"topic '{spec.name}': cannot set {', '.join(c.field for c in configs)}")
            done.extend(configs)
    return done


def _wait(future: Any, timeout: float, what: str) -> None:
    try:
        future.result(timeout=timeout)
    except KafkaException as error:
        raise TopicAdminError(f"{what}: {_kafka_error(error)}") from None
    except Exception as error:  # concurrent.futures.TimeoutError
        raise TopicAdminError(f"{what}: {error!r}") from None


def _wait_for_leaders(admin: AdminClient, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            topic = admin.list_topics(topic=name, timeout=5).topics.get(name)
            if topic is not None and topic.error is None and topic.partitions and all(
                p.leader >= 0 for p in topic.partitions.values()
            ):
                return
        except KafkaException:
            pass
        time.sleep(0.1)
    raise TopicAdminError(f"topic '{name}' was created but has no leader for every partition after {timeout} s")


def _kafka_error(error: KafkaException, admin: AdminClient | None = None) -> str:
    arg = error.args[0] if error.args else error
    return describe_failure(arg, admin) if isinstance(arg, KafkaError) else str(arg)


# ---------------------------------------------------------------------------------------------------------
# Output


def format_diffs(diffs: list[TopicDiff]) -> str:
    """``+`` create/set, ``~`` change, ``=`` kept on purpose, ``!`` blocked (an operator must act)."""
    marks = {"create": "+", "partitions": "~", "keep": "=", "blocked": "!"}
    lines = []
    for diff in diffs:
        datasets = ", ".join(diff.spec.datasets)
        status = "up to date" if diff.up_to_date else ("new" if diff.state is None else "changes")
        lines.append(f"topic {diff.spec.name} (datasets: {datasets}): {status}")
        for change in diff.changes:
            mark = marks.get(change.kind) or ("+" if change.current is None else "~")
            lines.append(f"  {mark} {change.message}")
    actions = sum(len(d.actions) for d in diffs)
    blocked = sum(len(d.blocked) for d in diffs)
    lines.append(f"{len(diffs)} topic(s): {actions} change(s) to apply, {blocked} blocked")
    return "\n".join(lines)


__all__ = [
    "GUIDE_TOPIC_CONFIG",
    "PROFILES",
    "Change",
    "TopicAdminError",
    "TopicDiff",
    "TopicProfile",
    "TopicSpec",
    "TopicState",
    "apply_diffs",
    "describe_topics",
    "desired_topics",
    "diff_topic",
    "format_diffs",
    "plan_topics",
]
