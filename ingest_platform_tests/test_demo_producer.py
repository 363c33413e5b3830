"""The demo's records (``make dev``, ``make demo``): now-ish event times, a Debezium stream that continues
consistently after its backlog, a steady producer; and the demo itself with INGEST_KAFKA_BOOTSTRAP exported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from ingest_platform.dev.cdc_data import expected_state
from ingest_platform.dev.demo_data import produce
from ingest_platform.dev.demo_producer import DEMO_SPREAD_S, ChangeFeed, JsonFeed, SteadyProducer, feed_for
from ingest_platform.engines.embedded.engine import EmbeddedEngine
from ingest_platform.lake.tables import LakeLocation
from ingest_platform_tests.helpers import dataset_from_yaml, read_table

REPO = Path(__file__).resolve().parents[1]


def dataset(name: str, topic: str = "t", fmt: str = "json", extra: str = ""):
    return dataset_from_yaml(f"datasets:\n  - {{name: {name}, source: demo, topic: {topic}, format: {fmt}{extra}}}\n")


def test_json_feeds_make_now_ish_event_times_and_continue_their_ids():
    feed = feed_for(dataset("orders"))
    assert isinstance(feed, JsonFeed) and feed.kind == "orders"
    items, rows, _ = feed.backlog(50)
    more = feed.next(5)
    orders = [json.loads(value) for _, value in items + more]
    now = datetime.now(timezone.utc)
    ages = [(now - datetime.strptime(o["created_at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc))
            .total_seconds() for o in orders]  # fmt: skip
    assert rows == 50 and max(ages) <= DEMO_SPREAD_S + 5 and min(ages) >= -1
    assert len({o["order_id"] for o in orders}) == 55  # the stream continues the backlog's numbering
    assert feed_for(dataset("sessions")).kind == "orders"  # a JSON dataset the demo does not know


@pytest.mark.kafka
def test_a_debezium_feed_continues_consistently_after_its_backlog(tmp_path, kafka, make_topic):
    """Backlog, then steady chunks (re-reads, updates, deletes, inserts in later binlog files): the upserted
    table holds exactly the source's live rows."""
    topic = make_topic(partitions=3)
    users = dataset("users", topic, "debezium", ", mode: upsert, max_dlq_ratio: 0.01")
    feed = feed_for(users)
    assert isinstance(feed, ChangeFeed)
    events, live, _ = feed.backlog(200)
    for _ in range(6):
        events += feed.next(12)
    produce(kafka, topic, iter(events))
    lake = LakeLocation(str(tmp_path / "lake"))
    report = EmbeddedEngine(kafka, lake, idle_timeout_s=15).run(users)
    assert report.records == len(events) and report.dead_lettered == 0
    want = expected_state(events)
    table = read_table(lake.table_uri(users.table_path))
    assert sorted(table["id"].to_list()) == sorted(want.rows) == sorted(feed.live)
    assert want.by_op.get("d", 0) > 0 and want.by_op.get("c", 0) > 0 and live > 0
    emails = dict(zip(table["id"].to_list(), table["email"].to_list()))
    assert all(emails[key] == row["email"] for key, row in want.rows.items())


@pytest.mark.kafka
def test_the_steady_producer_feeds_every_topic_until_stopped(kafka, make_topic):
    topics = [make_topic(), make_topic()]
    feeds = [feed_for(dataset("clicks", topics[0])), feed_for(dataset("users", topics[1], "debezium"))]
    feeds[1].backlog(20)
    producer = SteadyProducer(kafka, feeds, rate=10).start()
    time.sleep(3.5)
    producer.stop()
    assert producer.errors == 0
    assert producer.produced["clicks"] >= 20 and producer.produced["users"] >= 20
    sent = dict(producer.produced)
    time.sleep(1.5)
    assert producer.produced == sent  # stopped means stopped


@pytest.mark.slow
def test_the_demo_runs_with_a_bootstrap_exported(tmp_path):
    """Issue 17: the README exports INGEST_KAFKA_BOOTSTRAP; the demo must still ingest from its own broker."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGEST_")}
    env["INGEST_KAFKA_BOOTSTRAP"] = "127.0.0.1:9"  # nothing listens there
    done = subprocess.run(
        [str(Path(sys.executable).with_name("ingest-platform")), "demo", "--scale", "0.01",
         "--lake-root", str(tmp_path / "lake")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines()
            if line.startswith("lake/") and not line.split()[0].endswith(":")]  # the summary table's rows
    assert len(rows) == 4 and all(line.endswith("OK") for line in rows), done.stdout[-2000:]
