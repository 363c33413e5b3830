"""The stream process under a steady load: event -> visible latency, throughput, CPU, memory (issue 12).

On one local broker, for each scenario: topics of ``PARTITIONS`` partitions, one continuous dataset per topic,
``ingest-platform stream`` as a separate process (its CPU and RSS read from /proc every second), a separate
producer process at a steady rate (round-robin over the topics; the Kafka timestamp is the produce time),
and a separate reader process that polls every table's ``_delta_log`` every ``POLL_S`` and, for each new
ingest commit, reads its files' ``_kafka_timestamp``, ``_kafka_partition`` and ``_kafka_offset``: a record's
latency is the moment the reader saw its commit minus its Kafka timestamp (so the figure includes up to
``POLL_S`` of polling delay). Lost = produced - distinct (partition, offset) seen; duplicated = rows seen -
distinct. Scenarios (the issue's goals):

  one:      1 dataset at 10,000 records/s, 1 s trigger            (p99 <= 5 s)
  many:     100 datasets x 100 records/s, 5 s trigger, one process (p99 <= 10 s, < 1 core)
  max:      the --max-rate (records/s) with the 30 s trigger       (p99 <= trigger + 5 s, 0 lost)
  exporter: the lag exporter over 1,000 datasets (100 with a table): read and scrape times.
  upkeep:   10,000 stream-sized commits through the stream's commit path (``BatchWriter``), with the stream's
            upkeep (checkpoints, compaction) against without: the table's open + full read time at the end.
  dagster:  the issue's 2,000 records/s x 300 s workload on one dataset through ``dagster dev`` (daemon, the
            project's dagster.yaml), side by side: the supervised stream run (1 s trigger) and the lag-sensor
            batch path (``lag_threshold: 1000``); the reader polls every second; CPU of every Dagster process.

    python benchmarks/stream_bench.py                 # the full run (about 40 minutes)
    python benchmarks/stream_bench.py --quick         # a few minutes: 30 s scenarios (dagster: 60 s), 20 datasets
    python benchmarks/stream_bench.py --scenarios dagster --merge   # only the Dagster comparison, kept beside the rest

Results: benchmarks/results/stream_bench.json and .md (or --out DIR).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

RESULTS = Path(__file__).parent / "results"
PARTITIONS = 3
POLL_S = 0.25
RECORD_BYTES = 300
CLI = str(Path(sys.executable).parent / "ingest-platform")


# --- the load -------------------------------------------------------------------------------------------------


def produce_steady(bootstrap: str, topics: list[str], rate: float, duration_s: float, counts) -> None:
    """At ``rate`` records/s in all, round-robin over ``topics``, in 20 ms ticks; ``counts`` gets the totals."""
    from confluent_kafka import Producer

    from ingest_platform.dev.demo_data import records
    from ingest_platform.kafka.client import KafkaConnection

    values = [v for _, v in records(f"padded{RECORD_BYTES}", 500, seed=3)]
    producer = Producer(KafkaConnection(bootstrap).producer_config({"linger.ms": 5}))
    sent = {t: 0 for t in topics}
    started = time.monotonic()
    total, tick = 0, 0.02
    while True:
        elapsed = time.monotonic() - started
        if elapsed >= duration_s:
            break
        due = int(rate * elapsed)
        while total < due:
            topic = topics[total % len(topics)]
            while True:
                try:
                    producer.produce(topic, value=values[total % len(values)], key=str(total).encode())
                    break
                except BufferError:
                    producer.poll(0.01)
            sent[topic] += 1
            total += 1
        producer.poll(0)
        time.sleep(max(0.0, tick - (time.monotonic() - started - elapsed)))
    producer.flush(120)
    counts.update(sent)


def read_visibility(lake_root: str, tables: dict[str, str], stop, out_dir: str, poll_s: float = POLL_S) -> None:
    """Poll each table's log; per new ingest commit, latency = seen - Kafka timestamp of each of its rows."""
    done: dict[str, int] = {name: -1 for name in tables}
    parts: dict[str, list[pa.Table]] = {name: [] for name in tables}
    while True:
        stopping = stop.is_set()
        for name, path in tables.items():
            log = Path(lake_root) / path / "_delta_log"
            while (log / f"{done[name] + 1:020d}.json").exists():
                version = done[name] + 1
                seen_ms = time.time() * 1000
                entry = (log / f"{version:020d}.json").read_text().splitlines()
                actions = [json.loads(line) for line in entry if line.strip()]
                info = next((a["commitInfo"] for a in actions if "commitInfo" in a), {})
                if info.get("operation") in ("WRITE", "MERGE", None) and "ingest_platform.maintenance" not in info:
                    for add in (a["add"] for a in actions if "add" in a):
                        rows = pq.read_table(Path(lake_root) / path / add["path"],
                                             columns=["_kafka_timestamp", "_kafka_partition", "_kafka_offset"])
                        stamps = pc.cast(rows["_kafka_timestamp"], pa.int64())
                        latency = pc.divide(pc.subtract(pa.scalar(int(seen_ms * 1000)), stamps), 1e6)
                        parts[name].append(pa.table({"p": rows["_kafka_partition"], "o": rows["_kafka_offset"],
                                                     "latency": latency}))
                done[name] = version
        if stopping:
            break
        time.sleep(poll_s)
    for name, tables_ in parts.items():
        table = pa.concat_tables(tables_) if tables_ else pa.table({"p": pa.array([], pa.int32()),
                                                                    "o": pa.array([], pa.int64()),
                                                                    "latency": pa.array([], pa.float64())})
        pq.write_table(table, Path(out_dir) / f"{name}.parquet")


