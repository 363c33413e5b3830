"""Sharded stream workers (docs/DESIGN.md §12) against the session broker: the dataset -> partition map is
Kafka's own partitioner, a ledger conflict stops the dataset and the owner serves it again only after the
group coordinator confirms it, and worker processes scaled 1 -> 2 -> 3 -> 1 (one SIGKILL) hand datasets over
with no record lost or doubled and never two writers of one table."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

import pytest

from ingest_platform.dev.demo_data import produce, records
from ingest_platform.streaming.events import CONFLICT, RUNNING, STOPPED, DatasetState
from ingest_platform.streaming.process import StreamSettings
from ingest_platform.streaming.shard_map import ShardSettings, murmur2, shard_map, shard_of
from ingest_platform.streaming.sharding import ShardedStream, ShardError, ensure_coordination_topic
from ingest_platform_tests.helpers import json_dataset
from ingest_platform_tests.stream_helpers import SteadyProducer, assert_exactly_once, table_rows, wait_for

pytestmark = [pytest.mark.kafka]


def test_murmur2_matches_kafkas_reference_values():
    # org.apache.kafka.common.utils.UtilsTest.testMurmur2
    cases = {b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536,
             b"a-little-bit-longer-string": -1486304829, b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
             b"abc": 479470107}  # fmt: skip
    assert {data: murmur2(data) for data in cases} == cases


def test_a_dataset_lands_where_kafkas_default_partitioner_puts_its_name(kafka, make_topic):
    """librdkafka's murmur2 partitioner (the Java client's default) sends a record keyed by the dataset's name to
    the partition ``shard_of`` computes."""
    from confluent_kafka import Producer

    names = [f"dataset_{i}" for i in range(40)] + ["orders", "clicks", "payments", "ünïcode"]
    topics = {make_topic(partitions=partitions): partitions for partitions in (7, 64)}
    landed: dict[tuple[str, str], int] = {}
    producer = Producer({**kafka.producer_config(), "partitioner": "murmur2"})
    for topic in topics:
        for name in names:
            producer.produce(topic, key=name.encode(), value=b"x",
                             on_delivery=lambda e, m: landed.__setitem__((m.topic(), m.key().decode()), m.partition()))
    assert producer.flush(30) == 0
    assert landed == {(topic, name): shard_of(name, count) for topic, count in topics.items() for name in names}
    datasets = [json_dataset("t", name=f"d{i}") for i in range(10)]
    shards = shard_map(datasets, 4)
    assert sorted(d.name for found in shards.values() for d in found) == sorted(d.name for d in datasets)


def test_the_coordination_topic_is_created_once_and_its_partition_count_enforced(kafka):
    shard = ShardSettings(f"g{uuid.uuid4().hex[:8]}", partitions=5)
    ensure_coordination_topic(kafka, shard)
    ensure_coordination_topic(kafka, shard)  # exists with 5: fine
    with pytest.raises(ShardError, match=r"has 5 partitions, but --shard-partitions is 6.*--shard-partitions 5"):
        ensure_coordination_topic(kafka, ShardSettings(shard.group, partitions=6))
    with pytest.raises(ValueError, match="use letters, digits"):
        ShardSettings("no spaces")


class ShardThread:
    """A ``ShardedStream`` running on a thread (no signals), recording its datasets' state changes."""

    def __init__(self, datasets, kafka, lake, shard: ShardSettings, trigger_s: float = 0.3):
        self.states: list[DatasetState] = []
        settings = StreamSettings(trigger_interval_s=trigger_s, metadata_refresh_s=0.5, upkeep=None)
        self.runner = ShardedStream(datasets, kafka, lake, settings, shard, on_state=self.states.append)
        self.outcome = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.outcome = self.runner.run()

    def __enter__(self) -> ShardThread:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self):
        self.runner.stop()
        self.thread.join(60)
        assert not self.thread.is_alive(), "the sharded worker did not stop"
        return self.outcome


