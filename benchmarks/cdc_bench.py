"""CDC (Debezium upsert) throughput of the embedded engine against references measured in the same run.

On one local broker: a Debezium MySQL stream of table ``users`` (a snapshot of K rows, then C changes:
updates, deletes with tombstones, inserts and re-inserts; default 100K + 400K) in a P-partition topic, then
  (a) raw batch consume of the topic (confluent-kafka ``consume()``, nothing else): the Kafka limit;
  (b) the same topic as a change log (``mode: append``): decode + write, no MERGE — the engine's own
      append path on these very records, the reference a MERGE is compared with;
  (c) the same topic upserted (``mode: upsert``): last change per key + MERGE with the ledger, one commit per
      batch; the table must end with exactly the source's live keys;
  (d) steady state: U more updates of existing keys, upserted into the table of K rows (and appended to the
      change log, as its reference);
  (e) with --spark: the Spark engine upserting the same topic into its own table (one copy-on-write MERGE
      commit per run, carrying every partition's txn), then the same steady updates; its table must equal
      the embedded engine's row count;
  (f) with --spark: the cost of that one commit as the partition count grows: the same snapshot and steady
      updates in topics of 6, 24 and 96 partitions (--commit-partitions), each upserted by the Spark engine;
      the run, its MERGE commit (the OptimisticTransaction commit call) and the txn actions it carries.

    python benchmarks/cdc_bench.py                          # the full size (a few minutes here)
    python benchmarks/cdc_bench.py --keys 2000 --changes 3000   # a smoke run
    python benchmarks/cdc_bench.py --spark                  # also the Spark engine (local profile)
    python benchmarks/cdc_bench.py --spark --spark-profile standalone   # ... on a local standalone cluster

Results: benchmarks/results/cdc_bench.json and .md (or --out DIR).
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

sys.path.insert(0, str(Path(__file__).parent))

from ingest_bench import consume_all  # noqa: E402

from ingest_platform.catalog import parse_catalog_text  # noqa: E402
from ingest_platform.dev import cdc_data  # noqa: E402
from ingest_platform.dev.local_kafka import LocalKafka, create_topic  # noqa: E402
from ingest_platform.engines.embedded.engine import EmbeddedEngine  # noqa: E402
from ingest_platform.kafka.client import KafkaConnection  # noqa: E402
from ingest_platform.lake.tables import LakeLocation  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=100_000, help="rows in the snapshot")
    parser.add_argument("--changes", type=int, default=400_000, help="changes after the snapshot")
    parser.add_argument("--updates", type=int, default=None, help="steady-state updates [default: keys]")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--spark", action="store_true", help="also time the Spark engine (e) and (f)")
    parser.add_argument("--spark-profile", choices=("local", "standalone"), default="local")
    parser.add_argument("--commit-partitions", default="6,24,96", help="(f): partition counts, comma-separated")
    parser.add_argument("--commit-keys", type=int, default=20_000, help="(f): snapshot rows per topic")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args()


def dataset(topic: str, name: str, mode: str):
    (parsed,) = parse_catalog_text(
        f"datasets:\n  - {{name: {name}, source: bench, topic: {topic}, format: debezium, mode: {mode}, "
        "max_records_per_run: 100000000}\n"
    )
    return parsed


def timed_run(kafka: KafkaConnection, lake: LakeLocation, target, spark=None) -> dict:
    spark_jobs = {}
    if spark is None:
        report = EmbeddedEngine(kafka, lake).run(target)
    else:
        from spark_bench import JobCounter

        from ingest_platform.engines.spark.engine import SparkEngine

        with JobCounter(spark) as counter:  # the run's Spark jobs and their executor CPU (Spark's status store)
            report = SparkEngine(kafka, lake, spark).run(target)
        summary = counter.summary()
        spark_jobs = {"spark_jobs": summary["jobs"], "executor_cpu_s": summary["executor_cpu_s"],
                      "load_average": round(os.getloadavg()[0], 1)}  # fmt: skip
    return {
        **spark_jobs,
        "records": report.records,
        "seconds": round(report.duration_s, 3),
        "records_per_s": round(report.records_per_s),
        "commits": len(report.commits),
        "rows_inserted": report.rows_inserted,
        "rows_updated": report.rows_updated,
        "rows_deleted": report.rows_deleted,
    }


def steady_updates(events: list, count: int) -> list:
    """``count`` updates of live keys, continuing the stream (positions after every earlier change)."""
    state = cdc_data.expected_state(events)
    live = sorted(state.rows)
    plan = [("r", ident) for ident in live] + [("u", live[i % len(live)]) for i in range(count)]
    last_ms = max(json.loads(e.value)["ts_ms"] for e in events if e.value is not None)
    rendered = cdc_data.mysql_events(plan, seed=99, start_ms=last_ms + 60_000, first_binlog=900_000)
    return [e for e in rendered if e.value is not None and json.loads(e.value)["op"] == "u"]


def spark_upserts(kafka: KafkaConnection, lake: LakeLocation, topic: str, first: int, spark) -> dict:
    """(e): the Spark engine over the same topic: the first ``first`` records, then the steady updates."""
    target = dataset(topic, "users_spark", "upsert")
    capped = target.model_copy(update={"max_records_per_run": first})
    initial = timed_run(kafka, lake, capped, spark)
    steady = timed_run(kafka, lake, target, spark)
    return {"upsert": initial, "steady_upsert": steady, "table_rows": lake.open_table(target.table_path).count()}


def commit_cost(kafka: KafkaConnection, bootstrap: str, lake: LakeLocation, spark, partitions: list[int],
                keys: int) -> list[dict]:  # fmt: skip
    """(f): per partition count, a snapshot of ``keys`` rows and ``keys`` steady updates upserted by the Spark
    engine; the steady run's seconds, and its MERGE commit's (the transaction's commit call) seconds."""
    from ingest_platform.engines.spark import transaction

    commit_seconds: list[float] = []
    original = transaction.DeltaTransaction.commit

    def timed_commit(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            commit_seconds.append(time.perf_counter() - started)

    snapshot = cdc_data.mysql_events([("r", i) for i in range(1, keys + 1)], seed=5)
    updates = steady_updates(snapshot, keys)
    rows = []
    transaction.DeltaTransaction.commit = timed_commit
    try:
        for count in partitions:
            topic = f"commit-cost.{count}"
            create_topic(bootstrap, topic, count, {"compression.type": "snappy"})
            cdc_data.produce_events(kafka, topic, snapshot)
            target = dataset(topic, f"users_p{count}", "upsert")
            timed_run(kafka, lake, target, spark)  # creates the table
            cdc_data.produce_events(kafka, topic, updates)
            commit_seconds.clear()
            run = timed_run(kafka, lake, target, spark)
            table = lake.open_table(target.table_path)
            txns = sum(1 for p in range(count) if table.transaction_version(f"users_p{count}-{p}") is not None)
            rows.append({"partitions": count, **run, "commit_s": round(sum(commit_seconds), 3),
                         "txn_actions": txns, "table_rows": table.count()})  # fmt: skip
    finally:
        transaction.DeltaTransaction.commit = original
    return rows


def main() -> int:
    args = arguments()
    updates = args.updates or args.keys
    work = Path(tempfile.mkdtemp(prefix="cdc-bench-"))
    try:
        plan = cdc_data.scenario(keys=args.keys, changes=args.changes, hot_key_updates=100, seed=17)
        events = cdc_data.mysql_events(plan, binlog_file_bytes=256 * 1024 * 1024)
        state = cdc_data.expected_state(events)
        value_bytes = sum(len(e.value) for e in events if e.value is not None)
        with LocalKafka(heap="2g") as broker:
            kafka = KafkaConnection(broker.bootstrap)
            topic = "mysql.inventory.users"
            create_topic(broker.bootstrap, topic, args.partitions, {"compression.type": "snappy"})
            started = time.perf_counter()
            produced_records = cdc_data.produce_events(kafka, topic, events)
            produce_s = time.perf_counter() - started
            consume_s, _ = consume_all(kafka, topic, args.partitions, len(events))
            lake = LakeLocation(str(work / "lake"))
            changelog, upsert = dataset(topic, "changelog", "append"), dataset(topic, "users", "upsert")
            append_run = timed_run(kafka, lake, changelog)
            upsert_run = timed_run(kafka, lake, upsert)
            table_rows = lake.open_table(upsert.table_path).count()
            more = steady_updates(events, updates)
            cdc_data.produce_events(kafka, topic, more)
            steady_append = timed_run(kafka, lake, changelog)
            steady_upsert = timed_run(kafka, lake, upsert)
            rows_after = lake.open_table(upsert.table_path).count()
            spark_runs = None
            if args.spark:
                from spark_bench import bench_spark

                with bench_spark(args.spark_profile) as (spark, session_s, where):
                    spark_runs = spark_upserts(kafka, lake, topic, len(events), spark)
                    spark_runs.update(session_start_s=round(session_s, 1), where=where)
                    spark_runs["commit_cost"] = commit_cost(
                        kafka, broker.bootstrap, lake, spark, [int(p) for p in args.commit_partitions.split(",")],
                        args.commit_keys,
                    )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    n = len(events)
    a = n / consume_s
    result = {
        "benchmark": "cdc_bench",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},  # a shared machine: say so
        "kafka_version": broker.kafka_version,
        "partitions": args.partitions,
        "snapshot_rows": args.keys,
        "changes": args.changes,
        "events": n,
        "tombstones": state.tombstones,
        "by_op": state.by_op,
        "mean_event_bytes": round(value_bytes / (n - state.tombstones), 1),
        "produce_records_per_s": round(produced_records / produce_s),
        "a_raw_consume_records_per_s": round(a),
        "b_changelog_append": append_run,
        "c_upsert": upsert_run,
        "c_table_rows": table_rows,
        "c_expected_live_keys": len(state.rows),
        "d_steady_updates": len(more),
        "d_changelog_append": steady_append,
        "d_upsert": steady_upsert,
        "d_table_rows": rows_after,
        "ratio_c_to_a": round(upsert_run["records_per_s"] / a, 3),
        "ratio_c_to_b": round(upsert_run["records_per_s"] / append_run["records_per_s"], 3),
        "ratio_d_upsert_to_d_append": round(steady_upsert["records_per_s"] / steady_append["records_per_s"], 3),
    }
    if spark_runs:
        result["e_spark"] = spark_runs
        result["ratio_e_to_c"] = round(spark_runs["upsert"]["records_per_s"] / upsert_run["records_per_s"], 3)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cdc_bench.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "cdc_bench.md").write_text(markdown(result))
    print(markdown(result))
    if spark_runs and spark_runs["table_rows"] != len(state.rows):
        print(f"Spark table rows {spark_runs['table_rows']}, expected {len(state.rows)} live keys", file=sys.stderr)
        return 1
    if table_rows != len(state.rows) or rows_after != len(state.rows):
        print(f"table rows {table_rows}/{rows_after}, expected {len(state.rows)} live keys", file=sys.stderr)
        return 1
    return 0


