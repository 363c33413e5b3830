"""The stream process against the real broker: micro-batches on the offset protocol (docs/DESIGN.md §10)."""

from __future__ import annotations

import time

import pytest

from ingest_platform.dev.demo_data import produce, records
from ingest_platform.lake.commit import run_metadata_of
from ingest_platform_tests.helpers import json_dataset
from ingest_platform_tests.stream_helpers import StreamThread, assert_exactly_once, table_rows, wait_for

pytestmark = [pytest.mark.kafka]


def test_streams_micro_batches_exactly_once_and_idle_topics_make_no_commits(kafka, lake, make_topic):
    topic = make_topic(partitions=3)
    dataset = json_dataset(topic)
    produce(kafka, topic, records("orders", 500, seed=1))
    with StreamThread([dataset], kafka, lake) as stream:
        wait_for(lambda: table_rows(lake, dataset) == 500, what="the backlog")
        produce(kafka, topic, records("orders", 300, seed=2, start=500))
        wait_for(lambda: table_rows(lake, dataset) == 800, what="new records")
        version = lake.open_table(dataset.table_path).version()
        time.sleep(1.5)  # five trigger intervals without records
        assert lake.open_table(dataset.table_path).version() == version  # idle: no empty commits
    outcome = stream.stop()
    assert outcome.clean and outcome.exit_code == 0
    assert_exactly_once(lake, dataset, 800)
    events = stream.events
    assert sum(e.records for e in events) == 800
    assert [e.version for e in events] == sorted(e.version for e in events)
    history = lake.open_table(dataset.table_path).history()
    runs = [run_metadata_of(h) for h in history if run_metadata_of(h)]
    assert {r["stream"] for r in runs} == {stream.process.session}
    assert all(e.latency_p99_s is not None and e.latency_p99_s >= 0 for e in events)


def test_a_batch_closes_early_by_what_commits_take_so_its_first_record_lands_within_the_trigger(kafka, lake,
                                                                                               make_topic):
    topic = make_topic(partitions=1)
    dataset = json_dataset(topic)
    produce(kafka, topic, records("orders", 200, seed=4))
    with StreamThread([dataset], kafka, lake) as stream:
        wait_for(lambda: table_rows(lake, dataset) == 200, what="the records")
        loop = stream.process._loops[dataset.name]
        wait_for(lambda: loop.commits >= 1, what="the loop to collect its commit")
        assert loop.commit_estimate_s > 0
        expected = max(loop.trigger_s / 2, loop.trigger_s - loop.commit_estimate_s)
        assert loop.open_for_s() == pytest.approx(expected)
        assert loop.trigger_s / 2 <= loop.open_for_s() < loop.trigger_s


def test_new_partitions_are_picked_up_without_a_restart(kafka, kafka_broker, lake, make_topic):
    from confluent_kafka.admin import AdminClient, NewPartitions

    topic = make_topic(partitions=1)
    dataset = json_dataset(topic)
    produce(kafka, topic, records("orders", 100, seed=3))
    with StreamThread([dataset], kafka, lake) as stream:
        wait_for(lambda: table_rows(lake, dataset) == 100, what="the first records")
        admin = AdminClient({"bootstrap.servers": kafka_broker.bootstrap})
        admin.create_partitions([NewPartitions(topic, 3)])[topic].result(timeout=30)
        wait_for(lambda: len(admin.list_topics(topic, timeout=5).topics[topic].partitions) == 3, what="3 partitions")
        for partition in (1, 2):
            fresh = records("orders", 50, seed=4 + partition, start=partition * 1000)
            produce(kafka, topic, fresh, partition=partition)
        wait_for(lambda: table_rows(lake, dataset) == 200, what="records on the new partitions")
    assert stream.stop().clean
    assert_exactly_once(lake, dataset, 200)
    table = lake.open_table(dataset.table_path)
    assert {p: table.transaction_version(f"{dataset.name}-{p}") for p in (1, 2)} == {1: 49, 2: 49}


def test_a_batch_run_racing_the_stream_commits_nothing_twice(kafka, lake, make_topic):
    """Runs of the embedded engine while the stream serves the same table: whichever commits second fails its
    ledger check (or delta-rs' conflict check); the stream re-reads its positions and goes on."""
    from ingest_platform.engines.embedded.engine import EmbeddedEngine
    from ingest_platform.lake.commit import ConcurrentWriterError, LakeWriteError

    topic = make_topic(partitions=2)
    dataset = json_dataset(topic)
    produce(kafka, topic, records("orders", 200, seed=7))
    EmbeddedEngine(kafka, lake).run(dataset)  # the table exists (creation races are issue 14's)
    produced, runs, refused = 200, 0, 0
    with StreamThread([dataset], kafka, lake) as stream:
        for round_ in range(8):
            produce(kafka, topic, records("orders", 150, seed=8 + round_, start=produced))
            produced += 150
            try:
                EmbeddedEngine(kafka, lake).run(dataset)
                runs += 1
            except (ConcurrentWriterError, LakeWriteError):
                refused += 1
        wait_for(lambda: table_rows(lake, dataset) == produced, what="every record once")
        assert stream.process.states()[dataset.name].status == "running"
        conflicts = stream.process.metrics.errors.labels("test", dataset.name, topic, "lake")._value.get()
    assert stream.stop().clean
    assert_exactly_once(lake, dataset, produced)
    assert runs + refused == 8
    print(f"runs committed {runs}, runs refused {refused}, stream conflicts {conflicts}")
    assert refused + conflicts > 0  # the two writers did race
    by_version = {h["version"]: run_metadata_of(h) for h in lake.open_table(dataset.table_path).history()}
    assert all(by_version[e.version]["stream"] == stream.process.session for e in stream.events)  # the right version


