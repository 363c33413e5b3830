"""Fault injection against the public interfaces, many trials: what must never happen, counted.

On a private local broker, with ``ingest-platform ingest`` processes (the command line, as operators run it)
and Delta tables read back by (partition, offset):

  race         two first runs of a dataset started together on a missing table: never both commit, the loser
               exits 1 naming the concurrent writer, no row twice (docs/DESIGN.md §2 "Table creation");
  kill         SIGKILL of a run at a random moment, many times over one table, then a run to the end: every
               record exactly once (§2 crash analysis);
  broker_down  the broker stopped mid-run (right after the run's first data commit) and kept down: the run
               ends by itself (deadlines, §2), then, broker back, a run completes the table exactly once;
  restart      a run right after a broker restart (partitions answer "Not leader" for a moment): succeeds;
  new_partition  a partition added to the topic whose first records were deleted before any run: reported
               as a retention gap, never skipped silently (§2 step 1).

    python benchmarks/reliability_bench.py                     # the default size
    python benchmarks/reliability_bench.py --records 20000 --kills 3 --races 3 --restarts 1   # a smoke run

Results: benchmarks/results/reliability_bench.json and .md (or --out DIR). Exit 1 when any violation is counted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
CLI = str(Path(sys.executable).with_name("ingest-platform"))


class Bench:
    def __init__(self, work: Path, broker, records: int, partitions: int):
        from ingest_platform.kafka.client import KafkaConnection

        self.work, self.broker, self.records, self.partitions = work, broker, records, partitions
        self.kafka = KafkaConnection(broker.bootstrap)
        self.catalog = work / "catalog.yaml"
        self.lake = work / "lake"
        self.entries: list[str] = []

    def dataset(self, name: str, topic: str, **fields: object) -> str:
        extra = "".join(f", {k}: {v}" for k, v in fields.items())
        self.entries.append(f"  - {{name: {name}, source: bench, topic: {topic}, format: json{extra}}}\n")
        self.catalog.write_text("datasets:\n" + "".join(self.entries))
        return name

    def env(self) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if not k.startswith("INGEST_")}
        return {**keep, "INGEST_CATALOG": str(self.catalog), "INGEST_LAKE_ROOT": str(self.lake),
                "INGEST_KAFKA_BOOTSTRAP": self.broker.bootstrap}  # fmt: skip

    def ingest(self, name: str) -> subprocess.Popen:
        return subprocess.Popen([CLI, "ingest", name], env=self.env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip

    def topic(self, name: str, records: int, partitions: int | None = None) -> str:
        from ingest_platform.dev.demo_data import produce
        from ingest_platform.dev.demo_data import records as generate
        from ingest_platform.dev.local_kafka import create_topic

        create_topic(self.broker.bootstrap, name, partitions or self.partitions)
        produce(self.kafka, name, generate("orders", records))
        return name

    def table(self, name: str) -> tuple[int, int]:
        """(rows, distinct (partition, offset)) of the dataset's table; (0, 0) without one."""
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        try:
            table = DeltaTable(str(self.lake / "bench" / name)).to_pyarrow_table(
                columns=["_kafka_partition", "_kafka_offset"])
        except TableNotFoundError:
            return 0, 0
        pairs = set(zip(table["_kafka_partition"].to_pylist(), table["_kafka_offset"].to_pylist()))
        return table.num_rows, len(pairs)


