"""Shared fixtures: one real local Kafka broker per test session, unique topics per test."""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Callable, Iterator

import pytest

from ingest_platform.kafka.client import KafkaConnection

_topic_numbers = itertools.count()
#: Where the UI tests left their screenshots (set by test_ui.py), printed at the end of the session.
SCREENSHOTS = pytest.StashKey[object]()


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    folder = config.stash.get(SCREENSHOTS, None)
    if folder is not None:
        terminalreporter.write_line(f"UI screenshots: {folder}")


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[object]:
    """The session's broker: started once (a few seconds), stopped at the end, killed with the session."""
    from ingest_platform.dev.local_kafka import LocalKafka

    with LocalKafka(heap="768m") as broker:
        yield broker


@pytest.fixture
def kafka(kafka_broker) -> KafkaConnection:
    return KafkaConnection(kafka_broker.bootstrap, timeout_s=15)


@pytest.fixture
def make_topic(kafka_broker) -> Callable[..., str]:
    """Create a fresh topic with a unique name; returns the name."""
    from ingest_platform.dev.local_kafka import create_topic

    def make(partitions: int = 1, config: dict[str, str] | None = None, prefix: str = "t") -> str:
        name = f"{prefix}.{next(_topic_numbers)}.{uuid.uuid4().hex[:8]}"
        create_topic(kafka_broker.bootstrap, name, partitions, config)
        return name

    return make


@pytest.fixture
def clean_ingest_env(monkeypatch) -> None:
    """Tests that build definitions must not see the developer's INGEST_* settings."""
    for name in list(os.environ):
        if name.startswith("INGEST_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def spark():
    """The one Spark session of the test run (the engine's local profile: Delta + Kafka connectors)."""
    pytest.importorskip("pyspark")
    pytest.importorskip("delta")
    from ingest_platform.engines.spark.profiles import load_profile
    from ingest_platform.engines.spark.session import spark_for_profile

    session = spark_for_profile(load_profile("local"))
    yield session
    session.stop()


class S3Server:
    """A real S3 API (moto's server) on loopback, with IAM on: only ``access_key_id``/``secret_access_key`` work."""

    def __init__(self, endpoint: str, access_key_id: str, secret_access_key: str, bucket: str):
        self.endpoint, self.bucket = endpoint, bucket
        self.access_key_id, self.secret_access_key = access_key_id, secret_access_key

    def config(self, **overrides):
        from ingest_platform.lake.storage import S3Config

        fields = dict(endpoint_url=self.endpoint, region="us-east-1", access_key_id=self.access_key_id,
                      secret_access_key=self.secret_access_key)
        return S3Config(**{**fields, **overrides})

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": self.access_key_id,
                "AWS_SECRET_ACCESS_KEY": self.secret_access_key, "AWS_ALLOW_HTTP": "true"}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.access_key_id, aws_secret_access_key=self.secret_access_key)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    """``moto_server`` as a subprocess on a free 127.0.0.1 port, IAM enforced (``INITIAL_NO_AUTH_ACTION_COUNT``:
    the first three calls create the user, its key and its policy), one bucket. Nothing is set globally.
    Its request recorder is available (``/moto-api/recorder/...``) to show which headers a client sent."""
    pytest.importorskip("moto")
    import json
    import socket
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    import boto3

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    recording = tmp_path_factory.mktemp("moto") / "recording.jsonl"
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3", "MOTO_ENABLE_RECORDING": "True",
           "MOTO_RECORDER_FILEPATH": str(recording)}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
                break
            except OSError:
                if process.poll() is not None:
                    raise RuntimeError("moto_server exited at start") from None
                time.sleep(0.1)
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                           aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
        iam.create_user(UserName="lake")
        key = iam.create_access_key(UserName="lake")["AccessKey"]
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        iam.put_user_policy(UserName="lake", PolicyName="all", PolicyDocument=json.dumps(policy))
        server = S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"], "ingest-lake-test")
        server.client().create_bucket(Bucket=server.bucket)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture
def lake(tmp_path):
    """An empty local lake under the test's folder."""
    from ingest_platform.lake.tables import LakeLocation

    return LakeLocation(str(tmp_path / "lake"))


@pytest.fixture(scope="session")
def cdc_source(kafka_broker):
    """The real CDC stream of the session (``dev/real_cdc.py``): MariaDB and Kafka Connect with Debezium start
    once, publish the workload with and without the JSON converter's wrapper into the session broker, and
    stop; the topics, the event counts and ``SELECT *`` of the source remain (~25 s on 2 cores)."""
    from ingest_platform.dev.real_cdc import CdcWorkload, capture

    return capture(kafka_broker.bootstrap, CdcWorkload())