def test_a_dataset_with_bad_data_stops_while_the_others_go_on(kafka, lake, make_topic):
    good_topic, bad_topic = make_topic(partitions=1), make_topic(partitions=1)
    good, bad = json_dataset(good_topic, name="good"), json_dataset(bad_topic, name="bad")
    produce(kafka, bad_topic, iter([(b"k", b"{not json")]))
    with StreamThread([good, bad], kafka, lake) as stream:
        wait_for(lambda: stream.process.states()["bad"].status == "failed", what="the bad dataset to stop")
        produce(kafka, good_topic, records("orders", 100, seed=9))
        wait_for(lambda: table_rows(lake, good) == 100, what="the good dataset")
        error = stream.process.states()["bad"].error
        assert "dataset 'bad'" in error and f"{bad_topic}[0] offset 0" in error and "max_dlq_ratio" in error
        assert stream.process.metrics.up.labels("test", "bad", bad_topic)._value.get() == 0
        assert stream.process.metrics.up.labels("test", "good", good_topic)._value.get() == 1
    outcome = stream.stop()
    assert outcome.exit_code == 1 and set(outcome.failed) == {"bad"}
    assert lake.open_table(bad.table_path) is None


@pytest.mark.parametrize("on_data_loss", ["fail", "skip"])
def test_retention_gaps_follow_on_data_loss(kafka, kafka_broker, lake, make_topic, on_data_loss):
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient

    topic = make_topic(partitions=1)
    dataset = json_dataset(topic, on_data_loss=on_data_loss)
    produce(kafka, topic, records("orders", 50, seed=10))
    with StreamThread([dataset], kafka, lake) as stream:
        wait_for(lambda: table_rows(lake, dataset) == 50, what="the first records")
    stream.stop()
    produce(kafka, topic, records("orders", 50, seed=11, start=50))
    admin = AdminClient({"bootstrap.servers": kafka_broker.bootstrap})
    admin.delete_records([TopicPartition(topic, 0, 70)])[TopicPartition(topic, 0, 70)].result(timeout=30)
    with StreamThread([dataset], kafka, lake) as stream:
        if on_data_loss == "fail":
            wait_for(lambda: stream.process.states()[dataset.name].status == "failed", what="the dataset to stop")
            assert "offsets 50..69 (20 records)" in stream.process.states()[dataset.name].error
        else:
            wait_for(lambda: table_rows(lake, dataset) == 80, what="the records after the gap")
    outcome = stream.stop()
    assert outcome.exit_code == (1 if on_data_loss == "fail" else 0)
    if on_data_loss == "skip":
        runs = [run_metadata_of(h) for h in lake.open_table(dataset.table_path).history()]
        assert [r["data_loss"] for r in runs if r and "data_loss" in r] == [{"0": [50, 69]}]


def test_cdc_upserts_stream_with_dead_letters(kafka, lake, make_topic):
    """Debezium changes streamed in many micro-batches end as the source table; bad records go to the DLQ once."""
    import json

    from ingest_platform.dev import cdc_data
    from ingest_platform.lake.dead_letters import read_dead_letters
    from ingest_platform_tests.cdc_helpers import cdc_dataset, expected_rows, table_state

    topic = make_topic(2)
    events = cdc_data.mysql_events(cdc_data.scenario(keys=30, changes=90, hot_key_updates=6, seed=5), topic=topic)
    truncate = json.dumps({"op": "t", "before": None, "after": None, "ts_ms": 1, "source": {"file": "f", "pos": 1}})
    dataset = cdc_dataset(topic, key=["id"], max_dlq_ratio=0.5)
    third = len(events) // 3
    with StreamThread([dataset], kafka, lake) as stream:
        cdc_data.produce_events(kafka, topic, events[:third])
        wait_for(lambda: stream.events, what="the first commit")
        cdc_data.produce_events(kafka, topic, events[third:2 * third] + [(b'{"id": 999}', truncate.encode())])
        wait_for(lambda: read_dead_letters(lake, dataset) is not None, what="the dead letter")
        cdc_data.produce_events(kafka, topic, events[2 * third:])
        wait_for(lambda: sum(e.records for e in stream.events) == len(events) + 1, what="every change")
    assert stream.stop().clean
    assert table_state(lake, dataset) == expected_rows(events)
    assert read_dead_letters(lake, dataset).num_rows == 1
    assert sum(e.dead_letters for e in stream.events) == 1 and len(stream.events) >= 3


