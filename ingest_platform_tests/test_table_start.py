"""Where a table begins on each partition (docs/DESIGN.md §2): a new table over a topic whose start was
already deleted begins at the earliest offsets (not loss), and its first commit records that beginning for
every partition, so that later runs, the sensors and the checks never count those records as lost."""

from __future__ import annotations

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient

from ingest_platform.dev.demo_data import produce, records
from ingest_platform.engines.embedded.engine import EmbeddedEngine
from ingest_platform.lake import health
from ingest_platform.lake.commit import run_metadata_of
from ingest_platform.lake.ledger import read_ledger
from ingest_platform.monitoring.lag import dataset_lag
from ingest_platform_tests.helpers import json_dataset, read_table

pytestmark = pytest.mark.kafka


def _delete_below(kafka, topic: str, offsets: dict[int, int]) -> None:
    admin = AdminClient(kafka.base_config())
    wanted = [TopicPartition(topic, p, o) for p, o in offsets.items()]
    for future in admin.delete_records(wanted).values():
        future.result(timeout=30)


def _engine(name: str, kafka, lake, request):
    if name == "embedded":
        return EmbeddedEngine(kafka, lake)
    from ingest_platform.engines.spark.engine import SparkEngine

    return SparkEngine(kafka, lake, request.getfixturevalue("spark"))


@pytest.mark.parametrize("engine", ["embedded", pytest.param("spark", marks=[pytest.mark.spark, pytest.mark.slow])])
def test_a_new_table_over_an_old_topic_begins_at_the_earliest_offsets_and_records_it(
    engine, kafka, lake, make_topic, request
):
    topic = make_topic(partitions=3)
    for partition in range(3):
        produce(kafka, topic, records("orders", 50, start=100 * partition), partition=partition)
    # Retention took the start of partition 0 and ALL of partition 1 (empty, earliest = 50); 2 is intact.
    _delete_below(kafka, topic, {0: 20, 1: 50})
    dataset = json_dataset(topic, name=f"old_topic_{engine}")
    first = _engine(engine, kafka, lake, request).run(dataset)
    assert first.records == 30 + 50
    table = lake.open_table(dataset.table_path)
    assert read_ledger(table, dataset.name, range(3)) == {0: 49, 1: 49, 2: 49}  # 1: where it begins, 49
    metadata = run_metadata_of(table.history(1)[0])
    assert metadata["ranges"] == {"0": [20, 49], "1": [50, 49], "2": [0, 49]} and "data_loss" not in metadata

    produce(kafka, topic, records("orders", 10, start=1000), partition=1)
    assert dataset_lag(read_ledger(table, dataset.name, range(3)), {0: (20, 50), 1: (50, 60), 2: (0, 50)}).gaps == {}
    second = _engine(engine, kafka, lake, request).run(dataset)  # no loss claimed for 1's deleted 0..49
    assert second.records == 10
    frame = read_table(lake.table_uri(dataset.table_path))
    assert sorted(frame.filter(frame["_kafka_partition"] == 1)["_kafka_offset"].to_list()) == list(range(50, 60))
    table = lake.open_table(dataset.table_path)
    finding = health.evaluate(dataset, table, lake.table_uri(dataset.table_path), [health.NO_LOSS])[health.NO_LOSS]
    assert finding.passed, finding.summary


def test_a_stream_over_an_old_topic_records_where_each_partition_begins(kafka, lake, make_topic):
    """The stream shares the run's first-commit rule (BatchWriter ``accepted``): a later run claims no loss."""
    from ingest_platform.engines.run_plan import IngestError
    from ingest_platform_tests.stream_helpers import StreamThread, table_rows, wait_for

    topic = make_topic(partitions=3)
    for partition in range(3):
        produce(kafka, topic, records("orders", 50, start=100 * partition), partition=partition)
    _delete_below(kafka, topic, {0: 20, 1: 50})
    dataset = json_dataset(topic, name="old_topic_stream")
    with StreamThread([dataset], kafka, lake) as stream:
        wait_for(lambda: table_rows(lake, dataset) == 80, what="the topic's remaining records")
    assert stream.stop().clean
    table = lake.open_table(dataset.table_path)
    assert read_ledger(table, dataset.name, range(3)) == {0: 49, 1: 49, 2: 49}
    produce(kafka, topic, records("orders", 10, start=1000), partition=1)
    try:
        assert EmbeddedEngine(kafka, lake).run(dataset).records == 10
    except IngestError as error:  # the partition's deleted 0..49 taken for a retention gap
        pytest.fail(str(error))
