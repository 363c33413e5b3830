"""Peak memory of a run against its bound, whatever the backlog (docs/DESIGN.md §2 "Memory").

On one local broker, one topic with a backlog of N records (default 10M x ~400 B in 12 partitions). Each
target runs in a child process whose resident memory (RSS, /proc/<pid>/status) is sampled every 0.25 s while
it reads the whole backlog:

  consume   the reference, in the same run: the engine's consumer (same settings), batch ``consume()`` of
            the whole backlog, every value dropped at once (what Kafka reading alone costs);
  engine    the embedded engine, one run over the whole backlog (``max_records_per_run`` above N), once per
            ``--batch-mb`` value;
  stream    the stream process (``ingest-platform stream``'s ``StreamProcess``) over the same backlog, one
            dataset, buffer budget 2 x max_batch_bytes, no upkeep, stopped once every record is committed
            (``--targets`` picks which run; default all three).

The goal checked: peak RSS <= 2 x max_batch_bytes + 300 MiB. Reported per target:
peak RSS, RSS when 10/25/50/75/100 % of the records were read (growth with the backlog shows there), records/s,
and the peak as a ratio of the reference's.

    python benchmarks/memory_bench.py                                # 10M records, batches of 64 and 256 MiB
    python benchmarks/memory_bench.py --records 300000 --batch-mb 8  # a smoke run

Results: benchmarks/results/memory_bench.json and .md (or --out DIR).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
MIB = 1 << 20
#: The bound DESIGN §2 states: two batches plus the process's own footprint (interpreter, libraries, buffers).
FIXED_ALLOWANCE_MIB = 300
SAMPLE_S = 0.25
PRODUCE_CHUNK = 1_000_000


# ---------------------------------------------------------------------------------------------------------
# Children: each prints one JSON line per progress step ({"records": n}) and a last {"done": {...}}.


def child_consume(bootstrap: str, topic: str, partitions: int, records: int) -> None:
    from confluent_kafka import TopicPartition

    from ingest_platform.kafka.client import KafkaConnection

    consumer = KafkaConnection(bootstrap).consumer(f"memory-bench-{time.time_ns()}")
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    seen, step, started = 0, max(1, records // 50), time.perf_counter()
    while seen < records:
        batch = consumer.consume(num_messages=10_000, timeout=1.0)
        for message in batch:
            if message.error() is None:
                message.value()
                seen += 1
        del batch
        if seen // step != (seen - 10_000) // step:
            print(json.dumps({"records": seen}), flush=True)
    consumer.close()
    print(json.dumps({"done": {"records": seen, "seconds": time.perf_counter() - started}}), flush=True)


def child_engine(bootstrap: str, topic: str, batch_bytes: int, lake_root: str) -> None:
    from ingest_platform.catalog import parse_catalog_text
    from ingest_platform.engines.embedded.engine import EmbeddedEngine
    from ingest_platform.kafka.client import KafkaConnection
    from ingest_platform.lake.tables import LakeLocation

    (dataset,) = parse_catalog_text(
        f"datasets:\n  - {{name: memory, source: bench, topic: {topic}, format: json, mode: append, "
        f"max_records_per_run: 1000000000, max_batch_bytes: {batch_bytes}}}\n"
    )

    class Progress(logging.Handler):
        records = 0

        def emit(self, record: logging.LogRecord) -> None:
            text = record.getMessage()
            if "committed version" in text:
                self.records += int(text.split(": ")[2].split(" rows")[0])
                print(json.dumps({"records": self.records}), flush=True)

    log = logging.getLogger("memory_bench")
    log.setLevel(logging.INFO)
    log.addHandler(Progress())
    report = EmbeddedEngine(KafkaConnection(bootstrap), LakeLocation(lake_root), log=log).run(dataset)
    print(json.dumps({"done": {"records": report.records, "seconds": report.duration_s,
                               "commits": len(report.commits)}}), flush=True)  # fmt: skip


def child_stream(bootstrap: str, topic: str, batch_bytes: int, lake_root: str, total: int) -> None:
    import threading as _threading

    from ingest_platform.catalog import parse_catalog_text
    from ingest_platform.kafka.client import KafkaConnection
    from ingest_platform.lake.tables import LakeLocation
    from ingest_platform.streaming.process import StreamProcess, StreamSettings

    (dataset,) = parse_catalog_text(
        f"datasets:\n  - {{name: memory, source: bench, topic: {topic}, format: json, mode: append, "
        f"max_batch_bytes: {batch_bytes}}}\n"
    )
    committed, finished, started = [0], _threading.Event(), time.perf_counter()

    def on_commit(event) -> None:
        committed[0] += event.records
        print(json.dumps({"records": committed[0]}), flush=True)
        if committed[0] >= total:
            finished.set()

    settings = StreamSettings(trigger_interval_s=5.0, max_buffer_bytes=2 * batch_bytes, upkeep=None)
    process = StreamProcess([dataset], KafkaConnection(bootstrap), LakeLocation(lake_root), settings,
                            on_commit=on_commit)  # fmt: skip
    outcome = process.run(stop_event=finished)
    failed = {name: state.error for name, state in outcome.states.items() if state.error}
    if failed:
        raise SystemExit(f"the stream failed: {failed}")
    print(json.dumps({"done": {"records": committed[0], "seconds": time.perf_counter() - started}}), flush=True)


# ---------------------------------------------------------------------------------------------------------
# The parent: one broker and topic, each target in a child, RSS sampled from /proc.


def rss_mib(pid: int) -> tuple[float, float] | None:
    """(RSS, anonymous RSS) in MiB: RSS also counts the libraries' code pages the process has touched (file
    backed, shared, reclaimable: ~145 MiB for deltalake's and pyarrow's binaries), anonymous RSS is the
    memory the process itself holds."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["RssAnon"].split()[0]) / 1024
    except (OSError, KeyError, ValueError):
        return None