def race(bench: Bench, trials: int) -> dict:
    topic = bench.topic("reliability.race", bench.records // 10)
    expected = bench.records // 10
    violations, both, losers_clear = [], 0, 0
    for trial in range(trials):
        name = bench.dataset(f"race{trial}", topic)
        runs = [bench.ingest(name), bench.ingest(name)]
        outcomes = [(run.wait(600), run.stderr.read()) for run in runs]
        rows, distinct = bench.table(name)
        won = sum(code == 0 for code, _ in outcomes)
        both += won == 2
        losers_clear += sum(code == 1 and "another writer is ingesting this dataset" in err for code, err in outcomes)
        if won != 1 or rows != expected or distinct != rows:
            violations.append({"trial": trial, "exit_codes": [c for c, _ in outcomes], "rows": rows,
                               "distinct": distinct})  # fmt: skip
    return {"scenario": "race", "trials": trials, "violations": len(violations), "both_committed": both,
            "losers_with_clear_message": losers_clear, "details": violations[:5]}  # fmt: skip


def kill(bench: Bench, kills: int, rng: random.Random) -> dict:
    topic = bench.topic("reliability.kill", bench.records, bench.partitions)
    name = bench.dataset("killed", topic, max_batch_bytes=1048576)
    progressed, started = 0, time.monotonic()
    for _ in range(kills):
        before = bench.table(name)[0]
        run = bench.ingest(name)
        time.sleep(rng.uniform(1.0, 6.0))
        run.send_signal(signal.SIGKILL)
        run.wait(60)
        progressed += bench.table(name)[0] > before
    final = bench.ingest(name)
    code = final.wait(1800)
    rows, distinct = bench.table(name)
    violations = int(code != 0) + int(rows != bench.records) + int(distinct != rows)
    return {"scenario": "kill", "trials": kills, "violations": violations, "kills_after_progress": progressed,
            "records": bench.records, "rows": rows, "distinct": distinct, "final_exit_code": code,
            "seconds": round(time.monotonic() - started, 1)}  # fmt: skip


def broker_down(bench: Bench) -> dict:
    topic = bench.topic("reliability.down", bench.records, bench.partitions)
    name = bench.dataset("down", topic, max_batch_bytes=1048576)
    run = bench.ingest(name)
    first_data_commit = bench.lake / "bench" / name / "_delta_log" / f"{1:020d}.json"  # 0: the empty table
    waited = time.monotonic()
    while not first_data_commit.exists() and run.poll() is None and time.monotonic() - waited < 300:
        time.sleep(0.05)
    mid_run = run.poll() is None  # the broker goes while the run still reads (else the scenario tested nothing)
    bench.broker.stop()
    stopped = time.monotonic()
    try:
        _, message = run.communicate(timeout=600)  # drains the pipes while waiting
        code, ended_after = run.returncode, time.monotonic() - stopped
    except subprocess.TimeoutExpired:
        run.kill()
        run.communicate()
        code, ended_after, message = None, None, "still running after 600 s"
    bench.broker.start()
    final = bench.ingest(name)
    final_code = final.wait(1800)
    rows, distinct = bench.table(name)
    violations = int(code is None) + int(final_code != 0) + int(rows != bench.records) + int(distinct != rows)
    return {"scenario": "broker_down", "trials": 1, "violations": violations, "stopped_mid_run": mid_run,
            "run_exit_code": code, "run_ended_s_after_stop": round(ended_after, 1) if ended_after is not None else None,
            "message": message.strip().splitlines()[-1][:300] if message.strip() else "",
            "rows": rows, "distinct": distinct}  # fmt: skip


def restart(bench: Bench, trials: int) -> dict:
    topic = bench.topic("reliability.restart", bench.records // 10, 12)
    failures = []
    for trial in range(trials):
        name = bench.dataset(f"restart{trial}", topic)
        bench.broker.stop()
        bench.broker.start()
        run = bench.ingest(name)
        code = run.wait(600)
        if code != 0:
            failures.append(run.stderr.read().strip()[-300:])
    return {"scenario": "restart", "trials": trials, "violations": len(failures), "details": failures[:3]}


def new_partition(bench: Bench) -> dict:
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient, NewPartitions

    from ingest_platform.dev.demo_data import produce
    from ingest_platform.dev.demo_data import records as generate

    topic = bench.topic("reliability.grown", 1000, 1)
    name = bench.dataset("grown", topic)
    first = bench.ingest(name).wait(600)
    admin = AdminClient(bench.kafka.base_config())
    admin.create_partitions([NewPartitions(topic, 2)])[topic].result(timeout=30)
    time.sleep(1)
    produce(bench.kafka, topic, generate("orders", 200, start=5000), partition=1)
    admin.delete_records([TopicPartition(topic, 1, 100)])[TopicPartition(topic, 1, 100)].result(timeout=30)
    second = bench.ingest(name)
    code, message = second.wait(600), second.stderr.read()
    reported = code == 1 and f"{topic}[1] offsets 0..99" in message
    return {"scenario": "new_partition", "trials": 1, "violations": int(first != 0 or not reported),
            "exit_code": code, "message": message.strip()[:300]}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=200_000, help="Records of the kill and broker-down topics.")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--races", type=int, default=10)
    parser.add_argument("--restarts", type=int, default=3)
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    from ingest_platform.dev.local_kafka import LocalKafka

    work = Path(tempfile.mkdtemp(prefix="reliability-bench-"))
    rng = random.Random(args.seed)
    started = time.monotonic()
    broker = LocalKafka(work / "broker", heap="768m")
    broker.start()
    try:
        bench = Bench(work, broker, args.records, args.partitions)
        scenarios = [race(bench, args.races), kill(bench, args.kills, rng), restart(bench, args.restarts),
                     broker_down(bench), new_partition(bench)]  # fmt: skip
        kafka_version = broker.kafka_version
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "benchmark": "reliability_bench",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(),
                    "load_average_at_end": os.getloadavg()},  # fmt: skip
        "kafka_version": kafka_version,
        "seconds": round(time.monotonic() - started),
        "scenarios": scenarios,
        "violations": sum(s["violations"] for s in scenarios),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "reliability_bench.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "reliability_bench.md").write_text(markdown(result))
    print(markdown(result))
    return 1 if result["violations"] else 0


def markdown(r: dict) -> str:
    def figures(s: dict) -> str:
        skip = {"scenario", "trials", "violations", "details"}
        return ", ".join(f"{k} {v}" for k, v in s.items() if k not in skip)

    lines = [
        "# reliability_bench — fault injection through `ingest-platform ingest`",
        "",
        f"{r['date']}, {r['machine']['cores']} cores (shared; load average at the end "
        f"{r['machine']['load_average_at_end'][0]:.1f}), Kafka {r['kafka_version']}, {r['seconds']} s in all.",
        "",
        "| scenario | trials | violations | figures |",
        "|---|---:|---:|---|",
        *[f"| {s['scenario']} | {s['trials']} | {s['violations']} | {figures(s)} |" for s in r["scenarios"]],
        "",
        f"Violations in all: {r['violations']} (a violation: two committers, a lost or doubled record, a run that "
        "did not end, a failed run after a restart, a retention gap not reported).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
