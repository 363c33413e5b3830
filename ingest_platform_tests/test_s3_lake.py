"""The lake on S3: a real S3 API server on loopback (moto's server, IAM on), the session's real broker.

The table is read back by an independent reader: boto3 fetches the Delta log and the Parquet files it
references, pyarrow reads them (no deltalake involved).
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from confluent_kafka import Consumer, TopicPartition
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError

from ingest_platform.dev.demo_data import produce, records
from ingest_platform.engines.embedded.engine import EmbeddedEngine
from ingest_platform.lake.ledger import app_id
from ingest_platform.lake.storage import S3Config
from ingest_platform.lake.tables import LakeAccessError, commit_stats, lake_location
from ingest_platform_tests.helpers import json_dataset


def independent_read(server, table_uri: str) -> pa.Table:
    """Replay the Delta log with boto3 (add minus remove), read the live Parquet files with pyarrow."""
    client = server.client()
    prefix = table_uri.split("://", 1)[1].split("/", 1)[1] + "/"
    listing = client.list_objects_v2(Bucket=server.bucket, Prefix=prefix + "_delta_log/")
    live: dict[str, None] = {}
    for key in sorted(item["Key"] for item in listing.get("Contents", []) if item["Key"].endswith(".json")):
        for line in client.get_object(Bucket=server.bucket, Key=key)["Body"].read().decode().splitlines():
            action = json.loads(line)
            if "add" in action:
                live[action["add"]["path"]] = None
            if "remove" in action:
                live.pop(action["remove"]["path"], None)
    from urllib.parse import unquote

    tables = [
        pq.read_table(io.BytesIO(client.get_object(Bucket=server.bucket, Key=prefix + unquote(path))["Body"].read()))
        for path in live
    ]
    return pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({})


def group_offsets(kafka, dataset, topic: str, partitions: int) -> dict[int, int]:
    consumer = Consumer(kafka.consumer_config(dataset.group_id))
    try:
        committed = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
    finally:
        consumer.close()
    return {tp.partition: tp.offset for tp in committed if tp.offset >= 0}


@contextlib.contextmanager
def recorded_requests(server):
    """The requests the S3 server received inside the block (moto's recorder: method, url, headers)."""
    import urllib.request

    def call(action: str, method: str = "POST") -> bytes:
        request = urllib.request.Request(f"{server.endpoint}/moto-api/recorder/{action}", method=method)
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.read()

    call("reset-recording")
    call("start-recording")
    seen: list[dict] = []
    try:
        yield seen
    finally:
        call("stop-recording")
        lines = call("download-recording", "GET").decode().splitlines()
        seen.extend(json.loads(line) for line in lines if line.strip())


@pytest.fixture
def s3_lake(s3_server):
    return lake_location(f"s3://{s3_server.bucket}/lake-{uuid.uuid4().hex[:8]}", s3_server.config())


def test_storage_options_from_standard_aws_env():
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_REGION": "eu-west-1", "AWS_ACCESS_KEY_ID": "id",
           "AWS_SECRET_ACCESS_KEY": "secret", "AWS_SESSION_TOKEN": "token"}
    location = lake_location("s3://bucket/lake/", environ=env)
    assert location.root == "s3://bucket/lake"
    assert dict(location.storage_options) == {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_REGION": "eu-west-1", "AWS_ACCESS_KEY_ID": "id",
        "AWS_SECRET_ACCESS_KEY": "secret", "AWS_SESSION_TOKEN": "token", "AWS_ALLOW_HTTP": "true",
        "AWS_CONDITIONAL_PUT": "etag",
    }
    assert "secret" not in repr(location) and "secret" not in repr(S3Config.from_env(env))
    assert lake_location("/tmp/lake", environ=env).storage_options == {}
    https = lake_location("s3://bucket/lake", environ={"AWS_REGION": "us-east-1"})
    assert "AWS_ALLOW_HTTP" not in https.storage_options


