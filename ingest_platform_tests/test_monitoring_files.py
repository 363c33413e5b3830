"""deploy/prometheus/ and deploy/grafana/: checked and unit-tested by promtool (Debian's prometheus package),
on the metric names of docs/DESIGN.md §11. The end-to-end check against a scraped stream worker and exporter is in
test_stream_metrics.py."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import yaml

from ingest_platform.deployment import render
from ingest_platform_tests.deploy_tools import DEPLOY, REPO, run, tool

RULES = DEPLOY / render.RULES_SOURCE
RULE_TESTS = DEPLOY / "prometheus" / "tests" / "ingest-platform.rules.test.yaml"
DASHBOARD = DEPLOY / render.DASHBOARD_SOURCE
GUIDE_PANELS = {  # the tuning guide's dashboard: title -> (expression, legend), unchanged
    "Throughput (Records/sec)": ("rate(ingestion_records_processed_total[5m])", "{{pipeline}}"),
    "End-to-End Latency": ("ingestion_processing_duration_seconds", "{{dataset}}"),
    "Consumer Lag": ("kafka_consumer_lag_sum", "{{topic}}"),
}
#: Series Prometheus adds itself or prometheus-client exports for every process.
STANDARD_SERIES = {"process_resident_memory_bytes", "up"}


def contract_metrics() -> set[str]:
    """Metric names of the DESIGN §11 table (the stream process and exporter contract)."""
    text = (REPO / "docs" / "DESIGN.md").read_text(encoding="utf-8")
    section = text.split("## 11.", 1)[1].split("\n## ", 1)[0]
    names = set(re.findall(r"^\| `([a-z_]+)` \|", section, re.MULTILINE))
    assert "kafka_consumer_lag_sum" in names and len(names) >= 10
    return names


def series_names(expr: str) -> set[str]:
    """Metric names an expression selects (identifiers followed by a selector/range or standing alone)."""
    stripped = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\"[^\"]*\"", " ", expr)
    words = set(re.findall(r"\b[a-z_][a-z0-9_]*\b", stripped))
    keywords = {"sum", "max", "min", "avg", "rate", "increase", "by", "on", "group_left", "group_right", "and",
                "or", "unless", "histogram_quantile", "time", "without", "count", "le", "job", "instance",
                "pipeline", "dataset", "topic", "kind", "outcome", "ignoring"}
    return words - keywords


def histogram_family(name: str) -> str:
    return re.sub(r"_(bucket|sum|count)$", "", name)


def dashboard_targets() -> list[tuple[str, str, str]]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [(p["title"], t["expr"], t.get("legendFormat", "")) for p in dashboard["panels"] if p["type"] != "row"
            for t in p["targets"]]


def rule_exprs() -> list[str]:
    rules = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


# ---------------------------------------------------------------------------------------------------------


def test_promtool_checks_the_rules_file_and_the_prometheusrule(tmp_path):
    promtool = tool("promtool")
    done = run([promtool, "check", "rules", str(RULES)])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 11 rules found" in done.stdout
    manifest = yaml.safe_load((DEPLOY / render.PROMETHEUS_RULE).read_text(encoding="utf-8"))
    spec = tmp_path / "from-prometheusrule.yaml"
    spec.write_text(yaml.safe_dump(manifest["spec"]))
    done = run([promtool, "check", "rules", str(spec)])
    assert done.returncode == 0, done.stdout + done.stderr
    assert manifest["spec"] == yaml.safe_load(RULES.read_text(encoding="utf-8"))


def test_promtool_unit_tests_cross_and_miss_every_threshold():
    done = run([tool("promtool"), "test", "rules", str(RULE_TESTS)])
    assert done.returncode == 0, done.stdout + done.stderr
    tested = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r}
    fired = {t["alertname"] for test in tested["tests"] for t in test.get("alert_rule_test", []) if t["exp_alerts"]}
    assert fired == alerts  # every alert is shown firing at least once


@pytest.mark.parametrize("change", [
    ("> 1000000", "> 1000001"),  # lag critical
    ("> 100000\n", "> 99999\n"),  # lag warning
    (") > 300", ") > 450"),  # processing time critical
    (") > 120", ") > 119"),  # processing time warning: the 120 s p99 now fires
    ("> 0.05", "> 0.06"),  # error rate critical
    ("> 0.01", "> 0.009"),  # error rate warning: the 1 % dataset now fires
    ("> 0.9", "> 0.96"),  # memory critical
    ("> 0.8", "> 0.79"),  # memory warning: the 80 % process now fires
    ("> 900", "> 1300"),  # stale table
    ("for: 2m", "for: 10m"),  # stream down
])
def test_the_unit_tests_fail_when_a_threshold_moves(tmp_path, change):
    """Each threshold is pinned by the unit tests: moving it on either side makes `promtool test rules` fail."""
    promtool = tool("promtool")
    old, new = change
    source = RULES.read_text(encoding="utf-8")
    assert old in source
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / RULES.name).write_text(source.replace(old, new, 1 if old != "> 0.8" else 2))
    (tmp_path / "tests").mkdir()
    shutil.copy(RULE_TESTS, tmp_path / "tests" / RULE_TESTS.name)
    done = run([promtool, "test", "rules", str(tmp_path / "tests" / RULE_TESTS.name)])
    assert done.returncode != 0 and "FAILED" in done.stdout + done.stderr


def test_the_prometheus_config_loads_the_rules():
    done = run([tool("promtool"), "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 11 rules found" in done.stdout


def test_dashboard_has_the_guide_panels_and_the_operator_panels():
    targets = dashboard_targets()
    for title, (expr, legend) in GUIDE_PANELS.items():
        assert (title, expr, legend) in targets
    titles = {t for t, _, _ in targets}
    assert {"p99 end-to-end latency", "Batch commit error rate", "Dead letters per hour", "Age of the last commit",
            "Files per commit"} <= titles
    p99 = [e for t, e, _ in targets if t == "p99 end-to-end latency"]
    assert p99 and "histogram_quantile(0.99" in p99[0] and "ingestion_processing_duration_seconds_bucket" in p99[0]
    # the bare histogram name in the guide's panel has a value only through the recording rule of that name
    records = [r.get("record") for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    assert "ingestion_processing_duration_seconds" in records
    dashboard = json.loads(DASHBOARD.read_text())
    generated = yaml.safe_load((DEPLOY / render.GRAFANA_DASHBOARD).read_text())
    assert json.loads(generated["data"]["ingest-platform.json"]) == dashboard
    assert generated["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_every_panel_expression_parses(tmp_path):
    """promtool parses each panel expression (as a recording rule); evaluation against real series: the
    local Prometheus test."""
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:panel_{i}", "expr": expr} for i, (_, expr, _) in enumerate(dashboard_targets())]}]}
    path = tmp_path / "dashboard.rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    done = run([tool("promtool"), "check", "rules", str(path)])
    assert done.returncode == 0, done.stdout + done.stderr
    broken = tmp_path / "broken.rules.yaml"
    broken.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [
        {"record": "x:y", "expr": "sum by (dataset (rate(ingestion_records_processed_total[5m]))"}]}]}))
    assert run([tool("promtool"), "check", "rules", str(broken)]).returncode != 0


def test_dashboard_and_rules_use_only_contract_metrics():
    contract = contract_metrics() | STANDARD_SERIES
    recorded = {"ingestion_processing_duration_seconds"}
    used = {n for _, e, _ in dashboard_targets() for n in series_names(e)} | {
        n for e in rule_exprs() for n in series_names(e)}
    assert {n for n in used if n not in contract | recorded and histogram_family(n) not in contract} == set()
    assert series_names("max by (pipeline) (ingestion_typo_total)") == {"ingestion_typo_total"}


def test_the_local_prometheus_transform_changes_only_for_and_the_named_comparisons():
    """The end-to-end alert test's rules (ingest_platform/dev/local_prometheus.py): every alert's ``for:`` and
    the named comparisons change, nothing else; a comparison that is not exactly once in the expression, or an
    alert that does not exist, is refused."""
    from ingest_platform.dev.local_prometheus import LocalPrometheus, LocalPrometheusError

    source = yaml.safe_load((DEPLOY / "prometheus" / "rules" / "ingest-platform.rules.yaml").read_text())
    server = LocalPrometheus(alert_for_s=3, thresholds={"IngestTableStale": {"> 900": "> 3"}})
    try:
        home = server.prepare()
        changed = yaml.safe_load((home / "rules" / "ingest-platform.rules.yaml").read_text())
    finally:
        server.stop()
    for group, original in zip(changed["groups"], source["groups"], strict=True):
        for rule, before in zip(group["rules"], original["rules"], strict=True):
            expected = dict(before)
            if "alert" in before:
                expected["for"] = "3s"
            if before.get("alert") == "IngestTableStale":
                expected["expr"] = before["expr"].replace("> 900", "> 3")
                assert expected["expr"] != before["expr"]
            assert rule == expected
    for thresholds in ({"IngestTableStale": {"max by": "min by"}}, {"IngestTableStale": {"> 901": "> 3"}},
                       {"NoSuchAlert": {"> 1": "> 2"}}):  # fmt: skip
        server = LocalPrometheus(thresholds=thresholds)
        try:
            with pytest.raises(LocalPrometheusError, match="not once|not in"):
                server.prepare()
        finally:
            server.stop()
