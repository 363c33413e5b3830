"""Lag, status, age and partition findings as pure functions (docs/DESIGN.md §7); on_data_loss: skip planning."""

from __future__ import annotations

import pytest

from ingest_platform.engines.offset_ranges import OffsetRangeError, start_offsets
from ingest_platform.monitoring.lag import (
    OK,
    STALL,
    STOP,
    WARN,
    Sample,
    Window,
    burrow_status,
    dataset_lag,
    due_reasons,
    evaluate,
    oldest_age_s,
)
from ingest_platform.monitoring.offsets import TopicOffsets
from ingest_platform.monitoring.partitions import partition_findings
from ingest_platform_tests.helpers import json_dataset


def test_lag_is_measured_from_the_ledger_new_partitions_from_their_start_gaps_and_resets_apart():
    lag = dataset_lag({0: 9, 1: 4, 3: 50}, {0: (0, 20), 1: (10, 15), 2: (0, 7), 3: (0, 30)})
    by = {p.partition: p for p in lag.partitions}
    assert lag.by_partition == {0: 10, 1: 5, 2: 7, 3: 0}
    assert lag.total == 22 and lag.end_total == 72
    assert by[1].lost == (5, 9) and lag.gaps == {1: (5, 9)}  # ledger 4, earliest 10: offsets 5..9 lost
    assert by[2].position == 0  # never seen: read from offset 0
    assert lag.reset == [3] and by[3].lag == 0  # ledger ahead of the log end


def test_a_partition_added_after_the_table_began_counts_from_0_and_a_new_table_from_the_earliest():
    added = dataset_lag({0: 9}, {0: (0, 20), 1: (100, 130)})
    assert added.gaps == {1: (0, 99)} and added.by_partition == {0: 10, 1: 30}
    fresh = dataset_lag({}, {0: (40, 50), 1: (100, 130)})
    assert fresh.gaps == {} and fresh.by_partition == {0: 10, 1: 30}


def test_age_is_interpolated_between_samples_and_extrapolated_beyond_the_window():
    samples = [Sample(0, 100, 0), Sample(30, 160, 60), Sample(60, 220, 120)]
    assert oldest_age_s(samples, position=220) == 0.0
    assert oldest_age_s(samples, position=130) == pytest.approx(60 - 15)  # end passed 130 at t=15
    assert oldest_age_s(samples, position=40) == pytest.approx(60 + 60 / 2)  # 2 records/s before the window
    assert oldest_age_s([Sample(0, 50, 10)], position=40) is None  # one sample: unknown
    assert oldest_age_s([Sample(0, 50, 10), Sample(40, 50, 10)], position=40) == 40  # idle topic: at least


def test_due_by_threshold_or_by_latency_slo():
    assert due_reasons(0, 999, 1, 30, 30) == []
    assert "lag_threshold" in due_reasons(100, None, 100, 30, 30)[0]
    assert due_reasons(99, None, 100, 30, 30) == []
    assert "latency SLO" in due_reasons(5, 1.0, None, 30, 30)[0]  # 1 s + a 30 s tick reaches 30 s
    assert due_reasons(5, 1.0, None, 60, 30) == []


def test_status_rules_in_order():
    flat = [Sample(0, 10, 5), Sample(100, 10, 5), Sample(200, 10, 5)]
    assert burrow_status([Sample(0, 10, 0)], moved_at=0, now=0, window_s=300, due=True)[0] == OK
    assert burrow_status(flat, moved_at=-200, now=200, window_s=300, due=True)[0] == STOP
    assert burrow_status(flat, moved_at=0, now=200, window_s=300, due=True)[0] == STALL
    assert burrow_status(flat, moved_at=0, now=200, window_s=300, due=False)[0] == OK  # waiting for a threshold
    growing = [Sample(0, 10, 1), Sample(30, 20, 5), Sample(60, 40, 9)]  # position 9, 15, 31: moving
    assert burrow_status(growing, moved_at=60, now=60, window_s=300, due=False)[0] == WARN


def test_status_transitions_over_ticks_and_the_window_round_trips_through_json():
    kwargs = dict(lag_threshold=5, latency_s=600, interval_s=30, last_commit_s=0.0)
    window, statuses = None, []
    for now, end, ledger_last in [(0, 10, 9), (40, 20, 9), (80, 30, 9), (200, 30, 9), (400, 30, 9), (440, 30, 29)]:
        lag = dataset_lag({0: ledger_last}, {0: (0, end)})
        result = evaluate(lag, {0: ledger_last}, window, now, **kwargs)
        statuses.append(result.status)
        window = Window.from_json(result.window.to_json(now), now)  # what the cursor keeps
        kwargs["last_commit_s"] = 430.0 if ledger_last == 29 else 0.0
    assert statuses == [OK, OK, WARN, STALL, STOP, OK]