class ProcessSampler(threading.Thread):
    """CPU seconds and RSS of one process from /proc, every second."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid = pid
        self.rss: list[int] = []
        self.cpu_s = 0.0
        self.halt = threading.Event()

    def _cpu(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def run(self) -> None:
        start = self._cpu()
        while not self.halt.wait(1.0):
            try:
                status = Path(f"/proc/{self.pid}/status").read_text()
                self.rss.append(int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1])
                                * 1024)
                self.cpu_s = self._cpu() - start
            except (OSError, StopIteration):
                return


# --- streaming scenarios ---------------------------------------------------------------------------------------


def stream_scenario(bootstrap: str, work: Path, name: str, datasets: int, rate: float, trigger_s: float,
                    duration_s: float) -> dict:
    from ingest_platform.dev.local_kafka import create_topic

    topics = [f"{name}.t{i:03d}" for i in range(datasets)]
    for topic in topics:
        create_topic(bootstrap, topic, PARTITIONS)
    lake = work / f"lake-{name}"
    catalog = work / f"{name}.yaml"
    catalog.write_text("datasets:\n" + "".join(
        f"  - {{name: d{i:03d}, source: bench, topic: {t}, format: json, continuous: true, "
        f"trigger_interval_s: {trigger_s}}}\n" for i, t in enumerate(topics)))  # fmt: skip
    stream = subprocess.Popen([CLI, "stream", "--all-continuous", "--catalog", str(catalog), "--lake-root",
                               str(lake), "--bootstrap", bootstrap, "--metrics-port", "0"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    sampler = ProcessSampler(stream.pid)
    sampler.start()
    tables = {f"d{i:03d}": f"bench/d{i:03d}" for i in range(datasets)}
    time.sleep(3.0)  # the stream process starts (imports, consumers, plans)
    load = run_load(bootstrap, work, name, lake, tables, topics, rate, duration_s, drain_s=2 * trigger_s + 30,
                    on_drained=lambda: sampler.cpu_s)  # fmt: skip
    stream_cpu_s = load.pop("cpu_s")
    drained_s = load.pop("drained_s")
    stream.send_signal(signal.SIGTERM)
    stream.wait(120)
    sampler.halt.set()
    read_s, files = _read_time(lake / tables[next(iter(tables))])
    return {
        "scenario": name, "datasets": datasets, "target_records_per_s": rate, "trigger_interval_s": trigger_s,
        **load,
        "stream_cpu_cores": round(stream_cpu_s / drained_s, 3),
        "stream_rss_peak_mib": round(max(sampler.rss, default=0) / 2**20, 1),
        "stream_rss_mean_mib": round(sum(sampler.rss) / max(1, len(sampler.rss)) / 2**20, 1),
        "stream_exit_code": stream.returncode,
        "files_first_table": files, "read_s_first_table": round(read_s, 3),
        "commits_first_table": _version(lake / tables[next(iter(tables))]) + 1,
    }


def run_load(bootstrap: str, work: Path, name: str, lake: Path, tables: dict[str, str], topics: list[str],
             rate: float, duration_s: float, drain_s: float, on_drained, poll_s: float = POLL_S) -> dict:  # fmt: skip
    """A steady producer and a separate reader (both processes) against whatever ingests ``topics`` into
    ``tables``; waits up to ``drain_s`` after production for the tables to catch up, then calls
    ``on_drained()`` (the caller's CPU reading, returned as ``cpu_s``) and measures visibility."""
    ctx = mp.get_context("spawn")
    manager = ctx.Manager()
    counts = manager.dict()
    stop = ctx.Event()
    out = work / f"seen-{name}"
    out.mkdir()
    reader = ctx.Process(target=read_visibility, args=(str(lake), tables, stop, str(out), poll_s))
    reader.start()
    producer = ctx.Process(target=produce_steady, args=(bootstrap, topics, rate, duration_s, counts))
    started = time.monotonic()
    producer.start()
    producer.join()
    produced_s = time.monotonic() - started
    produced = sum(counts.values())
    drain_deadline = time.monotonic() + drain_s
    while time.monotonic() < drain_deadline:  # until the tables hold what was produced
        if _ledger_total(lake, tables) >= produced:
            break
        time.sleep(0.5)
    drained_s = time.monotonic() - started
    cpu_s = on_drained()
    time.sleep(2 * poll_s)
    stop.set()
    reader.join(300)
    seen = [pq.read_table(out / f"{t}.parquet") for t in tables]
    allseen = pa.concat_tables(seen)
    rows = allseen.num_rows
    distinct = sum(t.group_by(["p", "o"]).aggregate([]).num_rows for t in seen)
    latency = allseen["latency"]
    q = pc.quantile(latency, q=[0.5, 0.95, 0.99]).to_pylist() if rows else [None] * 3
    return {
        "duration_s": round(produced_s, 1), "produced": produced, "seen_rows": rows, "distinct_seen": distinct,
        "lost": produced - distinct, "duplicated": rows - distinct,
        "sustained_records_per_s": round(distinct / drained_s, 1),
        "drain_after_producer_s": round(drained_s - produced_s, 1),
        "latency_p50_s": _r(q[0]), "latency_p95_s": _r(q[1]), "latency_p99_s": _r(q[2]),
        "latency_max_s": _r(pc.max(latency).as_py() if rows else None), "cpu_s": cpu_s, "drained_s": drained_s,
    }  # fmt: skip


def _ledger_total(lake: Path, tables: dict[str, str]) -> int:
    from deltalake import DeltaTable

    total = 0
    for name, path in tables.items():
        try:
            table = DeltaTable(str(lake / path))
        except Exception:  # noqa: BLE001 - no table yet
            continue
        for partition in range(PARTITIONS):
            last = table.transaction_version(f"{name}-{partition}")
            total += 0 if last is None else last + 1
    return total


def _version(path: Path) -> int:
    from deltalake import DeltaTable

    return DeltaTable(str(path)).version()


def _read_time(path: Path) -> tuple[float, int]:
    """Open the table and read all of it, as a fresh reader would."""
    from deltalake import DeltaTable

    started = time.perf_counter()
    table = DeltaTable(str(path))
    table.to_pyarrow_table()
    return time.perf_counter() - started, len(table.file_uris())


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


# --- through Dagster --------------------------------------------------------------------------------------------


class SessionSampler(threading.Thread):
    """CPU seconds and RSS of every process of one session (``dagster dev`` and all it starts: webserver, daemon,
    code servers, run processes). CPU = Σ over live processes of their own time plus that of the children they
    reaped, so run processes that came and went are counted (in their reaper's)."""

    def __init__(self, session: int):
        super().__init__(daemon=True)
        self.session = session
        self.rss: list[int] = []
        self.halt = threading.Event()

    def members(self) -> list[tuple[int, list[str]]]:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[3]) == self.session:
                    found.append((int(entry.name), fields))
        return found

    def cpu_s(self) -> float:
        ticks = sum(sum(int(f) for f in fields[11:15]) for _, fields in self.members())
        return ticks / os.sysconf("SC_CLK_TCK")

    def run(self) -> None:
        while not self.halt.wait(1.0):
            total = 0
            for pid, _ in self.members():
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                    total += int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1])
                except (OSError, StopIteration):
                    continue
            self.rss.append(total * 1024)