def _spark_cost(run: dict) -> str:
    if "spark_jobs" not in run:
        return ""
    return (f"{run['spark_jobs']} Spark jobs, executor CPU {run['executor_cpu_s']} s, load average "
            f"{run['load_average']} after the run")  # fmt: skip


def markdown(r: dict) -> str:
    b, c, da, du = r["b_changelog_append"], r["c_upsert"], r["d_changelog_append"], r["d_upsert"]
    a = r["a_raw_consume_records_per_s"]
    rows = [
        ("(a) raw batch consume (confluent-kafka)", r["events"], None, a, ""),
        ("(b) change log: decode + append", b["records"], b["seconds"], b["records_per_s"], ""),
        ("(c) upsert: last change per key + MERGE", c["records"], c["seconds"], c["records_per_s"],
         f"{c['records_per_s'] / a:.3f} of (a), {r['ratio_c_to_b']:.3f} of (b)"),
        ("(d) steady updates: change log append", da["records"], da["seconds"], da["records_per_s"], ""),
        ("(d) steady updates: upsert into the table", du["records"], du["seconds"], du["records_per_s"],
         f"{r['ratio_d_upsert_to_d_append']:.3f} of the append"),
    ]  # fmt: skip
    if "e_spark" in r:
        e = r["e_spark"]
        rows += [
            ("(e) Spark engine: upsert of the same records", e["upsert"]["records"], e["upsert"]["seconds"],
             e["upsert"]["records_per_s"], f"{r['ratio_e_to_c']:.3f} of (c); {_spark_cost(e['upsert'])}"),
            ("(e) Spark engine: steady updates", e["steady_upsert"]["records"], e["steady_upsert"]["seconds"],
             e["steady_upsert"]["records_per_s"],
             f"{e['steady_upsert']['commits']} MERGE commit(s); {_spark_cost(e['steady_upsert'])}"),
        ]  # fmt: skip
    ops = ", ".join(f"{op} {count:,}" for op, count in sorted(r["by_op"].items()))
    lines = [
        f"# cdc_bench — Debezium MySQL, {r['snapshot_rows']:,} snapshot rows + {r['changes']:,} changes, "
        f"{r['partitions']} partitions",
        "",
        f"{r['date']}, {r['machine']['cores']} cores (load average at the end "
        f"{r['machine'].get('load_average_at_end', '?')}), Kafka {r['kafka_version']}, "
        f"Python {r['machine']['python']}; "
        f"{r['events']:,} records ({ops}; {r['tombstones']:,} tombstones), {r['mean_event_bytes']:.0f} B per event",
        "",
        "| stage | records | seconds | records/s | ratio |",
        "|---|---:|---:|---:|---|",
        *[f"| {name} | {count:,} | {'' if s is None else f'{s:.2f}'} | {rate:,} | {ratio} |"
          for name, count, s, rate, ratio in rows],  # fmt: skip
        "",
        f"- upsert table: {r['c_table_rows']:,} rows = {r['c_expected_live_keys']:,} live keys expected; "
        f"after {r['d_steady_updates']:,} more updates: {r['d_table_rows']:,} rows "
        f"(MERGE updated {du['rows_updated']:,} rows in {du['commits']} commit(s))",
        f"- producing the topic: {r['produce_records_per_s']:,} records/s",
        *([f"- Spark: {r['e_spark']['where']}; session start {r['e_spark']['session_start_s']} s (not counted); "
           f"Spark table {r['e_spark']['table_rows']:,} rows"] if "e_spark" in r else []),  # fmt: skip
        "",
    ]
    if "e_spark" in r and r["e_spark"].get("commit_cost"):
        lines += [
            "(f) the Spark engine's one MERGE commit per run as the partition count grows (steady updates of "
            "existing keys; commit = the OptimisticTransaction commit call):",
            "",
            "| partitions | records | run s | records/s | commits | commit s | txn actions | table rows | Spark jobs "
            "| load |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            *[f"| {c['partitions']} | {c['records']:,} | {c['seconds']:.2f} | {c['records_per_s']:,} | "
              f"{c['commits']} | {c['commit_s']:.3f} | {c['txn_actions']} | {c['table_rows']:,} | "
              f"{c.get('spark_jobs', '')} | {c.get('load_average', '')} |"
              for c in r["e_spark"]["commit_cost"]],  # fmt: skip
            "",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