def test_a_conflict_stops_the_dataset_and_the_confirmed_owner_serves_it_again(kafka, lake, make_topic):
    """A batch run racing a sharded worker: the worker's commit that loses is not re-planned and retried — the
    loop stops (state stopped, kind conflict); the group coordinator then confirms the worker still owns the
    partition, and the dataset is served again from its ledger. Every record once."""
    from ingest_platform.engines.embedded.engine import EmbeddedEngine
    from ingest_platform.lake.commit import ConcurrentWriterError, LakeWriteError

    topic = make_topic(partitions=2)
    dataset = json_dataset(topic)
    produce(kafka, topic, records("orders", 100, seed=1))
    EmbeddedEngine(kafka, lake).run(dataset)
    produced = 100
    shard = ShardSettings(f"g{uuid.uuid4().hex[:8]}", partitions=3, session_timeout_s=10)
    with ShardThread([dataset], kafka, lake, shard, trigger_s=1.5) as worker:
        wait_for(lambda: worker.runner.serving() == [dataset.name], what="the worker to serve the dataset")

        def conflicts() -> list[DatasetState]:
            return [s for s in worker.states if s.status == STOPPED and s.error_kind == CONFLICT]

        for round_ in range(8):  # the stream's open batch (1.5 s) loses to the run's commit, sooner or later
            produce(kafka, topic, records("orders", 50, seed=2 + round_, start=produced))
            produced += 50
            try:
                EmbeddedEngine(kafka, lake).run(dataset)
            except (ConcurrentWriterError, LakeWriteError):
                pass  # the stream committed first this time
            if conflicts():
                break
        assert conflicts(), "the run never won against the stream"
        (conflict, *_) = conflicts()
        assert "another writer" in conflict.error and "DESIGN §12" in conflict.error
        index = worker.states.index(conflict)
        wait_for(lambda: any(s.status == RUNNING for s in worker.states[index:]), what="the dataset served again")
        produce(kafka, topic, records("orders", 50, seed=99, start=produced))
        produced += 50
        wait_for(lambda: table_rows(lake, dataset) == produced, what="every record once")
    assert worker.outcome.clean
    assert_exactly_once(lake, dataset, produced)


# ---------------------------------------------------------------------------------------------------------
# Worker processes: scale 1 -> 2 -> 3 -> 1

CLI = str(Path(sys.executable).parent / "ingest-platform")
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ (.*)$")
SERVING = re.compile(r"^shard \S+: .*: serving (.+)$")
RELEASED = re.compile(r"^shard \S+: .*: released (.+) \(drained in [\d.]+ s\)$")


def distinct_shard_names(count: int, partitions: int) -> list[str]:
    """Dataset names on ``count`` different coordination partitions (so every worker gets datasets)."""
    names: dict[int, str] = {}
    for i in range(1000):
        names.setdefault(shard_of(f"events_{i}", partitions), f"events_{i}")
        if len(names) == count:
            return sorted(names.values())
    raise AssertionError("no such names")


def external_catalog(folder: Path, topics: dict[str, str], trigger_s: float) -> Path:
    """A catalog of continuous json datasets (name -> topic) in one stream group run by external workers."""
    path = folder / "catalog.yaml"
    path.write_text("datasets:\n" + "".join(
        f"  - {{name: {name}, source: test, topic: {topic}, format: json, continuous: true, "
        f"trigger_interval_s: {trigger_s}, stream_runner: external}}\n" for name, topic in topics.items()))  # fmt: skip
    return path


def external_datasets(folder: Path, make_topic, partitions: int, trigger_s: float):  # type: ignore[no-untyped-def]
    """One dataset per coordination partition, each with its own 2-partition topic, in an external catalog:
    (names, {name: topic}, catalog path, lake, {name: Dataset})."""
    from ingest_platform.lake.tables import LakeLocation

    names = distinct_shard_names(partitions, partitions)
    topics = {name: make_topic(partitions=2) for name in names}
    catalog = external_catalog(folder, topics, trigger_s=trigger_s)
    datasets = {name: json_dataset(topic, name=name) for name, topic in topics.items()}
    return names, topics, catalog, LakeLocation(str(folder / "lake")), datasets


