"""The Dagster code location: one asset per dataset, resources from the environment, real materializations."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg
import pytest

from ingest_platform.definitions import build_definitions
from ingest_platform.defs.assets import pool_name
from ingest_platform.dev.demo_data import produce, records
from ingest_platform.settings import DEMO_CATALOG, Settings
from ingest_platform_tests.helpers import read_table

REPO = Path(__file__).resolve().parents[1]


def demo_settings(tmp_path: Path, bootstrap: str = "127.0.0.1:9") -> Settings:
    return Settings(catalog_path=str(DEMO_CATALOG), lake_root=str(tmp_path / "lake"), kafka_bootstrap=bootstrap)


def orders_dataset():
    from ingest_platform.catalog import load_catalog

    return load_catalog(DEMO_CATALOG).get("orders")


def test_demo_catalog_becomes_one_asset_per_dataset(tmp_path):
    defs = build_definitions(demo_settings(tmp_path))
    graph = defs.resolve_asset_graph()
    keys = sorted(key.to_user_string() for key in graph.get_all_asset_keys())
    assert keys == ["analytics/shop/orders_daily",  # the downstream example (defs/example_downstream.py)
                    "lake/billing/payments", "lake/inventory/users", "lake/shop/clicks", "lake/shop/orders"]
    orders = graph.get(dg.AssetKey(["lake", "shop", "orders"]))
    assert orders.group_name == "shop"
    assert orders.kinds == {"kafka", "delta"}
    assert orders.metadata["topic"] == "shop.orders"
    assert orders.tags["ingest/format"] == "json" and orders.tags["ingest/mode"] == "append"
    assert orders.owners == ["team:commerce"]
    assert "Orders placed" in orders.description
    pools = {
        key.to_user_string(): defs.resolve_assets_def(key).op.pool
        for key in graph.get_all_asset_keys() if key.path[0] == "lake"
    }
    assert len(set(pools.values())) == 4  # each dataset in its own pool
    assert pools["lake/shop/orders"] == pool_name(orders_dataset()) == "ingest.shop.orders"


def test_lake_and_kafka_resources_come_from_settings(tmp_path):
    defs = build_definitions(demo_settings(tmp_path, bootstrap="127.0.0.1:1234"))
    assert defs.resources["lake"].root == str(tmp_path / "lake")
    assert defs.resources["kafka"].bootstrap_servers == "127.0.0.1:1234"


def test_an_exported_bootstrap_does_not_redirect_explicit_settings(tmp_path, monkeypatch):
    """The demo builds definitions for its own broker while INGEST_KAFKA_BOOTSTRAP points elsewhere."""
    monkeypatch.setenv("INGEST_KAFKA_BOOTSTRAP", "10.0.0.1:9092")
    kafka = build_definitions(demo_settings(tmp_path, bootstrap="127.0.0.1:1234")).resources["kafka"]
    assert kafka.bootstrap_servers == "127.0.0.1:1234"
    kafka = build_definitions(demo_settings(tmp_path, bootstrap="10.0.0.1:9092")).resources["kafka"]
    assert isinstance(kafka.bootstrap_servers, dg.EnvVar)  # from the environment: resolved at run time


def test_secrets_stay_env_vars(tmp_path, monkeypatch):
    monkeypatch.setenv("INGEST_KAFKA_SASL_PASSWORD", "s3cr3t-value")
    defs = build_definitions(demo_settings(tmp_path))
    kafka = defs.resources["kafka"]
    assert isinstance(kafka.sasl_password, dg.EnvVar)  # resolved at run time, never stored in config
    connection = dg.build_resources({"kafka": kafka}).__enter__().kafka.connection()
    assert connection.security["sasl.password"] == "s3cr3t-value"
    assert "s3cr3t-value" not in repr(connection)


def _env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGEST_")}
    env.update({"DAGSTER_HOME": str(tmp_path / "dagster_home"), **overrides})
    (tmp_path / "dagster_home").mkdir(exist_ok=True)
    return env


def _dagster(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).with_name("dagster")), *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_bad_catalog_fails_the_code_location_load_naming_file_dataset_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets:\n  - {name: orders, source: shop, topic: shop.orders, format: avro}\n")
    done = _dagster("definitions", "validate", "-m", "ingest_platform.definitions",
                    env=_env(tmp_path, INGEST_CATALOG=str(bad)))
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert f"{bad}: dataset 'orders': field 'format'" in output
    # The catalog error alone: no trace into the catalog's code (Dagster still shows the line that raised it).
    assert "catalog.py" not in output and output.count('File "') <= 1, output


@pytest.mark.kafka
@pytest.mark.slow
def test_dagster_asset_materialize_cli_against_the_broker(tmp_path, kafka, kafka_broker, make_topic):
    topic = make_topic(partitions=2)
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(textwrap.dedent(f"""
        datasets:
          - name: orders
            source: shop
            topic: {topic}
            format: json
            mode: append
            event_time_field: created_at
            partition_by: [year, month, day, hour]
    """))
    produce(kafka, topic, records("orders", 400))
    env = _env(tmp_path, INGEST_CATALOG=str(catalog), INGEST_LAKE_ROOT=str(tmp_path / "lake"),
               INGEST_KAFKA_BOOTSTRAP=kafka_broker.bootstrap)
    done = _dagster("asset", "materialize", "-m", "ingest_platform.definitions", "--select", "lake/shop/orders",
                    env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert read_table(str(tmp_path / "lake" / "shop" / "orders")).height == 400
    instance = dg.DagsterInstance.from_config(str(tmp_path / "dagster_home"))
    event = instance.get_latest_materialization_event(dg.AssetKey(["lake", "shop", "orders"]))
    metadata = event.asset_materialization.metadata
    assert metadata["records"].value == 400
    assert metadata["dagster/row_count"].value == 400


@pytest.mark.kafka
def test_materialization_metadata_and_zero_record_run(tmp_path, kafka, kafka_broker, make_topic):
    topic = make_topic(partitions=3)
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(
        f"datasets:\n  - {{name: clicks, source: web, topic: {topic}, format: json, partition_by: [date]}}\n"
    )
    settings = Settings(catalog_path=str(catalog), lake_root=str(tmp_path / "lake"),
                        kafka_bootstrap=kafka_broker.bootstrap)
    defs = build_definitions(settings)
    produce(kafka, topic, records("clicks", 300))

    def materialize() -> dict:
        result = dg.materialize(list(defs.assets), resources=defs.resources)
        (event,) = result.asset_materializations_for_node("lake__web__clicks")
        return {key: value.value for key, value in event.metadata.items()}

    first = materialize()
    assert first["records"] == 300 and first["dagster/row_count"] == 300
    assert first["files_written"] >= 1 and first["bytes_written"] > 0 and first["records_per_s"] > 0
    assert sorted(first["offsets"]) == ["0", "1", "2"]
    assert sum(p["records"] for p in first["offsets"].values()) == 300
    assert isinstance(first["max_event_to_commit_lag_s"], float)
    columns = {c.name: c for c in first["dagster/column_schema"].columns}  # the Delta schema after the run
    assert columns["viewport"].type == "struct<w: long, h: long>" and columns["duration_ms"].type == "long"
    assert columns["_event_time"].type == "timestamp" and "Kafka timestamp" in columns["_event_time"].description
    assert columns["date"].tags == {"partition": ""} and columns["date"].type == "date"

    second = materialize()
    assert second["records"] == 0 and second["files_written"] == 0
    assert second["dagster/row_count"] == 300
    assert second["delta_commits"] == []


def test_repo_dagster_yaml_limits_every_pool_to_one_run(tmp_path):
    (tmp_path / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    instance = dg.DagsterInstance.from_config(str(tmp_path))
    assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
    assert instance.run_monitoring_enabled


def test_repo_dagster_yaml_keeps_one_stream_run_per_group_and_room_for_batch_runs(tmp_path):
    (tmp_path / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    instance = dg.DagsterInstance.from_config(str(tmp_path))
    queue = instance.get_concurrency_config().run_queue_config
    limits = {limit["key"]: limit for limit in queue.tag_concurrency_limits}
    assert limits["ingest/stream-group"]["limit"] == 1
    assert limits["ingest/stream-group"]["value"] == {"applyLimitPerUniqueValue": True}
    # long-lived stream runs never take every slot: batch runs keep Dagster's default 10
    assert queue.max_concurrent_runs - limits["ingest/stream"]["limit"] >= 10
    from ingest_platform.defs.streams import STREAM_GROUP_TAG, STREAM_RUN_TAG

    assert {STREAM_GROUP_TAG, STREAM_RUN_TAG} <= set(limits)
