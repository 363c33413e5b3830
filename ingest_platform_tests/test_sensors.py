"""The lag and partition sensors against the real broker and real tables, evaluated with ``evaluate_tick``."""

from __future__ import annotations

import json
import textwrap
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient, NewPartitions

from ingest_platform.catalog import load_catalog
from ingest_platform.definitions import build_definitions
from ingest_platform.defs import sensors
from ingest_platform.defs.sensors import DATASET_TAG, LAG_SENSOR, PARTITION_SENSOR
from ingest_platform.dev.demo_data import produce, records
from ingest_platform.engines.embedded.engine import EmbeddedEngine
from ingest_platform.engines.offset_ranges import OffsetRangeError
from ingest_platform.lake.commit import run_metadata_of
from ingest_platform.lake.tables import LakeLocation
from ingest_platform.settings import Settings
from ingest_platform_tests.helpers import read_table

pytestmark = pytest.mark.kafka


class Platform:
    """A catalog file, its definitions with the sensors, an instance, and helpers to tick and ingest."""

    def __init__(self, tmp_path: Path, kafka, datasets: str):
        self.kafka = kafka
        catalog_file = tmp_path / "catalog.yaml"
        catalog_file.write_text("datasets:\n" + textwrap.indent(textwrap.dedent(datasets), "  "))
        self.catalog = load_catalog(catalog_file)
        settings = Settings(str(catalog_file), str(tmp_path / "lake"), kafka.bootstrap_servers)
        self.defs = build_definitions(settings)  # includes sensor_definitions(catalog)
        self.instance = dg.DagsterInstance.ephemeral()
        self.lake = LakeLocation(str(tmp_path / "lake"))
        self.cursors: dict[str, str | None] = {LAG_SENSOR: None, PARTITION_SENSOR: None}

    def tick(self, name: str = LAG_SENSOR):
        context = dg.build_sensor_context(
            instance=self.instance,
            cursor=self.cursors[name],
            definitions=self.defs,
            sensor_name=name,
            resources=self.defs.get_repository_def().get_top_level_resources(),
        )
        result = self.defs.get_repository_def().get_sensor_def(name).evaluate_tick(context)
        self.cursors[name] = result.cursor
        return result

    def observation(self, result, dataset: str) -> dict:
        key = dg.AssetKey(self.catalog.get(dataset).asset_path)
        (event,) = [e for e in result.asset_events if e.asset_key == key]
        return {k: v.value for k, v in event.metadata.items()}

    def ingest(self, dataset: str):
        return EmbeddedEngine(self.kafka, self.lake, idle_timeout_s=15).run(self.catalog.get(dataset))


def entry(name: str, topic: str, **fields: object) -> str:
    lines = [f"- name: {name}", "  source: test", f"  topic: {topic}", "  format: json"]
    return "\n".join(lines + [f"  {k}: {v}" for k, v in fields.items()]) + "\n"


def test_lag_requests_a_run_and_no_lag_skips(tmp_path, kafka, make_topic):
    topic = make_topic(partitions=2)
    platform = Platform(tmp_path, kafka, entry("orders", topic, lag_threshold=10, slo="{latency_s: 3600}"))
    produce(kafka, topic, records("orders", 40))

    result = platform.tick()
    (request,) = result.run_requests
    assert request.asset_selection == [dg.AssetKey(["lake", "test", "orders"])]
    assert request.tags[DATASET_TAG] == "orders" and request.run_key == "lag:orders:0:40"
    seen = platform.observation(result, "orders")
    assert seen["lag"] == 40 and seen["partitions"] == 2 and seen["lag_status"] in ("OK", "WARN")
    assert sum(seen["lag_by_partition"].values()) == 40 and "lag_threshold" in seen["run_due"]
    assert len(platform.cursors[LAG_SENSOR]) < 200  # a small cursor

    platform.ingest("orders")
    result = platform.tick()
    assert result.run_requests == [] and result.skip_message == "no dataset needs a run: caught up (1): orders"
    seen = platform.observation(result, "orders")
    assert seen["lag"] == 0 and seen["lag_status"] == "OK"
    assert abs(seen["observed_at"] - time.time()) < 60 and seen["observed_by"] == f"{LAG_SENSOR} tick (every 30 s)"

    produce(kafka, topic, records("orders", 5, start=40))  # below the threshold, far from the SLO
    result = platform.tick()
    assert result.run_requests == [] and result.skip_message.startswith(
        "no dataset needs a run: not due (1): orders (lag 5 of threshold 10, oldest ~"
    ) and result.skip_message.endswith("due at 3570 s)")