def run_child(args: list[str], total: int, timeout_s: float) -> dict:
    """Start a child, sample its RSS until it ends; RSS over time and at each progress line."""
    process = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)
    started = time.monotonic()
    samples: list[tuple[float, float, float]] = []  # (seconds, RSS MiB, anonymous RSS MiB)
    progress: list[tuple[float, int]] = []  # (seconds, records read)
    done: dict = {}

    def read_output() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if "records" in event:
                progress.append((time.monotonic() - started, int(event["records"])))
            if "done" in event:
                done.update(event["done"])

    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()
    while process.poll() is None:
        sample = rss_mib(process.pid)
        if sample is not None:
            samples.append((round(time.monotonic() - started, 2), round(sample[0], 1), round(sample[1], 1)))
        if time.monotonic() - started > timeout_s:
            process.kill()
            raise RuntimeError(f"child {args[:2]} did not finish within {timeout_s:.0f} s")
        time.sleep(SAMPLE_S)
    reader.join(10)
    if process.returncode != 0 or done.get("records") != total:
        raise RuntimeError(f"child {args[:2]} exited {process.returncode} after {done.get('records')} of {total}")
    return summarize(samples, progress, done, total)


def summarize(samples: list[tuple[float, float, float]], progress: list[tuple[float, int]], done: dict,
              total: int) -> dict:  # fmt: skip
    def rss_at(share: float) -> float | None:
        """The highest RSS sampled up to the moment ``share`` of the records had been read."""
        reached = next((t for t, n in progress if n >= share * total), None)
        seen = [rss for t, rss, _ in samples if reached is not None and t <= reached]
        return max(seen) if seen else None

    return {
        "peak_rss_mib": max(rss for _, rss, _ in samples),
        "peak_anon_rss_mib": max(anon for _, _, anon in samples),
        "rss_by_share_read": {f"{int(s * 100)}%": rss_at(s) for s in (0.1, 0.25, 0.5, 0.75, 1.0)},
        "records_per_s": round(done["records"] / done["seconds"]) if done.get("seconds") else None,
        "seconds": round(done.get("seconds", 0.0), 2),
        "samples": samples,
    }


def produce_backlog(bootstrap: str, topic: str, records: int, record_bytes: int) -> float:
    from ingest_platform.dev.demo_data import produce
    from ingest_platform.kafka.client import KafkaConnection

    sys.path.insert(0, str(Path(__file__).parent))
    from ingest_bench import make_values

    distinct = make_values(min(records, 20_000), record_bytes)
    kafka = KafkaConnection(bootstrap)
    started, sent = time.perf_counter(), 0
    while sent < records:
        count = min(PRODUCE_CHUNK, records - sent)
        produce(kafka, topic, ((str(sent + i).encode(), distinct[(sent + i) % len(distinct)][1])
                               for i in range(count)))  # fmt: skip
        sent += count
    return records / (time.perf_counter() - started)


