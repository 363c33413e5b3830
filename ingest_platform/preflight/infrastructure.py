"""The guide's checklist, infrastructure section: autoscaling, resource limits, health checks, dashboards, alerts.

docs/DESIGN.md §6 states the rules; ``ingest_platform.preflight.CHECKLIST`` lists the items in the guide's order.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ingest_platform.preflight.checklist import FAIL, NA, PASS, Finding, PreflightContext, _fmt

#: Where dashboards and alert rules may live under the deploy dir (the first existing ones are read).
DASHBOARD_DIRS = ("grafana", "dashboards", "monitoring")
ALERT_DIRS = ("prometheus", "alerts", "monitoring")
#: Metrics the guide's Grafana dashboard plots.
DASHBOARD_METRICS = ("ingestion_records_processed_total", "ingestion_processing_duration_seconds",
                     "kafka_consumer_lag_sum")


@dataclass(frozen=True)
class AlertRequirement:
    """One of the guide's alerting thresholds; ``values`` accepts fraction or percent spellings."""

    name: str
    pattern: str  # regex an alert's expr (or name) must match
    warning: tuple[float, ...]
    critical: tuple[float, ...]


ALERT_REQUIREMENTS = (
    AlertRequirement("consumer lag", r"lag", (100_000,), (1_000_000,)),
    AlertRequirement("processing time", r"processing_(duration|time)|duration_seconds", (120,), (300,)),
    AlertRequirement("error rate", r"error|fail", (0.01, 1), (0.05, 5)),
    AlertRequirement("memory usage", r"memory", (0.8, 80), (0.9, 90)),
)


# ---------------------------------------------------------------------------------------------------------
# Infrastructure


def _manifests(ctx: PreflightContext) -> list[tuple[str, Mapping[str, Any]]]:
    folder = ctx.deploy_dir / "k8s"
    docs: list[tuple[str, Mapping[str, Any]]] = []
    if not folder.is_dir():
        return docs
    for path in sorted([*folder.rglob("*.yaml"), *folder.rglob("*.yml")]):
        name = str(path.relative_to(ctx.deploy_dir))
        try:
            loaded = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        except (OSError, yaml.YAMLError) as error:
            docs.append((name, {"kind": "_Unreadable", "error": str(error)}))
            continue
        for doc in loaded:
            if isinstance(doc, Mapping) and doc.get("kind") == "List":
                docs.extend((name, item) for item in doc.get("items") or [] if isinstance(item, Mapping))
            elif isinstance(doc, Mapping):
                docs.append((name, doc))
                docs.extend(_embedded_pods(name, doc))
    return docs


