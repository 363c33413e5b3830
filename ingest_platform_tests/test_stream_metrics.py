"""Metrics and health of the stream process over HTTP (docs/DESIGN.md §11), and the lag exporter."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ingest_platform.dev.demo_data import produce, records
from ingest_platform.kafka.client import KafkaConnection
from ingest_platform.lake.tables import LakeLocation
from ingest_platform.streaming.endpoints import Endpoints
from ingest_platform.streaming.health import Readiness
from ingest_platform.streaming.process import StreamSettings
from ingest_platform_tests.helpers import json_dataset
from ingest_platform_tests.stream_helpers import StreamThread, table_rows, wait_for

pytestmark = [pytest.mark.kafka]


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """``{(sample name, sorted labels): value}`` of a Prometheus text exposition."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(scraped: dict, name: str, **labels: str) -> float:
    return scraped[(name, tuple(sorted(labels.items())))]


def test_scraped_metrics_equal_the_table(kafka, lake, make_topic):
    topic = make_topic(partitions=2)
    dataset = json_dataset(topic, max_dlq_ratio=0.5)
    produce(kafka, topic, records("orders", 400, seed=1))
    produce(kafka, topic, iter([(b"x", b"{broken")]))
    settings = StreamSettings(trigger_interval_s=0.3, upkeep=None, memory_limit_bytes=2**31)
    with StreamThread([dataset], kafka, lake, settings) as stream:
        process = stream.process
        endpoints = Endpoints(process.metrics.registry, process.healthz, Readiness(kafka, lake).check, 0,
                              "127.0.0.1").start()  # fmt: skip
        try:
            wait_for(lambda: table_rows(lake, dataset) == 400, what="every row")
            wait_for(lambda: sum(e.records for e in stream.events) == 401, what="every record")
            # the lag gauge follows at the loop's next poll after the last commit
            wait_for(lambda: "kafka_consumer_lag_sum{" in (t := get(endpoints.port, "/metrics")[1])
                     and value(samples(t), "kafka_consumer_lag_sum", pipeline="test", dataset=dataset.name,
                               topic=topic) == 0, timeout_s=10, what="lag 0")  # fmt: skip
            status, text = get(endpoints.port, "/metrics")
            assert status == 200
            health = get(endpoints.port, "/healthz")
            ready = get(endpoints.port, "/readyz")
        finally:
            endpoints.stop()
    stream.stop()
    scraped = samples(text)
    labels = {"pipeline": "test", "dataset": dataset.name, "topic": topic}
    table = lake.open_table(dataset.table_path)
    history = [h for h in table.history() if h.get("operation") == "WRITE"]
    assert value(scraped, "ingestion_records_processed_total", **labels) == 401 == table.count() + 1
    assert value(scraped, "ingestion_dead_letters_total", **labels) == 1
    assert value(scraped, "ingestion_delta_commits_total", **labels) == len(history) == len(stream.events)
    assert value(scraped, "ingestion_last_commit_version", **labels) == table.version()
    assert value(scraped, "ingestion_files_written_total", **labels) == len(table.file_uris())
    assert value(scraped, "ingestion_batches_total", outcome="committed", **labels) == len(history)
    assert value(scraped, "ingestion_processing_duration_seconds_count", **labels) == 401
    assert value(scraped, "ingestion_processing_duration_seconds_bucket", le="+Inf", **labels) == 401
    assert value(scraped, "kafka_consumer_lag_sum", **labels) == 0
    assert value(scraped, "ingestion_stream_up", **labels) == 1
    assert value(scraped, "ingestion_errors_total", kind="decode", **labels) == 0
    assert scraped[("process_resident_memory_bytes", ())] > 0
    assert value(scraped, "ingestion_memory_limit_bytes", pipeline="test") == 2**31
    assert value(scraped, "ingestion_bytes_processed_total", **labels) == sum(e.bytes for e in stream.events)
    assert health == (200, json.dumps({"status": "ok"}) + "\n")
    assert ready[0] == 200 and json.loads(ready[1])["status"] == "ready"


