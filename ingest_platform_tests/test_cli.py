"""The console script: --help on every command, catalog validation, ingest outside Dagster."""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner

from ingest_platform.cli.main import main
from ingest_platform.dev.demo_data import produce, records


def all_commands(group: click.Group, prefix: tuple[str, ...] = ()):
    yield prefix
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from all_commands(command, (*prefix, name))
        else:
            yield (*prefix, name)


@pytest.mark.parametrize("path", list(all_commands(main)), ids=lambda p: " ".join(p) or "main")
def test_every_command_has_help(path):
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    assert len(result.output.splitlines()) > 2


def test_catalog_validate_reports_the_bad_field(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("datasets:\n  - {name: x, source: s, format: json}\n")
    result = CliRunner().invoke(main, ["catalog", "validate", str(bad)])
    assert result.exit_code == 1
    assert f"{bad}: dataset 'x': field 'topic': is required" in result.output


@pytest.mark.kafka
def test_ingest_command_runs_a_dataset_and_prints_its_report(tmp_path, kafka, kafka_broker, make_topic):
    topic = make_topic(partitions=2)
    catalog = tmp_path / "c.yaml"
    catalog.write_text(f"datasets:\n  - {{name: clicks, source: web, topic: {topic}, format: json}}\n")
    produce(kafka, topic, records("clicks", 120))
    args = ["ingest", "clicks", "--catalog", str(catalog), "--lake-root", str(tmp_path / "lake"),
            "--bootstrap", kafka_broker.bootstrap]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert json.loads(first.output.strip().splitlines()[-1])["records"] == 120
    second = CliRunner().invoke(main, args)
    assert json.loads(second.output.strip().splitlines()[-1])["records"] == 0
    missing = CliRunner().invoke(main, ["ingest", "nope", "--catalog", str(catalog)])
    assert missing.exit_code == 1 and "no dataset named 'nope'" in missing.output


def test_stream_command_says_what_to_serve(tmp_path):
    catalog = tmp_path / "c.yaml"
    catalog.write_text("datasets:\n  - {name: clicks, source: web, topic: t, format: json}\n")
    nothing = CliRunner().invoke(main, ["stream", "--catalog", str(catalog)])
    assert nothing.exit_code == 2 and "--all-continuous" in nothing.output
    none_continuous = CliRunner().invoke(main, ["stream", "--all-continuous", "--catalog", str(catalog)])
    assert none_continuous.exit_code == 1 and "no continuous dataset" in none_continuous.output
    unknown = CliRunner().invoke(main, ["stream", "nope", "--catalog", str(catalog)])
    assert unknown.exit_code == 1 and "no dataset named 'nope'" in unknown.output
    bad_trigger = CliRunner().invoke(main, ["stream", "clicks", "--trigger-interval", "0", "--catalog", str(catalog)])
    assert bad_trigger.exit_code == 2 and "--trigger-interval must be > 0" in bad_trigger.output
