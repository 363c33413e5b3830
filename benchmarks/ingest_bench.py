"""Embedded engine throughput against the physical limits of its own stages, measured in one run.

On one local broker: N ~R-byte JSON records in a P-partition topic (default 2M x 400 B x 12), then
  (a) raw batch consume: confluent-kafka ``consume()`` of the whole topic, doing nothing else;
  (b) Arrow decode: the engine's bulk JSON -> Arrow decoding of the same values;
  (c) Parquet write: the decoded table written as snappy Parquet (pyarrow) to local disk;
  (d) the engine end to end through the Dagster asset (``dg.materialize``): Kafka -> Delta, offsets included.
The serial bound 1 / (1/a + 1/b + 1/c) is what a pipeline doing the three stages one after another on one
core could reach at best; the report quotes (d) as a ratio of it and of each stage. A sequential disk write
(``dd``-like, fsync'd) is measured too, as the storage reference.

    python benchmarks/ingest_bench.py                      # the full size (about 3 minutes here)
    python benchmarks/ingest_bench.py --records 20000      # a smoke run

Results: benchmarks/results/ingest_bench.json and .md (or --out DIR).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from confluent_kafka import Consumer, TopicPartition

from ingest_platform.catalog import parse_catalog_text
from ingest_platform.dev.demo_data import produce, records
from ingest_platform.dev.local_kafka import LocalKafka, create_topic
from ingest_platform.engines.embedded.decode import decode_json, normalize_for_delta
from ingest_platform.kafka.client import KafkaConnection

RESULTS = Path(__file__).parent / "results"
DISTINCT_RECORDS = 20_000  # generated once, then cycled with new keys: generation is not what is measured
DECODE_BATCH_BYTES = 256 * 1024 * 1024


def make_values(count: int, size: int) -> list[tuple[bytes, bytes]]:
    distinct = list(records(f"padded{size}", min(count, DISTINCT_RECORDS), seed=11))
    return [(str(i).encode(), distinct[i % len(distinct)][1]) for i in range(count)]


def consume_all(kafka: KafkaConnection, topic: str, partitions: int, count: int) -> tuple[float, list[bytes]]:
    """(a): seconds to consume ``count`` records with batch consume(), and the values (kept for (b))."""
    consumer = Consumer(kafka.consumer_config(f"bench-raw-{time.time_ns()}"))
    values: list[bytes] = []
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        started = time.perf_counter()
        while len(values) < count:
            for message in consumer.consume(num_messages=10_000, timeout=1.0):
                if message.error() is None:
                    values.append(message.value())
        elapsed = time.perf_counter() - started
    finally:
        consumer.close()
    return elapsed, values


def decode_all(values: list[bytes]) -> tuple[float, pa.Table]:
    """(b): seconds to decode every value in engine-sized batches."""
    tables = []
    started = time.perf_counter()
    batch: list[bytes] = []
    size = 0
    for value in values:
        batch.append(value)
        size += len(value)
        if size >= DECODE_BATCH_BYTES:
            tables.append(normalize_for_delta(decode_json(batch, {}, str)))
            batch, size = [], 0
    if batch:
        tables.append(normalize_for_delta(decode_json(batch, {}, str)))
    elapsed = time.perf_counter() - started
    return elapsed, pa.concat_tables(tables, promote_options="permissive")


def write_parquet(table: pa.Table, directory: Path) -> tuple[float, int]:
    """(c): seconds to write the decoded table as snappy Parquet, and the bytes written."""
    path = directory / "decoded.parquet"
    started = time.perf_counter()
    pq.write_table(table, path, compression="snappy", data_page_size=1_048_576)
    elapsed = time.perf_counter() - started
    return elapsed, path.stat().st_size


def disk_write_mb_s(directory: Path, megabytes: int) -> float:
    """Sequential write of ``megabytes`` with fsync: the storage's own limit on this machine."""
    block = os.urandom(1 << 20)
    path = directory / "disk.bin"
    started = time.perf_counter()
    with open(path, "wb") as handle:
        for _ in range(megabytes):
            handle.write(block)
        handle.flush()
        os.fsync(handle.fileno())
    elapsed = time.perf_counter() - started
    path.unlink()
    return megabytes / elapsed


def engine_through_asset(bootstrap: str, topic: str, lake_root: Path) -> dict:
    """(d): one materialization of the dataset's asset; the engine's figures from its metadata."""
    import dagster as dg

    from ingest_platform.defs.assets import build_ingest_asset
    from ingest_platform.defs.resources import KafkaResource, LakeResource, SparkResource

    (dataset,) = parse_catalog_text(
        f"datasets:\n  - {{name: bench, source: bench, topic: {topic}, format: json, mode: append, "
        f"max_records_per_run: 100000000}}\n"
    )
    started = time.perf_counter()
    result = dg.materialize(
        [build_ingest_asset(dataset)],
        resources={
            "kafka": KafkaResource(bootstrap_servers=bootstrap),
            "lake": LakeResource(root=str(lake_root)),
            "spark": SparkResource(),  # not started: the dataset runs on the embedded engine
        },
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
    )
    wall = time.perf_counter() - started
    (event,) = result.asset_materializations_for_node("lake__bench__bench")
    metadata = {key: value.value for key, value in event.metadata.items()}
    return {"metadata": metadata, "materialize_wall_s": wall}


