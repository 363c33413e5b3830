"""A real single-node Apache Kafka 4.x broker (KRaft, combined broker+controller) for development and tests.

Nothing is downloaded by hand and nothing needs docker: Maven resolves the broker jars from Maven Central
(``deploy/local/kafka/pom.xml``) into a cache, and the broker runs as a plain ``java`` process on two free
loopback ports::

    with LocalKafka() as broker:          # temporary state dir, removed on stop
        create_topic(broker.bootstrap, "events", partitions=3)
        ...

``up`` / ``down`` / ``status`` keep a detached broker running in a state directory between commands; they back
``ingest-platform kafka up|down|status``.

Layout of a state directory::

    server.properties   rendered from deploy/local/kafka/server.properties.template (+ extra_config)
    data/               log.dirs (KRaft metadata log and topic partitions)
    logs/server.log     the broker's log4j2 log (deploy/local/kafka/log4j2.properties)
    logs/broker.out     the JVM's stdout/stderr (WARN+ only) and the storage format output
    broker.json         {pid, bootstrap, controller_port, log_dir, started_at, kafka_version, ...}, only while
                        the broker runs

This module must not import dagster: the CLI and the test suite use it before any code location loads.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import logging
import os
import queue
import re
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ingest_platform.dev.local_process import CACHE_ENV, default_cache_dir, terminate  # noqa: F401 - CACHE_ENV is API
from ingest_platform.dev.local_process import file_lock as _file_lock
from ingest_platform.dev.local_process import now_iso as _now_iso
from ingest_platform.dev.local_process import run_captured as _run_captured
from ingest_platform.dev.local_process import signal_group as _signal_group
from ingest_platform.dev.local_process import tail_text as _tail_text
from ingest_platform.dev.maven_jars import MavenJarsError, jar_cache_dir, pom_property, resolve_jars
from ingest_platform.processes import process_started_at

_log = logging.getLogger(__name__)

#: deploy/local/kafka in the source tree (the package is installed editable).
DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy" / "local" / "kafka"
SERVER_TEMPLATE = DEPLOY_DIR / "server.properties.template"
LOG4J2_CONFIG = DEPLOY_DIR / "log4j2.properties"

POM_ENV = "INGEST_KAFKA_POM"
STATE_DIR_ENV = "INGEST_KAFKA_STATE_DIR"

DEFAULT_STARTUP_TIMEOUT_S = 60.0
_PR_SET_PDEATHSIG = 1
_TEMP_PREFIX = "ingest-kafka-"


class LocalKafkaError(RuntimeError):
    """The local broker could not be resolved, started, reached or stopped."""


# ----------------------------------------------------------------------------------------------------------
# Paths and defaults


def pom_path() -> Path:
    """The pom that pins the broker: ``$INGEST_KAFKA_POM`` or ``deploy/local/kafka/pom.xml``."""
    override = os.environ.get(POM_ENV)
    return Path(override).expanduser().resolve() if override else DEPLOY_DIR / "pom.xml"


def default_state_dir() -> Path:
    """The CLI broker's state dir: ``$INGEST_KAFKA_STATE_DIR`` or ``~/.cache/ingest_platform/local-kafka``."""
    env = os.environ.get(STATE_DIR_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ingest_platform" / "local-kafka"


def kafka_version(pom: Path | None = None) -> str:
    """The ``kafka.version`` property of the pom (e.g. ``"4.4.0"``)."""
    try:
        return pom_property(pom or pom_path(), "kafka.version")
    except MavenJarsError as error:
        raise LocalKafkaError(str(error)) from None


def _jar_cache_dir(cache_dir: Path | None) -> Path:
    pom = pom_path()
    if not pom.is_file():
        raise LocalKafkaError(f"Kafka pom not found: {pom} (set ${POM_ENV} to override)")
    try:
        return jar_cache_dir(pom, "kafka", "kafka.version", cache_dir)
    except MavenJarsError as error:
        raise LocalKafkaError(str(error)) from None


def cached_broker_jars(cache_dir: Path | None = None) -> Path | None:
    """The libs directory if the jars for the current pom are already resolved, else None (no Maven run)."""
    target = _jar_cache_dir(cache_dir)
    return target / "libs" if (target / ".complete").is_file() else None


def resolve_broker_jars(cache_dir: Path | None = None) -> Path:
    """Resolve the broker's runtime jars with Maven; return the ``libs`` directory (use it as ``libs/*``).

    The jars go to ``<cache>/kafka-<kafka.version>-<sha256(pom)[:12]>/libs`` and are reused while the pom is
    unchanged (``maven_jars.resolve_jars``: a ``.complete`` marker after Maven succeeded, a lock file
    between processes).
    """
    _jar_cache_dir(cache_dir)  # the pom exists and names its version
    try:
        return resolve_jars(pom_path(), "kafka", version_property="kafka.version", expect="kafka_*.jar",
                            cache_dir=cache_dir, what="Kafka broker jars")  # fmt: skip
    except MavenJarsError as error:
        raise LocalKafkaError(str(error)) from None


# ----------------------------------------------------------------------------------------------------------
# The broker


class LocalKafka:
    """One single-node KRaft broker process; a context manager (``start()`` on enter, ``stop()`` on exit).

    ``state_dir=None`` uses a fresh temporary directory that ``stop()`` deletes. A given ``state_dir`` is
    kept: starting again in it reuses its data (topics survive) when its previous ports are still free, else
    it is re-formatted on new ports.

    ``sasl_users`` (``{user: password}``) adds a SASL_PLAINTEXT listener with the PLAIN mechanism on a third
    port (``sasl_bootstrap``) that accepts exactly those users; the PLAINTEXT listener stays as it is.

    ``die_with_parent=True`` (Linux) makes the kernel send SIGTERM to the broker when this Python process
    dies, even by SIGKILL, so a killed test run leaves no broker behind. (A temporary state dir is not deleted
    in that case; the next ``LocalKafka`` with a temporary dir deletes such orphans.)
    """

    def __init__(
        self,
        state_dir: Path | str | None = None,
        *,
        extra_config: Mapping[str, Any] | None = None,
        heap: str = "1g",
        die_with_parent: bool = True,
        startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S,
        cache_dir: Path | None = None,
        sasl_users: Mapping[str, str] | None = None,
    ) -> None:
        self._requested_state_dir = Path(state_dir).expanduser().resolve() if state_dir is not None else None
        self._state_dir: Path | None = self._requested_state_dir
        self.extra_config = {str(k): str(v) for k, v in (extra_config or {}).items()}
        self.heap = heap
        self.die_with_parent = die_with_parent
        self.startup_timeout_s = startup_timeout_s
        self.cache_dir = cache_dir
        self.port: int | None = None
        self.controller_port: int | None = None
        self.sasl_users = dict(sasl_users or {})
        self.sasl_port: int | None = None
        self.kafka_version: str | None = None
        #: Seconds in start()/stop(): jars, format, ready (java launch -> metadata answered), start, stop.
        self.timings: dict[str, float] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid: int | None = (
            None  # set for started and for attached (up() reusing a running broker) brokers
        )
        self._temp_dir: Path | None = None
        self._info: dict[str, Any] = {}

    # -- properties ------------------------------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        """``"127.0.0.1:<port>"`` of the PLAINTEXT listener."""
        if self.port is None:
            raise LocalKafkaError("the broker is not started")
        return f"127.0.0.1:{self.port}"

    @property
    def sasl_bootstrap(self) -> str:
        """``"127.0.0.1:<port>"`` of the SASL_PLAINTEXT (PLAIN) listener; only with ``sasl_users``."""
        if self.sasl_port is None:
            raise LocalKafkaError("the broker has no SASL listener (start it with sasl_users={...})")
        return f"127.0.0.1:{self.sasl_port}"

    @property
    def pid(self) -> int | None:
        """The broker JVM's pid (also its process-group id), None before start / after stop."""
        return self._pid

    @property
    def state_dir(self) -> Path:
        if self._state_dir is None:
            raise LocalKafkaError("the broker has no state dir yet (temporary dirs are created by start())")
        return self._state_dir

    @property
    def log_dir(self) -> Path:
        """The broker's ``log.dirs`` (partition data)."""
        return self.state_dir / "data"

    @property
    def server_log(self) -> Path:
        return self.state_dir / "logs" / "server.log"

    def is_running(self) -> bool:
        return self._pid is not None and _pid_alive(self._pid)

    def __repr__(self) -> str:
        where = f"bootstrap={self.bootstrap!r}, pid={self._pid}" if self._pid else "stopped"
        return f"LocalKafka({where}, state_dir={str(self._state_dir) if self._state_dir else None!r})"

    def __enter__(self) -> LocalKafka:  # noqa: PYI034 - start() returns self; Self needs 3.11
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- start -----------------------------------------------------------------------------------------------

    def start(self) -> LocalKafka:
        """Start the broker and wait until it answers a metadata request; no-op if already started."""
        if self._pid is not None and _pid_alive(self._pid):
            return self
        t0 = time.monotonic()
        libs = resolve_broker_jars(self.cache_dir)
        self.timings["jars_s"] = time.monotonic() - t0
        self.kafka_version = _version_from_libs(libs) or kafka_version()
        java = _java_executable()
        if self._requested_state_dir is None:
            _remove_orphaned_temp_dirs()
            self._temp_dir = Path(tempfile.mkdtemp(prefix=_TEMP_PREFIX))
            self._state_dir = self._temp_dir
        state = self.state_dir
        (state / "logs").mkdir(parents=True, exist_ok=True)
        try:
            for attempt in (1, 2):
                reuse = self._reusable_ports() if attempt == 1 else None
                if reuse:
                    self.port, self.controller_port, self.sasl_port = reuse
                else:
                    ports = _free_ports(3 if self.sasl_users else 2)
                    self.port, self.controller_port = ports[:2]
                    self.sasl_port = ports[2] if self.sasl_users else None
                self._write_server_properties()
                if not reuse:
                    self._format(java, libs)
                try:
                    self._launch(java, libs)
                    break
                except _PortTaken as exc:
                    if attempt == 2:
                        raise LocalKafkaError(
                            f"the broker could not bind its ports twice in a row:\n{exc}"
                        ) from None
                    _log.warning("port %s/%s was taken before the broker bound it; retrying", *self._ports())
        except BaseException:
            self._cleanup_after_failure()
            raise
        self.timings["start_s"] = time.monotonic() - t0
        self._info = {
            "pid": self._pid,
            "bootstrap": self.bootstrap,
            "port": self.port,
            "controller_port": self.controller_port,
            **({"sasl_bootstrap": self.sasl_bootstrap} if self.sasl_port else {}),
            "log_dir": str(self.log_dir),
            "state_dir": str(state),
            "server_properties": str(state / "server.properties"),
            "started_at": _now_iso(),
            "kafka_version": self.kafka_version,
            "die_with_parent": self.die_with_parent,
            "startup_seconds": round(self.timings["start_s"], 3),
        }
        _atomic_write(state / "broker.json", json.dumps(self._info, indent=2) + "\n")
        _log.info(
            "local Kafka %s up at %s (pid %s) in %.1f s",
            self.kafka_version,
            self.bootstrap,
            self._pid,
            self.timings["start_s"],
        )
        return self

    def _ports(self) -> tuple[int | None, int | None]:
        return self.port, self.controller_port

    def _reusable_ports(self) -> tuple[int, int, int | None] | None:
        """Previous ports of a kept state dir whose data is formatted, if they are all still free."""
        if self._temp_dir is not None:
            return None
        props = self.state_dir / "server.properties"
        if not (self.log_dir / "meta.properties").is_file() or not props.is_file():
            return None
        text = props.read_text()

        def port_of(listener: str) -> int | None:
            found = re.search(rf"^listeners=(?:.*,)?{listener}://[^:,]+:(\d+)", text, re.MULTILINE)
            return int(found.group(1)) if found else None

        port, controller, sasl = port_of("PLAINTEXT"), port_of("CONTROLLER"), port_of("SASL_PLAINTEXT")
        if port is None or controller is None or (sasl is None) != (not self.sasl_users):
            return None
        ports = [p for p in (port, controller, sasl) if p is not None]
        return (port, controller, sasl) if all(_port_free(p) for p in ports) else None

    def _write_server_properties(self) -> None:
        text = string.Template(SERVER_TEMPLATE.read_text()).substitute(
            port=self.port, controller_port=self.controller_port, log_dir=self.log_dir
        )
        lines = text.splitlines()
        settings = {**self._sasl_settings(lines), **self.extra_config}
        for key, value in settings.items():
            pattern = re.compile(rf"^\s*{re.escape(key)}\s*[=:]")
            hits = [i for i, line in enumerate(lines) if pattern.match(line)]
            if hits:
                for i in hits:
                    lines[i] = f"{key}={value}"
            else:
                lines.append(f"{key}={value}")
        path = self.state_dir / "server.properties"
        _atomic_write(path, "\n".join(lines) + "\n")
        if self.sasl_users:
            path.chmod(0o600)  # it holds the test users' passwords

    def _sasl_settings(self, lines: list[str]) -> dict[str, str]:
        """The SASL_PLAINTEXT listener (PLAIN, ``sasl_users``) added to the template's listeners."""
        if not self.sasl_users:
            return {}
        template = {line.split("=", 1)[0]: line.split("=", 1)[1] for line in lines if "=" in line and line[0] != "#"}
        listener = f"SASL_PLAINTEXT://127.0.0.1:{self.sasl_port}"

        def quoted(text: str) -> str:
            return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

        first_user, first_password = next(iter(self.sasl_users.items()))
        users = " ".join(f"user_{user}={quoted(password)}" for user, password in self.sasl_users.items())
        jaas = (f"org.apache.kafka.common.security.plain.PlainLoginModule required username={quoted(first_user)} "
                f"password={quoted(first_password)} {users};")  # fmt: skip
        return {
            "listeners": f"{template['listeners']},{listener}",
            "advertised.listeners": f"{template['advertised.listeners']},{listener}",
            "listener.security.protocol.map": template["listener.security.protocol.map"]
            + ",SASL_PLAINTEXT:SASL_PLAINTEXT",
            "sasl.enabled.mechanisms": "PLAIN",
            "listener.name.sasl_plaintext.sasl.enabled.mechanisms": "PLAIN",
            "listener.name.sasl_plaintext.plain.sasl.jaas.config": jaas.replace("\\", "\\\\"),  # .properties escape
        }

    def _jvm_base(self, java: str, libs: Path) -> list[str]:
        return [
            java,
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J2_CONFIG}",
            f"-Dkafka.logs.dir={self.state_dir / 'logs'}",
            "-cp",
            f"{libs}/*",
        ]

    def _format(self, java: str, libs: Path) -> None:
        """``kafka-storage format --standalone`` on a wiped log dir (single-voter dynamic KRaft quorum)."""
        if self.log_dir.exists():
            shutil.rmtree(self.log_dir)
        cmd = self._jvm_base(java, libs)
        cmd[1:1] = ["-Xmx256m", "-XX:TieredStopAtLevel=1"]  # a one-shot tool: start fast, stay small
        cmd += [
            "kafka.tools.StorageTool",
            "format",
            "--standalone",
            "--cluster-id",
            new_cluster_id(),
            "--config",
            str(self.state_dir / "server.properties"),
        ]
        t0 = time.monotonic()
        proc = _run_captured(cmd, 120)
        self.timings["format_s"] = time.monotonic() - t0
        with open(self.state_dir / "logs" / "broker.out", "a") as out:
            out.write(f"--- {_now_iso()} kafka-storage format\n{proc.stdout}")
        if proc.returncode != 0:
            raise LocalKafkaError(
                f"kafka-storage format failed (exit {proc.returncode}) for {self.state_dir}:\n"
                f"{_tail_text(proc.stdout)}"
            )

    def _launch(self, java: str, libs: Path) -> None:
        cmd = self._jvm_base(java, libs)
        cmd[1:1] = [
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:InitiatingHeapOccupancyPercent=35",
            "-XX:+ExplicitGCInvokesConcurrent",
        ]
        cmd += ["kafka.Kafka", str(self.state_dir / "server.properties")]
        out_path = self.state_dir / "logs" / "broker.out"
        server_log_size = self.server_log.stat().st_size if self.server_log.exists() else 0
        t0 = time.monotonic()
        with open(out_path, "ab") as out:
            out.write(f"--- {_now_iso()} {' '.join(cmd)}\n".encode())
            out.flush()
            kwargs: dict[str, Any] = {
                "cwd": self.state_dir,
                "stdin": subprocess.DEVNULL,
                "stdout": out,
                "stderr": subprocess.STDOUT,
                "start_new_session": True,
                "close_fds": True,
            }
            self._proc = spawn(cmd, kwargs, self.die_with_parent)
        self._pid = self._proc.pid
        deadline = t0 + self.startup_timeout_s
        try:
            _wait_for_metadata(
                self.bootstrap, deadline, alive=lambda: self._proc is not None and self._proc.poll() is None
            )
        except _NotReady as exc:
            exited = self._proc.poll()
            self._kill_now()
            new_log, tail = _broker_tail(self.state_dir, server_log_size)
            if "Address already in use" in new_log or "BindException" in new_log:
                raise _PortTaken(tail) from None
            why = (
                f"exited with code {exited}"
                if exited is not None
                else f"did not answer a metadata request within {self.startup_timeout_s:.0f} s ({exc})"
            )
            raise LocalKafkaError(
                f"local Kafka broker on {self.bootstrap} {why}. State dir {self.state_dir}; log tail:\n{tail}"
            ) from None
        self.timings["ready_s"] = time.monotonic() - t0

    def _kill_now(self) -> None:
        if self._pid is not None:
            _signal_group(self._pid, signal.SIGKILL)
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(10)
        self._proc = None
        self._pid = None

    def _cleanup_after_failure(self) -> None:
        self._kill_now()
        self.port = self.controller_port = self.sasl_port = None
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None
            self._state_dir = None

    # -- stop ------------------------------------------------------------------------------------------------

    def stop(self, timeout_s: float = 20) -> None:
        """SIGTERM the broker's process group, SIGKILL after ``timeout_s``; idempotent.

        Removes ``broker.json``, and the whole state dir if it was a temporary one.
        """
        t0 = time.monotonic()
        pid = self._pid
        if pid is not None:
            if not terminate(pid, "local Kafka", timeout_s, lambda seconds: self._wait_exit(pid, seconds)):
                raise LocalKafkaError(f"local Kafka pid {pid} survived SIGKILL")
        self._proc = None
        self._pid = None
        if pid is not None and self._state_dir is not None:  # never touch a dir we did not run a broker in
            with contextlib.suppress(FileNotFoundError):
                (self._state_dir / "broker.json").unlink()
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None
            self._state_dir = None
        self.timings["stop_s"] = time.monotonic() - t0

    def _wait_exit(self, pid: int, timeout_s: float) -> bool:
        if self._proc is not None:
            try:
                self._proc.wait(timeout_s)
                return True
            except subprocess.TimeoutExpired:
                return False
        return _wait_pid_gone(pid, timeout_s)

    # -- attach (used by up()) -------------------------------------------------------------------------------

    @classmethod
    def _attach(cls, state_dir: Path, info: Mapping[str, Any]) -> LocalKafka:
        """A handle on a broker some other process started in ``state_dir`` (stop() still works)."""
        k = cls(state_dir, die_with_parent=bool(info.get("die_with_parent", False)))
        k._pid = int(info["pid"])
        k.port = int(info["port"]) if "port" in info else int(str(info["bootstrap"]).rsplit(":", 1)[1])
        k.controller_port = info.get("controller_port")
        if info.get("sasl_bootstrap"):
            k.sasl_port = int(str(info["sasl_bootstrap"]).rsplit(":", 1)[1])
        k.kafka_version = info.get("kafka_version")
        k._info = dict(info)
        return k