def test_max_dlq_ratio_is_judged_over_a_window_of_records_not_one_micro_batch(kafka, lake, make_topic):
    """One bad record in a micro-batch of five is 20 %, but a stream allowed 1 % goes on (the ratio is judged
    over its last records, at least 1,000); a flood of bad records still stops it, with the DLQ holding the
    ones before the ratio was reached and nothing of the failing batch committed."""
    from ingest_platform.lake.dead_letters import read_dead_letters

    topic = make_topic(partitions=1)
    dataset = json_dataset(topic, max_dlq_ratio=0.01)
    with StreamThread([dataset], kafka, lake) as stream:
        produce(kafka, topic, records("orders", 4, seed=1))
        produce(kafka, topic, iter([(b"k", b"{broken")]))
        wait_for(lambda: sum(e.records for e in stream.events) == 5, what="the first batch")
        produce(kafka, topic, records("orders", 50, seed=2, start=4))
        wait_for(lambda: table_rows(lake, dataset) == 54, what="the good records")
        assert stream.process.states()[dataset.name].status == "running"
        produce(kafka, topic, iter([(b"k", b"{broken")] * 30))
        wait_for(lambda: stream.process.states()[dataset.name].status == "failed", what="the flood to stop it")
    error = stream.stop().failed[dataset.name]
    assert "over the last" in error and "max_dlq_ratio is 0.01" in error
    assert read_dead_letters(lake, dataset).num_rows < 31 and table_rows(lake, dataset) == 54


def test_datasets_are_added_and_removed_while_the_process_runs(kafka, lake, make_topic):
    """Kubernetes sharding moves datasets between workers: ``add`` starts a loop at once; ``remove`` drains its
    in-flight commit and leaves the table exactly once, while the other datasets go on."""
    first_topic, second_topic = make_topic(partitions=2), make_topic(partitions=2)
    first, second = json_dataset(first_topic, name="first"), json_dataset(second_topic, name="second")
    produce(kafka, first_topic, records("orders", 200, seed=1))
    with StreamThread([first], kafka, lake) as stream:
        wait_for(lambda: table_rows(lake, first) == 200, what="the first dataset")
        produce(kafka, second_topic, records("orders", 150, seed=2))
        stream.process.add(second)
        wait_for(lambda: table_rows(lake, second) == 150, what="the added dataset")
        produce(kafka, first_topic, records("orders", 100, seed=3, start=200))
        time.sleep(0.4)  # a batch is open or being committed
        state = stream.process.remove("first")
        assert state.status == "stopped"
        held = table_rows(lake, first)
        assert held in (200, 300)  # the in-flight commit landed whole, or the open batch was left for later
        produce(kafka, second_topic, records("orders", 50, seed=4, start=150))
        wait_for(lambda: table_rows(lake, second) == 200, what="the remaining dataset")
        with pytest.raises(ValueError, match="already served"):
            stream.process.add(second)
        stream.process.add(first)  # back on this worker: resumes from its ledger
        wait_for(lambda: table_rows(lake, first) == 300, what="the re-added dataset")
    assert stream.stop().clean
    assert_exactly_once(lake, first, 300)
    assert_exactly_once(lake, second, 200)


def test_a_small_buffer_budget_pauses_the_loops_and_loses_nothing(kafka, lake, make_topic):
    """Two datasets with a backlog share a 64 KB budget: the loops pause their partitions until commits free
    it (librdkafka stops fetching), resume, and every record lands once."""
    from ingest_platform.streaming.process import StreamSettings

    topics = [make_topic(partitions=2) for _ in range(2)]
    datasets = [json_dataset(t, name=f"d{i}") for i, t in enumerate(topics)]
    for i, topic in enumerate(topics):
        produce(kafka, topic, records("orders", 1500, seed=i))  # ~600 KB each
    settings = StreamSettings(trigger_interval_s=0.3, upkeep=None, max_buffer_bytes=64_000,
                              consumer_prefetch_bytes=1_048_576)  # fmt: skip
    with StreamThread(datasets, kafka, lake, settings) as stream:
        for dataset in datasets:
            wait_for(lambda d=dataset: table_rows(lake, d) == 1500, what=f"{dataset.name}'s backlog")
        pauses = {name: loop.pauses for name, loop in stream.process._loops.items()}
        # every committed batch gives its bytes back (at the loop's next poll after the commit)
        wait_for(lambda: stream.process.budget.used == 0, timeout_s=10, what="the budget to be free")
    assert stream.stop().clean
    assert all(count > 0 for count in pauses.values()), pauses
    for dataset in datasets:
        assert_exactly_once(lake, dataset, 1500)
