"""`ingest-platform topics plan|apply`: the guide's topic settings, idempotent, partitions never decreased."""

from __future__ import annotations

import json
import uuid

import pytest
from click.testing import CliRunner

from ingest_platform.cli.main import main
from ingest_platform.kafka.topics import (
    GUIDE_TOPIC_CONFIG,
    PROFILES,
    TopicSpec,
    TopicState,
    admin_client,
    describe_topics,
    diff_topic,
)


def write_catalog(path, topic, peak_rps, name="events"):
    path.write_text(
        "datasets:\n"
        f"  - {{name: {name}, source: app, topic: {topic}, format: json,\n"
        f"     expected: {{peak_rps: {peak_rps}, record_bytes: 200}}}}\n"
    )
    return path


def topics_cli(command, catalog, broker, *extra):
    return CliRunner().invoke(main, ["topics", command, "--catalog", str(catalog), "--bootstrap", broker.bootstrap,
                                     "--profile", "local", *extra])


def spec(partitions=4, rf=3, isr="2"):
    config = {**GUIDE_TOPIC_CONFIG, "min.insync.replicas": isr}
    return TopicSpec("t", partitions, rf, config, ("d",))


def test_diff_blocks_replication_changes_and_does_not_raise_min_insync_beyond_the_replicas():
    state = TopicState("t", 4, 1, {**GUIDE_TOPIC_CONFIG, "min.insync.replicas": "1"})
    diff = diff_topic(spec(), state, brokers=3)
    assert [c.kind for c in diff.changes] == ["blocked", "blocked"]
    assert "kafka-reassign-partitions" in diff.changes[0].message
    assert "acks=all" in diff.changes[1].message and not diff.actions


def test_diff_refuses_to_create_more_replicas_than_brokers():
    diff = diff_topic(spec(), None, brokers=1)
    assert [c.kind for c in diff.changes] == ["blocked"]
    assert "use --profile local" in diff.changes[0].message


@pytest.mark.kafka
def test_apply_creates_is_idempotent_grows_and_never_shrinks(tmp_path, kafka_broker, kafka):
    topic = f"plan.{uuid.uuid4().hex[:8]}"
    catalog = write_catalog(tmp_path / "c.yaml", topic, 3_000)

    planned = topics_cli("plan", catalog, kafka_broker)
    assert planned.exit_code == 0, planned.output
    assert f"topic {topic} (datasets: events): new" in planned.output
    assert "+ create with 3 partitions, replication factor 1" in planned.output
    assert describe_topics(admin_client(kafka), [topic])[topic] is None  # plan changes nothing

    applied = topics_cli("apply", catalog, kafka_broker)
    assert applied.exit_code == 0, applied.output
    state = describe_topics(admin_client(kafka), [topic])[topic]
    assert (state.partitions, state.replication_factor) == (3, 1)
    assert {k: state.config[k] for k in (*GUIDE_TOPIC_CONFIG, "min.insync.replicas")} == {
        "compression.type": "snappy", "segment.bytes": "1073741824", "retention.ms": "604800000",
        "min.insync.replicas": "1",
    }

    again = topics_cli("apply", catalog, kafka_broker)
    assert again.exit_code == 0 and "up to date" in again.output and "applied 0 change(s)" in again.output

    write_catalog(catalog, topic, 5_000)  # the planner now wants 5 partitions
    grown = topics_cli("apply", catalog, kafka_broker)
    assert grown.exit_code == 0 and "~ partitions 3 -> 5" in grown.output
    assert describe_topics(admin_client(kafka), [topic])[topic].partitions == 5

    write_catalog(catalog, topic, 1_000)  # ... and then only 1: kept at 5, and the plan says why
    shrink = topics_cli("plan", catalog, kafka_broker, "--json")
    (diff,) = json.loads(shrink.output)
    assert diff["up_to_date"] and diff["changes"][0]["kind"] == "keep"
    kept = topics_cli("apply", catalog, kafka_broker)
    assert kept.exit_code == 0, kept.output
    assert "= partitions stay 5 (the planner needs 1): Kafka cannot decrease partitions" in kept.output
    assert describe_topics(admin_client(kafka), [topic])[topic].partitions == 5


@pytest.mark.kafka
def test_plan_prints_the_config_diff_of_an_existing_topic(tmp_path, kafka_broker, make_topic):
    topic = make_topic(partitions=2, config={"compression.type": "gzip", "retention.ms": "86400000"})
    catalog = write_catalog(tmp_path / "c.yaml", topic, 2_000)
    planned = topics_cli("plan", catalog, kafka_broker)
    assert planned.exit_code == 0, planned.output
    assert "~ compression.type: gzip -> snappy" in planned.output
    assert "~ retention.ms: 86400000 -> 604800000" in planned.output
    assert "~ segment.bytes" not in planned.output  # 1 GB is also the broker's default
    assert "partitions" not in planned.output.split("\n", 1)[1]  # 2 already
    applied = topics_cli("apply", catalog, kafka_broker)
    assert applied.exit_code == 0 and "up to date" in topics_cli("plan", catalog, kafka_broker).output


@pytest.mark.kafka
def test_production_profile_on_a_single_broker_is_blocked_with_advice(tmp_path, kafka_broker, make_topic):
    missing = write_catalog(tmp_path / "a.yaml", f"prod.{uuid.uuid4().hex[:8]}", 1_000)
    result = CliRunner().invoke(main, ["topics", "apply", "--catalog", str(missing), "--bootstrap",
                                       kafka_broker.bootstrap])  # --profile production is the default
    assert result.exit_code == 1
    assert "replication factor 3 needs 3 brokers, the cluster has 1" in result.output
    assert "use --profile local" in result.output

    existing = write_catalog(tmp_path / "b.yaml", make_topic(partitions=1), 1_000)
    result = CliRunner().invoke(main, ["topics", "apply", "--catalog", str(existing), "--bootstrap",
                                       kafka_broker.bootstrap, "--profile", "production"])
    assert result.exit_code == 1
    assert "replication factor is 1, the profile wants 3" in result.output
    assert PROFILES["production"].min_insync_replicas == 2


def test_unreachable_broker_is_a_clear_error(tmp_path):
    catalog = write_catalog(tmp_path / "c.yaml", "x.y", 1_000)
    result = CliRunner().invoke(main, ["topics", "plan", "--catalog", str(catalog), "--bootstrap", "127.0.0.1:1",
                                       "--timeout", "1"])
    assert result.exit_code == 1 and "is the broker up?" in result.output
