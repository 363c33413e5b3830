"""Kafka security settings from one place (docs/DESIGN.md §5): the INGEST_KAFKA_* variables reach the command
line and the Dagster resources alike, and a failed SASL handshake names its cause, never the secret. Against
the session broker's SASL_PLAINTEXT listener (PLAIN; conftest.py)."""

from __future__ import annotations

import json
import textwrap

import dagster as dg
import pytest
from click.testing import CliRunner

from ingest_platform.cli.main import main
from ingest_platform.definitions import build_definitions
from ingest_platform.dev.demo_data import produce, records
from ingest_platform.engines.embedded.engine import EmbeddedEngine
from ingest_platform.engines.run_plan import IngestError
from ingest_platform.kafka.client import KafkaConnection
from ingest_platform.settings import Settings
from ingest_platform_tests.conftest import SASL_USER
from ingest_platform_tests.helpers import json_dataset, read_table

pytestmark = pytest.mark.kafka
WRONG = "not-the-password-0451"


def sasl_env(broker, password: str | None = None, bootstrap: str | None = None, mechanism: str = "PLAIN") -> dict:
    return {
        "INGEST_KAFKA_BOOTSTRAP": bootstrap or broker.sasl_bootstrap,
        "INGEST_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "INGEST_KAFKA_SASL_MECHANISM": mechanism,
        "INGEST_KAFKA_SASL_USERNAME": SASL_USER,
        "INGEST_KAFKA_SASL_PASSWORD": password or broker.sasl_users[SASL_USER],
    }


def test_an_engine_run_over_sasl_with_the_right_password_ingests(kafka, kafka_broker, lake, make_topic):
    topic = make_topic(partitions=2)
    produce(kafka, topic, records("orders", 100))
    connection = KafkaConnection.from_env(sasl_env(kafka_broker), timeout_s=15)
    assert connection.security["security.protocol"] == "SASL_PLAINTEXT"
    assert EmbeddedEngine(connection, lake).run(json_dataset(topic)).records == 100


@pytest.mark.parametrize(("password", "mechanism", "cause"), [
    (WRONG, "PLAIN", "SASL authentication error: Authentication failed: Invalid username or password"),
    (None, "SCRAM-SHA-256", "SASL SCRAM-SHA-256 mechanism handshake failed"),
])  # fmt: skip
def test_a_failed_sasl_handshake_names_its_cause_not_a_transport_failure(
    kafka_broker, lake, make_topic, password, mechanism, cause
):
    topic = make_topic()
    connection = KafkaConnection.from_env(sasl_env(kafka_broker, password, mechanism=mechanism), timeout_s=20)
    with pytest.raises(IngestError) as failure:
        EmbeddedEngine(connection, lake).run(json_dataset(topic))
    message = str(failure.value)
    assert cause in message, message
    assert "tried" not in message  # an authentication failure is not retried until the deadline
    assert WRONG not in message and kafka_broker.sasl_users[SASL_USER] not in message


@pytest.fixture
def catalog_env(tmp_path, make_topic, kafka, clean_ingest_env) -> dict[str, str]:
    topic = make_topic(partitions=2)
    produce(kafka, topic, records("clicks", 40))
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(textwrap.dedent(f"""\
        datasets:
          - name: clicks
            source: secure
            topic: {topic}
            format: json
    """))
    return {"INGEST_CATALOG": str(catalog), "INGEST_LAKE_ROOT": str(tmp_path / "lake")}


def test_the_command_line_honours_the_security_variables(kafka_broker, catalog_env, tmp_path):
    runner = CliRunner()
    right = runner.invoke(main, ["ingest", "clicks"], env={**catalog_env, **sasl_env(kafka_broker)})
    assert right.exit_code == 0, right.output
    assert json.loads(right.stdout.splitlines()[-1])["records"] == 40
    assert read_table(str(tmp_path / "lake" / "secure" / "clicks")).height == 40

    # The same SASL settings against the PLAINTEXT listener: used, so refused (they used to be ignored).
    on_plain = runner.invoke(main, ["ingest", "clicks"],
                             env={**catalog_env, **sasl_env(kafka_broker, bootstrap=kafka_broker.bootstrap)})
    assert on_plain.exit_code == 1
    assert "SASL PLAIN mechanism handshake failed" in on_plain.output, on_plain.output

    wrong = runner.invoke(main, ["ingest", "clicks"], env={**catalog_env, **sasl_env(kafka_broker, WRONG)})
    assert wrong.exit_code == 1
    assert "error: dataset 'clicks': cannot read metadata of topic" in wrong.output
    assert "SASL authentication error: Authentication failed" in wrong.output, wrong.output
    for result in (right, on_plain, wrong):
        assert WRONG not in result.output and kafka_broker.sasl_users[SASL_USER] not in result.output


def test_the_stream_command_honours_the_security_variables(kafka_broker, catalog_env, tmp_path):
    result = CliRunner().invoke(main, ["stream", "clicks", "--duration", "15", "--trigger-interval", "1",
                                       "--no-upkeep"], env={**catalog_env, **sasl_env(kafka_broker)})  # fmt: skip
    assert result.exit_code == 0, result.output
    assert read_table(str(tmp_path / "lake" / "secure" / "clicks")).height == 40
    assert kafka_broker.sasl_users[SASL_USER] not in result.output


def test_the_dagster_resource_and_the_command_line_build_the_same_connection(kafka_broker, monkeypatch, tmp_path):
    for name, value in sasl_env(kafka_broker).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("INGEST_LAKE_ROOT", str(tmp_path / "lake"))
    defs = build_definitions(Settings.from_env())
    resource = defs.resources["kafka"]
    assert isinstance(resource.sasl_password, dg.EnvVar) and isinstance(resource.security_protocol, dg.EnvVar)
    from_dagster = dg.build_resources({"kafka": resource}).__enter__().kafka.connection()
    from_cli = KafkaConnection.from_env()
    assert from_dagster.security == from_cli.security and from_dagster.bootstrap_servers == from_cli.bootstrap_servers