def test_a_shard_group_serves_only_external_stream_groups(tmp_path):
    """``--shard-group`` takes the continuous datasets whose stream group has ``stream_runner: external`` (the
    Dagster supervisor runs the others); none: a message that says what to set."""
    from click.testing import CliRunner

    from ingest_platform.catalog import load_catalog
    from ingest_platform.cli.stream import select_external_datasets, stream

    catalog = tmp_path / "catalog.yaml"
    catalog.write_text("datasets:\n"
                       "  - {name: a, source: s1, topic: a, format: json, continuous: true}\n"
                       "  - {name: b, source: s2, topic: b, format: json, continuous: true, stream_runner: external}\n"
                       "  - {name: c, source: s2, topic: c, format: json, stream_runner: external}\n")  # fmt: skip
    assert [d.name for d in select_external_datasets(load_catalog(catalog), None)] == ["b"]
    done = CliRunner().invoke(stream, ["--shard-group", "g", "--group", "s1", "--catalog", str(catalog)])
    assert done.exit_code == 1 and "no continuous dataset with stream_runner: external in stream group 's1'" in (
        done.output) and "external stream groups: s2" in done.output, done.output  # fmt: skip
    done = CliRunner().invoke(stream, ["--shard-group", "g", "b", "--catalog", str(catalog)])
    assert done.exit_code == 2 and "do not name datasets" in done.output, done.output


class Worker:
    """``ingest-platform stream --shard-group`` as a child process; its log (stderr, INFO) in a file."""

    def __init__(self, name: str, folder: Path, catalog: Path, bootstrap: str, lake_root: str, group: str,
                 partitions: int, session_timeout_s: float):  # fmt: skip
        self.name = name
        self.log_path = folder / f"worker-{name}.log"
        self.ended_at: float | None = None  # wall clock when it was killed or exited
        env = {**os.environ, "INGEST_KAFKA_BOOTSTRAP": bootstrap}
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [CLI, "stream", "--shard-group", group, "--shard-partitions", str(partitions),
                 "--shard-session-timeout", str(session_timeout_s), "--catalog", str(catalog),
                 "--lake-root", lake_root, "--no-upkeep", "-v"],
                env=env, stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip

    def lines(self) -> list[tuple[float, str]]:
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            match = LOG_LINE.match(line)
            if match:
                at = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                found.append((at, match.group(2)))
        return found

    @property
    def session(self) -> str | None:
        match = re.search(r"worker session (\w+)", self.log_path.read_text(errors="replace"))
        return match.group(1) if match else None

    def intervals(self) -> dict[str, list[list[float]]]:
        """Per dataset, the [served from, released at] wall-clock intervals its log states; an interval still
        open ends when the process ended (killed: nothing after that can be its commit)."""
        spans: dict[str, list[list[float]]] = {}
        for at, message in self.lines():
            if match := SERVING.match(message):
                for name in match.group(1).split(", "):
                    if name != "no dataset":
                        spans.setdefault(name, []).append([at, float("inf")])
            elif match := RELEASED.match(message):
                for name in match.group(1).split(", "):
                    spans[name][-1][1] = at
        for found in spans.values():
            if found[-1][1] == float("inf") and self.ended_at is not None:
                found[-1][1] = self.ended_at
        return spans

    def serving(self) -> set[str]:
        return {name for name, spans in self.intervals().items() if spans[-1][1] == float("inf")}

    def signal(self, sig: int, timeout_s: float = 60) -> int:
        self.process.send_signal(sig)
        code = self.process.wait(timeout_s)
        self.ended_at = time.time()
        return code

    def tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-40:])


