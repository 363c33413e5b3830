"""Catalog validation: every bad input names the file, the dataset and the field."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from ingest_platform.catalog import CatalogError, load_catalog, parse_catalog_text
from ingest_platform.settings import DEMO_CATALOG

VALID = """
defaults:
  engine: embedded
  max_records_per_run: 1000000
  slo: {throughput_rps: 1000, latency_s: 30, file_size_mb: {min: 128, max: 1024}}
datasets:
  - name: orders
    source: shop
    topic: shop.orders
    format: json
    mode: append
    event_time_field: created_at
    partition_by: [year, month, day, hour]
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_contract_example_loads_with_defaults_merged(tmp_path):
    catalog = load_catalog(write(tmp_path, "shop.yaml", VALID))
    (orders,) = catalog.datasets
    assert orders.asset_path == ["lake", "shop", "orders"]
    assert orders.table_path == "shop/orders"
    assert orders.partition_by == ("year", "month", "day", "hour")
    assert orders.slo.file_size_mb.min == 128 and orders.slo.file_size_mb.max == 1024
    assert orders.max_records_per_run == 1_000_000
    assert orders.group_id == "ingest-platform.shop.orders"


def test_dataset_slo_overrides_only_the_keys_it_names(tmp_path):
    text = VALID + "    slo: {latency_s: 10}\n"
    (orders,) = load_catalog(write(tmp_path, "shop.yaml", text)).datasets
    assert orders.slo.latency_s == 10
    assert orders.slo.throughput_rps == 1000  # still the default's


def test_folder_loads_every_yaml_file(tmp_path):
    write(tmp_path, "a.yaml", VALID)
    write(tmp_path, "b.yml", VALID.replace("name: orders", "name: refunds").replace("shop.orders", "shop.refunds"))
    (tmp_path / "notes.txt").write_text("not a catalog")
    catalog = load_catalog(tmp_path)
    assert [d.name for d in catalog.datasets] == ["orders", "refunds"]


def test_demo_catalog_is_valid():
    names = [d.name for d in load_catalog(DEMO_CATALOG).datasets]
    assert names == ["orders", "clicks", "payments", "users"]


def _error(tmp_path: Path, text: str, name: str = "bad.yaml") -> CatalogError:
    path = write(tmp_path, name, text)
    with pytest.raises(CatalogError) as raised:
        load_catalog(path)
    assert str(path) in str(raised.value)
    return raised.value


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        (("format: json", "format: avro"), "format", "'json' or 'debezium'"),
        (("    topic: shop.orders\n", ""), "topic", "is required"),
        (("topic: shop.orders", "topic: 'shop orders!'"), "topic", "not a valid Kafka topic name"),
        (("partition_by: [year, month, day, hour]", "partition_by: [year, week]"), "partition_by", "'week'"),
        (("partition_by: [year, month, day, hour]", "partition_by: [day, day]"), "partition_by", "listed twice"),
        (("partition_by: [year, month, day, hour]", "partition_by: [country]"), "partition_by", "schema:"),
        (("mode: append", "mode: upsert"), "key", "needs the record key"),
        (("mode: append", "mode: merge"), "mode", "'append' or 'upsert'"),
        (("name: orders", "name: 9orders"), "name", "must start with a letter"),
        (("event_time_field: created_at", "event_time_field: _kafka_offset"), "event_time_field", "reserved"),
        (("format: json", "format: json\n    colour: blue"), "colour", "unknown field"),
        (("format: json", "format: json\n    schema: {amount: money}"), "schema.amount", "'string'"),
        (("format: json", "format: json\n    schema: {amount: decimal}"), "schema.amount", "decimal(12,2)"),
        (("format: json", "format: json\n    schema: {amount: 'decimal(40,2)'}"), "schema.amount", "1 to 38"),
        (("format: json", "format: json\n    schema: {amount: 'decimal(4,6)'}"), "schema.amount", "must not exceed"),
        (("format: json", "format: json\n    schema: {at: {type: timestamp, unit: days}}"), "schema.at", "'ms'"),
        (("format: json", "format: json\n    schema: {n: {type: long, unit: ms}}"), "schema.n", "timestamp fields"),
        (("format: json", "format: json\n    schema: {b: {type: binary, encoding: hex}}"), "schema.b", "'base64'"),
        (("format: json", "format: json\n    schema: {b: {typ: binary}}"), "schema.b", "unknown key"),
        (("format: json", "format: json\n    schema: {p: {type: decimal(12,2)}}"), "schema.p", "quote the type"),
        (("format: json", "format: json\n    schema: {p: {type: long, scale: 2}}"), "schema.p", "type decimal"),
        (("format: json", "format: json\n    schema: {_cdc_x: long}"), "schema._cdc_x", "reserved"),
        (("format: json", "format: json\n    owners: [bob]"), "owners", "email address or 'team:"),
        (("name: orders", "name: orders_dlq"), "name", "suffix of dead-letter tables"),
        (("mode: append", "mode: upsert\n    key: [_cdc_op]"), "key", "reserved"),
        (("mode: append", "mode: upsert\n    key: [id]\n    ordering_field: _kafka_offset"), "ordering_field",
         "reserved"),
        (("mode: append", "mode: append\n    delete_mode: soft"), "delete_mode", "Debezium upserts only"),
        (("mode: append", "mode: append\n    schema_evolution: quarantine"), "max_dlq_ratio", "dead-letter table"),
        (("mode: append", "mode: append\n    schema_evolution: loose"), "schema_evolution", "'strict'"),
        (("mode: append", "mode: append\n    max_dlq_ratio: 1.5"), "max_dlq_ratio", "less than or equal to 1"),
    ],
)
def test_bad_dataset_field_names_file_dataset_and_field(tmp_path, change, field, words):
    error = _error(tmp_path, VALID.replace(*change))
    name = next((n for n in ("9orders", "orders_dlq") if n in change[1]), "orders")
    assert error.dataset == name
    assert error.field == field
    assert words in str(error)
    assert f"dataset '{name}': field '{field}'" in str(error)


