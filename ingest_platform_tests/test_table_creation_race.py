"""Two first runs of one dataset racing to create its table: exactly one commits, nothing is doubled
(docs/DESIGN.md §2 "Table creation"). Real broker, real Delta tables; the races are real threads."""

from __future__ import annotations

import json
import threading

import pytest
from deltalake import DeltaTable

from ingest_platform.dev.demo_data import produce, records
from ingest_platform.engines.embedded.engine import EmbeddedEngine
from ingest_platform.engines.run_plan import IngestError
from ingest_platform.lake.commit import AppendRequest, ConcurrentWriterError, LakeWriteError, append_with_ledger
from ingest_platform.lake.tables import LakeLocation
from ingest_platform_tests.helpers import json_dataset, read_table

pytestmark = pytest.mark.kafka


class _LakeThatLetsBWinFirst(LakeLocation):
    """A lake on which run B ingests everything the second time run A finds no table (1: A's plan, 2: A's
    first commit, or the Spark engine's look after its create failed): the window in which two first runs
    used to both create the table (A planned against a missing table)."""

    def __init__(self, root: str, run_b):
        super().__init__(root)
        object.__setattr__(self, "_run_b", run_b)
        object.__setattr__(self, "_missing", 0)

    def open_table(self, table_path: str):
        table = super().open_table(table_path)
        if table is None and not table_path.endswith("_dlq"):
            object.__setattr__(self, "_missing", self._missing + 1)
            if self._missing == 2:
                self._run_b()
        return table


def test_a_first_run_that_finds_the_table_created_under_it_commits_nothing(kafka, tmp_path, make_topic):
    """Deterministic: B creates the table and commits everything between A's plan and A's first commit."""
    topic = make_topic(partitions=2)
    dataset = json_dataset(topic)
    produce(kafka, topic, records("orders", 300))
    root = str(tmp_path / "lake")
    b_reports = []
    racing_lake = _LakeThatLetsBWinFirst(root, lambda: b_reports.append(EmbeddedEngine(kafka, LakeLocation(root))
                                                                        .run(dataset)))  # fmt: skip
    with pytest.raises(ConcurrentWriterError, match="another writer is ingesting this dataset") as failure:
        EmbeddedEngine(kafka, racing_lake).run(dataset)
    assert "Nothing was committed by this run" in str(failure.value)
    assert b_reports[0].records == 300
    frame = read_table(f"{root}/{dataset.table_path}")
    assert frame.height == 300 and frame["order_id"].n_unique() == 300


def _together(work, timeout_s: float = 300) -> list[object]:
    """``work(0)`` and ``work(1)`` in two threads released at the same instant; each one's result or error."""
    outcomes: list[object] = [None, None]
    start = threading.Barrier(2)

    def run(index: int) -> None:
        start.wait()
        try:
            outcomes[index] = work(index)
        except (IngestError, LakeWriteError) as error:
            outcomes[index] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout_s)
    return outcomes


def _race(kafka, dataset, root: str) -> list[object]:
    """Two first runs of the dataset at once."""
    return _together(lambda _index: EmbeddedEngine(kafka, LakeLocation(root)).run(dataset))


@pytest.mark.parametrize("trials", [12])
def test_racing_first_runs_never_both_commit(kafka, tmp_path, make_topic, trials):
    """Many trials of two real first runs at once: one commits, the other fails clearly, no row twice."""
    topic = make_topic(partitions=3)
    produce(kafka, topic, records("orders", 600))
    both_failed = 0
    for trial in range(trials):
        dataset = json_dataset(topic, name=f"race{trial}")
        root = str(tmp_path / f"lake{trial}")
        outcomes = _race(kafka, dataset, root)
        errors = [o for o in outcomes if isinstance(o, Exception)]
        won = [o for o in outcomes if not isinstance(o, Exception)]
        frame = read_table(f"{root}/{dataset.table_path}")
        assert frame.select("_kafka_partition", "_kafka_offset").n_unique() == frame.height, f"trial {trial}: doubled"
        assert frame.height == 600, f"trial {trial}: {frame.height} rows, outcomes {outcomes}"
        assert len(won) == 1, f"trial {trial}: both runs committed (or neither): {outcomes}"
        assert all(isinstance(e, ConcurrentWriterError) for e in errors), errors
        assert "another writer is ingesting this dataset" in str(errors[0])
        both_failed += len(errors) == 2
    assert both_failed == 0


