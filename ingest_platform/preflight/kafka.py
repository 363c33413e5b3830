"""The guide's checklist, Kafka section: partitions, replication, compression, producer batching, consumer fetch.

docs/DESIGN.md §6 states the rules; ``ingest_platform.preflight.CHECKLIST`` lists the items in the guide's order.
"""

from __future__ import annotations

from ingest_platform.capacity import plan_dataset
from ingest_platform.kafka.topics import GUIDE_TOPIC_CONFIG, TopicState
from ingest_platform.preflight.checklist import FAIL, NA, PASS, Finding, PreflightContext, _int, _requirements

#: Client settings the guide asks for: (key, comparison, value). Checked against the real client configs.
CONSUMER_REQUIREMENTS = (
    ("fetch.min.bytes", ">=", 1_048_576),
    ("fetch.wait.max.ms", "<=", 500),
    ("max.partition.fetch.bytes", ">=", 10_485_760),
    ("socket.receive.buffer.bytes", ">=", 1_048_576),
)
PRODUCER_REQUIREMENTS = (
    ("batch.size", ">=", 65_536),
    ("linger.ms", ">=", 10),
    ("queue.buffering.max.kbytes", ">=", 131_072),
    ("enable.idempotence", "==", True),
)

# ---------------------------------------------------------------------------------------------------------
# Kafka


def _broker_na() -> list[Finding]:
    return [Finding("broker", NA, "broker checks skipped (--skip-broker)")]


def check_partitions(ctx: PreflightContext) -> list[Finding]:
    if not ctx.check_broker:
        return _broker_na()
    states = ctx.topic_states()
    findings = []
    for dataset in ctx.datasets:
        plan = plan_dataset(dataset, ctx.planner)
        state = states.get(dataset.topic)
        subject = f"{dataset.name} ({dataset.topic})"
        source = "expected.peak_rps" if plan.basis == "expected" else "slo.throughput_rps"
        basis = (f"{plan.peak_rps:,.0f} records/s ({source}) "
                 f"/ {ctx.planner.partition_throughput_rps:,.0f} per partition")
        if state is None:
            findings.append(Finding(subject, FAIL, f"topic does not exist; the planner wants {plan.partitions} "
                                                   f"partitions ({basis}): run `ingest-platform topics apply`"))
        elif state.partitions < plan.partitions:
            findings.append(Finding(subject, FAIL, f"{state.partitions} partitions, the planner wants "
                                                   f"{plan.partitions} ({basis}): run `ingest-platform topics apply`"))
        else:
            findings.append(Finding(subject, PASS, f"{state.partitions} partitions >= {plan.partitions} ({basis})"))
    return findings


def _topics(ctx: PreflightContext) -> list[tuple[str, TopicState | None]]:
    states = ctx.topic_states()
    return [(name, states.get(name)) for name in dict.fromkeys(d.topic for d in ctx.datasets)]


def check_replication(ctx: PreflightContext) -> list[Finding]:
    if not ctx.check_broker:
        return _broker_na()
    rf, isr = ctx.profile.replication_factor, ctx.profile.min_insync_replicas
    findings = []
    for name, state in _topics(ctx):
        if state is None:
            findings.append(Finding(name, FAIL, "topic does not exist: run `ingest-platform topics apply`"))
            continue
        topic_isr = _int(state.config.get("min.insync.replicas"))
        problems = []
        if state.replication_factor < rf:
            problems.append(f"replication factor {state.replication_factor}, the {ctx.profile.name} profile wants "
                            f"{rf} (reassign partitions with kafka-reassign-partitions)")
        if topic_isr is None or topic_isr < isr:
            problems.append(f"min.insync.replicas {topic_isr}, the {ctx.profile.name} profile wants {isr} "
                            "(`ingest-platform topics apply`)")
        elif topic_isr > state.replication_factor:
            problems.append(f"min.insync.replicas {topic_isr} exceeds the {state.replication_factor} replicas: "
                            "acks=all produces fail")
        if state.config.get("unclean.leader.election.enable") == "true":
            problems.append("unclean.leader.election.enable is true (the guide: false; it can lose records)")
        if problems:
            findings.append(Finding(name, FAIL, "; ".join(problems)))
        else:
            local = " (local profile: single-node broker)" if ctx.profile.name == "local" else ""
            findings.append(Finding(name, PASS, f"replication factor {state.replication_factor}, "
                                                f"min.insync.replicas {topic_isr}{local}"))
    return findings


def check_compression(ctx: PreflightContext) -> list[Finding]:
    producer = str(ctx.producer_config.get("compression.type", "none"))
    findings = [Finding("producer", PASS if producer == "snappy" else FAIL,
                        f"compression.type={producer}" + ("" if producer == "snappy" else " (the guide: snappy)"))]
    if not ctx.check_broker:
        return [*findings, *_broker_na()]
    for name, state in _topics(ctx):
        if state is None:
            findings.append(Finding(name, FAIL, "topic does not exist: run `ingest-platform topics apply`"))
            continue
        value = state.config.get("compression.type")
        if value == GUIDE_TOPIC_CONFIG["compression.type"]:
            findings.append(Finding(name, PASS, "compression.type=snappy"))
        else:
            findings.append(Finding(name, FAIL, f"compression.type={value} (the guide: snappy; "
                                                "`ingest-platform topics apply` sets it)"))
    return findings



def check_producer_batching(ctx: PreflightContext) -> list[Finding]:
    return [_requirements("producer", ctx.producer_config, PRODUCER_REQUIREMENTS,
                          "ingest_platform.kafka.client.PRODUCER_TUNING")]


def check_consumer_fetch(ctx: PreflightContext) -> list[Finding]:
    return [_requirements("consumer", ctx.consumer_config, CONSUMER_REQUIREMENTS,
                          "ingest_platform.kafka.client.CONSUMER_TUNING")]