def test_wrong_type_in_defaults_is_reported_per_dataset(tmp_path):
    error = _error(tmp_path, VALID.replace("max_records_per_run: 1000000", "max_records_per_run: lots"))
    assert error.field == "max_records_per_run"
    assert "'lots'" in str(error)


def test_bad_nested_slo_names_the_nested_field(tmp_path):
    error = _error(tmp_path, VALID.replace("{min: 128, max: 1024}", "{min: 2048, max: 1024}"))
    assert error.field == "slo.file_size_mb"
    assert "larger than max" in str(error)


def test_unreadable_yaml_names_the_line(tmp_path):
    error = _error(tmp_path, "datasets:\n  - name: orders\n    topic: [unclosed\n")
    assert "unreadable YAML at line" in str(error)


def test_duplicate_name_in_one_file(tmp_path):
    text = VALID + "  - {name: orders, source: other, topic: x, format: json}\n"
    error = _error(tmp_path, text)
    assert (error.dataset, error.field) == ("orders", "name")
    assert "duplicate" in str(error)


def test_duplicate_name_across_files_names_both_files(tmp_path):
    first = write(tmp_path, "a.yaml", VALID)
    second = write(tmp_path, "b.yaml", VALID.replace("shop.orders", "shop.orders2"))
    with pytest.raises(CatalogError) as raised:
        load_catalog(tmp_path)
    assert str(second) in str(raised.value) and str(first) in str(raised.value)
    assert raised.value.field == "name"


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(CatalogError, match="no such catalog file or folder"):
        load_catalog(tmp_path / "missing.yaml")
    with pytest.raises(CatalogError, match="holds no .yaml"):
        load_catalog(tmp_path)


def test_top_level_shape_errors():
    with pytest.raises(CatalogError, match="'datasets' must be a non-empty list"):
        parse_catalog_text("defaults: {}\n", "x.yaml")
    with pytest.raises(CatalogError, match="unknown top-level key"):
        parse_catalog_text("datasets: []\nsources: []\n", "x.yaml")
    with pytest.raises(CatalogError, match="expected a mapping"):
        parse_catalog_text("- a\n- b\n", "x.yaml")