def dagster_scenario(bootstrap: str, work: Path, path: str, rate: float, duration_s: float, trigger_s: float,
                     poll_s: float = 1.0) -> dict:  # fmt: skip
    """One JSON dataset at ``rate`` through ``dagster dev`` (its daemon, the project's dagster.yaml): ``path``
    "stream" — continuous, the supervisor's stream run — or "batch" — ``lag_threshold: 1000``, runs requested
    by the lag sensor. A reader polls the table every ``poll_s`` (the issue's setup: every second)."""
    import dagster as dg

    from ingest_platform.dev.local_dagster import LocalDagster
    from ingest_platform.dev.local_kafka import create_topic

    name = f"dagster-{path}"
    topic = f"{name}.t000"
    create_topic(bootstrap, topic, PARTITIONS)
    lake = work / f"lake-{name}"
    catalog = work / f"{name}.yaml"
    shape = f"continuous: true, trigger_interval_s: {trigger_s}" if path == "stream" else "lag_threshold: 1000"
    catalog.write_text(f"datasets:\n  - {{name: d000, source: bench, topic: {topic}, format: json, {shape}}}\n")
    env = {"INGEST_CATALOG": str(catalog), "INGEST_LAKE_ROOT": str(lake), "INGEST_KAFKA_BOOTSTRAP": bootstrap}
    home = work / f"home-{name}"
    tables = {"d000": "bench/d000"}
    with LocalDagster(home, env) as ui:
        instance = dg.DagsterInstance.from_config(str(home))
        started = time.monotonic()
        if path == "stream":  # the supervisor starts the run by itself; production starts once it streams
            while time.monotonic() - started < 300:
                runs = instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
                if runs:
                    break
                time.sleep(1.0)
            else:
                raise RuntimeError(f"no stream run started within 300 s:\n{ui.log_tail()}")
            time.sleep(5.0)  # the loop plans and assigns its consumer
        else:
            time.sleep(10.0)  # the daemon's first ticks
        ready_s = time.monotonic() - started
        sampler = SessionSampler(ui.pid)
        sampler.start()
        cpu_before = sampler.cpu_s()
        load = run_load(bootstrap, work, name, lake, tables, [topic], rate, duration_s,
                        drain_s=120 if path == "batch" else 2 * trigger_s + 30,
                        on_drained=lambda: sampler.cpu_s() - cpu_before, poll_s=poll_s)  # fmt: skip
        sampler.halt.set()
        records = instance.get_run_records()
        statuses: dict[str, int] = {}
        for record in records:
            statuses[record.dagster_run.status.value] = statuses.get(record.dagster_run.status.value, 0) + 1
        materializations = _count_materializations(instance, dg.AssetKey(["lake", "bench", "d000"]))
        events = sum(len(instance.get_records_for_run(r.dagster_run.run_id, limit=1_000_000).records)
                     for r in records)  # fmt: skip
        instance.dispose()
    cpu_s = load.pop("cpu_s")
    drained_s = load.pop("drained_s")
    return {
        "scenario": name, "path": path, "datasets": 1, "target_records_per_s": rate,
        "trigger_interval_s": trigger_s if path == "stream" else None,
        "lag_threshold": 1000 if path == "batch" else None, "reader_poll_s": poll_s, **load,
        "dagster_cpu_cores": round(cpu_s / drained_s, 3),
        "dagster_rss_peak_mib": round(max(sampler.rss, default=0) / 2**20, 1),
        "runs": len(records), "run_statuses": statuses, "materializations": materializations,
        "run_events": events, "ready_before_production_s": round(ready_s, 1),
        "commits": _version(lake / "bench" / "d000") + 1,
    }  # fmt: skip