def test_no_request_for_a_dataset_already_running(tmp_path, kafka, make_topic):
    topic = make_topic()
    platform = Platform(tmp_path, kafka, entry("clicks", topic, lag_threshold=1))
    produce(kafka, topic, records("clicks", 3))
    platform.instance.add_run(
        dg.DagsterRun(job_name="__ASSET_JOB", run_id=uuid.uuid4().hex, status=dg.DagsterRunStatus.STARTED,
                      tags={DATASET_TAG: "clicks"})
    )  # fmt: skip
    result = platform.tick()
    assert result.run_requests == [] and result.skip_message == "no dataset needs a run: running (1): clicks (lag 3)"


def test_latency_slo_requests_a_run_once_the_age_is_known(tmp_path, kafka, make_topic, monkeypatch):
    topic = make_topic()
    platform = Platform(tmp_path, kafka, entry("payments", topic, slo="{latency_s: 60}"))
    clock = [time.time()]
    monkeypatch.setattr(sensors, "_now", lambda: clock[0])
    produce(kafka, topic, records("payments", 10))
    assert platform.tick().run_requests == []  # first sample: age unknown, no threshold set
    clock[0] += 40
    result = platform.tick()  # nothing produced for 40 s: the records are at least 40 s old; +30 s tick >= 60
    (request,) = result.run_requests
    assert platform.observation(result, "payments")["oldest_unconsumed_age_s"] >= 40
    assert "latency SLO" in platform.observation(result, "payments")["run_due"]


def test_status_transitions_with_real_offsets(tmp_path, kafka, make_topic, monkeypatch):
    topic = make_topic()
    platform = Platform(tmp_path, kafka, entry("orders", topic, lag_threshold=5, slo="{latency_s: 3600}"))
    produce(kafka, topic, records("orders", 10))
    platform.ingest("orders")
    start = time.time()
    clock = [start]
    monkeypatch.setattr(sensors, "_now", lambda: clock[0])
    statuses = []
    for offset_s, new_records in [(0, 0), (40, 10), (80, 10), (200, 0), (400, 0)]:
        if new_records:
            produce(kafka, topic, records("orders", new_records, start=100 + offset_s))
        clock[0] = start + offset_s
        statuses.append(platform.observation(platform.tick(), "orders")["lag_status"])
    platform.ingest("orders")
    clock[0] = start + 440
    statuses.append(platform.observation(platform.tick(), "orders")["lag_status"])
    assert statuses == ["OK", "OK", "WARN", "STALL", "STOP", "OK"]


def test_new_partitions_are_requested_and_consumed_from_offset_zero(tmp_path, kafka, make_topic):
    topic = make_topic(partitions=1)
    platform = Platform(tmp_path, kafka, entry("events", topic))
    produce(kafka, topic, records("clicks", 30))
    platform.ingest("events")
    first = platform.tick(PARTITION_SENSOR)
    assert first.run_requests == [] and platform.observation(first, "events")["partitions"] == 1
    assert "recommended_partitions" not in platform.observation(first, "events")  # 1 carries 1,000 records/s

    admin = AdminClient(kafka.base_config())
    admin.create_partitions([NewPartitions(topic, 3)])[topic].result(timeout=30)
    time.sleep(1)
    for partition in (1, 2):
        produce(kafka, topic, records("clicks", 7, start=1000 * partition), partition=partition)
    result = platform.tick(PARTITION_SENSOR)
    (request,) = result.run_requests
    assert request.tags["ingest/trigger"] == "partitions"
    assert platform.observation(result, "events")["new_partitions"] == [1, 2]

    report = platform.ingest("events")
    assert report.records == 14
    table = read_table(platform.lake.table_uri("test/events"))
    assert table.height == 44
    for partition in (1, 2):
        offsets = sorted(table.filter(table["_kafka_partition"] == partition)["_kafka_offset"].to_list())
        assert offsets == list(range(7))  # from offset 0, nothing lost
    assert platform.tick(PARTITION_SENSOR).run_requests == []  # reported once


def test_retention_gap_is_detected_with_ranges_fails_or_is_skipped_and_recorded(tmp_path, kafka, make_topic):
    topic = make_topic(partitions=1)
    platform = Platform(tmp_path, kafka, entry("strict", topic) + entry("lenient", topic, on_data_loss="skip"))
    produce(kafka, topic, records("orders", 20))
    platform.ingest("strict")
    platform.ingest("lenient")
    produce(kafka, topic, records("orders", 30, start=20))
    # Retention deleting the oldest segments, done deterministically: the earliest offset moves to 40.
    admin = AdminClient(kafka.base_config())
    admin.delete_records([TopicPartition(topic, 0, 40)])[TopicPartition(topic, 0, 40)].result(timeout=30)

    result = platform.tick(PARTITION_SENSOR)
    assert platform.observation(result, "strict")["data_loss"] == {"0": [20, 39]}
    assert f"{topic}[0] offsets 20..39 (20 records)" in result.skip_message
    assert platform.observation(platform.tick(), "lenient")["data_loss"] == {"0": [20, 39]}

    with pytest.raises(OffsetRangeError, match=rf"{topic}\[0\] offsets 20..39 \(20 records\)"):
        platform.ingest("strict")
    report = platform.ingest("lenient")
    assert report.records == 10
    table = platform.lake.open_table("test/lenient")
    metadata = run_metadata_of(table.history(1)[0])
    assert metadata["data_loss"] == {"0": [20, 39]} and metadata["ranges"] == {"0": [40, 49]}
    assert sorted(read_table(platform.lake.table_uri("test/lenient"))["_kafka_offset"].to_list()) == [
        *range(20), *range(40, 50)
    ]  # fmt: skip


