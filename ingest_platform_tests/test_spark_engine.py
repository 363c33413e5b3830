"""Spark engine conformance: same tables as the embedded engine, either engine continues the other's table."""

from __future__ import annotations

import json
import textwrap

import polars as pl
import pytest
from deltalake import DeltaTable

from ingest_platform.dev.demo_data import produce, records
from ingest_platform.engines.embedded.engine import EmbeddedEngine
from ingest_platform.engines.run_plan import IngestError
from ingest_platform.engines.runner import run_dataset
from ingest_platform.lake.commit import run_metadata_of
from ingest_platform.lake.ledger import app_id
from ingest_platform.lake.tables import LakeLocation
from ingest_platform_tests.helpers import dataset_from_yaml, read_table

pytestmark = [pytest.mark.spark, pytest.mark.kafka, pytest.mark.slow]


def orders_dataset(topic: str, name: str, engine: str):
    return dataset_from_yaml(f"""
        datasets:
          - name: {name}
            source: conformance
            topic: {topic}
            format: json
            engine: {engine}
            event_time_field: created_at
            partition_by: [year, month, day, hour]
            schema: {{total: double}}
    """)


def comparable(frame: pl.DataFrame) -> list[dict]:
    """Rows as plain dicts (struct field order does not matter), ingestion time left out, in Kafka order."""
    return frame.drop("_ingested_at").sort("_kafka_partition", "_kafka_offset").to_dicts()


@pytest.fixture
def lake(tmp_path) -> LakeLocation:
    return LakeLocation(str(tmp_path / "lake"))


def test_both_engines_give_identical_tables(kafka, lake, make_topic, spark):
    topic = make_topic(partitions=3)
    produce(kafka, topic, records("orders", 600, seed=21))
    produce(kafka, topic, [(b"k", b'{"order_id": "late", "created_at": "2026-01-02 03:04:05", "total": 1}'),
                           (None, b'{"order_id": "no-time", "total": 2.5, "extra": {"a": [1, 2]}}')])
    embedded = orders_dataset(topic, "by_embedded", "embedded")
    spark_ds = orders_dataset(topic, "by_spark", "spark")

    first = EmbeddedEngine(kafka, lake).run(embedded)
    second = run_dataset(spark_ds, kafka, lake, spark_session=lambda _profile: spark)
    assert first.records == second.records == 602
    assert second.rows_written == 602 and second.commits

    by_embedded = read_table(lake.table_uri(embedded.table_path))
    by_spark = read_table(lake.table_uri(spark_ds.table_path))
    assert set(by_embedded.columns) == set(by_spark.columns)
    assert comparable(by_spark) == comparable(by_embedded.select(by_spark.columns))
    for table in (embedded, spark_ds):
        delta = DeltaTable(lake.table_uri(table.table_path))
        assert {p: delta.transaction_version(app_id(table.name, p)) for p in range(3)} == {
            p: by_spark.filter(pl.col("_kafka_partition") == p)["_kafka_offset"].max() for p in range(3)
        }
        assert delta.metadata().partition_columns == ["year", "month", "day", "hour"]
    # An independent reader (pyarrow over deltalake's file list) agrees on the Spark-written table.
    assert DeltaTable(lake.table_uri(spark_ds.table_path)).to_pyarrow_table().num_rows == 602


def test_alternating_engines_lose_and_duplicate_nothing(kafka, lake, make_topic, spark):
    topic = make_topic(partitions=2)
    embedded = orders_dataset(topic, "alternating", "embedded")
    spark_ds = orders_dataset(topic, "alternating", "spark")
    runs = [
        lambda: EmbeddedEngine(kafka, lake).run(embedded),
        lambda: run_dataset(spark_ds, kafka, lake, spark_session=lambda _profile: spark),
        lambda: EmbeddedEngine(kafka, lake).run(embedded),
        lambda: run_dataset(spark_ds, kafka, lake, spark_session=lambda _profile: spark),
    ]
    produced = 0
    for index, run in enumerate(runs):
        produce(kafka, topic, records("orders", 150, seed=30 + index, start=produced))
        produced += 150
        assert run().records == 150
    assert run_dataset(spark_ds, kafka, lake, spark_session=lambda _profile: spark).commits == []  # caught up
    frame = read_table(lake.table_uri(embedded.table_path))
    assert frame.height == produced
    assert frame.select("_kafka_partition", "_kafka_offset").n_unique() == produced
    assert frame["order_id"].n_unique() == produced
    runs_metadata = [run_metadata_of(h) for h in DeltaTable(lake.table_uri(embedded.table_path)).history()]
    assert sorted(m["engine"] for m in runs_metadata if m) == ["embedded", "embedded", "spark", "spark"]