def _count_materializations(instance, key) -> int:
    """All of the asset's materializations (the instance returns at most 10,000 per call)."""
    total, cursor = 0, None
    while True:
        page = instance.fetch_materializations(key, limit=10_000, cursor=cursor)
        total += len(page.records)
        if not page.has_more:
            return total
        cursor = page.cursor


# --- upkeep ---------------------------------------------------------------------------------------------------


def upkeep_scenario(work: Path, commits: int, rows_per_commit: int) -> dict:
    """``commits`` small commits through the stream's commit path, with and without the stream's upkeep."""
    from deltalake import DeltaTable

    from ingest_platform.catalog import parse_catalog_text
    from ingest_platform.dev.demo_data import records
    from ingest_platform.engines.embedded.batch_writer import BatchWriter, RecordBatch
    from ingest_platform.lake.tables import LakeLocation
    from ingest_platform.streaming.upkeep import TableUpkeep, UpkeepSettings

    values = [v for _, v in records(f"padded{RECORD_BYTES}", rows_per_commit, seed=5)]
    result: dict[str, object] = {"commits": commits, "rows_per_commit": rows_per_commit}
    for variant in ("with_upkeep", "without_upkeep"):  # the long one last: its progress is printed as it goes
        lake = LakeLocation(str(work / f"lake-upkeep-{variant}"))
        (dataset,) = parse_catalog_text("datasets:\n  - {name: u, source: bench, topic: u, format: json, "
                                        "partition_by: [date], continuous: true, trigger_interval_s: 1}\n")
        writer = BatchWriter(dataset, lake, "bench", "embedded", time.time(), {}, None, {0: 0})
        upkeep = TableUpkeep(lake, UpkeepSettings(every_s=1.0)) if variant == "with_upkeep" else None
        if upkeep is not None:
            upkeep.add(dataset)
            upkeep.start()
        started = time.perf_counter()
        offset = 0
        per_thousand: list[float] = []  # seconds of each 1,000 commits: how the commit rate changes as the table grows
        lap = started
        for done in range(1, commits + 1):
            now_ms = int(time.time() * 1000)
            batch = RecordBatch(values=list(values), partitions=[0] * len(values),
                                offsets=list(range(offset, offset + len(values))),
                                timestamps=[now_ms] * len(values), keys=[None] * len(values),
                                nbytes=sum(map(len, values)))  # fmt: skip
            writer.commit(batch)
            offset += len(values)
            if done % 1000 == 0:
                now = time.perf_counter()
                per_thousand.append(round(now - lap, 1))
                lap = now
                print(f"upkeep {variant}: {done} commits, {now - started:.0f} s, last 1,000 in {per_thousand[-1]} s",
                      flush=True)
        write_s = time.perf_counter() - started
        if upkeep is not None:
            upkeep.stop(60)
            final = TableUpkeep(lake, upkeep.settings)  # the pass a running stream would make next (a stopped
            final.tend(dataset)  # upkeep's own tend returns before compacting: its stop flag is set)
            upkeep.figures[dataset.name].compactions += final.figures[dataset.name].compactions
        path = Path(lake.root) / dataset.table_path
        open_started = time.perf_counter()
        DeltaTable(str(path))
        open_s = time.perf_counter() - open_started
        read_s, files = _read_time(path)
        checkpoints = len(list((path / "_delta_log").glob("*.checkpoint.parquet")))
        result[variant] = {"write_s": round(write_s, 1), "commits_per_s": round(commits / write_s, 1),
                           "files": files, "checkpoints": checkpoints, "open_s": round(open_s, 3),
                           "open_and_read_s": round(read_s, 3), "seconds_per_1000_commits": per_thousand,
                           **({"compactions": upkeep.figures[dataset.name].compactions} if upkeep else {})}
    result["read_ratio_without_to_with"] = round(
        result["without_upkeep"]["open_and_read_s"] / result["with_upkeep"]["open_and_read_s"], 1)  # type: ignore[index]
    return result