class _PortTaken(Exception):
    pass


class _NotReady(Exception):
    pass


# ----------------------------------------------------------------------------------------------------------
# CLI helpers: a detached broker kept in a state dir


def up(
    state_dir: Path | str | None = None,
    *,
    heap: str = "1g",
    extra_config: Mapping[str, Any] | None = None,
    timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S,
) -> LocalKafka:
    """Start a detached broker (it outlives this process) in ``state_dir``, or reuse the healthy one there.

    A broker process that is alive but does not answer within ``timeout_s`` is killed and replaced.
    The returned handle's ``timings`` is empty when an already-running broker was reused.
    """
    state = Path(state_dir).expanduser().resolve() if state_dir is not None else default_state_dir().resolve()
    state.mkdir(parents=True, exist_ok=True)
    with _file_lock(state / ".lock"):
        info = _read_info(state)
        if info and _is_our_broker(int(info["pid"]), state):
            try:
                _wait_for_metadata(
                    info["bootstrap"],
                    time.monotonic() + timeout_s,
                    alive=lambda: _pid_alive(int(info["pid"])),
                )
                return LocalKafka._attach(state, info)
            except _NotReady:
                _log.warning("local Kafka pid %s in %s is not answering; replacing it", info["pid"], state)
                LocalKafka._attach(state, info).stop()
        k = LocalKafka(
            state, heap=heap, extra_config=extra_config, die_with_parent=False, startup_timeout_s=timeout_s
        )
        return k.start()