@pytest.mark.slow
def test_retention_by_time_deletes_segments_and_the_gap_is_detected(tmp_path, kafka, make_topic):
    """Real retention: tiny segment.ms/retention.ms, the broker deletes the rolled segments by itself."""
    topic = make_topic(partitions=1, config={"segment.ms": "200", "retention.ms": "1000"})
    platform = Platform(tmp_path, kafka, entry("old", topic))
    produce(kafka, topic, records("orders", 5))
    platform.ingest("old")
    admin = AdminClient(kafka.base_config())
    deadline = time.monotonic() + 40
    earliest = 0
    while time.monotonic() < deadline and earliest <= 5:
        produce(kafka, topic, records("orders", 5, start=100))  # new records roll the old segments
        time.sleep(1)
        from confluent_kafka.admin import OffsetSpec

        futures = admin.list_offsets({TopicPartition(topic, 0): OffsetSpec.earliest()})
        earliest = next(iter(futures.values())).result().offset
    assert earliest > 5, "the broker did not delete segments in time"
    seen = platform.observation(platform.tick(PARTITION_SENSOR), "old")
    assert seen["data_loss"] == {"0": [5, earliest - 1]}


def test_recreated_topic_is_reported_and_never_rerun(tmp_path, kafka, make_topic):
    topic = make_topic(partitions=1)
    platform = Platform(tmp_path, kafka, entry("audit", topic, lag_threshold=1))
    produce(kafka, topic, records("orders", 5))
    platform.ingest("audit")
    platform.tick()
    platform.tick(PARTITION_SENSOR)

    from ingest_platform.dev.local_kafka import create_topic

    admin = AdminClient(kafka.base_config())
    admin.delete_topics([topic])[topic].result(timeout=30)
    deadline = time.monotonic() + 30
    while True:
        try:
            create_topic(kafka.bootstrap_servers, topic, 1)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    produce(kafka, topic, records("orders", 12, start=500))  # more than before: offsets alone look fine

    result = platform.tick(PARTITION_SENSOR)
    assert "topic id changed" in platform.observation(result, "audit")["topic_recreated"]
    assert result.run_requests == [] and "deleted and recreated" in result.skip_message
    for _ in range(2):
        lag = platform.tick()
        assert lag.run_requests == [] and "blocked (1): audit (topic recreated)" in lag.skip_message
        assert "recreated" in platform.observation(lag, "audit")["blocked"]


def test_sensor_definitions_validate_with_the_code_location(tmp_path, kafka, make_topic):
    platform = Platform(tmp_path, kafka, entry("a", make_topic()) + entry("b", make_topic()))
    dg.Definitions.validate_loadable(platform.defs)
    repository = platform.defs.get_repository_def()
    intervals = {s.name: s.minimum_interval_seconds for s in repository.sensor_defs}
    assert intervals[LAG_SENSOR] == 30 and intervals[PARTITION_SENSOR] == 120
    assert json.loads(platform.tick().cursor)["v"] == 1


@pytest.mark.slow
def test_lag_sensor_bench_smoke(tmp_path):
    """The benchmark end to end at a tiny size (its own broker; no timing asserted)."""
    import subprocess
    import sys

    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "lag_sensor_bench.py"
    done = subprocess.run(
        [sys.executable, str(bench), "--datasets", "6", "--topics", "3", "--tables", "2", "--changing", "1",
         "--ticks", "1", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "lag_sensor_bench.json").read_text())
    assert result["datasets"] == 6 and len(result["ticks"]) == 2 and result["ticks"][0]["observations"] == 6
    assert "Cold tick" in (tmp_path / "lag_sensor_bench.md").read_text()


def test_skip_reasons_stay_compact_for_many_datasets():
    from ingest_platform.defs.sensors import SkipReasons

    reasons = SkipReasons()
    for i in range(12):
        reasons.add("caught up", f"d{i}")
    reasons.add("running", "x", "lag 4")
    assert reasons.summary() == "caught up (12): d0, d1, d2, d3, d4, +7 more; running (1): x (lag 4)"