@pytest.mark.slow
def test_scaling_workers_1_2_3_1_hands_datasets_over_exactly_once(kafka, kafka_broker, tmp_path, make_topic):
    """Six datasets under a steady producer; workers started and stopped (SIGTERM, one SIGKILL): every table
    equals its topic (no offset missing or twice), and each table's commits come from one worker at a time —
    every commit lies in its worker's serving interval, and two workers' intervals never overlap."""
    from ingest_platform.lake.commit import run_metadata_of

    partitions, session_timeout = 6, 6.0
    names, topics, catalog, lake, datasets = external_datasets(tmp_path, make_topic, partitions, 0.5)
    group = f"scale{uuid.uuid4().hex[:6]}"
    workers: dict[str, Worker] = {}

    def start(name: str) -> Worker:
        workers[name] = Worker(name, tmp_path, catalog, kafka_broker.bootstrap, lake.root, group, partitions,
                               session_timeout)  # fmt: skip
        return workers[name]

    def live() -> list[Worker]:
        return [w for w in workers.values() if w.process.poll() is None]

    def settled(counts: dict[str, int]) -> bool:
        """Each named worker serves that many datasets, and every dataset is served by exactly one."""
        serving = {w.name: w.serving() for w in live()}
        served = [d for found in serving.values() for d in found]
        return sorted(served) == names and {n: len(serving.get(n, ())) for n in counts} == counts

    producer = SteadyProducer(kafka, list(topics.values()), batch=10, every_s=0.1)
    producer.start()
    try:
        start("a")
        wait_for(lambda: settled({"a": 6}), timeout_s=90, what="worker a to serve every dataset")
        wait_for(lambda: all(table_rows(lake, d) > 0 for d in datasets.values()), what="a first commit per table")
        start("b")
        wait_for(lambda: settled({"a": 3, "b": 3}), timeout_s=90, what="a and b to share the datasets")
        time.sleep(2)
        start("c")
        wait_for(lambda: settled({"a": 2, "b": 2, "c": 2}), timeout_s=90, what="three workers, two datasets each")
        time.sleep(2)
        assert workers["b"].signal(signal.SIGTERM) == 0, workers["b"].tail()  # scale-down: drain, leave
        wait_for(lambda: settled({"a": 3, "c": 3}), timeout_s=60, what="b's datasets taken over")
        time.sleep(2)
        workers["c"].signal(signal.SIGKILL)  # no drain, no leave: its datasets move after the session timeout
        wait_for(lambda: settled({"a": 6}), timeout_s=60, what="c's datasets taken over after its session")
        time.sleep(2)
    finally:
        producer.stop()
        for worker in live():
            if worker.name != "a":
                worker.signal(signal.SIGKILL)
    def caught_up() -> bool:
        return all(table_rows(lake, datasets[name]) >= producer.by_topic[topic] for name, topic in topics.items())

    try:
        wait_for(caught_up, timeout_s=90, what="every record in its table")
    finally:
        code = workers["a"].signal(signal.SIGTERM)
    assert code == 0, workers["a"].tail()

    sessions = {w.session: w.name for w in workers.values()}
    assert None not in sessions and len(sessions) == 3
    intervals = {w.name: w.intervals() for w in workers.values()}
    handovers = 0
    for name, topic in topics.items():
        assert_exactly_once(lake, datasets[name], producer.by_topic[topic])
        spans = sorted((begin, end, w) for w, found in intervals.items() for begin, end in found.get(name, []))
        for (_, end, first), (begin, _, second) in zip(spans, spans[1:]):
            assert end <= begin, f"{name}: {first} served it until {end}, {second} from {begin}: two owners at once"
        handovers += len(spans) - 1
        history = lake.open_table(datasets[name].table_path).history()
        commits = sorted((h["version"], h["timestamp"] / 1000, run_metadata_of(h)["stream"]) for h in history
                         if run_metadata_of(h))  # fmt: skip
        for version, committed, session in commits:
            worker = sessions[session]
            assert any(begin <= committed <= end for begin, end in intervals[worker][name]), (
                f"{name} v{version} committed by {worker} at {committed}, outside its intervals "
                f"{intervals[worker][name]}")  # fmt: skip
        writers = [sessions[session] for _, _, session in commits]
        changes = sum(1 for x, y in zip(writers, writers[1:]) if x != y)
        assert changes <= len(spans) - 1, f"{name}: writers {writers} change more often than it was handed over"
    # 1 -> 2: three datasets move; 2 -> 3: two; b leaves: two; c killed: three
    assert handovers >= 10, intervals