def down(state_dir: Path | str | None = None, timeout_s: float = 20) -> bool:
    """Stop the broker running in ``state_dir``; True if one was stopped, False if none was running."""
    state = Path(state_dir).expanduser().resolve() if state_dir is not None else default_state_dir().resolve()
    if not state.is_dir():
        return False
    with _file_lock(state / ".lock"):
        info = _read_info(state)
        if not info:
            return False
        if not _is_our_broker(int(info["pid"]), state):
            (state / "broker.json").unlink(missing_ok=True)  # stale: the broker died or the machine rebooted
            return False
        LocalKafka._attach(state, info).stop(timeout_s)
        return True


def status(state_dir: Path | str | None = None, timeout_s: float = 5) -> dict[str, Any]:
    """``{"state_dir", "running", "answering", "pid", "bootstrap", ...}`` for the broker in ``state_dir``."""
    state = Path(state_dir).expanduser().resolve() if state_dir is not None else default_state_dir().resolve()
    info = _read_info(state) or {}
    running = bool(info) and _is_our_broker(int(info["pid"]), state)
    answering = False
    if running:
        try:
            _wait_for_metadata(
                info["bootstrap"], time.monotonic() + timeout_s, alive=lambda: True, poll_s=0.5
            )
            answering = True
        except _NotReady:
            answering = False
    return {
        "state_dir": str(state),
        "running": running,
        "answering": answering,
        "pid": info.get("pid") if running else None,
        "bootstrap": info.get("bootstrap") if running else None,
        "controller_port": info.get("controller_port") if running else None,
        "log_dir": info.get("log_dir") if running else None,
        "started_at": info.get("started_at") if running else None,
        "kafka_version": info.get("kafka_version") if running else None,
        "server_log": str(state / "logs" / "server.log"),
    }