@pytest.mark.kafka
def test_embedded_engine_on_s3_exactly_once(kafka, make_topic, s3_server, s3_lake):
    topic = make_topic(partitions=3)
    dataset = json_dataset(topic, event_time_field="created_at", partition_by="[year, month, day, hour]")
    engine = EmbeddedEngine(kafka, s3_lake)
    uri = s3_lake.table_uri(dataset.table_path)

    produce(kafka, topic, records("orders", 400, seed=1))
    first = engine.run(dataset)
    assert (first.records, first.rows_written) == (400, 400)
    assert first.files_written >= 1 and first.bytes_written > 0  # commit_stats read the log entry on S3
    table = independent_read(s3_server, uri)
    assert table.num_rows == 400
    assert len(set(zip(table["_kafka_partition"].to_pylist(), table["_kafka_offset"].to_pylist()))) == 400
    version = s3_lake.open_table(dataset.table_path).version()

    second = engine.run(dataset)
    assert second.records == 0 and second.commits == []
    assert s3_lake.open_table(dataset.table_path).version() == version

    produce(kafka, topic, records("orders", 250, seed=2, start=400))
    assert engine.run(dataset).records == 250
    table = independent_read(s3_server, uri)
    assert table.num_rows == 650 and len(set(table["order_id"].to_pylist())) == 650
    delta = s3_lake.open_table(dataset.table_path)
    ledger = {p: delta.transaction_version(app_id(dataset.name, p)) for p in range(3)}
    assert group_offsets(kafka, dataset, topic, 3) == {p: v + 1 for p, v in ledger.items()}
    assert commit_stats(uri, delta.version(), s3_lake.storage_options).rows > 0


@pytest.mark.kafka
@pytest.mark.parametrize("problem", ["bad credentials", "missing bucket"])
def test_unreachable_lake_fails_clearly_and_commits_nothing(kafka, make_topic, s3_server, problem):
    topic = make_topic(partitions=2)
    dataset = json_dataset(topic)
    produce(kafka, topic, records("clicks", 50))
    if problem == "bad credentials":
        lake = lake_location(f"s3://{s3_server.bucket}/bad-{uuid.uuid4().hex[:8]}",
                             s3_server.config(secret_access_key="wrong-secret"))
        bucket = s3_server.bucket
    else:
        bucket = f"no-such-bucket-{uuid.uuid4().hex[:8]}"
        lake = lake_location(f"s3://{bucket}/lake", s3_server.config())
    with pytest.raises(LakeAccessError) as failure:
        EmbeddedEngine(kafka, lake).run(dataset)
    message = str(failure.value)
    assert f"bucket '{bucket}'" in message and s3_server.endpoint in message
    assert "AWS_ACCESS_KEY_ID" in message and "wrong-secret" not in message
    assert ("refused the credentials" if problem == "bad credentials" else "bucket does not exist") in message
    assert group_offsets(kafka, dataset, topic, 2) == {}
    if problem == "bad credentials":
        good = lake_location(lake.root, s3_server.config())
        assert good.open_table(dataset.table_path) is None  # nothing written, no ledger


def test_two_writers_racing_on_one_table(s3_server):
    """Conditional put: every version has exactly one winner and no commit is lost; a writer holding a stale
    snapshot with the same ledger app id fails with CommitFailedError instead of overwriting a log entry."""
    client, marker = s3_server.client(), f"race-marker-{uuid.uuid4().hex[:8]}"
    client.put_object(Bucket=s3_server.bucket, Key=marker, Body=b"1")
    with pytest.raises(client.exceptions.ClientError, match="PreconditionFailed"):  # the server honours it
        client.put_object(Bucket=s3_server.bucket, Key=marker, Body=b"2", IfNoneMatch="*")
    location = lake_location(f"s3://{s3_server.bucket}/race-{uuid.uuid4().hex[:8]}", s3_server.config())
    uri, options = location.table_uri("t"), dict(location.storage_options)
    with recorded_requests(s3_server) as requests:  # deltalake writes each log entry with If-None-Match: *
        write_deltalake(uri, pa.table({"writer": [-1], "i": [-1]}), storage_options=options)
    commits = [r for r in requests if r["method"] == "PUT" and "/_delta_log/" in r["url"] and ".json" in r["url"]]
    assert commits and all(
        {k.lower(): v for k, v in r["headers"].items()}.get("if-none-match") == "*" for r in commits
    )
    done: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    def writer(number: int) -> None:
        for i in range(6):
            try:
                write_deltalake(uri, pa.table({"writer": [number], "i": [i]}), mode="append", storage_options=options)
                done.append((number, i))
            except BaseException as error:  # noqa: BLE001 - collected and asserted below
                errors.append(error)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    table = DeltaTable(uri, storage_options=options)
    assert table.version() == 24  # 24 appends after version 0: one version each
    rows = independent_read(s3_server, uri)
    assert sorted(zip(rows["writer"].to_pylist(), rows["i"].to_pylist()))[1:] == sorted(done)

    first, second = DeltaTable(uri, storage_options=options), DeltaTable(uri, storage_options=options)
    ledger = CommitProperties(app_transactions=[Transaction(app_id="race-0", version=7)])
    write_deltalake(first, pa.table({"writer": [9], "i": [0]}), mode="append", commit_properties=ledger)
    with pytest.raises(CommitFailedError):
        write_deltalake(second, pa.table({"writer": [9], "i": [1]}), mode="append", commit_properties=ledger)
    assert DeltaTable(uri, storage_options=options).version() == 25
    assert independent_read(s3_server, uri).num_rows == 26