#: Target name -> child arguments.
TARGETS = {
    "consume": lambda ctx, _batch: ["--child", "consume", ctx["bootstrap"], ctx["topic"], str(ctx["partitions"]),
                                    str(ctx["records"])],
    "engine": lambda ctx, batch: ["--child", "engine", ctx["bootstrap"], ctx["topic"], str(batch),
                                  str(ctx["work"] / f"lake-{batch}")],
    "stream": lambda ctx, batch: ["--child", "stream", ctx["bootstrap"], ctx["topic"], str(batch),
                                  str(ctx["work"] / f"lake-{batch}"), str(ctx["records"])],
}  # fmt: skip


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        kind, rest = sys.argv[2], sys.argv[3:]
        if kind == "consume":
            child_consume(rest[0], rest[1], int(rest[2]), int(rest[3]))
        elif kind == "stream":
            child_stream(rest[0], rest[1], int(rest[2]), rest[3], int(rest[4]))
        else:
            child_engine(rest[0], rest[1], int(rest[2]), rest[3])
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=10_000_000)
    parser.add_argument("--record-bytes", type=int, default=400)
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--batch-mb", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--targets", nargs="+", choices=["engine", "stream"], default=["engine", "stream"],
                        help="Measured targets besides the reference.")
    parser.add_argument("--timeout", type=float, default=3600, help="Seconds allowed per target.")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    from ingest_platform.dev.local_kafka import LocalKafka, create_topic

    work = Path(tempfile.mkdtemp(prefix="memory-bench-"))
    runs = []
    try:
        with LocalKafka(heap="1g") as broker:
            topic = "bench.memory"
            create_topic(broker.bootstrap, topic, args.partitions, {"compression.type": "snappy"})
            produce_rps = produce_backlog(broker.bootstrap, topic, args.records, args.record_bytes)
            ctx = {"bootstrap": broker.bootstrap, "topic": topic, "partitions": args.partitions,
                   "records": args.records, "work": work}  # fmt: skip
            reference = run_child(TARGETS["consume"](ctx, 0), args.records, args.timeout)
            runs.append({"target": "consume", "batch_mib": None, **reference})
            for target, batch_mb in ((t, b) for t in args.targets for b in args.batch_mb):
                measured = run_child(TARGETS[target](ctx, batch_mb * MIB), args.records, args.timeout)
                bound = 2 * batch_mb + FIXED_ALLOWANCE_MIB
                runs.append({"target": target, "batch_mib": batch_mb, "bound_mib": bound,
                             "rss_within_bound": measured["peak_rss_mib"] <= bound,
                             "within_bound": measured["peak_anon_rss_mib"] <= bound,
                             "peak_vs_reference": round(measured["peak_rss_mib"] / reference["peak_rss_mib"], 2),
                             **measured})  # fmt: skip
                shutil.rmtree(work / f"lake-{batch_mb * MIB}", ignore_errors=True)
            kafka_version = broker.kafka_version
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "benchmark": "memory_bench",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "load_average_at_end": os.getloadavg()},  # fmt: skip
        "kafka_version": kafka_version,
        "records": args.records,
        "record_bytes": args.record_bytes,
        "partitions": args.partitions,
        "produce_records_per_s": round(produce_rps),
        "bound": f"peak anonymous RSS <= 2 x max_batch_bytes + {FIXED_ALLOWANCE_MIB} MiB (RSS beside it)",
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "memory_bench.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "memory_bench.md").write_text(markdown(result))
    print(markdown(result))
    return 0 if all(r.get("within_bound", True) for r in runs) else 1


def yes(run: dict, key: str) -> str:
    return "—" if key not in run else ("yes" if run[key] else "NO")


def markdown(r: dict) -> str:
    shares = ("10%", "25%", "50%", "75%", "100%")
    lines = [
        f"# memory_bench — {r['records']:,} records x ~{r['record_bytes']} B backlog, {r['partitions']} partitions",
        "",
        f"{r['date']}, {r['machine']['cores']} cores (shared; load average at the end "
        f"{r['machine']['load_average_at_end'][0]:.1f}), Kafka {r['kafka_version']}, Python {r['machine']['python']}. "
        f"Goal: {r['bound']}.",
        "",
        "| target | max_batch_bytes | peak anon MiB | peak RSS MiB | bound MiB | anon within | RSS within | "
        "RSS / reference | " + " | ".join(f"RSS @{s}" for s in shares) + " | records/s |",
        "|---|---:|---:|---:|---:|---|---|---:|" + "---:|" * len(shares) + "---:|",
    ]
    for run in r["runs"]:
        at = run["rss_by_share_read"]
        batch = f"{run['batch_mib']} MiB" if run["batch_mib"] else "—"
        lines.append(
            f"| {run['target']} | {batch} | {run['peak_anon_rss_mib']:,.0f} | {run['peak_rss_mib']:,.0f} | "
            f"{run.get('bound_mib', '—')} | {yes(run, 'within_bound')} | {yes(run, 'rss_within_bound')} | "
            f"{run.get('peak_vs_reference', 1.0):.2f} | "
            + " | ".join(f"{at[s]:,.0f}" if at[s] is not None else "—" for s in shares)
            + f" | {run['records_per_s']:,} |"
        )
    lines += ["", f"Producing the backlog: {r['produce_records_per_s']:,} records/s. The reference (`consume`) reads "
              "the backlog with the engine's consumer settings and drops every value: what Kafka reading alone "
              "costs. RSS @p% is the highest sample until p % of the records had been read. Anonymous RSS is the "
              "memory the process holds; RSS adds the code pages of the libraries it ran (deltalake's and pyarrow's "
              "binaries: file backed, shared, reclaimable, ~145 MiB once a commit ran).", ""]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
