"""The stream process as operators run it (``ingest-platform stream``): kill -9 at any moment loses and duplicates
nothing; SIGTERM finishes the in-flight commit and exits 0 within 2 × the trigger interval."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ingest_platform.lake.tables import LakeLocation
from ingest_platform_tests.stream_helpers import SteadyProducer, assert_exactly_once, table_rows, wait_for

pytestmark = [pytest.mark.kafka]
CLI = str(Path(sys.executable).parent / "ingest-platform")


def write_catalog(path: Path, topic: str, trigger_s: float) -> Path:
    path.write_text(
        "datasets:\n"
        f"  - {{name: events, source: test, topic: {topic}, format: json, continuous: true,"
        f" trigger_interval_s: {trigger_s}}}\n"
    )
    return path


def start_stream(catalog: Path, bootstrap: str, lake_root: str, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "INGEST_KAFKA_BOOTSTRAP": bootstrap}
    return subprocess.Popen(
        [CLI, "stream", "--all-continuous", "--catalog", str(catalog), "--lake-root", lake_root, "--no-upkeep", *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


@pytest.mark.slow
def test_kill_9_at_random_moments_loses_and_duplicates_nothing(kafka, kafka_broker, tmp_path, make_topic):
    topic = make_topic(partitions=3)
    catalog = write_catalog(tmp_path / "catalog.yaml", topic, trigger_s=0.3)
    lake = LakeLocation(str(tmp_path / "lake"))
    from ingest_platform_tests.helpers import json_dataset

    dataset = json_dataset(topic)
    producer = SteadyProducer(kafka, topic)
    producer.start()
    rng = random.Random(12)
    kills = 0
    try:
        for _ in range(5):
            stream = start_stream(catalog, kafka_broker.bootstrap, lake.root)
            time.sleep(rng.uniform(2.5, 5.0))  # start-up (~1.5 s), then commits every 0.3 s
            stream.send_signal(signal.SIGKILL)
            assert stream.wait(30) == -9
            kills += 1
    finally:
        produced = producer.stop()
    stream = start_stream(catalog, kafka_broker.bootstrap, lake.root)
    try:
        wait_for(lambda: table_rows(lake, dataset) >= produced, timeout_s=90, what="every record")
    finally:
        stream.send_signal(signal.SIGTERM)
        stream.wait(30)
    assert kills == 5 and produced > 500
    assert_exactly_once(lake, dataset, produced)


def test_sigterm_finishes_the_in_flight_commit_and_exits_0_within_two_triggers(kafka, kafka_broker, tmp_path,
                                                                               make_topic):  # fmt: skip
    trigger = 2.0
    topic = make_topic(partitions=2)
    catalog = write_catalog(tmp_path / "catalog.yaml", topic, trigger_s=trigger)
    lake = LakeLocation(str(tmp_path / "lake"))
    from ingest_platform_tests.helpers import json_dataset

    dataset = json_dataset(topic)
    producer = SteadyProducer(kafka, topic, batch=50, every_s=0.05)
    producer.start()
    stream = start_stream(catalog, kafka_broker.bootstrap, lake.root, "--metrics-port", "0")
    try:
        wait_for(lambda: table_rows(lake, dataset) > 0, timeout_s=60, what="the first commit")
        time.sleep(trigger * 1.5)  # a batch is open, maybe one is being committed
        sent = time.monotonic()
        stream.send_signal(signal.SIGTERM)
        code = stream.wait(30)
        took = time.monotonic() - sent
    finally:
        produced = producer.stop()
        if stream.poll() is None:
            stream.kill()
    assert code == 0, stream.stderr.read()[-2000:]
    print(f"SIGTERM -> exit {took:.2f} s (trigger {trigger} s)")
    assert took <= 2 * trigger, f"exit took {took:.2f} s"
    stopped_with = table_rows(lake, dataset)
    assert 0 < stopped_with <= produced
    # Whatever was committed is exactly once; a restart (a new process) completes the rest.
    stream = start_stream(catalog, kafka_broker.bootstrap, lake.root)
    try:
        wait_for(lambda: table_rows(lake, dataset) >= produced, timeout_s=60, what="the rest after a restart")
    finally:
        stream.send_signal(signal.SIGTERM)
        assert stream.wait(30) == 0
    assert_exactly_once(lake, dataset, produced)


@pytest.mark.slow
def test_demo_stream_shows_latencies_read_from_the_table(tmp_path):
    done = subprocess.run([CLI, "demo", "--stream", "8", "--rate", "100", "--lake-root", str(tmp_path / "lake")],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("clicks "))
    produced, in_table, commits = (int(x.replace(",", "")) for x in line.split()[1:4])
    assert produced == in_table >= 700 and commits >= 1 and line.endswith("OK")
