"""A private, real Prometheus server (Debian's ``prometheus`` package) for development and tests.

It runs this repository's configuration and rules (deploy/prometheus/prometheus.yml, rules/*.yaml) from a
temporary folder, on a free loopback port, with its own data directory, and dies with its parent::

    with LocalPrometheus(scrape_interval_s=1) as prom:
        prom.add_targets("stream", "worker-0", ["127.0.0.1:9400"])   # file service discovery: no reload
        prom.wait_for(lambda: prom.query("up") != [], timeout_s=30)
        prom.alerts()                                                # /api/v1/alerts

The changes to the repository's files, all optional: ``scrape_interval_s``/``evaluation_interval_s`` replace the
global intervals and every rule group's ``interval`` (tests cannot wait 30 s per evaluation); ``alert_for_s``
replaces every alert's ``for:``; ``thresholds`` = ``{alert: {"> 100000": "> 500"}}`` replaces a comparison in that
alert's expression — each text must occur exactly once in it, so names, labels and the rest of every expression
stay the repository's (an end-to-end test can see an alert go pending and firing in seconds; the exact
thresholds and durations are proven by ``promtool test rules``, deploy/prometheus/tests/). ``backfill`` loads
OpenMetrics samples with ``promtool tsdb create-blocks-from openmetrics`` before the server starts.
Every HTTP call has a deadline; start and stop have deadlines; the data folder is removed on stop.
No dagster import (DESIGN §1).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from ingest_platform.dev.local_kafka import _free_ports, _spawn_dying_with_parent
from ingest_platform.dev.local_process import stop_child

#: deploy/prometheus in the source tree (installed editable), or ``$INGEST_DEPLOY_DIR``/prometheus.
PROMETHEUS_DIR = Path(os.environ.get("INGEST_DEPLOY_DIR") or Path(__file__).resolve().parents[2] / "deploy") / (
    "prometheus")
JOBS = {"stream": "stream", "exporter": "exporter"}  # target file prefixes of prometheus.yml's file_sd jobs


class LocalPrometheusError(RuntimeError):
    """The local Prometheus could not start, answer or stop; the message carries its log's tail."""


