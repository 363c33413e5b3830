"""Table upkeep while streaming (docs/DESIGN.md §10 "Upkeep"): compaction racing appends never loses or
duplicates a row, checkpoints keep their cadence, vacuum keeps files an in-flight commit may still need."""

from __future__ import annotations

import json
import time

import pytest

from ingest_platform.dev.demo_data import produce, records
from ingest_platform.lake.maintenance import MAINTENANCE_METADATA_KEY
from ingest_platform.streaming.process import StreamSettings
from ingest_platform.streaming.upkeep import TableUpkeep, UpkeepSettings
from ingest_platform_tests.helpers import json_dataset
from ingest_platform_tests.stream_helpers import StreamThread, assert_exactly_once, table_rows, wait_for

pytestmark = [pytest.mark.kafka]


def maintenance_commits(table) -> list[dict]:
    return [json.loads(h[MAINTENANCE_METADATA_KEY]) for h in table.history() if MAINTENANCE_METADATA_KEY in h]


@pytest.mark.parametrize("partitioned", [False, True], ids=["unpartitioned", "by-day"])
def test_compaction_racing_stream_appends_loses_and_duplicates_nothing(kafka, lake, make_topic, partitioned):
    topic = make_topic(partitions=2)
    extra = {"partition_by": "[day]", "event_time_field": "created_at"} if partitioned else {}
    dataset = json_dataset(topic, **extra)
    upkeep = UpkeepSettings(every_s=0.2, hot_min_files=3, cold_after_s=3600, checkpoint_every=10)
    settings = StreamSettings(trigger_interval_s=0.15, metadata_refresh_s=5, upkeep=upkeep)
    produced = 0
    with StreamThread([dataset], kafka, lake, settings) as stream:
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline:
            produced += produce(kafka, topic, records("orders", 60, seed=produced, start=produced))
            time.sleep(0.05)
        wait_for(lambda: table_rows(lake, dataset) == produced, what="every record")
        figures = stream.process.upkeep.figures[dataset.name]
    assert stream.stop().clean
    assert_exactly_once(lake, dataset, produced)
    table = lake.open_table(dataset.table_path)
    compactions = maintenance_commits(table)
    assert figures.compactions >= 2 and len(compactions) == figures.compactions, (figures, compactions)
    assert len(table.file_uris()) < len(stream.events)  # fewer files than the appends wrote
    assert figures.checkpoints + len(stream.events) // 100 >= 1
    log = lake.table_uri(dataset.table_path) + "/_delta_log"
    import os

    checkpoints = [f for f in os.listdir(log) if f.endswith(".checkpoint.parquet")]
    assert checkpoints and table.version() - max(int(f.split(".")[0]) for f in checkpoints) < 10 + 5


def test_vacuum_keeps_at_least_an_hour_and_removes_compacted_files(kafka, lake, make_topic):
    """With vacuum_retention_hours: 0 the upkeep still keeps files younger than an hour (an in-flight
    commit's files); files compacted away longer ago than the retention are deleted."""
    import os

    topic = make_topic(partitions=1)
    dataset = json_dataset(topic, vacuum_retention_hours=0)
    with StreamThread([dataset], kafka, lake) as stream:
        for round_ in range(4):
            produce(kafka, topic, records("orders", 20, seed=round_, start=round_ * 20))
            wait_for(lambda n=(round_ + 1) * 20: table_rows(lake, dataset) == n, what="a commit")
    stream.stop()
    upkeep = TableUpkeep(lake, UpkeepSettings(hot_min_files=2, vacuum_every_s=0))
    upkeep.tend(dataset)  # compacts 4 files into 1, vacuums with retention max(0, 1 h)
    table_dir = lake.table_uri(dataset.table_path)
    on_disk = [f for f in os.listdir(table_dir) if f.endswith(".parquet")]
    assert upkeep.figures[dataset.name].compactions == 1 and upkeep.figures[dataset.name].vacuums == 1
    assert len(on_disk) == 5 and len(lake.open_table(dataset.table_path).file_uris()) == 1  # nothing deleted yet
    old = time.time() - 2 * 3600
    for name in on_disk:  # as if the compaction had happened two hours ago
        os.utime(os.path.join(table_dir, name), (old, old))
    from deltalake import DeltaTable

    removed = DeltaTable(table_dir).vacuum(retention_hours=0, dry_run=True, enforce_retention_duration=False)
    assert removed  # the compacted-away files are candidates
    assert_exactly_once(lake, dataset, 80)