def _embedded_pods(name: str, doc: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """Pod templates kept in a ConfigMap (Spark's driver/executor templates) are workloads too."""
    if doc.get("kind") != "ConfigMap":
        return []
    pods = []
    for key, text in (doc.get("data") or {}).items():
        if str(key).endswith((".yaml", ".yml")):
            try:
                inner = yaml.safe_load(str(text))
            except yaml.YAMLError:
                continue
            if isinstance(inner, Mapping) and inner.get("kind") == "Pod":
                meta = {**(inner.get("metadata") or {}), "name": f"{(doc.get('metadata') or {}).get('name')}/{key}"}
                pods.append((name, {**inner, "metadata": meta}))
    return pods


#: Helm values of Dagster's chart whose run pods take default resources from the run launcher.
HELM_VALUES = ("helm/dagster-values.yaml",)
#: The stream process's health endpoints (DESIGN §11): Kubernetes probes must use them.
STREAM_PROBES = {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}


WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod")
LONG_RUNNING = ("Deployment", "StatefulSet", "DaemonSet")


def _containers(doc: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    spec: Any = doc.get("spec") or {}
    if doc.get("kind") == "CronJob":
        spec = ((spec.get("jobTemplate") or {}).get("spec") or {})
    if doc.get("kind") != "Pod":
        spec = ((spec.get("template") or {}).get("spec") or {})
    return [c for c in spec.get("containers") or [] if isinstance(c, Mapping)]


def _k8s_na() -> list[Finding]:
    return [Finding("deploy/k8s", NA, "no Kubernetes manifests under deploy/k8s/")]


def _unsharded_streams(docs: list[tuple[str, Mapping[str, Any]]]) -> dict[tuple[str, str], str]:
    """``{(kind, name): file}`` of the long-running workloads whose container runs ``ingest-platform stream``
    without ``--shard-group``: each replica would serve, and write, every one of its datasets (DESIGN §12)."""
    found = {}
    for name, doc in docs:
        if doc.get("kind") in LONG_RUNNING:
            for container in _containers(doc):
                command = [str(a) for a in [*(container.get("command") or []), *(container.get("args") or [])]]
                if "stream" in command and "--shard-group" not in command:
                    found[(str(doc["kind"]), str((doc.get("metadata") or {}).get("name", "?")))] = name
    return found


def check_autoscaling(ctx: PreflightContext) -> list[Finding]:
    docs = _manifests(ctx)
    unsharded = _unsharded_streams(docs)
    findings = []
    for name, doc in docs:
        if doc.get("kind") == "HorizontalPodAutoscaler":
            spec = doc.get("spec") or {}
            title = f"{name}: {(doc.get('metadata') or {}).get('name', '?')}"
            target = spec.get("scaleTargetRef") or {}
            if (target.get("kind"), target.get("name")) in unsharded:
                findings.append(Finding(title, FAIL, f"HPA scales {target['kind']}/{target['name']}, whose "
                                                     "`ingest-platform stream` has no --shard-group: every replica "
                                                     "would write every table (DESIGN §12)"))
            elif spec.get("maxReplicas") and spec.get("metrics"):
                findings.append(Finding(title, PASS, f"HPA {spec.get('minReplicas', 1)}-{spec['maxReplicas']} "
                                                     f"replicas on {len(spec['metrics'])} metric(s)"))
            else:
                findings.append(Finding(title, FAIL, "HPA without maxReplicas or metrics"))
    for name, doc in docs:
        key = (str(doc.get("kind")), str((doc.get("metadata") or {}).get("name", "?")))
        if key in unsharded and int((doc.get("spec") or {}).get("replicas", 1) or 1) > 1:
            findings.append(Finding(f"{name}: {key[0]}/{key[1]}", FAIL, f"{doc['spec']['replicas']} replicas of "
                                    "`ingest-platform stream` without --shard-group: each would write every table; "
                                    "shard them (DESIGN §12) or run one replica"))  # fmt: skip
    for p in ctx.spark_profiles():
        if not p.error and not p.local and p.conf.get("spark.dynamicAllocation.enabled") == "true":
            findings.append(Finding(p.name, PASS, "Spark dynamic allocation scales executors"))
    if findings:
        return findings
    if not docs and not [p for p in ctx.spark_profiles() if not p.local]:
        return [Finding("deploy", NA, "no Kubernetes manifests under deploy/k8s/ and no cluster Spark profile")]
    return [Finding("deploy", FAIL, "no HorizontalPodAutoscaler in deploy/k8s/ and no cluster Spark profile with "
                                    "spark.dynamicAllocation.enabled=true (the guide: HPA 10-200 replicas on "
                                    "CPU 70 %/memory 80 %)")]


def check_resource_limits(ctx: PreflightContext) -> list[Finding]:
    findings = []
    for name, doc in _manifests(ctx):
        if doc.get("kind") == "_Unreadable":
            findings.append(Finding(name, FAIL, f"unreadable YAML: {doc['error']}"))
        if doc.get("kind") not in WORKLOADS:
            continue
        for container in _containers(doc):
            subject = f"{name}: {doc['kind']}/{(doc.get('metadata') or {}).get('name', '?')}/{container.get('name')}"
            resources = container.get("resources") or {}
            missing = [f"{part}.{res}" for part in ("requests", "limits") for res in ("cpu", "memory")
                       if res not in (resources.get(part) or {})]
            if missing:
                findings.append(Finding(subject, FAIL, f"resources without {', '.join(missing)}"))
            else:
                findings.append(Finding(subject, PASS, "cpu and memory requests and limits set"))
    findings.extend(_run_pod_limits(ctx))
    return findings or _k8s_na()


def _run_pod_limits(ctx: PreflightContext) -> list[Finding]:
    """Dagster run pods (K8sRunLauncher): the Helm values' ``runK8sConfig.containerConfig.resources``."""
    findings = []
    for relative in HELM_VALUES:
        path = ctx.deploy_dir / relative
        if not path.is_file():
            continue
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as error:
            findings.append(Finding(relative, FAIL, f"unreadable YAML: {error}"))
            continue
        launcher = (((values.get("runLauncher") or {}).get("config") or {}).get("k8sRunLauncher") or {})
        if not launcher:
            continue
        resources = (((launcher.get("runK8sConfig") or {}).get("containerConfig") or {}).get("resources") or {})
        missing = [f"{part}.{res}" for part in ("requests", "limits") for res in ("cpu", "memory")
                   if res not in (resources.get(part) or {})]
        subject = f"{relative}: runLauncher.config.k8sRunLauncher.runK8sConfig.containerConfig (Dagster run pods)"
        findings.append(Finding(subject, FAIL, f"resources without {', '.join(missing)}") if missing else
                        Finding(subject, PASS, "cpu and memory requests and limits set (per-run tags refine them)"))
    return findings


def check_health_checks(ctx: PreflightContext) -> list[Finding]:
    findings = []
    for name, doc in _manifests(ctx):
        if doc.get("kind") not in LONG_RUNNING:
            continue
        for container in _containers(doc):
            subject = f"{name}: {doc['kind']}/{(doc.get('metadata') or {}).get('name', '?')}/{container.get('name')}"
            findings.append(_probe_finding(subject, container))
    return findings or [Finding("deploy/k8s", NA, "no long-running workloads (Deployment, StatefulSet, DaemonSet) "
                                                  "under deploy/k8s/")]


def _probe_finding(subject: str, container: Mapping[str, Any]) -> Finding:
    """Any probe for a long-running process; a stream process (``ingest-platform stream``) must probe its health
    endpoints: liveness ``/healthz``, readiness ``/readyz`` (DESIGN §11)."""
    probes = [p for p in ("livenessProbe", "readinessProbe", "startupProbe") if container.get(p)]
    if not probes:
        return Finding(subject, FAIL, "no liveness or readiness probe")
    command = [str(a) for a in [*(container.get("command") or []), *(container.get("args") or [])]]
    if "stream" in command:
        wrong = [f"no {p} on {path}" if not container.get(p) else f"{p} is not an HTTP GET of {path}"
                 for p, path in STREAM_PROBES.items()
                 if ((container.get(p) or {}).get("httpGet") or {}).get("path") != path]
        if wrong:
            return Finding(subject, FAIL, f"stream process: {'; '.join(wrong)} (DESIGN §11 health endpoints)")
    return Finding(subject, PASS, ", ".join(probes))


def _first_dir(ctx: PreflightContext, names: Iterable[str]) -> list[Path]:
    return [ctx.deploy_dir / n for n in names if (ctx.deploy_dir / n).is_dir()]


def _strings(node: Any, key: str) -> Iterable[str]:
    if isinstance(node, Mapping):
        for k, v in node.items():
            if k == key and isinstance(v, str):
                yield v
            else:
                yield from _strings(v, key)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item, key)


def check_dashboards(ctx: PreflightContext) -> list[Finding]:
    files = [f for d in _first_dir(ctx, DASHBOARD_DIRS) for f in sorted(d.rglob("*.json"))]
    if not files:
        return [Finding("deploy", NA, f"no dashboard JSON under deploy/{{{','.join(DASHBOARD_DIRS)}}}/")]
    exprs: list[str] = []
    problems = []
    for path in files:
        try:
            exprs.extend(_strings(json.loads(path.read_text(encoding="utf-8")), "expr"))
        except (OSError, json.JSONDecodeError) as error:
            problems.append(Finding(str(path.relative_to(ctx.deploy_dir)), FAIL, f"unreadable JSON: {error}"))
    missing = [m for m in DASHBOARD_METRICS if not any(m in e for e in exprs)]
    subject = ", ".join(str(f.relative_to(ctx.deploy_dir)) for f in files)
    if missing:
        return [*problems, Finding(subject, FAIL, f"no panel plots {', '.join(missing)} (the guide's throughput, "
                                                  "latency and consumer-lag panels)")]
    return [*problems, Finding(subject, PASS, f"panels for {', '.join(DASHBOARD_METRICS)}")]


def _alert_rules(ctx: PreflightContext) -> tuple[list[Mapping[str, Any]], list[Finding], list[str]]:
    rules: list[Mapping[str, Any]] = []
    problems: list[Finding] = []
    files = []
    paths = [f for d in _first_dir(ctx, ALERT_DIRS) for f in sorted([*d.rglob("*.yaml"), *d.rglob("*.yml")])]
    paths += [ctx.deploy_dir / n for n, doc in _manifests(ctx) if doc.get("kind") == "PrometheusRule"]
    for path in dict.fromkeys(paths):
        try:
            docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        except (OSError, yaml.YAMLError) as error:
            problems.append(Finding(str(path.relative_to(ctx.deploy_dir)), FAIL, f"unreadable YAML: {error}"))
            continue
        found = False
        for doc in docs:
            if not isinstance(doc, Mapping):
                continue
            groups = doc.get("groups") or (doc.get("spec") or {}).get("groups") or []
            for group in groups if isinstance(groups, list) else []:
                for rule in (group or {}).get("rules") or []:
                    if isinstance(rule, Mapping) and rule.get("alert") and rule.get("expr"):
                        rules.append(rule)
                        found = True
        if found:
            files.append(str(path.relative_to(ctx.deploy_dir)))
    return rules, problems, files


def _thresholds(expr: str) -> list[float]:
    return [float(v.replace("_", "")) for v in re.findall(r">=?\s*([0-9][0-9_]*(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)",
                                                           expr)]


def check_alerts(ctx: PreflightContext) -> list[Finding]:
    rules, problems, files = _alert_rules(ctx)
    if not rules and not problems:
        return [Finding("deploy", NA, f"no Prometheus alert rules under deploy/{{{','.join(ALERT_DIRS)}}}/ "
                                      "or PrometheusRule manifests")]
    findings = list(problems)
    for req in ALERT_REQUIREMENTS:
        missing = []
        for severity, values in (("warning", req.warning), ("critical", req.critical)):
            hit = any(
                re.search(req.pattern, f"{rule['alert']} {rule['expr']}", re.IGNORECASE)
                and str((rule.get("labels") or {}).get("severity", "")).lower() == severity
                and any(abs(t - v) < 1e-9 for t in _thresholds(str(rule["expr"])) for v in values)
                for rule in rules
            )
            if not hit:
                missing.append(f"{severity} > {_fmt(values[-1])}")
        if missing:
            findings.append(Finding(req.name, FAIL, f"no rule for {', '.join(missing)} in {', '.join(files) or '-'}"))
        else:
            findings.append(Finding(req.name, PASS, f"warning > {_fmt(req.warning[-1])}, critical > "
                                                    f"{_fmt(req.critical[-1])}"))
    return findings