class LocalPrometheus:
    def __init__(
        self,
        config: Path = PROMETHEUS_DIR / "prometheus.yml",
        rules_dir: Path = PROMETHEUS_DIR / "rules",
        scrape_interval_s: float | None = None,
        evaluation_interval_s: float | None = None,
        startup_timeout_s: float = 30.0,
        binary: str | None = None,
        alert_for_s: float | None = None,
        thresholds: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        self.config, self.rules_dir = Path(config), Path(rules_dir)
        self.scrape_interval_s, self.evaluation_interval_s = scrape_interval_s, evaluation_interval_s
        self.startup_timeout_s = startup_timeout_s
        self.alert_for_s, self.thresholds = alert_for_s, {k: dict(v) for k, v in (thresholds or {}).items()}
        self.binary = binary or shutil.which("prometheus") or "/usr/bin/prometheus"
        self.home: Path | None = None
        self._transformed: set[str] = set()
        self.port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None

    # ---- life cycle

    @property
    def url(self) -> str:
        if self.port is None:
            raise LocalPrometheusError("the local Prometheus is not running")
        return f"http://127.0.0.1:{self.port}"

    def prepare(self) -> Path:
        """The temp folder with the config, the rules and empty target files (before ``start``)."""
        if self.home is None:
            if not Path(self.binary).is_file():
                raise LocalPrometheusError(f"no Prometheus at {self.binary}: add `prometheus` to "
                                           "deploy/local/debian-packages.txt and run `make system-deps`")
            self.home = Path(tempfile.mkdtemp(prefix="ingest-prometheus-"))
            (self.home / "targets").mkdir()
            (self.home / "data").mkdir()
            config = yaml.safe_load(self.config.read_text(encoding="utf-8"))
            if self.scrape_interval_s:
                config["global"]["scrape_interval"] = _duration(self.scrape_interval_s)
                config["global"]["scrape_timeout"] = _duration(self.scrape_interval_s)
                for job in config.get("scrape_configs", []):
                    job.pop("scrape_interval", None)
                    job.pop("scrape_timeout", None)
            if self.evaluation_interval_s:
                config["global"]["evaluation_interval"] = _duration(self.evaluation_interval_s)
            (self.home / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
            (self.home / "rules").mkdir()
            for path in sorted(self.rules_dir.glob("*.yaml")):
                rules = yaml.safe_load(path.read_text(encoding="utf-8"))
                for group in rules.get("groups", []):
                    if self.evaluation_interval_s:
                        group["interval"] = _duration(self.evaluation_interval_s)
                    for rule in group.get("rules", []):
                        self._transform(rule, path)
                (self.home / "rules" / path.name).write_text(yaml.safe_dump(rules, sort_keys=False))
        unknown = set(self.thresholds) - self._transformed
        if unknown:
            raise LocalPrometheusError(f"thresholds for alert(s) not in {self.rules_dir}: {', '.join(sorted(unknown))}")
        return self.home

    def _transform(self, rule: dict[str, Any], path: Path) -> None:
        """``alert_for_s`` and ``thresholds`` applied to one rule (alerts only)."""
        if "alert" not in rule:
            return
        if self.alert_for_s is not None and "for" in rule:
            rule["for"] = _duration(self.alert_for_s)
        for old, new in self.thresholds.get(rule["alert"], {}).items():
            if rule["expr"].count(old) != 1:
                raise LocalPrometheusError(f"{path.name}: alert {rule['alert']}: {old!r} occurs "
                                           f"{rule['expr'].count(old)} times in its expression, not once")
            rule["expr"] = rule["expr"].replace(old, new)
            self._transformed.add(rule["alert"])

    def backfill(self, openmetrics: str, timeout_s: float = 120) -> None:
        """Samples in OpenMetrics text (ending with ``# EOF``) into the data folder, before ``start``."""
        if self._process is not None:
            raise LocalPrometheusError("backfill before start: Prometheus holds its data folder")
        home = self.prepare()
        source = home / "backfill.om"
        source.write_text(openmetrics, encoding="utf-8")
        promtool = shutil.which("promtool") or "/usr/bin/promtool"
        done = subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", str(source), str(home / "data")],
                              capture_output=True, text=True, timeout=timeout_s)
        if done.returncode != 0:
            raise LocalPrometheusError(f"promtool could not backfill: {done.stderr[-2000:] or done.stdout[-2000:]}")

    def start(self) -> LocalPrometheus:
        home = self.prepare()
        (self.port,) = _free_ports(1)
        log = open(home / "prometheus.log", "wb")  # noqa: SIM115 - closed with the process
        cmd = [self.binary, f"--config.file={home / 'prometheus.yml'}", f"--storage.tsdb.path={home / 'data'}",
               f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1d",
               "--web.enable-lifecycle", "--log.level=warn"]
        self._process = _spawn_dying_with_parent(cmd, {"stdout": log, "stderr": subprocess.STDOUT,
                                                       "stdin": subprocess.DEVNULL, "start_new_session": True,
                                                       "cwd": str(home)})
        log.close()
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            if self._process.poll() is not None:
                raise LocalPrometheusError(f"Prometheus exited with {self._process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise LocalPrometheusError(f"Prometheus not ready after {self.startup_timeout_s:.0f} s:\n"
                                           f"{self.log_tail()}")
            time.sleep(0.2)

    def stop(self, timeout_s: float = 15.0) -> None:
        stop_child(self._process, timeout_s, "local Prometheus")
        self._process = None
        if self.home is not None:
            shutil.rmtree(self.home, ignore_errors=True)
            self.home = None
        self.port = None

    def __enter__(self) -> LocalPrometheus:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 30) -> str:
        path = self.home / "prometheus.log" if self.home else None
        if path is None or not path.is_file():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    # ---- targets and queries

    def add_targets(self, job: str, name: str, targets: Iterable[str], labels: Mapping[str, str] | None = None) -> None:
        """Targets for one of prometheus.yml's jobs (``stream``, ``exporter``), picked up by file discovery."""
        if job not in JOBS:
            raise ValueError(f"unknown job {job!r}: one of {', '.join(JOBS)}")
        path = self.prepare() / "targets" / f"{JOBS[job]}-{name}.json"
        temp = path.with_suffix(".tmp")
        temp.write_text(json.dumps([{"targets": list(targets), "labels": dict(labels or {})}]))
        temp.replace(path)  # atomic: discovery never reads half a file

    def api(self, path: str, params: Mapping[str, Any] | None = None, timeout_s: float = 10.0) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=timeout_s) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as error:
            body = json.loads(error.read() or b"{}")
            raise LocalPrometheusError(f"{path}: HTTP {error.code}: {body.get('error', body)}") from None
        if body.get("status") != "success":
            raise LocalPrometheusError(f"{path}: {body}")
        return body["data"]

    def query(self, expr: str, at: float | None = None, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        params = {"query": expr, **({"time": f"{at:.3f}"} if at is not None else {})}
        return self.api("/api/v1/query", params, timeout_s)["result"]

    def alerts(self, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        return self.api("/api/v1/alerts", timeout_s=timeout_s)["alerts"]

    def rules(self, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        return [r for g in self.api("/api/v1/rules", timeout_s=timeout_s)["groups"] for r in g["rules"]]

    def wait_for(self, condition: Callable[[], Any], timeout_s: float, poll_s: float = 0.5) -> Any:
        """Poll ``condition`` until it returns something truthy (returned) or the deadline passes."""
        deadline = time.monotonic() + timeout_s
        while True:
            result = condition()
            if result:
                return result
            if time.monotonic() > deadline:
                raise LocalPrometheusError(f"condition not met within {timeout_s:.0f} s")
            time.sleep(poll_s)


def _duration(seconds: float) -> str:
    return f"{int(seconds * 1000)}ms" if seconds < 1 or seconds != int(seconds) else f"{int(seconds)}s"