# --- exporter -------------------------------------------------------------------------------------------------


def exporter_scenario(bootstrap: str, work: Path, datasets: int, tables: int, refreshes: int = 3) -> dict:
    """The lag exporter over ``datasets`` topics (``tables`` of them with a table): read and scrape times."""
    import urllib.request

    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic
    from prometheus_client import CollectorRegistry

    from ingest_platform.catalog import parse_catalog_text
    from ingest_platform.engines.embedded.engine import EmbeddedEngine
    from ingest_platform.kafka.client import KafkaConnection
    from ingest_platform.lake.tables import LakeLocation
    from ingest_platform.streaming.endpoints import Endpoints
    from ingest_platform.streaming.exporter import LagExporter

    names = [f"exp.t{i:04d}" for i in range(datasets)]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for i in range(0, len(names), 100):
        for future in admin.create_topics([NewTopic(n, 1, 1) for n in names[i:i + 100]]).values():
            future.result(timeout=120)
    time.sleep(2)
    producer = Producer({"bootstrap.servers": bootstrap})
    for name in names:
        for n in range(10):
            producer.produce(name, value=b'{"n": %d}' % n)
    producer.flush(60)
    catalog = parse_catalog_text("datasets:\n" + "".join(
        f"  - {{name: e{i:04d}, source: exp, topic: {t}, format: json}}\n" for i, t in enumerate(names)))
    kafka, lake = KafkaConnection(bootstrap), LakeLocation(str(work / "lake-exporter"))
    for dataset in catalog[:tables]:
        EmbeddedEngine(kafka, lake).run(dataset)
    exporter = LagExporter(list(catalog), kafka, lake)
    registry = CollectorRegistry()
    registry.register(exporter)
    reads = []
    for _ in range(refreshes + 1):
        started = time.perf_counter()
        exporter.refresh()
        reads.append(round(time.perf_counter() - started, 3))
    endpoints = Endpoints(registry, lambda: (200, {}), lambda: (200, {}), 0, "127.0.0.1").start()
    scrapes = []
    try:
        for _ in range(5):
            started = time.perf_counter()
            with urllib.request.urlopen(f"http://127.0.0.1:{endpoints.port}/metrics", timeout=30) as response:
                body = response.read()
            scrapes.append(round(time.perf_counter() - started, 4))
    finally:
        endpoints.stop()
    return {"datasets": datasets, "tables": tables, "read_cold_s": reads[0], "read_warm_s": reads[1:],
            "scrape_s": scrapes, "scrape_bytes": len(body), "unreadable": len(exporter.errors)}