def test_spark_engine_names_a_malformed_record_and_commits_nothing(kafka, lake, make_topic, spark):
    topic = make_topic()
    dataset = orders_dataset(topic, "broken", "spark")
    produce(kafka, topic, [(None, b'{"order_id": "a", "total": 1}'), (None, b'{"order_id": '),
                           (None, b'{"order_id": "c", "total": 3}')])
    with pytest.raises(IngestError) as raised:
        run_dataset(dataset, kafka, lake, spark_session=lambda _profile: spark)
    assert f"record {topic}[0] offset 1" in str(raised.value)
    table = lake.open_table(dataset.table_path)
    assert table is None or table.transaction_version(app_id(dataset.name, 0)) is None


def test_spark_profile_of_the_deployment_and_the_dataset(monkeypatch):
    from ingest_platform.engines.spark.profiles import SparkProfileError, default_profile_name, load_profile

    assert default_profile_name({"DAGSTER_DEPLOYMENT": "prod"}) == "k8s"
    assert default_profile_name({}) == "local"
    with pytest.raises(SparkProfileError, match="SPARK_K8S_MASTER|SPARK_K8S_IMAGE"):
        load_profile("k8s", environ={})
    with pytest.raises(SparkProfileError, match="SPARK_DRIVER_POD_NAME|SPARK_DRIVER_HOST"):
        load_profile("k8s", environ={"SPARK_K8S_MASTER": "k8s://https://k:443", "SPARK_K8S_IMAGE": "img",
                                     "SPARK_K8S_NAMESPACE": "data"})
    k8s = load_profile("k8s", environ={"SPARK_K8S_MASTER": "k8s://https://k:443", "SPARK_K8S_IMAGE": "img",
                                       "SPARK_K8S_NAMESPACE": "data", "SPARK_DRIVER_POD_NAME": "run-1",
                                       "SPARK_DRIVER_HOST": "10.0.0.7"})
    assert k8s.master == "k8s://https://k:443"
    conf = k8s.conf
    assert (conf["spark.dynamicAllocation.minExecutors"], conf["spark.dynamicAllocation.maxExecutors"],
            conf["spark.dynamicAllocation.initialExecutors"]) == ("10", "200", "20")
    assert (conf["spark.kubernetes.driver.pod.name"], conf["spark.driver.host"]) == ("run-1", "10.0.0.7")
    assert conf["spark.serializer"] == "org.apache.spark.serializer.KryoSerializer"
    assert conf["spark.sql.parquet.block.size"] == str(256 * 1024 * 1024)
    assert conf["spark.sql.parquet.mergeSchema"] == "false"
    assert conf["spark.sql.adaptive.skewJoin.enabled"] == "true"
    with pytest.raises(SparkProfileError, match="not found"):
        load_profile("nope")