def bench_arguments(doc: str | None, results: Path, more=None) -> argparse.Namespace:
    """The options both throughput benchmarks share: size of the topic and where results go (``more`` adds a
    benchmark's own options to the parser)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=2_000_000)
    parser.add_argument("--record-bytes", type=int, default=400)
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--out", type=Path, default=results)
    if more is not None:
        more(parser)
    return parser.parse_args()


def main() -> int:
    args = bench_arguments(__doc__, RESULTS)
    n = args.records

    work = Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    try:
        with LocalKafka(heap="2g") as broker:
            kafka = KafkaConnection(broker.bootstrap)
            topic = "bench.orders"
            create_topic(broker.bootstrap, topic, args.partitions, {"compression.type": "snappy"})
            items = make_values(n, args.record_bytes)
            value_bytes = sum(len(v) for _, v in items)
            started = time.perf_counter()
            produce(kafka, topic, iter(items))
            produce_s = time.perf_counter() - started
            del items

            consume_s, values = consume_all(kafka, topic, args.partitions, n)
            decode_s, table = decode_all(values)
            del values
            write_s, parquet_bytes = write_parquet(table, work)
            del table
            disk_mb_s = disk_write_mb_s(work, min(1024, max(64, value_bytes // (1 << 20))))
            engine = engine_through_asset(broker.bootstrap, topic, work / "lake")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    meta = engine["metadata"]
    a, b, c = n / consume_s, n / decode_s, n / write_s
    serial_bound = 1 / (1 / a + 1 / b + 1 / c)
    d = float(meta["records_per_s"])
    d_wall = n / engine["materialize_wall_s"]
    result = {
        "benchmark": "ingest_bench",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "kafka_version": broker.kafka_version,
        "records": n,
        "partitions": args.partitions,
        "mean_record_bytes": round(value_bytes / n, 1),
        "produce_records_per_s": round(n / produce_s),
        "a_raw_consume_records_per_s": round(a),
        "b_arrow_decode_records_per_s": round(b),
        "c_parquet_write_records_per_s": round(c),
        "c_parquet_write_mb_per_s": round(parquet_bytes / write_s / 1e6, 1),
        "disk_sequential_write_mb_per_s": round(disk_mb_s, 1),
        "serial_bound_records_per_s": round(serial_bound),
        "d_engine_records_per_s": round(d),
        "d_engine_duration_s": meta["duration_s"],
        "d_materialize_wall_s": round(engine["materialize_wall_s"], 2),
        "d_materialize_wall_records_per_s": round(d_wall),
        "engine_records": meta["records"],
        "engine_files_written": meta["files_written"],
        "engine_mb_written": round(meta["bytes_written"] / 1e6, 1),
        "ratio_d_to_serial_bound": round(d / serial_bound, 3),
        "ratio_d_to_raw_consume": round(d / a, 3),
        "ratio_d_to_decode": round(d / b, 3),
        "ratio_d_to_parquet_write": round(d / c, 3),
        "ratio_engine_mb_s_to_disk": round(meta["bytes_written"] / 1e6 / meta["duration_s"] / disk_mb_s, 4),
    }
    if meta["records"] != n:
        print(f"engine ingested {meta['records']} records, expected {n}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ingest_bench.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "ingest_bench.md").write_text(markdown(result))
    print(markdown(result))
    return 0


def markdown(r: dict) -> str:
    rows = [
        ("(a) raw batch consume (confluent-kafka)", r["a_raw_consume_records_per_s"], r["ratio_d_to_raw_consume"]),
        ("(b) Arrow JSON decode", r["b_arrow_decode_records_per_s"], r["ratio_d_to_decode"]),
        ("(c) Parquet write (snappy)", r["c_parquet_write_records_per_s"], r["ratio_d_to_parquet_write"]),
        ("serial bound 1/(1/a+1/b+1/c)", r["serial_bound_records_per_s"], r["ratio_d_to_serial_bound"]),
        ("(d) engine through the asset", r["d_engine_records_per_s"], 1.0),
    ]
    lines = [
        f"# ingest_bench — {r['records']:,} records x {r['mean_record_bytes']:.0f} B, {r['partitions']} partitions",
        "",
        f"{r['date']}, {r['machine']['cores']} cores, Kafka {r['kafka_version']}, Python {r['machine']['python']}",
        "",
        "| stage | records/s | (d) / stage |",
        "|---|---:|---:|",
        *[f"| {name} | {rate:,} | {ratio:.3f} |" for name, rate, ratio in rows],
        "",
        f"- (d) engine run {r['d_engine_duration_s']:.2f} s; whole Dagster materialization "
        f"{r['d_materialize_wall_s']:.2f} s ({r['d_materialize_wall_records_per_s']:,} records/s incl. run start)",
        f"- engine wrote {r['engine_files_written']} files, {r['engine_mb_written']} MB; Parquet write alone "
        f"{r['c_parquet_write_mb_per_s']} MB/s; disk sequential write {r['disk_sequential_write_mb_per_s']} MB/s "
        f"(engine output rate / disk = {r['ratio_engine_mb_s_to_disk']})",
        f"- producing the topic: {r['produce_records_per_s']:,} records/s",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