def test_racing_creators_of_a_dead_letter_table_record_each_bad_record_once(tmp_path):
    """The DLQ table (and any table) is created through the same guarded path: of two writers of the same
    first commit, one wins; the other fails naming the concurrent writer."""
    import pyarrow as pa

    lake = LakeLocation(str(tmp_path / "lake"))
    rows = pa.table({"x": pa.array([1, 2, 3], pa.int64())})
    for trial in range(15):
        path = f"s/t{trial}_dlq"

        def write(index: int, path: str = path, name: str = f"t{trial}_dlq") -> int:
            return append_with_ledger(lake, AppendRequest(
                dataset=name, table_path=path, partition_by=(), rows=rows, covered={0: 2}, expected_ledger={},
                run_metadata={"run": index}, target_file_size=1 << 27,
            ))  # fmt: skip

        outcomes = _together(write, 60)
        table = DeltaTable(lake.table_uri(path))
        assert table.to_pyarrow_table().num_rows == 3, f"trial {trial}: {outcomes}"
        assert sum(isinstance(o, int) for o in outcomes) == 1, f"trial {trial}: {outcomes}"
        (error,) = [o for o in outcomes if isinstance(o, Exception)]
        assert isinstance(error, ConcurrentWriterError), error
        creates = [h for h in table.history() if h.get("operation") == "CREATE TABLE"]
        assert len(creates) <= 1, f"trial {trial}: {len(creates)} table-creating commits"
        run = [json.loads(h["ingest_platform.run"]) for h in table.history() if "ingest_platform.run" in h]
        assert len(run) == 1


@pytest.mark.spark
@pytest.mark.slow
def test_racing_first_spark_runs_never_both_commit(kafka, tmp_path, make_topic, spark):
    """The Spark engine's first write (create, then one commit through its transaction) under the same race,
    and a Spark run racing an embedded one: one commits, the other fails as a concurrent writer."""
    from ingest_platform.engines.spark.engine import SparkEngine

    topic = make_topic(partitions=2)
    produce(kafka, topic, records("orders", 400))
    for trial, engines in enumerate([("spark", "spark")] * 3 + [("spark", "embedded")] * 2):
        dataset = json_dataset(topic, name=f"spark_race{trial}", partition_by="[day]",
                               event_time_field="created_at")  # fmt: skip
        root = str(tmp_path / f"lake{trial}")

        def run(index: int, engines=engines, dataset=dataset, root=root) -> object:
            lake = LakeLocation(root)
            engine = SparkEngine(kafka, lake, spark) if engines[index] == "spark" else EmbeddedEngine(kafka, lake)
            return engine.run(dataset)

        outcomes = _together(run)
        frame = read_table(f"{root}/{dataset.table_path}")
        assert frame.height == 400 and frame.select("_kafka_partition", "_kafka_offset").n_unique() == 400, (
            f"trial {trial} {engines}: {frame.height} rows, {outcomes}"
        )
        errors = [o for o in outcomes if isinstance(o, Exception)]
        assert len(errors) == 1, f"trial {trial} {engines}: {outcomes}"
        assert isinstance(errors[0], ConcurrentWriterError), f"trial {trial} {engines}: {errors[0]!r}"
        assert "another writer is ingesting this dataset" in str(errors[0])


def _half_created(kafka, tmp_path, make_topic, run_b_finishes: bool):
    topic = make_topic(partitions=2)
    dataset = json_dataset(topic, name="half_created")
    produce(kafka, topic, records("orders", 300))
    root = str(tmp_path / "lake")
    (tmp_path / "lake" / dataset.table_path / "_delta_log").mkdir(parents=True)  # B's creation, begun
    b_reports: list = []

    def run_b() -> None:
        b_reports.append(EmbeddedEngine(kafka, LakeLocation(root)).run(dataset))

    return dataset, root, b_reports, _LakeThatLetsBWinFirst(root, run_b if run_b_finishes else lambda: None)


@pytest.mark.spark
def test_a_first_spark_run_waits_for_the_table_another_writer_is_creating(kafka, tmp_path, make_topic, spark):
    """delta-spark's create fails while another writer's ``_delta_log`` has no version 0 yet
    (``DELTA_TABLE_NOT_FOUND``): the run waits for that table, then loses to its writer as a concurrent writer."""
    from ingest_platform.engines.spark.engine import SparkEngine

    dataset, root, b_reports, lake = _half_created(kafka, tmp_path, make_topic, run_b_finishes=True)
    with pytest.raises(ConcurrentWriterError, match="another writer created the table .* ingesting this") as failure:
        SparkEngine(kafka, lake, spark).run(dataset)
    assert "Nothing was committed by this run" in str(failure.value)
    assert b_reports[0].records == 300
    frame = read_table(f"{root}/{dataset.table_path}")
    assert frame.height == 300 and frame.select("_kafka_partition", "_kafka_offset").n_unique() == 300