def test_dagster_asset_materialize_with_the_spark_engine(tmp_path, kafka, kafka_broker, make_topic, spark_cluster,
                                                         spark_cluster_env):
    """`dagster asset materialize` drives an application on the session's standalone cluster through the Spark
    resource (dagster-pyspark's LazyPySparkResource): run config replaces its spark_config (the profile)."""
    from ingest_platform.defs.resources import SparkResource
    from ingest_platform_tests.test_definitions import _dagster, _env

    topic = make_topic(partitions=2)
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(textwrap.dedent(f"""
        datasets:
          - name: orders
            source: shop
            topic: {topic}
            format: json
            engine: spark
            partition_by: [date]
    """))
    produce(kafka, topic, records("orders", 250))
    env = _env(tmp_path, INGEST_CATALOG=str(catalog), INGEST_LAKE_ROOT=str(tmp_path / "lake"),
               INGEST_KAFKA_BOOTSTRAP=kafka_broker.bootstrap, **spark_cluster_env)
    app_name = f"materialize-{tmp_path.name}"
    spark_config = {**SparkResource.for_profile("standalone").spark_config, "spark.app.name": app_name}
    run_config = {"resources": {"spark": {"config": {"profile": "standalone", "spark_config": spark_config}}}}
    done = _dagster("asset", "materialize", "-m", "ingest_platform.definitions", "--select", "lake/shop/orders",
                    "--config-json", json.dumps(run_config), env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    frame = read_table(str(tmp_path / "lake" / "shop" / "orders"))
    assert frame.height == 250 and frame["order_id"].n_unique() == 250
    finished = [app["name"] for app in spark_cluster.master_state().get("completedapps", [])]
    assert app_name in finished  # the run's own application, with the run config's settings, on the cluster


def test_the_spark_resource_config_is_the_profile():
    from ingest_platform.defs.resources import SparkResource
    from ingest_platform.engines.spark.profiles import load_profile

    resource = SparkResource.for_profile("k8s")
    profile = load_profile("k8s", resolve=False)
    assert resource.spark_config == {"spark.master": profile.master, **profile.conf}
    assert resource.spark_config["spark.master"] == "${SPARK_K8S_MASTER}"  # resolved when the session starts


def test_spark_engine_names_a_type_conflict_with_the_table(kafka, lake, make_topic, spark):
    topic = make_topic()
    dataset = orders_dataset(topic, "conflict", "spark")
    produce(kafka, topic, [(None, b'{"order_id": "a", "qty": 3}')])
    EmbeddedEngine(kafka, lake).run(dataset)
    produce(kafka, topic, [(None, b'{"order_id": "b", "qty": "three"}')])
    with pytest.raises(IngestError) as raised:
        run_dataset(dataset, kafka, lake, spark_session=lambda _profile: spark)
    assert "field 'qty' has type string in the records, but the table stores it as bigint" in str(raised.value)
    assert DeltaTable(lake.table_uri(dataset.table_path)).transaction_version(app_id(dataset.name, 0)) == 0


def test_a_connector_that_cannot_be_resolved_is_named(tmp_path):
    """Spark's JVM fails to start when Ivy cannot resolve a connector: the error says which one and why."""
    import subprocess
    import sys

    script = textwrap.dedent("""
        from ingest_platform.engines.spark import session as spark_session
        from ingest_platform.engines.spark.profiles import load_profile
        spark_session.kafka_connector_packages = lambda: ["org.apache.spark:spark-sql-kafka-0-10_2.13:0.0.404"]
        try:
            spark_session.spark_for_profile(load_profile("local"))
        except spark_session.SparkConnectorError as error:
            print("ERROR:", error)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
    message = next(line for line in done.stdout.splitlines() if line.startswith("ERROR:"))
    assert "org.apache.spark:spark-sql-kafka-0-10_2.13:0.0.404: not on Maven Central (HTTP 404" in message
    assert "Spark profile 'local' could not start" in message


def test_spark_engine_adds_a_new_field_as_a_nullable_column(kafka, lake, make_topic, spark):
    topic = make_topic()
    dataset = orders_dataset(topic, "evolving", "spark")
    produce(kafka, topic, [(None, b'{"order_id": "a", "total": 1.5}')])
    run_dataset(dataset, kafka, lake, spark_session=lambda _profile: spark)
    produce(kafka, topic, [(None, b'{"order_id": "b", "total": 2, "email": "b@example.com"}'),
                           (None, b'{"order_id": "c"}')])
    report = run_dataset(dataset, kafka, lake, spark_session=lambda _profile: spark)
    assert report.records == 2 and report.rows_written == 2
    frame = read_table(lake.table_uri(dataset.table_path)).sort("order_id")
    assert frame["email"].to_list() == [None, "b@example.com", None]
    assert frame["total"].to_list() == [1.5, 2.0, None]
    assert DeltaTable(lake.table_uri(dataset.table_path)).transaction_version(app_id(dataset.name, 0)) == 2
