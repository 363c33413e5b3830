"""The checklist's parts: findings, items, results, the context the checks read, and value helpers.

docs/DESIGN.md §6; the items themselves are in the section modules beside this one (spark.py, kafka.py,
storage.py, infrastructure.py) and listed, in the guide's order, in ``ingest_platform.preflight.CHECKLIST``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ingest_platform.capacity import DEFAULT_SETTINGS, PlannerSettings
from ingest_platform.catalog import Dataset
from ingest_platform.kafka.client import KafkaConnection
from ingest_platform.kafka.topics import TopicAdminError, TopicProfile, TopicState

#: deploy/ in the source tree (the package is installed editable).
DEFAULT_DEPLOY_DIR = Path(os.environ.get("INGEST_DEPLOY_DIR") or Path(__file__).resolve().parents[2] / "deploy")

PASS, FAIL, NA = "pass", "fail", "na"
SECTIONS = ("spark", "kafka", "storage", "infrastructure")


# ---------------------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class Finding:
    subject: str
    status: str
    reason: str


@dataclass(frozen=True)
class CheckItem:
    id: str
    section: str
    title: str
    check: Callable[[PreflightContext], list[Finding]]


@dataclass(frozen=True)
class ItemResult:
    id: str
    section: str
    title: str
    status: str
    reason: str
    findings: tuple[Finding, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "section": self.section, "title": self.title, "status": self.status,
                "reason": self.reason,
                "findings": [{"subject": f.subject, "status": f.status, "reason": f.reason} for f in self.findings]}


@dataclass(frozen=True)
class SparkProfile:
    name: str
    conf: Mapping[str, str]
    error: str | None = None

    @property
    def local(self) -> bool:
        return self.conf.get("spark.master", "").startswith("local")


@dataclass
class PreflightContext:
    """What the checks look at. ``check_broker=False`` makes the broker-backed items not-applicable."""

    datasets: tuple[Dataset, ...]
    profile: TopicProfile
    connection: KafkaConnection
    deploy_dir: Path = DEFAULT_DEPLOY_DIR
    lake_root: str = "lake"
    planner: PlannerSettings = DEFAULT_SETTINGS
    check_broker: bool = True
    consumer_config: Mapping[str, Any] | None = None
    producer_config: Mapping[str, Any] | None = None
    _topics: dict[str, TopicState | None] | TopicAdminError | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.consumer_config is None:
            self.consumer_config = self.connection.consumer_config("ingest-platform.preflight")
        if self.producer_config is None:
            self.producer_config = self.connection.producer_config()

    def topic_states(self) -> dict[str, TopicState | None]:
        """Read once from the broker; raises ``TopicAdminError`` (remembered) when it cannot be read."""
        from ingest_platform.kafka.topics import admin_client, describe_topics

        if self._topics is None:
            try:
                names = [d.topic for d in self.datasets]
                self._topics = describe_topics(admin_client(self.connection), names, self.connection.timeout_s)
            except TopicAdminError as error:
                self._topics = error
        if isinstance(self._topics, TopicAdminError):
            raise self._topics
        return self._topics

    def spark_profiles(self) -> list[SparkProfile]:
        return load_spark_profiles(self.deploy_dir / "spark")


def load_spark_profiles(folder: Path) -> list[SparkProfile]:
    """Every YAML file under ``folder`` with a top-level ``conf:`` mapping (values as Spark strings)."""
    profiles = []
    for path in sorted([*folder.rglob("*.yaml"), *folder.rglob("*.yml")]) if folder.is_dir() else []:
        name = str(path.relative_to(folder.parent))
        try:
            document = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as error:
            profiles.append(SparkProfile(name, {}, f"unreadable YAML: {error}"))
            continue
        if isinstance(document, Mapping) and isinstance(document.get("conf"), Mapping):
            conf = {str(k): _spark_value(v) for k, v in document["conf"].items()}
            if document.get("master") and "spark.master" not in conf:  # a top-level `master:` is spark.master
                conf["spark.master"] = _spark_value(document["master"])
            profiles.append(SparkProfile(name, conf))
    return profiles


# ---------------------------------------------------------------------------------------------------------
# Value helpers


def _spark_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).strip()


def _int(value: Any) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float | None:
    try:
        return float(str(value).strip())
    except (TypeError, ValueError):
        return None


_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def _size(value: str) -> str:
    """Hadoop sizes (``128M``, ``64m``, ``134217728``) as bytes; other values unchanged."""
    match = re.fullmatch(r"\s*(\d+)\s*([kKmMgGtT]?)[bB]?\s*", str(value))
    return str(int(match.group(1)) * _UNITS[match.group(2).lower()]) if match else value


def _truthy(value: Any) -> bool:
    return value is True or str(value).lower() in ("true", "1", "yes")


def _compare(value: float, op: str, wanted: float) -> bool:
    return {">=": value >= wanted, "<=": value <= wanted, "==": value == wanted}[op]


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:g}"

def _requirements(subject: str, config: Mapping[str, Any], requirements: Iterable[tuple[str, str, Any]],
                  origin: str) -> Finding:
    problems, shown = [], []
    for key, op, wanted in requirements:
        value = config.get(key)
        if value is None:
            problems.append(f"{key} not set (the guide: {op} {wanted})")
            continue
        ok = (_truthy(value) == wanted) if isinstance(wanted, bool) else _compare(float(value), op, wanted)
        (shown if ok else problems).append(f"{key}={value}" if ok else f"{key}={value} (the guide: {op} {wanted})")
    if problems:
        return Finding(subject, FAIL, "; ".join(problems) + f" [{origin}]")
    return Finding(subject, PASS, ", ".join(shown))