@pytest.mark.kafka
def test_dagster_materializes_to_s3_from_the_standard_aws_env(tmp_path, monkeypatch, clean_ingest_env, kafka,
                                                               kafka_broker, make_topic, s3_server):
    """INGEST_LAKE_ROOT=s3://... plus the AWS variables: the code location's S3Resource (EnvVar fields) is all."""
    import dagster as dg

    from ingest_platform.definitions import build_definitions
    from ingest_platform.settings import Settings

    topic = make_topic(partitions=2)
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(f"datasets:\n  - {{name: clicks, source: web, topic: {topic}, format: json}}\n")
    root = f"s3://{s3_server.bucket}/dagster-{uuid.uuid4().hex[:8]}"
    for name in ("AWS_DEFAULT_REGION", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {**s3_server.env(), "INGEST_LAKE_ROOT": root, "INGEST_CATALOG": str(catalog),
                        "INGEST_KAFKA_BOOTSTRAP": kafka_broker.bootstrap}.items():
        monkeypatch.setenv(name, value)
    defs = build_definitions(Settings.from_env())
    lake = defs.resources["lake"]
    assert isinstance(lake.aws_secret_access_key, dg.EnvVar) and lake.use_ssl is False  # a name, not the secret
    produce(kafka, topic, records("clicks", 120))
    result = dg.materialize(list(defs.assets), resources=defs.resources)
    (event,) = result.asset_materializations_for_node("lake__web__clicks")
    assert event.metadata["records"].value == 120
    assert independent_read(s3_server, f"{root}/web/clicks").num_rows == 120
    assert dg.materialize(list(defs.assets), resources=defs.resources).success  # rerun: 0 records, still fine
    assert independent_read(s3_server, f"{root}/web/clicks").num_rows == 120


def test_position_cache_checks_the_log_on_s3(s3_server):
    """The sensors' cheap check (one batched file-info call) reaches S3 with the location's credentials."""
    from ingest_platform.monitoring.positions import PositionCache, PositionRequest

    location = lake_location(f"s3://{s3_server.bucket}/pos-{uuid.uuid4().hex[:8]}", s3_server.config())
    uri, options = location.table_uri("src/ds"), dict(location.storage_options)

    def append(last_offset: int) -> None:
        ledger = CommitProperties(app_transactions=[Transaction(app_id=app_id("ds", 0), version=last_offset)])
        write_deltalake(uri, pa.table({"x": [last_offset]}), mode="append", storage_options=options,
                        commit_properties=ledger)

    append(9)
    cache = PositionCache(location)
    request = PositionRequest("ds", "src/ds", frozenset({0}))
    assert cache.positions([request])["ds"].ledger == {0: 9} and cache.opened == 1
    assert cache.positions([request])["ds"].ledger == {0: 9} and cache.opened == 0  # log unchanged: not opened
    append(19)
    assert cache.positions([request])["ds"].ledger == {0: 19} and cache.opened == 1


def test_demo_clears_only_its_s3_prefix(s3_server):
    from ingest_platform.dev.demo import clear_lake

    client, keep = s3_server.client(), f"keep-{uuid.uuid4().hex[:8]}/x"
    demo = f"demo-{uuid.uuid4().hex[:8]}"
    for key in (keep, f"{demo}/shop/orders/_delta_log/0.json", f"{demo}/shop/orders/part-0.parquet"):
        client.put_object(Bucket=s3_server.bucket, Key=key, Body=b"x")
    clear_lake(lake_location(f"s3://{s3_server.bucket}/{demo}", s3_server.config()))
    keys = {item["Key"] for item in client.list_objects_v2(Bucket=s3_server.bucket).get("Contents", [])}
    assert keep in keys and not any(key.startswith(demo + "/") for key in keys)
    with pytest.raises(ValueError, match="prefix"):
        clear_lake(lake_location(f"s3://{s3_server.bucket}", s3_server.config()))


def test_s3a_settings_follow_the_guide_and_the_storage_options():
    from ingest_platform.lake.storage import s3a_conf, spark_path

    options = lake_location("s3://bucket/lake", environ={"AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
                                                         "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "id",
                                                         "AWS_SECRET_ACCESS_KEY": "secret"}).storage_options
    conf = s3a_conf(options)
    assert {k: conf[k] for k in ("fs.s3a.connection.maximum", "fs.s3a.threads.max", "fs.s3a.max.total.tasks",
                                 "fs.s3a.multipart.size", "fs.s3a.multipart.threshold", "fs.s3a.fast.upload",
                                 "fs.s3a.block.size", "fs.s3a.connection.timeout",
                                 "fs.s3a.connection.establish.timeout")} == {
        "fs.s3a.connection.maximum": "200", "fs.s3a.threads.max": "64", "fs.s3a.max.total.tasks": "64",
        "fs.s3a.multipart.size": "128M", "fs.s3a.multipart.threshold": "64M", "fs.s3a.fast.upload": "true",
        "fs.s3a.block.size": "128M", "fs.s3a.connection.timeout": "200000",
        "fs.s3a.connection.establish.timeout": "5000",
    }
    assert conf["fs.s3a.connection.ssl.enabled"] == "false" and conf["fs.s3a.path.style.access"] == "true"
    assert conf["fs.s3a.endpoint"] == "http://127.0.0.1:9000" and conf["fs.s3a.access.key"] == "id"
    assert s3a_conf({"AWS_REGION": "eu-west-1"})["fs.s3a.connection.ssl.enabled"] == "true"
    assert spark_path("s3://bucket/lake/a/b") == "s3a://bucket/lake/a/b" and spark_path("/tmp/x") == "/tmp/x"


@pytest.mark.spark
@pytest.mark.kafka
@pytest.mark.slow
def test_spark_engine_on_s3_exactly_once(tmp_path, kafka, kafka_broker, make_topic, s3_server, spark_cluster,
                                         spark_cluster_env):
    """The Spark engine through the CLI in its own process (its first Spark session starts with hadoop-aws), a
    driver on the session's standalone cluster whose executors write to S3 (the connector and the S3A settings
    reach them from the driver), configured only by INGEST_LAKE_ROOT, the standard AWS variables and the
    standalone profile; then the embedded engine continues."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("pyspark")
    topic = make_topic(partitions=2)
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(f"datasets:\n  - {{name: sclicks, source: web, topic: {topic}, format: json, engine: spark}}\n")
    root = f"s3://{s3_server.bucket}/spark-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "INGEST_"))}
    env.update(s3_server.env(), **spark_cluster_env, INGEST_LAKE_ROOT=root, INGEST_CATALOG=str(catalog),
               INGEST_KAFKA_BOOTSTRAP=kafka_broker.bootstrap)
    cli = [str(Path(sys.executable).parent / "ingest-platform"), "ingest", "sclicks"]

    def ingest() -> dict:
        done = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    def applications_done() -> int:
        finished = spark_cluster.master_state().get("completedapps", [])
        return sum(1 for app in finished if app["name"] == "ingest_platform-standalone")

    done_before = applications_done()
    produce(kafka, topic, records("clicks", 300))
    assert ingest()["records"] == 300
    assert applications_done() == done_before + 1  # the run was an application of the cluster
    uri = f"{root}/web/sclicks"
    assert independent_read(s3_server, uri).num_rows == 300
    assert ingest()["records"] == 0
    produce(kafka, topic, records("clicks", 100, seed=3, start=300))
    assert ingest()["records"] == 100
    table = independent_read(s3_server, uri)
    assert table.num_rows == 400
    assert len(set(zip(table["_kafka_partition"].to_pylist(), table["_kafka_offset"].to_pylist()))) == 400
    # The embedded engine continues the Spark-written S3 table from its ledger.
    from ingest_platform.catalog import load_catalog

    produce(kafka, topic, records("clicks", 50, seed=4, start=400))
    dataset = load_catalog(str(catalog)).get("sclicks")  # engine: spark, run here by the embedded engine
    assert EmbeddedEngine(kafka, lake_location(root, s3_server.config())).run(dataset).records == 50
    assert independent_read(s3_server, uri).num_rows == 450