def test_healthz_names_a_stuck_loop(kafka, lake, make_topic):
    """A commit that does not finish (here: the caller's callback hangs) makes /healthz 503, naming the dataset."""
    topic = make_topic(partitions=1)
    dataset = json_dataset(topic)
    release = threading.Event()
    settings = StreamSettings(trigger_interval_s=0.3, upkeep=None, commit_stuck_after_s=1.0)
    with StreamThread([dataset], kafka, lake, settings) as stream:
        stream.process.on_commit = lambda event: release.wait(30)
        endpoints = Endpoints(stream.process.metrics.registry, stream.process.healthz, lambda: (200, {}), 0,
                              "127.0.0.1").start()  # fmt: skip
        try:
            assert get(endpoints.port, "/healthz")[0] == 200
            produce(kafka, topic, records("orders", 10, seed=2))
            status, body = wait_for(lambda: (r := get(endpoints.port, "/healthz"))[0] == 503 and r, what="503")
            assert "one commit in flight" in json.loads(body)["stuck"][dataset.name]
            release.set()
            wait_for(lambda: get(endpoints.port, "/healthz")[0] == 200, what="200 again")
        finally:
            endpoints.stop()
    assert stream.stop().clean


@pytest.mark.slow
def test_readyz_is_503_while_the_broker_is_down_and_the_stream_resumes(tmp_path):
    """A private broker is stopped under the stream: /readyz says which part is down, Kafka errors are counted,
    the loop stays alive (/healthz 200), and once the broker is back every record lands exactly once."""
    from ingest_platform.dev.local_kafka import LocalKafka, create_topic
    from ingest_platform_tests.stream_helpers import assert_exactly_once

    lake = LakeLocation(str(tmp_path / "lake"))
    broker = LocalKafka(state_dir=tmp_path / "kafka", heap="512m").start()
    try:
        kafka = KafkaConnection(broker.bootstrap, timeout_s=5)
        create_topic(broker.bootstrap, "down.test", 1)
        dataset = json_dataset("down.test")
        produce(kafka, "down.test", records("orders", 100, seed=3))
        settings = StreamSettings(trigger_interval_s=0.3, upkeep=None, stuck_after_s=20)
        with StreamThread([dataset], kafka, lake, settings) as stream:
            process = stream.process
            endpoints = Endpoints(process.metrics.registry, process.healthz, Readiness(kafka, lake, 2.0).check, 0,
                                  "127.0.0.1").start()  # fmt: skip
            try:
                wait_for(lambda: table_rows(lake, dataset) == 100, what="the first records")
                assert get(endpoints.port, "/readyz")[0] == 200
                broker.stop()
                status, body = wait_for(lambda: (r := get(endpoints.port, "/readyz"))[0] == 503 and r, what="503")
                assert "kafka" in json.loads(body)["problems"] and "lake" not in json.loads(body)["problems"]
                wait_for(lambda: process.metrics.errors.labels("test", dataset.name, "down.test", "kafka")
                         ._value.get() > 0, what="counted Kafka errors")  # fmt: skip
                assert get(endpoints.port, "/healthz")[0] == 200  # alive: retrying, not stuck
                broker.start()
                wait_for(lambda: get(endpoints.port, "/readyz")[0] == 200, timeout_s=90, what="ready again")
                produce(kafka, "down.test", records("orders", 100, seed=4, start=100))
                wait_for(lambda: table_rows(lake, dataset) == 200, timeout_s=90, what="records after the restart")
            finally:
                endpoints.stop()
        assert stream.stop().clean
        assert_exactly_once(lake, dataset, 200)
    finally:
        broker.stop()


def test_the_exporter_serves_lag_and_last_commits_of_every_dataset(kafka, lake, make_topic):
    from ingest_platform.engines.embedded.engine import EmbeddedEngine
    from ingest_platform.streaming.exporter import LagExporter

    topics = [make_topic(partitions=2) for _ in range(3)]
    datasets = [json_dataset(t, name=f"d{i}") for i, t in enumerate(topics)]
    for i, topic in enumerate(topics):
        produce(kafka, topic, records("orders", 100 * (i + 1), seed=i))
    EmbeddedEngine(kafka, lake).run(datasets[0])  # d0 caught up, d1 behind by 200, d2 has no table
    produce(kafka, topics[0], records("orders", 30, seed=9, start=100))
    exporter = LagExporter(datasets, kafka, lake)
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    registry.register(exporter)
    exporter.refresh()
    endpoints = Endpoints(registry, lambda: exporter.healthz(15), lambda: exporter.healthz(15), 0, "127.0.0.1").start()
    try:
        status, text = get(endpoints.port, "/metrics")
        assert get(endpoints.port, "/healthz")[0] == 200
    finally:
        endpoints.stop()
    scraped = samples(text)

    def labels(i: int) -> dict:
        return {"pipeline": "test", "dataset": f"d{i}", "topic": topics[i]}

    assert [value(scraped, "kafka_consumer_lag_sum", **labels(i)) for i in range(3)] == [30, 200, 300]
    last_version = lake.open_table(datasets[0].table_path).version()  # 1: version 0 creates the empty table
    assert value(scraped, "ingestion_last_commit_version", **labels(0)) == last_version
    assert ("ingestion_last_commit_version", tuple(sorted(labels(2).items()))) not in scraped  # no table yet
    assert value(scraped, "ingestion_last_commit_timestamp_seconds", **labels(0)) > 1.7e9