@pytest.mark.spark
def test_a_first_spark_run_names_a_table_creation_that_never_finishes(kafka, tmp_path, make_topic, spark,
                                                                        monkeypatch):  # fmt: skip
    """The other creator died half-way: after its wait the run fails naming the folder and what to do."""
    from ingest_platform.engines.spark import engine as spark_engine

    monkeypatch.setattr(spark_engine, "TABLE_CREATION_WAIT_S", 1.0)
    dataset, root, b_reports, lake = _half_created(kafka, tmp_path, make_topic, run_b_finishes=False)
    with pytest.raises(LakeWriteError) as failure:
        spark_engine.SparkEngine(kafka, lake, spark).run(dataset)
    message = str(failure.value)
    assert not isinstance(failure.value, ConcurrentWriterError), message
    assert f"dataset '{dataset.name}': creating its Delta table at " in message and dataset.table_path in message
    assert "no version 0 appeared within 1 s" in message and "clear it and run again" in message, message
    assert "DELTA_TABLE_NOT_FOUND" in message and "Nothing was committed by this run" in message
    assert b_reports == [] and lake.open_table(dataset.table_path) is None


@pytest.mark.spark
def test_a_first_spark_run_names_a_folder_it_cannot_create_its_table_in(kafka, tmp_path, make_topic, spark):
    """The table's folder holds a file but no Delta log: delta-spark refuses to create there (not a race). The
    run fails naming the folder and what to do, not with Spark's exception."""
    from ingest_platform.engines.spark.engine import SparkEngine

    topic = make_topic(partitions=1)
    dataset = json_dataset(topic, name="not_a_table")
    produce(kafka, topic, records("orders", 20))
    folder = tmp_path / "lake" / dataset.table_path
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("not a table")
    with pytest.raises(LakeWriteError) as failure:
        SparkEngine(kafka, LakeLocation(str(tmp_path / "lake")), spark).run(dataset)
    message = str(failure.value)
    assert not isinstance(failure.value, ConcurrentWriterError), message
    assert "dataset 'not_a_table': creating its Delta table at " in message and dataset.table_path in message
    assert "must be empty or hold this dataset's Delta table" in message and "Nothing was committed" in message
    assert "Traceback" not in message and "py4j" not in message.lower(), message


@pytest.mark.spark
def test_a_first_spark_run_never_writes_into_a_table_created_while_it_read(kafka, tmp_path, make_topic, spark,
                                                                          monkeypatch):  # fmt: skip
    """Another writer creates the table while the Spark run infers its schema, and has not committed yet. Its
    nested fields are in the records' order (the embedded engine's); Spark's inference sorts them. The run
    must not write its batch into that table (a struct cast goes by position): it fails as a concurrent
    writer (before: as a type conflict the producer was told to fix) and commits nothing."""
    from ingest_platform.engines.spark import engine as spark_engine

    topic = make_topic(partitions=2)
    dataset = json_dataset(topic, name="created_while_reading")
    produce(kafka, topic, records("orders", 300))
    elsewhere = str(tmp_path / "elsewhere")  # the other writer's table schema, from an embedded run
    EmbeddedEngine(kafka, LakeLocation(elsewhere)).run(dataset)
    schema = DeltaTable(f"{elsewhere}/{dataset.table_path}").schema().to_arrow()
    uri = str(tmp_path / "lake" / dataset.table_path)
    learn = spark_engine._SparkRun._learn_fields

    def learn_then_another_writer_creates(run, *args, **kwargs):
        learned = learn(run, *args, **kwargs)
        DeltaTable.create(uri, schema, mode="error")  # version 0, no data, no ledger yet
        return learned

    monkeypatch.setattr(spark_engine._SparkRun, "_learn_fields", learn_then_another_writer_creates)
    with pytest.raises(ConcurrentWriterError, match="another writer created the table") as failure:
        spark_engine.SparkEngine(kafka, LakeLocation(str(tmp_path / "lake")), spark).run(dataset)
    assert "Nothing was committed by this run" in str(failure.value)
    table = DeltaTable(uri)
    assert table.version() == 0 and table.to_pyarrow_table().num_rows == 0