# ----------------------------------------------------------------------------------------------------------
# Topics


def create_topic(
    bootstrap: str,
    name: str,
    partitions: int = 1,
    config: Mapping[str, Any] | None = None,
    timeout: float = 30,
    *,
    replication_factor: int = 1,
    exist_ok: bool = False,
) -> None:
    """Create a topic and wait until every partition has a leader (so producing right away works).

    An existing topic raises ``LocalKafkaError`` unless ``exist_ok`` (its partition count is not checked).
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    deadline = time.monotonic() + timeout
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    new = NewTopic(
        name,
        num_partitions=partitions,
        replication_factor=replication_factor,
        config={str(k): str(v) for k, v in (config or {}).items()},
    )
    future = admin.create_topics([new], operation_timeout=timeout, request_timeout=timeout)[name]
    try:
        future.result(timeout=timeout)
    except KafkaException as exc:
        err = exc.args[0] if exc.args else None
        if not (exist_ok and isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS):
            raise LocalKafkaError(f"cannot create topic {name!r} on {bootstrap}: {err}") from exc
    except Exception as exc:  # concurrent.futures.TimeoutError and friends
        raise LocalKafkaError(f"cannot create topic {name!r} on {bootstrap}: {exc!r}") from exc
    while True:
        remaining = deadline - time.monotonic()
        try:
            md = admin.list_topics(topic=name, timeout=max(0.5, min(remaining, 5)))
            topic = md.topics.get(name)
            if (
                topic is not None
                and topic.error is None
                and topic.partitions
                and all(p.leader >= 0 for p in topic.partitions.values())
            ):
                return
        except KafkaException:
            pass
        if remaining <= 0:
            raise LocalKafkaError(
                f"topic {name!r} on {bootstrap} has no leader for every partition after {timeout} s"
            )
        time.sleep(0.1)


def new_cluster_id() -> str:
    """A KRaft cluster id: URL-safe base64 of 16 random bytes, unpadded (what ``random-uuid`` prints)."""
    while True:
        cid = base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode()
        if not cid.startswith("-"):  # Kafka's Uuid.randomUuid() avoids these too: they look like CLI flags
            return cid


# ----------------------------------------------------------------------------------------------------------
# Internals


def _wait_for_metadata(
    bootstrap: str, deadline: float, alive: Callable[[], bool], poll_s: float = 0.1
) -> None:
    """Return once ``bootstrap`` answers a metadata request listing a broker; raise _NotReady otherwise."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    host, port = bootstrap.rsplit(":", 1)
    admin = None
    last: str = "port not open"
    while True:
        if not alive():
            raise _NotReady("process exited")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _NotReady(last)
        if _port_open(host, int(port)):
            if admin is None:
                # log_level 0: connection errors while the broker comes up are expected, keep stderr clean.
                admin = AdminClient(
                    {"bootstrap.servers": bootstrap, "log_level": 0, "socket.timeout.ms": 5000}
                )
            try:
                md = admin.list_topics(timeout=max(0.2, min(remaining, 2.0)))
                if md.brokers:
                    return
                last = "metadata without brokers"
            except KafkaException as exc:
                last = str(exc)
        time.sleep(poll_s)