class FlakyProxy:
    """socat relaying a loopback port to a real server; ``down()`` kills it with every connection (an outage)."""

    def __init__(self, target_port: int):
        import socket

        self.target_port = target_port
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._process = None
        self.up()

    def up(self) -> None:
        import subprocess

        self._process = subprocess.Popen(
            ["socat", f"TCP-LISTEN:{self.port},bind=127.0.0.1,fork,reuseaddr", f"TCP:127.0.0.1:{self.target_port}"],
            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(lambda: _port_open(self.port), timeout_s=10, what="socat to listen")

    def down(self) -> None:
        import os
        import signal

        process, self._process = self._process, None
        if process is not None:
            os.killpg(process.pid, signal.SIGKILL)  # the listener and its forked relays
            process.wait(10)


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_an_unreachable_lake_is_reported_and_the_stream_resumes_exactly_once(kafka, make_topic, s3_server):
    """S3 (moto on loopback) behind a relay (socat) that goes down for a while: /readyz 503 names the lake, the loop
    stays alive, and once the store is back every record lands exactly once."""
    import uuid

    from ingest_platform.lake.tables import lake_location

    proxy = FlakyProxy(int(s3_server.endpoint.rsplit(":", 1)[1]))
    config = s3_server.config(endpoint_url=f"http://127.0.0.1:{proxy.port}")
    lake = lake_location(f"s3://{s3_server.bucket}/stream-{uuid.uuid4().hex[:8]}", config)
    topic = make_topic(partitions=2)
    dataset = json_dataset(topic)
    produce(kafka, topic, records("orders", 100, seed=1))
    with StreamThread([dataset], kafka, lake) as stream:
        process = stream.process
        endpoints = Endpoints(process.metrics.registry, process.healthz, Readiness(kafka, lake, 2.0).check, 0,
                              "127.0.0.1").start()  # fmt: skip
        try:
            wait_for(lambda: table_rows(lake, dataset) == 100, timeout_s=120, what="the first records")
            proxy.down()
            produce(kafka, topic, records("orders", 100, seed=2, start=100))
            status, body = wait_for(lambda: (r := get(endpoints.port, "/readyz"))[0] == 503 and r, what="503")
            assert "lake" in json.loads(body)["problems"] and "kafka" not in json.loads(body)["problems"]
            time.sleep(3)
            assert get(endpoints.port, "/healthz")[0] == 200
            proxy.up()
            wait_for(lambda: get(endpoints.port, "/readyz")[0] == 200, timeout_s=60, what="ready again")
            wait_for(lambda: table_rows(lake, dataset) == 200, timeout_s=180, what="the records of the outage")
        finally:
            endpoints.stop()
            proxy.down()
    assert stream.stop().clean
    direct = lake_location(lake.root, s3_server.config())  # the relay is down now
    rows = direct.open_table(dataset.table_path).to_pyarrow_table(columns=["_kafka_partition", "_kafka_offset"])
    assert rows.num_rows == 200 == rows.group_by(["_kafka_partition", "_kafka_offset"]).aggregate([]).num_rows


@pytest.mark.slow
@pytest.mark.skipif(__import__("shutil").which("prometheus") is None, reason="prometheus not installed")
def test_a_real_prometheus_scrapes_the_stream_and_the_exporter(kafka, lake, make_topic):
    """The repository's Prometheus config and rules (ingest_platform/dev/local_prometheus.py) scraping a running
    stream process and the lag exporter: the series equal the table, ``rate(...[1m])`` sees the records, every
    dashboard panel returns series. Then the stream stops with a backlog building: the lag and stale-table alerts
    go pending, then firing, through ``/api/v1/alerts`` — the repository's rules with ``for:`` 3 s and the lag and
    staleness thresholds lowered (LocalPrometheus's documented transform; promtool's tests prove the real ones),
    while the critical lag alert (threshold above the backlog) stays inactive."""
    from prometheus_client import CollectorRegistry

    from ingest_platform.dev.local_prometheus import LocalPrometheus
    from ingest_platform.streaming.exporter import LagExporter
    from ingest_platform_tests.test_monitoring_files import dashboard_targets

    topic = make_topic(partitions=2)
    dataset = json_dataset(topic, max_dlq_ratio=0.5)
    settings = StreamSettings(trigger_interval_s=0.3, upkeep=None, memory_limit_bytes=2**31)
    thresholds = {"IngestConsumerLagWarning": {"> 100000": "> 500"},
                  "IngestConsumerLagCritical": {"> 1000000": "> 5000"}, "IngestTableStale": {"> 900": "> 3"}}
    server = LocalPrometheus(scrape_interval_s=1, evaluation_interval_s=1, startup_timeout_s=60, alert_for_s=3,
                             thresholds=thresholds)  # fmt: skip
    exporter = LagExporter([dataset], kafka, lake)
    registry = CollectorRegistry()
    registry.register(exporter)
    exporter.refresh()
    with StreamThread([dataset], kafka, lake, settings) as stream:
        endpoints = Endpoints(stream.process.metrics.registry, stream.process.healthz, lambda: (200, {}), 0,
                              "127.0.0.1").start()  # fmt: skip
        exported = Endpoints(registry, lambda: (200, {}), lambda: (200, {}), 0, "127.0.0.1").start()
        try:
            server.add_targets("stream", "test", [f"127.0.0.1:{endpoints.port}"])
            server.add_targets("exporter", "test", [f"127.0.0.1:{exported.port}"])
            server.start()
            server.wait_for(lambda: server.query(f'ingestion_records_processed_total{{dataset="{dataset.name}"}}'),
                            timeout_s=60)  # a first sample at 0: the rate below sees the increase
            produce(kafka, topic, records("orders", 300, seed=1))
            produce(kafka, topic, iter([(b"x", b"{broken")]))
            wait_for(lambda: table_rows(lake, dataset) == 300, what="every row")

            def scraped(expr: str) -> list[float]:
                return [float(r["value"][1]) for r in server.query(expr)]

            selector = f'{{dataset="{dataset.name}"}}'
            server.wait_for(lambda: scraped(f"ingestion_records_processed_total{selector}") == [301], timeout_s=60)
            exporter.refresh()  # after the last commit
            lag = f"max by (pipeline, dataset, topic) (kafka_consumer_lag_sum{selector})"
            server.wait_for(lambda: scraped(lag) == [0.0], timeout_s=60)
            version = float(lake.open_table(dataset.table_path).version())  # the stream's and the exporter's:
            server.wait_for(lambda: scraped(f"ingestion_last_commit_version{selector}") == [version] * 2, timeout_s=60)
            rate = f"rate(ingestion_records_processed_total{selector}[1m])"
            assert server.wait_for(lambda: [v for v in scraped(rate) if v > 0], timeout_s=30)
            server.wait_for(lambda: all(server.query(expr) for _, expr, _ in dashboard_targets()), timeout_s=60)
            assert not [a for a in server.alerts() if a["labels"].get("dataset") == dataset.name], server.alerts()

            assert stream.stop().clean  # the stall: the worker is gone (its series go stale), records keep coming
            endpoints.stop()
            produce(kafka, topic, records("orders", 1000, seed=2, start=300))
            seen: dict[str, list[str]] = {}

            def firing() -> bool:
                exporter.refresh()  # `ingest-platform metrics` reads on its interval; here on each poll
                for alert in server.alerts():
                    if alert["labels"].get("dataset") == dataset.name:
                        states = seen.setdefault(alert["labels"]["alertname"], [])
                        if not states or states[-1] != alert["state"]:
                            states.append(alert["state"])
                return all(seen.get(name, [""])[-1] == "firing" for name in ("IngestConsumerLagWarning",
                                                                               "IngestTableStale"))  # fmt: skip

            server.wait_for(firing, timeout_s=60, poll_s=0.3)
            assert seen["IngestConsumerLagWarning"] == ["pending", "firing"], seen
            assert seen["IngestTableStale"] == ["pending", "firing"], seen
            assert "IngestConsumerLagCritical" not in seen, seen  # 1,000 behind: under its (lowered) threshold
            lag_alert = next(a for a in server.alerts() if a["labels"]["alertname"] == "IngestConsumerLagWarning")
            assert lag_alert["labels"]["severity"] == "warning" and float(lag_alert["value"]) == 1000.0, lag_alert
        finally:
            endpoints.stop()
            exported.stop()
            server.stop()
            stream.stop()