@pytest.mark.slow
def test_a_paused_worker_is_fenced_and_never_writes_between_the_new_owners_commits(kafka, kafka_broker, tmp_path,
                                                                                   make_topic):  # fmt: skip
    """A zombie: worker a is frozen (SIGSTOP) with batches open while b takes its datasets over after the
    session timeout. When a resumes, the ledger guard refuses its commits (or the coordinator tells it the
    assignment is lost); it stops those datasets instead of re-planning, and none of its commits lands between
    b's until the group gives it datasets again. Every record once."""
    partitions, session_timeout = 2, 6.0
    names, topics, catalog, lake, datasets = external_datasets(tmp_path, make_topic, partitions, 1)
    group = f"zombie{uuid.uuid4().hex[:6]}"

    def worker(name: str) -> Worker:
        return Worker(name, tmp_path, catalog, kafka_broker.bootstrap, lake.root, group, partitions, session_timeout)

    producer = SteadyProducer(kafka, list(topics.values()), batch=10, every_s=0.1)
    producer.start()
    a = worker("a")
    b = None
    try:
        wait_for(lambda: a.serving() == set(names), timeout_s=90, what="a to serve both datasets")
        wait_for(lambda: all(table_rows(lake, d) > 0 for d in datasets.values()), what="a first commit each")
        time.sleep(0.5)  # a batch is open
        a.process.send_signal(signal.SIGSTOP)
        frozen_at = time.time()
        b = worker("b")
        wait_for(lambda: b.serving() == set(names), timeout_s=90, what="b to take both datasets over")
        wait_for(lambda: all(any(s[0] == b.session for s in sessions_of(lake, d)) for d in datasets.values()),
                 what="b's first commits")  # fmt: skip
        a.process.send_signal(signal.SIGCONT)
        wait_for(lambda: re.search(r"LOST|fenced|another writer moved", a.log_path.read_text()), timeout_s=60,
                 what="a to learn it lost its datasets")  # fmt: skip
        time.sleep(3)
    finally:
        producer.stop()
    try:
        wait_for(lambda: all(table_rows(lake, datasets[n]) >= producer.by_topic[t] for n, t in topics.items()),
                 timeout_s=90, what="every record")  # fmt: skip
    finally:
        codes = [w.signal(signal.SIGTERM) for w in (a, b) if w is not None and w.process.poll() is None]
    assert codes == [0, 0], a.tail() + "\n---\n" + b.tail()
    log = a.log_path.read_text()
    assert "Sharded: this worker may no longer own" in log or "LOST" in log or "fenced" in log
    for name, topic in topics.items():
        assert_exactly_once(lake, datasets[name], producer.by_topic[topic])
        # a's serving spans after it resumed (the group gave it datasets again), in wall-clock time
        a_back = [begin for begin, _ in a.intervals().get(name, []) if begin > frozen_at]
        first_b = min(at for session, at in sessions_of(lake, datasets[name]) if session == b.session)
        late = [at for session, at in sessions_of(lake, datasets[name])
                if session == a.session and at > first_b and not any(at >= begin for begin in a_back)]
        assert late == [], f"{name}: the zombie a committed at {late}, after b's first commit at {first_b}"


def sessions_of(lake, dataset) -> list[tuple[str, float]]:
    """(writer session, commit time) of every ingest commit of the dataset's table, in version order."""
    from ingest_platform.lake.commit import run_metadata_of

    table = lake.open_table(dataset.table_path)
    if table is None:
        return []
    history = sorted(table.history(), key=lambda h: h["version"])
    return [(run["stream"], h["timestamp"] / 1000) for h in history if (run := run_metadata_of(h))]