def test_cdc_dataset_defaults_and_key_from_the_message():
    """Debezium upserts may leave the key to the message key; the policies have documented defaults."""
    (users,) = parse_catalog_text(
        "datasets:\n  - {name: users, source: inventory, topic: mysql.inventory.users, format: debezium, mode: upsert}"
    )
    assert users.key == ()
    assert (users.delete_mode, users.schema_evolution, users.max_dlq_ratio) == ("hard", "additive", 0.0)
    assert users.dlq_table_path == "inventory/users_dlq"
    assert users.dlq_name == "users_dlq"


def test_field_types_name_how_json_values_are_read():
    from ingest_platform.catalog import FieldType

    (dataset,) = parse_catalog_text(
        "datasets:\n  - {name: users, source: s, topic: t, format: debezium, mode: upsert, schema: "
        "{balance: {type: decimal, precision: 12, scale: 2, encoding: base64}, price: 'DECIMAL( 5, 0 )', created_at: "
        "{type: timestamp, unit: ms}, active: boolean, token: {type: binary, encoding: base64}}}"
    )
    fields = dataset.fields
    assert fields["balance"] == "decimal(12,2)" and (fields["balance"].precision, fields["balance"].scale) == (12, 2)
    assert fields["balance"].encoding == "base64" and fields["price"].encoding is None
    assert str(fields["price"]) == "decimal(5,0)" and fields["price"].kind == "decimal"
    assert (fields["created_at"].kind, fields["created_at"].unit) == ("timestamp", "ms")
    assert fields["active"] == "boolean" and fields["token"].encoding == "base64"
    assert FieldType.parse("timestamp") != FieldType.parse({"type": "timestamp", "unit": "us"})


def test_an_unknown_field_under_expected_lists_expected_s_fields(tmp_path):
    expected = "mode: append\n    expected: {peak_rps: 10, record_bytes: 100, peak: 3}"
    error = _error(tmp_path, VALID.replace("mode: append", expected))
    assert error.field == "expected.peak"
    assert "unknown field (allowed: peak_rps, record_bytes)" in str(error)


def test_a_spark_profile_that_does_not_exist_fails_validation_naming_the_profiles(tmp_path):
    error = _error(tmp_path, VALID.replace("mode: append", "mode: append\n    spark_profile: nonexistent"))
    assert (error.dataset, error.field) == ("orders", "spark_profile")
    profiles = ", ".join(sorted(p.stem for p in (Path(__file__).parents[1] / "deploy/spark/profiles").glob("*.yaml")))
    assert "Spark profile 'nonexistent' does not exist" in str(error) and f"(profiles: {profiles})" in str(error)
    assert "local" in profiles and "k8s" in profiles
    from click.testing import CliRunner

    from ingest_platform.cli.main import main

    bad = write(tmp_path, "bad.yaml", VALID.replace("mode: append", "mode: append\n    spark_profile: nonexistent"))
    result = CliRunner().invoke(main, ["catalog", "validate", str(bad)])
    assert result.exit_code == 1 and f"{bad}: dataset 'orders': field 'spark_profile'" in result.output
    ok = write(tmp_path, "ok.yaml", VALID.replace("mode: append", "mode: append\n    spark_profile: k8s"))
    assert load_catalog(ok).datasets[0].spark_profile == "k8s"


def test_continuous_fields_default_and_merge_from_defaults(tmp_path):
    (orders,) = load_catalog(write(tmp_path, "shop.yaml", VALID)).datasets
    assert (orders.continuous, orders.trigger_interval_s, orders.stream_group, orders.materialization_interval_s) == (
        False, 30, None, 60)  # fmt: skip
    assert orders.pipeline == "shop"  # the stream group defaults to the source
    text = VALID.replace("  engine: embedded\n", "  engine: embedded\n  continuous: true\n  trigger_interval_s: 5\n")
    text += "    stream_group: hot_path\n    materialization_interval_s: 120\n"
    (orders,) = load_catalog(write(tmp_path, "shop.yaml", text)).datasets
    assert (orders.continuous, orders.trigger_interval_s, orders.pipeline, orders.materialization_interval_s) == (
        True, 5, "hot_path", 120)  # fmt: skip


