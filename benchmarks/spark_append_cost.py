"""Where the Spark engine's steady-state append spends its time, next to the guide's plain job (issue 16 §3).

One broker, one topic, one Spark session, in one run (after a warm-up on a small topic):
  * plain: the guide's snippet (readStream kafka -> delta, raw binary value, availableNow);
  * plain + from_json: the same job decoding the values against the table's schema;
  * engine: our steady-state run (the table exists, its schema is known), with its driver-side phases timed;
  * engine with Spark's built-in new-field check (``json_object_keys``) instead of the platform's ``UnknownKeys``;
  * engine without new-field detection: the same run with the per-record key check replaced by null —
    NOT a valid mode (a new field would be lost), only to measure what the check costs.
  * plain once more, last: the first job reads a topic just produced, colder than every later one.
For each: wall seconds, Spark jobs / stages / tasks started, executor run and CPU time summed over tasks,
Kafka input records read (over all stages: every extra pass over Kafka shows as more), shuffle bytes, output
files and bytes. Spark's own status store is read (no UI needed).

    python benchmarks/spark_append_cost.py --records 500000 [--profile standalone]

Results: benchmarks/results/spark_append_cost[_standalone].json and .md (or --out DIR).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingest_bench import bench_arguments  # noqa: E402
from spark_bench import (  # noqa: E402
    PRIMING_RECORDS,
    JobCounter,
    bench_spark,
    dataset,
    prepared_topic,
    profile_argument,
    streaming_job,
)

from ingest_platform.catalog import RESERVED_COLUMNS  # noqa: E402
from ingest_platform.dev.local_kafka import LocalKafka  # noqa: E402
from ingest_platform.engines.spark import engine as spark_engine  # noqa: E402
from ingest_platform.engines.spark import jvm_functions  # noqa: E402
from ingest_platform.engines.spark.engine import SparkEngine  # noqa: E402
from ingest_platform.engines.spark.transaction import DeltaTransaction  # noqa: E402

RESULTS = Path(__file__).parent / "results"

#: Driver-side steps of a run, timed by wrapping them (seconds summed per step; jobs they start included).
PHASES = {
    spark_engine: ("plan_run", "_commit_group"),
    spark_engine._SparkRun: ("_table_exists", "_known_fields", "_ensure_table", "_to_table_schema",
                             "_expected_output_bytes", "_transaction", "_write_files", "_commit",
                             "_record_commit"),
    DeltaTransaction: ("check_ledger", "write", "commit"),
}  # fmt: skip


@contextlib.contextmanager
def patched(owner, name: str, value):
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)


@contextlib.contextmanager
def timed_phases(times: dict[str, float]):
    originals = []
    for owner, names in PHASES.items():
        for name in names:
            original = getattr(owner, name)
            originals.append((owner, name, original))

            def wrapper(*args, _original=original, _name=name, **kwargs):
                started = time.perf_counter()
                try:
                    return _original(*args, **kwargs)
                finally:
                    times[_name] = times.get(_name, 0.0) + time.perf_counter() - started

            setattr(owner, name, wrapper)
    try:
        yield times
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)


def table_files(path: str) -> dict:
    import pyarrow as pa
    import pyarrow.compute as pc
    from deltalake import DeltaTable

    actions = pa.table(DeltaTable(path).get_add_actions(flatten=True))
    return {"files": actions.num_rows, "bytes": int(pc.sum(actions["size_bytes"]).as_py() or 0)}


def measure(spark, label: str, work) -> dict:
    counter = JobCounter(spark)
    started = time.perf_counter()
    with counter:
        extra = work() or {}
    seconds = time.perf_counter() - started
    return {"job": label, "seconds": round(seconds, 2), **counter.summary(), **extra}


def main() -> int:
    args = bench_arguments(__doc__, RESULTS, profile_argument)
    n = args.records
    work_dir = Path(tempfile.mkdtemp(prefix="spark-cost-"))
    rows = []
    with LocalKafka(heap="1g") as broker, bench_spark(args.profile) as (spark, _session_s, where):
        topic = "bench.spark-cost"
        kafka, lake = prepared_topic(spark, broker, args, topic, work_dir)

        def plain():
            streaming_job(spark, kafka, topic, work_dir / "plain")
            return table_files(str(work_dir / "plain" / "table"))

        rows.append(measure(spark, "plain (guide's snippet)", plain))

        def engine_run(label: str, name: str, detect: bool = True, replay: bool = False, coalesce: bool = True,
                       builtin_check: bool = False) -> dict:
            engine = SparkEngine(kafka, lake, spark)
            engine.run(dataset(topic, name, "spark", cap=PRIMING_RECORDS))  # the table and its schema: not measured
            before = table_files(lake.table_uri(f"bench/{name}"))
            original = spark_engine.unknown_names
            if not detect:
                from pyspark.sql import functions as F

                spark_engine.unknown_names = lambda *args, **kwargs: F.lit(None).cast("array<string>")
            patches = contextlib.ExitStack()
            if builtin_check:  # Spark's json_object_keys instead of the platform's UnknownKeys scan
                patches.enter_context(patched(jvm_functions, "enabled", lambda: False))
            if replay:  # the ledger check as before: Snapshot.transactions (a log replay in Spark jobs)
                patches.enter_context(patched(DeltaTransaction, "recorded_from_checksum", lambda self, apps: None))
            if not coalesce:  # every Kafka read task writes its file, as the plain job
                patches.enter_context(patched(spark_engine._SparkRun, "_size_files", lambda self, data, *a, **k: data))
            phases: dict[str, float] = {}
            try:
                with timed_phases(phases):
                    row = measure(spark, label, lambda: {"records": engine.run(dataset(topic, name, "spark")).records})
            finally:
                spark_engine.unknown_names = original
                patches.close()
            after = table_files(lake.table_uri(f"bench/{name}"))
            return {**row, "files": after["files"] - before["files"], "bytes": after["bytes"] - before["bytes"],
                    "driver_phases_s": {k: round(v, 3) for k, v in phases.items()}}  # fmt: skip

        rows.append(engine_run("engine steady state", "cost_steady"))
        rows.append(engine_run("engine, Spark's json_object_keys check (before)", "cost_builtin", builtin_check=True))
        rows.append(engine_run("engine, ledger check by log replay (before)", "cost_replay", replay=True))
        rows.append(engine_run("engine, one file per Kafka read task (no coalesce)", "cost_tasks", coalesce=False))
        rows.append(engine_run("engine, new-field check off (invalid; cost only)", "cost_nocheck", detect=False))
        schema = spark.read.format("delta").load(lake.table_uri("bench/cost_steady")).drop(*RESERVED_COLUMNS).schema

        def decoded():
            streaming_job(spark, kafka, topic, work_dir / "decoded", schema)
            return table_files(str(work_dir / "decoded" / "table"))

        rows.append(measure(spark, "plain + from_json", decoded))

        def plain_again():
            streaming_job(spark, kafka, topic, work_dir / "plain-again")
            return table_files(str(work_dir / "plain-again" / "table"))

        # The first job over a topic just produced reads it colder than the later ones: the plain job once more,
        # last, shows how much of the first row is that (spark_bench interleaves its rounds instead).
        rows.append(measure(spark, "plain again (last, as every other job: topic read before)", plain_again))
    result = {"benchmark": "spark_append_cost", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "cores": os.cpu_count(), "spark": where, "records": n, "partitions": args.partitions,
              "load_average": os.getloadavg(), "runs": rows}  # fmt: skip
    name = "spark_append_cost" if args.profile == "local" else f"spark_append_cost_{args.profile}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{name}.md").write_text(markdown(result))
    print(markdown(result))
    print(json.dumps(rows, indent=1))
    return 0


def markdown(r: dict) -> str:
    plain = r["runs"][0]["seconds"]
    lines = [
        f"# spark_append_cost — {r['records']:,} records, {r['partitions']} partitions",
        "",
        f"{r['date']}, {r['cores']} cores, {r['spark']}; load average at the end {r['load_average'][0]:.2f}",
        "",
        "| job | s | / plain | jobs | stages | tasks | executor run s | executor CPU s | Kafka/input records "
        "| shuffle bytes | files | MB written |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in r["runs"]:
        lines.append(
            f"| {row['job']} | {row['seconds']:.2f} | {row['seconds'] / plain:.2f} | {row['jobs']} | "
            f"{row['stages_run']} | {row['tasks']} | {row['executor_run_s']:.1f} | {row['executor_cpu_s']:.1f} | "
            f"{row['input_records']:,} | {row['shuffle_write_bytes']:,} | {row.get('files', '')} | "
            f"{row.get('bytes', 0) / 1e6:.1f} |"
        )
    lines.append("")
    for row in r["runs"]:
        if "driver_phases_s" in row:
            phases = ", ".join(f"{k} {v:.2f}" for k, v in row["driver_phases_s"].items())
            lines.append(f"* {row['job']}: driver steps (s, jobs they start included): {phases}")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
