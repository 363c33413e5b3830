"""The stream process against the real broker: micro-batches on the offset protocol (docs/DESIGN.md §10)."""

from __future__ import annotations

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
        import time

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