@pytest.mark.parametrize(
    ("line", "field", "problem"),
    [
        ("trigger_interval_s: 0", "trigger_interval_s", "greater than 0"),
        ("trigger_interval_s: soon", "trigger_interval_s", "valid number"),
        ("stream_group: 'hot path'", "stream_group", "must start with a letter"),
        ("materialization_interval_s: -1", "materialization_interval_s", "greater than 0"),
        ("continuous: maybe", "continuous", "valid boolean"),
    ],
)
def test_continuous_field_errors_name_file_dataset_and_field(tmp_path, line, field, problem):
    path = write(tmp_path, "shop.yaml", VALID + f"    {line}\n")
    with pytest.raises(CatalogError) as caught:
        load_catalog(path)
    error = caught.value
    assert (error.file, error.dataset, error.field) == (str(path), "orders", field)
    assert problem in error.problem


def test_defaults_errors_name_the_dataset_they_reach(tmp_path):
    text = VALID.replace("  engine: embedded\n", "  engine: embedded\n  trigger_interval_s: 0\n")
    with pytest.raises(CatalogError) as caught:
        load_catalog(write(tmp_path, "shop.yaml", text))
    assert (caught.value.dataset, caught.value.field) == ("orders", "trigger_interval_s")


STREAMS = """
defaults:
  stream_runner: external
datasets:
  - {name: clicks, source: shop, topic: shop.clicks, format: json, continuous: true}
  - {name: views, source: shop, topic: shop.views, format: json, continuous: true}
  - {name: orders, source: shop, topic: shop.orders, format: json, stream_runner: dagster}
"""


def test_stream_runner_defaults_to_dagster_and_merges_from_defaults(tmp_path):
    (orders,) = load_catalog(write(tmp_path, "shop.yaml", VALID)).datasets
    assert orders.stream_runner == "dagster"
    clicks, views, orders = load_catalog(write(tmp_path, "streams.yaml", STREAMS)).datasets
    assert (clicks.stream_runner, views.stream_runner) == ("external", "external")
    assert orders.stream_runner == "dagster"  # a batch dataset never streams: its runner does not matter


def test_stream_runner_disagreeing_in_one_group_names_file_dataset_and_field(tmp_path):
    text = STREAMS.replace("topic: shop.views, format: json, continuous: true",
                           "topic: shop.views, format: json, continuous: true, stream_runner: dagster")
    path = write(tmp_path, "streams.yaml", text)
    with pytest.raises(CatalogError) as caught:
        load_catalog(path)
    error = caught.value
    assert (error.file, error.dataset, error.field) == (str(path), "views", "stream_runner")
    assert "'dagster' differs from 'external' of dataset 'clicks'" in error.problem
    assert "stream group 'shop'" in error.problem
    with pytest.raises(CatalogError):  # the text parser applies the same rule
        parse_catalog_text(textwrap.dedent(text))
    # another stream_group for the one that differs is the way out
    text = text.replace("stream_runner: dagster}", "stream_runner: dagster, stream_group: shop_fast}", 1)
    assert [d.pipeline for d in load_catalog(write(tmp_path, "streams.yaml", text)).datasets] == [
        "shop", "shop_fast", "shop"]


def test_stream_runner_must_agree_across_files_of_a_folder(tmp_path):
    folder = tmp_path / "catalog"
    folder.mkdir()
    write(folder, "a.yaml", "datasets:\n  - {name: a, source: s, topic: a, format: json, continuous: true}\n")
    write(folder, "b.yaml", "datasets:\n  - {name: b, source: s, topic: b, format: json, continuous: true, "
                            "stream_runner: external}\n")
    with pytest.raises(CatalogError) as caught:
        load_catalog(folder)
    error = caught.value
    assert (error.file, error.dataset, error.field) == (str(folder / "b.yaml"), "b", "stream_runner")
    assert str(folder / "a.yaml") in error.problem


def test_stream_runner_rejects_other_values(tmp_path):
    with pytest.raises(CatalogError) as caught:
        load_catalog(write(tmp_path, "shop.yaml", VALID + "    stream_runner: kubernetes\n"))
    assert (caught.value.dataset, caught.value.field) == ("orders", "stream_runner")
    assert "'dagster' or 'external'" in caught.value.problem
