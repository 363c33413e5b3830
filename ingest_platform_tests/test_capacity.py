"""The capacity planner: every worked example of the tuning guide, the engine rule, `ingest-platform plan`."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ingest_platform.capacity import (
    MB,
    PlannerSettings,
    engine_choice,
    executor_seconds,
    executors,
    files_per_batch,
    kafka_partitions,
    plan_dataset,
    recommend_engine,
    shuffle_partitions,
)
from ingest_platform.catalog import parse_catalog_text
from ingest_platform.cli.main import main


def dataset(**fields):
    entry = {"name": "users", "source": "inventory", "topic": "mysql.inventory.users", "format": "json", **fields}
    return parse_catalog_text(json.dumps({"datasets": [entry]}))[0]


@pytest.mark.parametrize(
    "target_rps, per_partition, partitions",
    [
        (100_000, 1_000, 100),  # "100,000 records/sec ÷ 1,000 records/sec per partition = 100 partitions"
        (50_000, 1_000, 50),  # the kafka-topics example's 50 partitions
        (1_000, 1_000, 1),  # the guide's baseline: 1K rps
        (100_001, 1_000, 101),  # rounded up: a partition may not run over its throughput
        (1, 1_000, 1),  # at least one
    ],
)
def test_partitions_are_target_over_per_partition_throughput(target_rps, per_partition, partitions):
    assert kafka_partitions(target_rps, per_partition) == partitions


def test_executor_example_of_the_guide():
    # "(100,000 × 30) / 1,000 = 3,000 executor-seconds; with 30s batches: 100 executors minimum"
    assert executor_seconds(100_000, 30, 1_000) == 3_000
    assert executors(100_000, 30, 1_000, batch_interval_s=30) == 100


@pytest.mark.parametrize("executors_, rps", [(10, 10_000), (50, 50_000), (100, 100_000), (200, 200_000)])
def test_scaling_characteristics_of_the_guide(executors_, rps):
    # "Throughput vs Resources (Linear Scaling): 10 executors ~10K records/sec ... 200 executors ~200K"
    assert executors(rps, 30, 1_000, 30) == executors_


def test_float_noise_does_not_add_an_executor():
    assert executors(0.3 * 10_000, 0.1 * 3, 1_000, 0.1 * 3) == 3  # 0.1*3 = 0.30000000000000004


@pytest.mark.parametrize("cores, factor, partitions", [(200, 2, 400), (134, 3, 402), (100, 3, 300), (0, 2, 1)])
def test_shuffle_partitions_are_two_to_three_times_the_cores(cores, factor, partitions):
    # "spark.sql.shuffle.partitions=400  # 2-3x number of cores": 400 = 2 × 200 cores
    assert shuffle_partitions(cores, factor) == partitions


@pytest.mark.parametrize(
    "data_bytes, target_bytes, files",
    [
        (1024 * MB, 256 * MB, 4),  # 1 GB of data, the guide's 256 MB block size
        (1_200_000_000, 256 * MB, 4),  # 4.47 -> 4: `(dataSize / targetFileSize).toInt` truncates
        (10 * MB, 128 * MB, 1),  # math.max(1, ...): never zero files
        (0, 128 * MB, 1),
        (1024 * MB, 1024 * MB, 1),  # at the guide's 1 GB maximum
    ],
)
def test_files_are_data_size_over_target_file_size(data_bytes, target_bytes, files):
    assert files_per_batch(data_bytes, target_bytes) == files


def test_plan_of_the_guide_example_dataset():
    plan = plan_dataset(dataset(expected={"peak_rps": 100_000, "record_bytes": 400}, engine="auto"))
    assert (plan.partitions, plan.executor_seconds, plan.executors) == (100, 3_000, 100)
    assert plan.cores == 500 and plan.shuffle_partitions == 1_000  # 100 executors × 5 cores × 2
    # 100,000 × 400 B × 30 s = 1,144.4 MB per batch; / 256 MB = 4 files of 286 MB (inside 128 MB–1 GB)
    assert plan.files_per_batch == 4 and 128 <= plan.file_mb <= 1024
    assert plan.engine == "spark" and plan.configured_engine == "auto"


def test_small_batches_are_flagged_against_the_minimum_file_size():
    plan = plan_dataset(dataset(expected={"peak_rps": 2_000, "record_bytes": 300}))
    assert plan.files_per_batch == 1
    assert any("below the 128 MB minimum file size" in note for note in plan.notes)


def test_without_expected_load_the_slo_throughput_is_planned():
    plan = plan_dataset(dataset(slo={"throughput_rps": 5_000}))
    assert plan.basis == "slo" and plan.partitions == 5 and plan.files_per_batch is None
    assert plan.engine == "embedded"


def test_settings_override_the_guide_defaults():
    settings = PlannerSettings(partition_throughput_rps=5_000, executor_capacity_rps=2_000, executor_cores=4,
                               shuffle_factor=3, target_file_size_mb=512)
    plan = plan_dataset(dataset(expected={"peak_rps": 100_000, "record_bytes": 400}), settings)
    assert (plan.partitions, plan.executors, plan.shuffle_partitions) == (20, 50, 600)
    assert plan.target_file_mb == 512 and plan.files_per_batch == 2
    with pytest.raises(ValueError, match="partition_throughput_rps must be > 0"):
        PlannerSettings(partition_throughput_rps=0)


@pytest.mark.parametrize(
    "peak, record_bytes, engine, says",
    [
        (None, None, "embedded", "no expected load"),
        (2_000, 400, "embedded", "within the 50% headroom"),
        (79_000, 400, "embedded", "within the 50% headroom"),  # 79,000 <= 0.5 × 158,374
        (80_000, 400, "spark", "above the 50% headroom"),
        (10_000, 4_000, "spark", "above the 50% headroom"),  # 38 MB/s of 4 KB records > 30.4 MB/s
        (200_000, 400, "spark", "no single embedded process can keep up"),
    ],
)
def test_engine_rule(peak, record_bytes, engine, says):
    choice = engine_choice(peak, record_bytes)
    assert choice.engine == engine and says in choice.reason


def test_recommend_engine_takes_a_dataset():
    assert recommend_engine(dataset(expected={"peak_rps": 100_000, "record_bytes": 400})) == "spark"
    assert recommend_engine(dataset()) == "embedded"


def test_plan_command_table_and_json(tmp_path):
    catalog = tmp_path / "c.yaml"
    catalog.write_text(
        "datasets:\n"
        "  - {name: users, source: inventory, topic: mysql.inventory.users, format: json, engine: auto,\n"
        "     expected: {peak_rps: 100000, record_bytes: 400}}\n"
        "  - {name: clicks, source: web, topic: web.clicks, format: json}\n"
    )
    table = CliRunner().invoke(main, ["plan", "--catalog", str(catalog)])
    assert table.exit_code == 0, table.output
    assert "users" in table.output and "spark" in table.output
    result = CliRunner().invoke(main, ["plan", "--catalog", str(catalog), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["dataset"] for r in rows] == ["users", "clicks"]
    for key in ("dataset", "partitions", "executors", "shuffle_partitions", "files_per_batch", "engine"):
        assert key in rows[0]
    assert (rows[0]["partitions"], rows[0]["executors"], rows[0]["files_per_batch"]) == (100, 100, 4)
    one = CliRunner().invoke(main, ["plan", "users", "--catalog", str(catalog), "--json",
                                    "--partition-throughput", "2000"])
    assert [r["partitions"] for r in json.loads(one.output)] == [50]
    missing = CliRunner().invoke(main, ["plan", "nope", "--catalog", str(catalog)])
    assert missing.exit_code == 1 and "no dataset named 'nope'" in missing.output