def test_recreated_topic_is_marked_until_the_table_holds_no_offsets():
    lag = dataset_lag({0: 9}, {0: (0, 10)})
    kwargs = dict(lag_threshold=None, latency_s=30, interval_s=30)
    first = evaluate(lag, {0: 9}, None, 0, topic_id="A", **kwargs)
    second = evaluate(lag, {0: 9}, first.window, 30, topic_id="B", **kwargs)
    assert first.window.recreated is None and second.window.recreated == "A"
    third = evaluate(lag, {0: 9}, second.window, 60, topic_id="B", **kwargs)
    assert third.window.recreated == "A"
    cleared = evaluate(dataset_lag({}, {0: (0, 10)}), {}, third.window, 90, topic_id="B", **kwargs)
    assert cleared.window.recreated is None


def test_partition_findings_new_partitions_recreation_gaps_and_recommendation():
    dataset = json_dataset("t", slo="{throughput_rps: 1500}")
    before = TopicOffsets("t", {0: (0, 100)}, topic_id="A")
    findings, state = partition_findings(dataset, before, {0: 99}, None, now=0)
    assert findings.new_partitions == () and findings.recommended_partitions == 2  # ceil(1500 / 1000)
    grown = TopicOffsets("t", {0: (0, 100), 1: (0, 5), 2: (0, 0)}, topic_id="A")
    findings, state = partition_findings(dataset, grown, {0: 99}, state, now=10)
    assert findings.new_partitions == (1, 2) and findings.previous_partitions == 1
    busy = TopicOffsets("t", {0: (0, 30_100), 1: (0, 5), 2: (0, 0)}, topic_id="A")
    findings, state = partition_findings(dataset, busy, {0: 99}, state, now=20)
    assert findings.produce_rps == 3000 and findings.recommended_partitions == 3
    gap = TopicOffsets("t", {0: (500, 30_100), 1: (0, 5), 2: (0, 0)}, topic_id="A")
    findings, state = partition_findings(dataset, gap, {0: 99}, state, now=30)
    assert findings.gaps == {0: (100, 499)} and "t[0] offsets 100..499 (400 records)" in findings.describe_gaps("t")
    added_late = TopicOffsets("t", {0: (0, 30_100), 1: (0, 5), 2: (0, 0), 3: (100, 120)}, topic_id="A")
    findings, _ = partition_findings(dataset, added_late, {0: 99}, state, now=35)
    assert findings.gaps == {3: (0, 99)}  # added after the table began, retention took 0..99 before any run
    findings, _ = partition_findings(dataset, added_late, {}, state, now=35)
    assert findings.gaps == {}  # no ledger yet: a new table starts where the topic starts
    recreated = TopicOffsets("t", {0: (0, 40_000), 1: (0, 5), 2: (0, 0)}, topic_id="B")
    findings, state = partition_findings(dataset, recreated, {0: 99}, state, now=40)
    assert "topic id changed from A to B" in findings.recreated
    findings, _ = partition_findings(dataset, recreated, {0: 99}, state, now=50)
    assert findings.recreated  # reported on every tick, not once
    ahead = TopicOffsets("t", {0: (0, 3)}, topic_id="A")
    findings, _ = partition_findings(dataset, ahead, {0: 99}, None, now=0)
    assert "table holds up to offset 99, topic ends at 3" in findings.recreated


def test_on_data_loss_skip_starts_at_the_earliest_offset_and_returns_the_gap():
    lost: dict[int, tuple[int, int]] = {}
    starts = start_offsets("d", "t", {0: 9, 1: 3}, {0: (15, 30), 1: (0, 10)}, "skip", lost)
    assert starts == {0: 15, 1: 4} and lost == {0: (10, 14)}
    with pytest.raises(OffsetRangeError, match="offsets 10..14"):
        start_offsets("d", "t", {0: 9}, {0: (15, 30)}, "fail", {})
    with pytest.raises(OffsetRangeError, match="behind the table's offset ledger"):
        start_offsets("d", "t", {0: 99}, {0: (0, 3)}, "skip", {})  # a recreated topic fails whatever the policy


def test_offsets_nobody_answers_for_are_reported_with_the_deadline_the_cause_and_what_to_check():
    """An offsets listing that times out names the partition, the deadline, librdkafka's cause and what to check
    (it used to say only ``TimeoutError()``); it ends by its deadline."""
    import socket
    import time

    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import OffsetSpec

    from ingest_platform.kafka.client import KafkaConnection
    from ingest_platform.monitoring.offsets import _list_offsets

    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    admin = KafkaConnection(bootstrap_servers=f"127.0.0.1:{port}").admin(2.0)
    started = time.monotonic()
    offsets, errors = _list_offsets(admin, [TopicPartition("orders", 0)], OffsetSpec.latest(), 2.0)
    assert time.monotonic() - started < 10
    assert offsets == {}
    message = errors["orders"]
    assert message.startswith("cannot read the offsets of orders[0]: no answer from the brokers within 2 s")
    assert "Connection refused" in message and "check that Kafka is up and reachable" in message
    assert "TimeoutError" not in message