def _port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # same as the broker's acceptor
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (bound together, then released: the broker binds them next)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _java_executable() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        return str(Path(home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise LocalKafkaError(
            "`java` (17+) is not on PATH and $JAVA_HOME is not set; the Kafka broker needs it"
        )
    return java


def _version_from_libs(libs: Path) -> str | None:
    for jar in libs.glob("kafka_2.*-*.jar"):
        m = re.match(r"kafka_2\.\d+-(.+)\.jar$", jar.name)
        if m:
            return m.group(1)
    return None


# ---- die-with-parent spawning


class _Spawner:
    """Spawns die-with-parent children from one long-lived daemon thread.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the process. Forking from a
    short-lived worker thread (a thread pool, a Dagster executor) would kill the broker as soon as that thread
    ends; forking from this thread, which lives until the process exits, ties the broker to the process.
    """

    def __init__(self) -> None:
        self._requests: queue.Queue[tuple[Callable[[], Any], queue.Queue[tuple[bool, Any]]]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def run(self, fn: Callable[[], Any]) -> Any:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="local-kafka-spawner", daemon=True)
                self._thread.start()
        reply: queue.Queue[tuple[bool, Any]] = queue.Queue(1)
        self._requests.put((fn, reply))
        ok, value = reply.get()
        if not ok:
            raise value
        return value

    def _loop(self) -> None:
        while True:
            fn, reply = self._requests.get()
            try:
                reply.put((True, fn()))
            except BaseException as exc:  # noqa: BLE001 - handed back to the caller, who re-raises it
                reply.put((False, exc))


_SPAWNER = _Spawner()


def _spawn_dying_with_parent(cmd: list[str], kwargs: dict[str, Any]) -> subprocess.Popen[bytes]:
    libc = ctypes.CDLL(None, use_errno=True)
    prctl = libc.prctl
    parent = os.getpid()

    def preexec() -> None:  # runs in the child between fork and exec: no allocations worth mentioning
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)

    # preexec_fn only calls prctl/getppid/kill (async-signal-safe syscalls): safe to fork beside threads.
    return _SPAWNER.run(lambda: subprocess.Popen(cmd, preexec_fn=preexec, **kwargs))  # noqa: PLW1509


# ---- processes


def spawn(cmd: list[str], kwargs: dict[str, Any], die_with_parent: bool) -> subprocess.Popen[bytes]:
    """``Popen(cmd, **kwargs)``; with ``die_with_parent`` (Linux) the kernel SIGTERMs the child when this
    process dies, even by SIGKILL. The local broker, MariaDB and Kafka Connect start this way."""
    if die_with_parent and sys.platform.startswith("linux"):
        return _spawn_dying_with_parent(cmd, kwargs)
    return subprocess.Popen(cmd, **kwargs)


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` is a live (non-zombie) process. Reaps it if it is our exited child."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    return process_started_at(pid) is not None


def _wait_pid_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _is_our_broker(pid: int, state_dir: Path) -> bool:
    """``pid`` is alive and is the kafka.Kafka JVM of ``state_dir`` (guards against pid reuse)."""
    if not _pid_alive(pid):
        return False
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc (not Linux): trust the pid
    props = str(state_dir / "server.properties").encode()
    return b"kafka.Kafka" in args and props in args


def _remove_orphaned_temp_dirs() -> None:
    """Delete temporary state dirs whose broker died without stop() (its parent was killed: die_with_parent).

    Only dirs that still hold broker.json qualify: it is written once the broker is up and removed by stop(),
    so a dir of a broker that is starting right now (no broker.json yet) or still running is never touched.
    """
    for d in Path(tempfile.gettempdir()).glob(f"{_TEMP_PREFIX}*"):
        info = _read_info(d)
        if info is None:
            continue
        with contextlib.suppress(OSError, ValueError, TypeError):
            if not _is_our_broker(int(info["pid"]), d):
                shutil.rmtree(d, ignore_errors=True)


def _read_info(state_dir: Path) -> dict[str, Any] | None:
    try:
        info = json.loads((state_dir / "broker.json").read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None
    return info if isinstance(info, dict) and "pid" in info and "bootstrap" in info else None


# ---- files


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _broker_tail(state_dir: Path, server_log_offset: int = 0) -> tuple[str, str]:
    """(everything this start wrote to server.log, a report: its first ERRORs and the tails of both logs)."""
    new_log = ""
    server_log = state_dir / "logs" / "server.log"
    if server_log.is_file():
        with open(server_log, "rb") as fh:
            fh.seek(server_log_offset if server_log_offset <= server_log.stat().st_size else 0)
            new_log = fh.read().decode(errors="replace")
    parts = []
    errors = [line for line in new_log.splitlines() if re.match(r"\[[^]]+\] (ERROR|FATAL) ", line)]
    if errors:
        parts.append("== first errors ==\n" + "\n".join(line[:1000] for line in errors[:5]))
    if new_log:
        parts.append(f"== {server_log} (tail) ==\n{_tail_text(new_log, 25)}")
    out = state_dir / "logs" / "broker.out"
    if out.is_file():
        parts.append(f"== {out} (tail) ==\n{_tail_text(out.read_text(errors='replace'), 15)}")
    return new_log, "\n".join(parts) or "(no broker log written)"
