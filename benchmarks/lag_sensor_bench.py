"""One tick of the lag sensor over many datasets (goal: <= 5 s per tick for 1000 datasets).

Setup, on a fresh local broker (``LocalKafka``): ``--topics`` topics of ``--partitions`` partitions each,
created with the AdminClient in batches of 100 (``create_topics``); ``--datasets`` datasets spread evenly
over the topics (1000 topics x 1 partition by default: one topic per dataset); 10 records produced to every
topic; ``--tables`` of the datasets ingested by the embedded engine so their tables and ledgers exist (the
others have no table yet, as a new dataset would). Then the lag sensor of the real code location
(``build_definitions`` + ``sensor_definitions``) is evaluated with ``evaluate_tick`` on an ephemeral instance:
one cold tick (new process: every table opened) and ``--ticks`` warm ticks (position cache warm, the cursor
carried over), with new records produced to ``--changing`` topics and those datasets re-ingested between
ticks, so each warm tick also re-opens the tables that moved.

Results: benchmarks/results/lag_sensor_bench.json and .md (or --out DIR).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import dagster as dg  # noqa: E402
from confluent_kafka import Producer  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from ingest_platform.catalog import load_catalog  # noqa: E402
from ingest_platform.definitions import build_definitions  # noqa: E402
from ingest_platform.defs.sensors import LAG_SENSOR  # noqa: E402
from ingest_platform.dev.local_kafka import LocalKafka  # noqa: E402
from ingest_platform.engines.embedded.engine import EmbeddedEngine  # noqa: E402
from ingest_platform.kafka.client import KafkaConnection  # noqa: E402
from ingest_platform.lake.tables import LakeLocation  # noqa: E402
from ingest_platform.monitoring.positions import position_cache  # noqa: E402
from ingest_platform.settings import Settings  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def create_topics(bootstrap: str, names: list[str], partitions: int) -> float:
    started = time.perf_counter()
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for i in range(0, len(names), 100):
        futures = admin.create_topics([NewTopic(n, partitions, 1) for n in names[i : i + 100]], operation_timeout=60)
        for future in futures.values():
            future.result(timeout=120)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # every partition has a leader
        topics = admin.list_topics(timeout=10).topics
        if all(n in topics and len(topics[n].partitions) == partitions for n in names):
            break
        time.sleep(0.5)
    return time.perf_counter() - started


def produce_each(kafka: KafkaConnection, topics: list[str], count: int, start: int = 0) -> None:
    producer = Producer(kafka.producer_config())
    for topic in topics:
        for i in range(start, start + count):
            producer.produce(topic, key=str(i).encode(), value=json.dumps({"id": i, "v": "x" * 40}).encode())
        producer.poll(0)
    assert producer.flush(120) == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=int, default=1000)
    parser.add_argument("--topics", type=int, default=1000)
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--tables", type=int, default=100, help="datasets ingested before the ticks")
    parser.add_argument("--changing", type=int, default=20, help="datasets that commit between warm ticks")
    parser.add_argument("--ticks", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="lag-bench-") as work, LocalKafka(heap="2g") as broker:
        work = Path(work)
        kafka = KafkaConnection(broker.bootstrap)
        topics = [f"bench.lag.{i:04d}" for i in range(args.topics)]
        create_s = create_topics(broker.bootstrap, topics, args.partitions)
        produce_each(kafka, topics, 10)
        lines = ["datasets:"]
        for i in range(args.datasets):
            topic = topics[i % args.topics]
            lines += [f"  - name: d{i:04d}", "    source: bench", f"    topic: {topic}", "    format: json",
                      "    lag_threshold: 1000000", "    slo: {latency_s: 3600}"]  # fmt: skip
        (work / "catalog.yaml").write_text("\n".join(lines) + "\n")
        catalog = load_catalog(work / "catalog.yaml")
        lake = LakeLocation(str(work / "lake"))
        engine = EmbeddedEngine(kafka, lake, idle_timeout_s=30)
        ingest_started = time.perf_counter()
        for dataset in catalog.datasets[: args.tables]:
            engine.run(dataset)
        ingest_s = time.perf_counter() - ingest_started

        settings = Settings(str(work / "catalog.yaml"), str(work / "lake"), broker.bootstrap)
        defs = build_definitions(settings)  # the code location, sensors included
        sensor = defs.get_repository_def().get_sensor_def(LAG_SENSOR)
        resources = defs.get_repository_def().get_top_level_resources()
        instance = dg.DagsterInstance.ephemeral()
        cursor = None
        ticks = []
        changing = catalog.datasets[: min(args.changing, args.tables)]
        for tick in range(args.ticks + 1):
            if tick > 0:  # some datasets receive records and commit between ticks
                produce_each(kafka, sorted({d.topic for d in changing}), 5, start=100 * tick)
                for dataset in changing:
                    engine.run(dataset)
            context = dg.build_sensor_context(
                instance=instance, cursor=cursor, definitions=defs, sensor_name=LAG_SENSOR, resources=resources
            )
            started = time.perf_counter()
            result = sensor.evaluate_tick(context)
            elapsed = time.perf_counter() - started
            cursor = result.cursor
            ticks.append({
                "seconds": round(elapsed, 3),
                "tables_opened": position_cache(lake).opened,
                "observations": len(result.asset_events),
                "run_requests": len(result.run_requests or []),
            })  # fmt: skip
            print(f"tick {tick}: {elapsed:.3f} s, {ticks[-1]}", flush=True)
        warm = [t["seconds"] for t in ticks[1:]]
        report = {
            "datasets": args.datasets,
            "topics": args.topics,
            "partitions_per_topic": args.partitions,
            "topics_made_by": "AdminClient.create_topics in batches of 100 on a fresh single-node LocalKafka",
            "topic_creation_s": round(create_s, 1),
            "tables": args.tables,
            "ingest_s": round(ingest_s, 1),
            "changing_per_tick": len(changing),
            "cold_tick_s": ticks[0]["seconds"],
            "warm_tick_median_s": round(statistics.median(warm), 3) if warm else None,
            "warm_tick_max_s": max(warm) if warm else None,
            "goal_s": 5.0,
            "cursor_bytes": len(cursor or ""),
            "ticks": ticks,
            "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cpus, Python {platform.python_version()}",
        }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lag_sensor_bench.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "lag_sensor_bench.md").write_text(markdown(report))
    print(markdown(report))
    return 0


def markdown(r: dict) -> str:
    rows = "\n".join(
        f"| {i} | {'cold' if i == 0 else 'warm'} | {t['seconds']:.3f} | {t['tables_opened']} | {t['observations']} |"
        for i, t in enumerate(r["ticks"])
    )
    return f"""# Lag sensor: one tick over {r["datasets"]} datasets

{r["datasets"]} datasets on {r["topics"]} topics x {r["partitions_per_topic"]} partition(s) (topics made by
{r["topics_made_by"]}, {r["topic_creation_s"]} s); 10 records per topic; {r["tables"]} datasets ingested first
(tables with ledgers), the rest without a table. Between warm ticks {r["changing_per_tick"]} datasets receive
records and commit. `evaluate_tick` of `{LAG_SENSOR}` from the real code location, ephemeral instance.
Machine: {r["machine"]}.

| tick | cache | seconds | tables opened | observations |
|---:|---|---:|---:|---:|
{rows}

**Cold tick {r["cold_tick_s"]:.3f} s; warm ticks median {r["warm_tick_median_s"]} s, max {r["warm_tick_max_s"]} s**
(goal <= {r["goal_s"]} s). Cursor: {r["cursor_bytes"]:,} bytes.

Produced by `benchmarks/lag_sensor_bench.py`.
"""


if __name__ == "__main__":
    sys.exit(main())
