"""A real Kafka Connect 4.1 standalone worker with Debezium's MariaDB connector: the CDC producer of the tests.

The jars come from Maven Central through ``deploy/local/connect/pom.xml`` (``connect-runtime``,
``connect-json``, ``connect-transforms`` 4.1.1 and ``io.debezium:debezium-connector-mariadb`` 3.5.0.Final)
into ``~/.cache/ingest_platform/`` exactly as the broker's (``maven_jars.resolve_jars``); the worker is a
plain ``java`` process that dies with the Python process that started it::

    with LocalMariaDB() as db, LocalConnect(broker.bootstrap, [
        mariadb_connector("wrapped", db, "inventory", topic_prefix="w", schemas_enable=True),
        mariadb_connector("bare", db, "inventory", topic_prefix="b", schemas_enable=False),
    ]) as connect:
        connect.wait_running()            # every connector and task RUNNING (REST API), with a deadline

Each connector carries its own converter settings, so one worker can publish the same database with and
without the JSON converter's schema/payload wrapper. A failure names the connector, its state and trace, and
quotes the worker's log.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import string
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ingest_platform.dev.local_kafka import _free_ports, _java_executable, spawn
from ingest_platform.dev.local_mariadb import LocalMariaDB
from ingest_platform.dev.local_process import ChildService, tail_text
from ingest_platform.dev.maven_jars import resolve_jars

_log = logging.getLogger(__name__)

DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy" / "local" / "connect"
POM = DEPLOY_DIR / "pom.xml"
WORKER_TEMPLATE = DEPLOY_DIR / "worker.properties.template"
LOG4J2_CONFIG = DEPLOY_DIR / "log4j2.properties"
_TEMP_PREFIX = "ingest-connect-"
_JSON_CONVERTER = "org.apache.kafka.connect.json.JsonConverter"


class LocalConnectError(RuntimeError):
    """The Connect worker or one of its connectors could not be resolved, started or run."""


def resolve_connect_jars(cache_dir: Path | None = None) -> Path:
    """The worker's and Debezium's jars (``libs/*``), resolved once per pom into the project's cache."""
    return resolve_jars(POM, "connect", version_property="connect.version", expect="connect-runtime-*.jar",
                        cache_dir=cache_dir, what="Kafka Connect and Debezium jars")  # fmt: skip


def mariadb_connector(name: str, db: LocalMariaDB, database: str, *, topic_prefix: str, schemas_enable: bool,
                      server_id: int, partitions: int = 1, **extra: str) -> dict[str, str]:  # fmt: skip
    """A Debezium MariaDB connector's configuration for ``database`` on ``db``.

    Topics are ``<topic_prefix>.<database>.<table>``, created by the connector with ``partitions``; keys and
    values are JSON, wrapped in the converter's ``schema``/``payload`` when ``schemas_enable``. The schema
    history is a file in the worker's state dir (no extra topic); DDL events are not published
    (``include.schema.changes=false``); NULLs stay NULL (``replace.null.with.default=false``, see DESIGN §9.5).
    ``server_id`` must differ between connectors of one database.
    """
    enabled = "true" if schemas_enable else "false"
    config = {
        "name": name,
        "connector.class": "io.debezium.connector.mariadb.MariaDbConnector",
        "tasks.max": "1",
        "database.hostname": db.host,
        "database.port": str(db.port),
        "database.user": db.user,
        "database.password": db.password,
        "database.server.id": str(server_id),
        "database.ssl.mode": "disable",
        "database.include.list": database,
        "topic.prefix": topic_prefix,
        "include.schema.changes": "false",
        "snapshot.mode": "initial",
        "schema.history.internal": "io.debezium.storage.file.history.FileSchemaHistory",
        "schema.history.internal.file.filename": f"${{state_dir}}/{name}.history",
        "topic.creation.default.replication.factor": "1",
        "topic.creation.default.partitions": str(partitions),
        "key.converter": _JSON_CONVERTER,
        "key.converter.schemas.enable": enabled,
        "value.converter": _JSON_CONVERTER,
        "value.converter.schemas.enable": enabled,
        # Connect's JsonConverter writes a column's DEFAULT in place of a NULL value unless told not to
        # (replace.null.with.default, true since Kafka 3.5): the table would then not equal the source.
        "key.converter.replace.null.with.default": "false",
        "value.converter.replace.null.with.default": "false",
    }
    config.update(extra)
    return config


class LocalConnect(ChildService):
    """One standalone Connect worker running ``connectors``; a context manager (start on enter, stop on exit).

    ``connectors`` are configuration mappings (``mariadb_connector``); a value may use ``${state_dir}``.
    """

    WHAT = "the local Kafka Connect worker"  # stop(): SIGTERM stops the connectors and flushes their offsets

    def __init__(self, bootstrap: str, connectors: Sequence[Mapping[str, str]], *, heap: str = "512m",
                 startup_timeout_s: float = 120.0, die_with_parent: bool = True,
                 cache_dir: Path | None = None) -> None:  # fmt: skip
        names = [c.get("name") for c in connectors]
        if not connectors or None in names or len(set(names)) != len(names):
            raise LocalConnectError(f"connectors need distinct names, got {names}")
        self.bootstrap = bootstrap
        self.connectors = [dict(c) for c in connectors]
        self.heap = heap
        self.startup_timeout_s = startup_timeout_s
        self.die_with_parent = die_with_parent
        self.cache_dir = cache_dir
        self.rest_port: int | None = None
        self.timings: dict[str, float] = {}
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def state_dir(self) -> Path:
        if self._dir is None:
            raise LocalConnectError("the Connect worker is not started")
        return self._dir

    @property
    def log_file(self) -> Path:
        return self.state_dir / "logs" / "connect.log"

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> LocalConnect:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- start ------------------------------------------------------------------------------------------------

    def start(self) -> LocalConnect:
        """Resolve the jars, write the worker and connector files, launch the worker, wait for its REST API."""
        if self.is_running():
            return self
        t0 = time.monotonic()
        libs = resolve_connect_jars(self.cache_dir)
        self.timings["jars_s"] = time.monotonic() - t0
        java = _java_executable()
        self._dir = Path(tempfile.mkdtemp(prefix=_TEMP_PREFIX))
        try:
            self._launch(java, libs)
            self._wait_rest(time.monotonic() + self.startup_timeout_s)
        except BaseException:
            self._kill_now()
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
            raise
        self.timings["start_s"] = time.monotonic() - t0
        _log.info("local Kafka Connect up (REST on %s) in %.1f s", self.rest_port, self.timings["start_s"])
        return self

    def _render(self, text: str) -> str:
        return string.Template(text).safe_substitute(
            bootstrap=self.bootstrap, rest_port=self.rest_port, state_dir=self.state_dir
        )

    def _launch(self, java: str, libs: Path) -> None:
        state = self.state_dir
        (state / "logs").mkdir(parents=True)
        self.rest_port = _free_ports(1)[0]
        (state / "worker.properties").write_text(self._render(WORKER_TEMPLATE.read_text()))
        files = []
        for config in self.connectors:
            path = state / f"{config['name']}.properties"
            path.write_text("".join(f"{k}={self._render(str(v))}\n" for k, v in config.items()))
            files.append(str(path))
        cmd = [
            java, f"-Xmx{self.heap}", "-XX:+UseG1GC", "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J2_CONFIG}", f"-Dconnect.logs.dir={state / 'logs'}",
            "-cp", f"{libs}/*", "org.apache.kafka.connect.cli.ConnectStandalone", str(state / "worker.properties"),
            *files,
        ]  # fmt: skip
        out = open(state / "logs" / "connect.out", "ab")  # noqa: SIM115 - the child keeps it; closed below
        kwargs: dict[str, Any] = {
            "cwd": state, "stdin": subprocess.DEVNULL, "stdout": out, "stderr": subprocess.STDOUT,
            "start_new_session": True, "close_fds": True,
        }  # fmt: skip
        try:
            self._proc = spawn(cmd, kwargs, self.die_with_parent)
        finally:
            out.close()

    def _wait_rest(self, deadline: float) -> None:
        last = "not answering"
        while True:
            if not self.is_running():
                raise self._error(f"the Connect worker exited with code {self._proc.returncode if self._proc else '?'}"
                                  " while starting")  # fmt: skip
            try:
                self._get("/")
                return
            except (OSError, ValueError) as error:
                last = str(error)
            if time.monotonic() > deadline:
                raise self._error(f"the Connect worker's REST API did not answer within {self.startup_timeout_s:.0f} s "
                                  f"({last})")  # fmt: skip
            time.sleep(0.5)

    # -- status -----------------------------------------------------------------------------------------------

    def _get(self, path: str, timeout_s: float = 5) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.rest_port}{path}", timeout=timeout_s) as response:
            return json.loads(response.read())

    def status(self, name: str) -> dict[str, Any]:
        """The REST API's status of connector ``name`` (``connector.state``, ``tasks[].state``/``trace``)."""
        try:
            return self._get(f"/connectors/{name}/status")
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return {"name": name, "connector": {"state": "NOT_CREATED"}, "tasks": []}
            raise LocalConnectError(f"Connect REST /connectors/{name}/status answered {error.code}") from None
        except (OSError, ValueError) as error:
            raise self._error(f"the Connect REST API did not answer for connector '{name}': {error}") from None

    def wait_running(self, timeout_s: float = 120) -> None:
        """Until every connector and its tasks are RUNNING; fails at once when one FAILED, naming it."""
        deadline = time.monotonic() + timeout_s
        while True:
            pending = []
            for config in self.connectors:
                status = self.status(config["name"])
                states = [status["connector"]["state"]] + [task["state"] for task in status.get("tasks", [])]
                if "FAILED" in states:
                    traces = [t.get("trace", "") for t in [status["connector"], *status.get("tasks", [])]]
                    trace = next((t for t in traces if t), "")
                    raise self._error(f"connector '{config['name']}' FAILED: {tail_text(trace, 12)}")
                if not status.get("tasks") or any(state != "RUNNING" for state in states):
                    pending.append(f"{config['name']}: {'/'.join(states)}")
            if not pending:
                return
            if not self.is_running():
                raise self._error(f"the Connect worker exited with code {self._proc.returncode if self._proc else '?'}")
            if time.monotonic() > deadline:
                raise self._error(f"connectors not RUNNING within {timeout_s:.0f} s ({'; '.join(pending)})")
            time.sleep(0.5)

    def _error(self, problem: str) -> LocalConnectError:
        parts = []
        for path in (self.log_file, self.state_dir / "logs" / "connect.out") if self._dir else ():
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace")
                errors = [line for line in text.splitlines() if "] ERROR " in line]
                if errors:
                    parts.append(f"== first errors in {path.name} ==\n" + "\n".join(e[:600] for e in errors[:3]))
                parts.append(f"== {path} (tail) ==\n{tail_text(text, 20)}")
        return LocalConnectError(problem + ("\n" + "\n".join(parts) if parts else ""))