# --- main -----------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="30 s scenarios, 20 datasets, 400 upkeep commits.")
    parser.add_argument("--duration", type=float, help="Seconds of steady production per scenario [300; quick 30].")
    parser.add_argument("--max-rate", type=float, default=30_000, help="Records/s of the 30 s-trigger scenario.")
    parser.add_argument("--scenarios", default="one,many,max,upkeep,exporter,dagster",
                        help="Comma-separated subset to run.")
    parser.add_argument("--dagster-rate", type=float, default=2_000, help="Records/s of the dagster scenario.")
    parser.add_argument("--dagster-trigger", type=float, default=1.0, help="Trigger of its stream path [1 s].")
    parser.add_argument("--upkeep-commits", type=int, help="Commits of the upkeep scenario [10,000; quick 400].")
    parser.add_argument("--out", type=Path, default=RESULTS, help="Where the JSON and markdown go.")
    parser.add_argument("--merge", action="store_true", help="Update the results already in --out with the "
                                                             "scenarios of this run (keep the others).")
    args = parser.parse_args()
    from ingest_platform.dev.local_kafka import LocalKafka

    duration = args.duration or (30.0 if args.quick else 300.0)
    wanted = set(args.scenarios.split(","))
    plan = {
        "one": dict(datasets=1, rate=10_000 if not args.quick else 5_000, trigger_s=1.0),
        "many": dict(datasets=100 if not args.quick else 20, rate=100 * (100 if not args.quick else 20), trigger_s=5.0),
        "max": dict(datasets=1, rate=args.max_rate if not args.quick else 10_000, trigger_s=30.0 if not args.quick
                    else 5.0),
    }
    result: dict[str, object] = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "quick": args.quick,
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "load_avg_at_start": os.getloadavg()},
        "poll_s": POLL_S, "record_bytes": RECORD_BYTES, "partitions": PARTITIONS, "scenarios": [],
    }
    work = Path(tempfile.mkdtemp(prefix="stream-bench-"))
    try:
        if wanted & {*plan, "exporter", "dagster"}:
            with LocalKafka(heap="1g") as broker:
                for name, params in plan.items():
                    if name in wanted:
                        print(f"scenario {name}: {params}, {duration:g} s", flush=True)
                        figures = stream_scenario(broker.bootstrap, work, name, duration_s=duration, **params)
                        print(json.dumps(figures), flush=True)
                        result["scenarios"].append(figures)  # type: ignore[union-attr]
                if "dagster" in wanted:  # the same workload through Dagster: the stream run, then batch runs
                    seconds = args.duration or (60.0 if args.quick else 300.0)
                    result["dagster"] = []
                    for path in ("stream", "batch"):
                        print(f"dagster {path}: {args.dagster_rate:g} rec/s, {seconds:g} s", flush=True)
                        figures = dagster_scenario(broker.bootstrap, work, path, args.dagster_rate, seconds,
                                                   args.dagster_trigger)  # fmt: skip
                        print(json.dumps(figures), flush=True)
                        result["dagster"].append(figures)  # type: ignore[union-attr]
                if "exporter" in wanted:
                    count = 200 if args.quick else 1000
                    print(f"exporter: {count} datasets", flush=True)
                    result["exporter"] = exporter_scenario(broker.bootstrap, work, count, count // 10)
                    print(json.dumps(result["exporter"]), flush=True)
        if "upkeep" in wanted:
            commits = args.upkeep_commits or (400 if args.quick else 10_000)
            print(f"upkeep: {commits} commits with and without upkeep", flush=True)
            result["upkeep"] = upkeep_scenario(work, commits, rows_per_commit=20)
            print(json.dumps(result["upkeep"]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    previous = args.out / "stream_bench.json"
    if args.merge and previous.exists():
        merged = json.loads(previous.read_text())
        ran = {s["scenario"] for s in result["scenarios"]}  # type: ignore[union-attr]
        merged["scenarios"] = [s for s in merged["scenarios"] if s["scenario"] not in ran] + result["scenarios"]
        merged.update({k: result[k] for k in ("exporter", "upkeep", "dagster") if k in result})
        merged.setdefault("runs", []).append({"started_at": result["started_at"], "scenarios": sorted(wanted),
                                              "load_avg_at_start": result["machine"]["load_avg_at_start"]})  # type: ignore[index]
        result = merged
    (args.out / "stream_bench.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "stream_bench.md").write_text(markdown(result))
    print(markdown(result))
    return 0


def markdown(r: dict) -> str:
    lines = [f"# stream_bench{' (quick)' if r['quick'] else ''}", "",
             "Sustained rec/s = distinct records in the tables / (production start -> tables caught up); "
             "stream CPU = the stream process's CPU seconds over that span.", "",
             f"{r['started_at']}, {r['machine']['cores']} cores (load average at start "
             f"{', '.join(f'{x:.1f}' for x in r['machine']['load_avg_at_start'])}), Python {r['machine']['python']}; "
             f"{r['record_bytes']}-byte JSON records, {r['partitions']} partitions per topic; the reader polls every "
             f"{r['poll_s']} s (included in the latencies)", ""]  # fmt: skip
    for run in r.get("runs", []):
        lines.append(f"- run {run['started_at']}: {', '.join(run['scenarios'])}"
                     + (f" ({run['note']})" if run.get("note") else ""))
    if r.get("runs"):
        lines.append("")
    if r.get("scenarios"):
        lines += ["| scenario | datasets | target rec/s | trigger | produced | lost | dup | sustained rec/s | p50 "
                  "| p95 | p99 | max | drained after producer | stream CPU (cores) | RSS peak MiB "
                  "| commits, files (1st table) | read s |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for s in r["scenarios"]:
            lines.append(
                f"| {s['scenario']} | {s['datasets']} | {s['target_records_per_s']:,.0f} "
                f"| {s['trigger_interval_s']:g} s "
                f"| {s['produced']:,} | {s['lost']} | {s['duplicated']} | {s['sustained_records_per_s']:,.0f} "
                f"| {s['latency_p50_s']} s | {s['latency_p95_s']} s | {s['latency_p99_s']} s | {s['latency_max_s']} s "
                f"| {s['drain_after_producer_s']} s | {s['stream_cpu_cores']} | {s['stream_rss_peak_mib']} "
                f"| {s['commits_first_table']}, "
                f"{s['files_first_table']} | {s['read_s_first_table']} |"
            )  # fmt: skip
        lines.append("")
    if r.get("dagster"):
        lines += ["Through Dagster (`dagster dev` with its daemon and the project's dagster.yaml), one JSON dataset, "
                  "the same workload on both paths; a reader polls the table every second. Dagster CPU = every "
                  "process `dagster dev` started (webserver, daemon, code server, runs) over production + drain:", "",
                  "| path | rec/s | produced | lost | dup | p50 | p95 | p99 | max | drained after producer "
                  "| Dagster CPU (cores) | RSS peak MiB | runs | Delta commits | materializations | run events |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for d in r["dagster"]:
            how = (f"supervised stream run, trigger {d['trigger_interval_s']:g} s" if d["path"] == "stream"
                   else f"lag sensor, lag_threshold {d['lag_threshold']}")
            lines.append(
                f"| {how} | {d['target_records_per_s']:,.0f} | {d['produced']:,} | {d['lost']} | {d['duplicated']} "
                f"| {d['latency_p50_s']} s | {d['latency_p95_s']} s | {d['latency_p99_s']} s | {d['latency_max_s']} s "
                f"| {d['drain_after_producer_s']} s | {d['dagster_cpu_cores']} | {d['dagster_rss_peak_mib']} "
                f"| {d['runs']} | {d['commits']} | {d['materializations']} | {d['run_events']:,} |")  # fmt: skip
        stream, batch = (next((d for d in r["dagster"] if d["path"] == p), None) for p in ("stream", "batch"))
        if stream and batch and stream["latency_p99_s"] and batch["latency_p99_s"]:
            lines += ["", f"p99 batch / stream: {batch['latency_p99_s'] / stream['latency_p99_s']:.1f}x; Dagster CPU "
                      f"batch / stream: {batch['dagster_cpu_cores'] / max(stream['dagster_cpu_cores'], 1e-9):.2f}x."]
        lines.append("")
    if "exporter" in r:
        e = r["exporter"]
        lines += [f"Exporter (`ingest-platform metrics`): {e['datasets']:,} datasets, "
                  f"{e['tables']:,} with a table: one "
                  f"read of every offset and ledger {e['read_cold_s']} s cold, {e['read_warm_s']} s warm; a scrape "
                  f"(served from the last read) {min(e['scrape_s'])}–{max(e['scrape_s'])} s for "
                  f"{e['scrape_bytes']:,} bytes.", ""]
    if "upkeep" in r:
        u = r["upkeep"]
        lines += [f"Upkeep: {u['commits']:,} commits of {u['rows_per_commit']} rows through the stream's commit path "
                  f"(`BatchWriter`), table partitioned by date:", "",
                  "| variant | commits | commits/s | s per 1,000 commits, first → last | files | checkpoints | open s "
                  "| open + full read s |",
                  "|---|---:|---:|---|---:|---:|---:|---:|"]
        for variant in ("without_upkeep", "with_upkeep"):
            v = u[variant]
            laps = v.get("seconds_per_1000_commits") or []
            shown = laps if len(laps) <= 10 else [*laps[:3], "…", *laps[-3:]]
            curve = " → ".join(str(x) for x in shown)
            lines.append(f"| {variant.replace('_', ' ')} | {v.get('commits_done', u['commits']):,} "
                         f"| {v['commits_per_s']} | {curve or '—'} | {v['files']} "
                         f"| {v['checkpoints']} | {v['open_s']} | {v['open_and_read_s']} |")
        lines += ["", f"Read time without upkeep / with upkeep: {u['read_ratio_without_to_with']}x. deltalake writes a "
                  "checkpoint every 100 versions by itself in both variants; the difference is compaction.",
                  *([f"Note: {u['note']}"] if u.get("note") else []), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
