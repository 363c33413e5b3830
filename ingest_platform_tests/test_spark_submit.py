"""`ingest-platform spark submit --dry-run`: the driver of a run on a profile, checked against the profile file."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from click.testing import CliRunner

from ingest_platform.cli.main import main
from ingest_platform.engines.spark.profiles import load_profile, profile_variables

K8S_ENV = {"SPARK_K8S_MASTER": "k8s://https://kubernetes.default.svc:443", "SPARK_K8S_IMAGE": "registry/ingest:1.2",
           "SPARK_K8S_NAMESPACE": "data"}  # fmt: skip


def write_catalog(tmp_path: Path) -> Path:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text("datasets:\n  - {name: orders, source: shop, topic: shop.orders, format: json, engine: spark}\n")
    return catalog


def dry_run(tmp_path: Path, monkeypatch, *args: str, env: dict[str, str] | None = None):
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    return CliRunner().invoke(main, ["spark", "submit", "--dry-run", "--catalog", str(write_catalog(tmp_path)),
                                     *args, "orders"])  # fmt: skip


def test_the_k8s_driver_carries_every_setting_of_the_profile(tmp_path, monkeypatch):
    profile = load_profile("k8s", resolve=False)
    variables = profile_variables(profile)
    env = {var: K8S_ENV.get(var, f"value-of-{var.lower()}") for var in variables}
    done = dry_run(tmp_path, monkeypatch, "--profile", "k8s", "--lake-root", "s3://lake/prod", "--json",
                   env={**env, "AWS_SECRET_ACCESS_KEY": "very-secret", "AWS_REGION": "eu-west-1"})
    assert done.exit_code == 0, done.output
    plan = json.loads(done.output)
    raw = yaml.safe_load(Path(profile.path).read_text())
    expected = load_profile("k8s", environ=env)
    assert plan["master"] == expected.master == env["SPARK_K8S_MASTER"] and plan["unset"] == []
    command = plan["command"]
    assert command[:5] == ["spark-submit", "--deploy-mode", "client", "--master", expected.master]
    for key in raw["conf"]:  # every setting of the file, resolved, in the conf and on the command line
        assert plan["conf"][key] == expected.conf[key], key
        if key not in ("spark.jars.packages", "spark.jars.excludes"):
            assert f"{key}={expected.conf[key]}" in command, key
    packages = plan["conf"]["spark.jars.packages"].split(",")
    assert any(p.startswith("io.delta:delta-spark_") for p in packages)
    assert any(p.startswith("org.apache.spark:spark-sql-kafka-0-10_") for p in packages)
    assert any(p.startswith("org.apache.hadoop:hadoop-aws:") for p in packages)  # an S3 lake
    assert command[command.index("--packages") + 1] == plan["conf"]["spark.jars.packages"]
    assert plan["conf"]["spark.sql.extensions"] == "io.delta.sql.DeltaSparkSessionExtension"
    assert Path(command[-3]).name == "main.py" and Path(command[-3]).is_file() and command[-2:] == ["ingest", "orders"]
    assert plan["environment"]["INGEST_LAKE_ROOT"] == "s3://lake/prod"
    assert plan["environment"]["AWS_SECRET_ACCESS_KEY"] == "set" and plan["environment"]["AWS_SESSION_TOKEN"] is None
    assert "very-secret" not in done.output  # credentials by name only
    assert all(plan["environment"][var] == env[var] for var in variables)


def test_unset_variables_stay_placeholders_and_are_named(tmp_path, monkeypatch):
    for var in profile_variables(load_profile("k8s", resolve=False)):
        monkeypatch.delenv(var, raising=False)
    done = dry_run(tmp_path, monkeypatch, "--profile", "k8s")
    assert done.exit_code == 0, done.output
    assert "--master '${SPARK_K8S_MASTER}'" in done.output
    assert "not set here, left as placeholders: " in done.output and "SPARK_K8S_IMAGE" in done.output
    assert "hadoop-aws" not in done.output  # a local lake needs no S3 connector


def test_the_dataset_and_the_profile_must_exist(tmp_path, monkeypatch):
    missing = CliRunner().invoke(main, ["spark", "submit", "--dry-run", "--catalog", str(write_catalog(tmp_path)),
                                        "nope"])  # fmt: skip
    assert missing.exit_code == 1 and "nope" in missing.output
    unknown = dry_run(tmp_path, monkeypatch, "--profile", "nowhere")
    assert unknown.exit_code == 1 and "Spark profile 'nowhere' not found" in unknown.output
