"""A real Spark standalone cluster on loopback, started from pyspark's own distribution (no download, no docker).

One master and N workers, each a JVM launched with pyspark's ``bin/spark-class``
(``org.apache.spark.deploy.master.Master`` / ``org.apache.spark.deploy.worker.Worker``); every worker starts
its own executor JVMs for the applications that connect, so a driver's tasks run in other processes, as on a
real cluster::

    with LocalSparkCluster(workers=2) as cluster:      # temporary state dir, removed on stop
        profile = load_profile("standalone", environ={MASTER_ENV: cluster.master_url})
        ...

``up`` / ``down`` / ``status`` keep a detached cluster running in a state directory between commands; they
back ``ingest-platform spark cluster up|down|status``.

Everything is private to the cluster: ports are chosen by the JVMs (port 0) and read back from their logs,
every worker has its own work dir (executor sandboxes, fetched jars) and local dir (shuffle, spills), the
configuration dir is the cluster's own (nothing from ``$SPARK_CONF_DIR`` or pyspark's ``conf/``), and the
master's REST submission server (fixed port 6066) is off. Each daemon is its own process group (a worker's
executors are in it too), started so that the kernel stops it when the starting process dies
(``die_with_parent``). Every wait has a deadline and a failure names the daemon and shows its log's tail.

Layout of a state directory::

    conf/spark-defaults.conf   the daemons' settings (--properties-file)
    logs/master.out            the master's log (stdout and stderr)
    logs/worker-<i>.out        worker i's log
    worker-<i>/work            its work dir: work/<app id>/<executor id>/{stdout,stderr}, the executors' jars
    worker-<i>/local           its executors' SPARK_LOCAL_DIRS (shuffle files, spills)
    cluster.json               {master_url, master_web_url, pids, ...}, only while the cluster runs

This module must not import dagster (development tooling; test_layers.py) and never imports pyspark's Python
API: the daemons are plain JVMs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ingest_platform.dev.local_kafka import (
    _atomic_write,
    _pid_alive,
    _signal_group,
    _spawn_dying_with_parent,
    _wait_pid_gone,
)
from ingest_platform.dev.local_process import default_cache_dir, file_lock, now_iso, tail_text, terminate

_log = logging.getLogger(__name__)

#: The standalone profile (deploy/spark/profiles/standalone.yaml) takes the master URL from this variable.
MASTER_ENV = "INGEST_SPARK_MASTER"
STATE_DIR_ENV = "INGEST_SPARK_STATE_DIR"
HOST = "127.0.0.1"
DEFAULT_STARTUP_TIMEOUT_S = 90.0
DEFAULT_WORKERS = 2
#: Two cores per worker: an application takes one core per worker (the standalone profile's
#: ``spark.cores.max`` 2, ``spark.executor.cores`` 1), so two applications (a test session and a CLI run)
#: can run at once.
DEFAULT_WORKER_CORES = 2
DEFAULT_WORKER_MEMORY = "2g"
DEFAULT_DAEMON_MEMORY = "256m"
_TEMP_PREFIX = "ingest-spark-"
_MASTER_CLASS = "org.apache.spark.deploy.master.Master"
_WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
_HTTP_TIMEOUT_S = 5.0
#: The daemons' settings. The master forgets a silent worker after spark.worker.timeout (default 60 s); a
#: killed worker's disconnect is noticed at once anyway, so 15 s only bounds a hung one.
DAEMON_CONF = {
    "spark.master.rest.enabled": "false",
    "spark.worker.timeout": "15",
    "spark.ui.showConsoleProgress": "false",
    "spark.deploy.spreadOutApps": "true",
}


class LocalSparkError(RuntimeError):
    """The local Spark cluster could not be started, reached or stopped."""


def spark_home() -> Path:
    """pyspark's installation: its wheel ships ``bin/spark-class`` and ``jars/`` (the same Spark as the driver)."""
    try:
        import pyspark
    except ImportError as error:
        raise LocalSparkError(
            f"pyspark is not installed ({error}); install the 'spark' extra: pip install -e '.[spark]'"
        ) from None
    home = Path(pyspark.__file__).resolve().parent
    spark_class = home / "bin" / "spark-class"
    if not spark_class.is_file() or not os.access(spark_class, os.X_OK):
        raise LocalSparkError(f"{spark_class} is missing or not executable: pyspark's distribution is incomplete")
    if not (home / "jars").is_dir():
        raise LocalSparkError(f"{home / 'jars'} is missing: pyspark's distribution is incomplete")
    return home


def default_state_dir() -> Path:
    """The CLI cluster's state dir: ``$INGEST_SPARK_STATE_DIR`` or ``local-spark`` in the cache folder
    (``$INGEST_CACHE_DIR``, ``~/.cache/ingest_platform``)."""
    env = os.environ.get(STATE_DIR_ENV)
    return Path(env).expanduser() if env else default_cache_dir() / "local-spark"


@dataclass
class _Daemon:
    """One master or worker JVM (``pid`` is also its process group)."""

    name: str
    pid: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    rpc_port: int | None = None
    web_port: int | None = None

    def alive(self) -> bool:
        return _pid_alive(self.pid)


class LocalSparkCluster:
    """A master and ``workers`` workers on 127.0.0.1; a context manager (``start()`` / ``stop()``).

    ``state_dir=None`` uses a fresh temporary directory that ``stop()`` deletes. ``die_with_parent=True``
    (Linux) makes the kernel SIGTERM every daemon when this Python process dies, even by SIGKILL; a worker's
    executors exit with it (they watch their worker).
    """

    def __init__(
        self,
        state_dir: Path | str | None = None,
        *,
        workers: int = DEFAULT_WORKERS,
        worker_cores: int = DEFAULT_WORKER_CORES,
        worker_memory: str = DEFAULT_WORKER_MEMORY,
        daemon_memory: str = DEFAULT_DAEMON_MEMORY,
        die_with_parent: bool = True,
        startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S,
    ) -> None:
        if workers < 1:
            raise ValueError("a cluster needs at least one worker")
        self._requested_state_dir = Path(state_dir).expanduser().resolve() if state_dir is not None else None
        self._state_dir: Path | None = self._requested_state_dir
        self._temp_dir: Path | None = None
        self.workers = workers
        self.worker_cores = worker_cores
        self.worker_memory = worker_memory
        self.daemon_memory = daemon_memory
        self.die_with_parent = die_with_parent
        self.startup_timeout_s = startup_timeout_s
        self.master: _Daemon | None = None
        self.worker_daemons: dict[int, _Daemon] = {}
        #: Seconds spent in start(): master, workers, total.
        self.timings: dict[str, float] = {}

    # -- properties ------------------------------------------------------------------------------------------

    @property
    def state_dir(self) -> Path:
        if self._state_dir is None:
            raise LocalSparkError("the cluster has no state dir yet (temporary dirs are created by start())")
        return self._state_dir

    @property
    def master_url(self) -> str:
        """``spark://127.0.0.1:<port>``: the ``master`` of an application (and of the standalone profile)."""
        if self.master is None or self.master.rpc_port is None:
            raise LocalSparkError("the cluster is not started")
        return f"spark://{HOST}:{self.master.rpc_port}"

    @property
    def master_web_url(self) -> str:
        if self.master is None or self.master.web_port is None:
            raise LocalSparkError("the cluster is not started")
        return f"http://{HOST}:{self.master.web_port}"

    @property
    def conf_file(self) -> Path:
        return self.state_dir / "conf" / "spark-defaults.conf"

    def worker_dir(self, index: int) -> Path:
        return self.state_dir / f"worker-{index}"

    def is_running(self) -> bool:
        return self.master is not None and self.master.alive()

    def __repr__(self) -> str:
        where = f"master={self.master_url!r}" if self.is_running() else "stopped"
        return f"LocalSparkCluster({where}, workers={self.workers}, state_dir={str(self._state_dir)!r})"

    def __enter__(self) -> LocalSparkCluster:  # noqa: PYI034 - start() returns self; Self needs 3.11
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- start -----------------------------------------------------------------------------------------------

    def start(self) -> LocalSparkCluster:
        """Start the master, then every worker; return when the master lists them all ALIVE."""
        if self.is_running():
            return self
        started = time.monotonic()
        spark_home()  # fails early, naming what is missing
        if self._requested_state_dir is None:
            _remove_orphaned_temp_dirs()
            self._temp_dir = Path(tempfile.mkdtemp(prefix=_TEMP_PREFIX))
            self._state_dir = self._temp_dir
        try:
            self._prepare_state_dir()
            self.master = self._launch_master()
            self.timings["master_s"] = time.monotonic() - started
            for index in range(self.workers):
                self.start_worker(index)
            self.wait_for_workers(self.workers)
        except BaseException:
            self._kill_all()
            if self._temp_dir is not None:
                shutil.rmtree(self._temp_dir, ignore_errors=True)
                self._temp_dir = self._state_dir = None
            raise
        self.timings["start_s"] = time.monotonic() - started
        self._write_info()
        _log.info("local Spark cluster up at %s (%d workers) in %.1f s", self.master_url, self.workers,
                  self.timings["start_s"])  # fmt: skip
        return self

    def _prepare_state_dir(self) -> None:
        state = self.state_dir
        for sub in ("conf", "logs"):
            (state / sub).mkdir(parents=True, exist_ok=True)
        self.conf_file.write_text("".join(f"{key} {value}\n" for key, value in DAEMON_CONF.items()))

    def _environment(self, local_dir: Path | None = None) -> dict[str, str]:
        """The daemons' environment: the cluster's own conf dir, loopback only, nothing inherited from a
        developer's ``SPARK_*``/``PYSPARK_*`` settings. Executors inherit their worker's environment."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SPARK_", "PYSPARK_"))}
        env.update(
            SPARK_HOME=str(spark_home()),
            SPARK_CONF_DIR=str(self.state_dir / "conf"),
            SPARK_LOG_DIR=str(self.state_dir / "logs"),
            SPARK_LOCAL_IP=HOST,
            SPARK_LOCAL_HOSTNAME=HOST,
            SPARK_DAEMON_MEMORY=self.daemon_memory,
            SPARK_NO_DAEMONIZE="1",
            # Executors run Python (UDFs, if any) with the driver's interpreter: the same machine and venv.
            PYSPARK_PYTHON=sys.executable,
        )
        if local_dir is not None:
            env["SPARK_LOCAL_DIRS"] = str(local_dir)
        return env

    def _spawn(self, name: str, args: list[str], env: Mapping[str, str]) -> _Daemon:
        log = self.state_dir / "logs" / f"{name}.out"
        command = [str(spark_home() / "bin" / "spark-class"), *args]
        with open(log, "ab") as out:
            out.write(f"--- {now_iso()} {' '.join(command)}\n".encode())
            out.flush()
            kwargs: dict[str, Any] = {
                "cwd": self.state_dir, "env": dict(env), "stdin": subprocess.DEVNULL, "stdout": out,
                "stderr": subprocess.STDOUT, "start_new_session": True, "close_fds": True,
            }  # fmt: skip
            if self.die_with_parent and sys.platform.startswith("linux"):
                proc = _spawn_dying_with_parent(command, kwargs)  # spark-class execs java: the pid stays
            else:
                proc = subprocess.Popen(command, **kwargs)
        return _Daemon(name=name, pid=proc.pid, log=log, proc=proc)

    def _launch_master(self) -> _Daemon:
        args = [_MASTER_CLASS, "--host", HOST, "--port", "0", "--webui-port", "0",
                "--properties-file", str(self.conf_file)]  # fmt: skip
        master = self._spawn("master", args, self._environment())
        patterns = {
            "url": re.compile(r"Starting Spark master at spark://[^:\s]+:(\d+)"),
            "web": re.compile(r"Successfully started service 'MasterUI' on port (\d+)"),
            "leader": re.compile(r"I have been elected leader"),
        }
        found = _wait_for_log(master, patterns, time.monotonic() + self.startup_timeout_s)
        master.rpc_port, master.web_port = int(found["url"].group(1)), int(found["web"].group(1))
        return master

    def start_worker(self, index: int) -> None:
        """Start worker ``index`` (again, after ``kill_worker``); return when it registered with the master."""
        if self.master is None:
            raise LocalSparkError("start the master first")
        previous = self.worker_daemons.get(index)
        if previous is not None and previous.alive():
            return
        directory = self.worker_dir(index)
        (directory / "work").mkdir(parents=True, exist_ok=True)
        (directory / "local").mkdir(parents=True, exist_ok=True)
        args = [_WORKER_CLASS, self.master_url, "--host", HOST, "--port", "0", "--webui-port", "0",
                "--cores", str(self.worker_cores), "--memory", self.worker_memory,
                "--work-dir", str(directory / "work"), "--properties-file", str(self.conf_file)]  # fmt: skip
        name = f"worker-{index}"
        log = self.state_dir / "logs" / f"{name}.out"
        offset = log.stat().st_size if log.exists() else 0
        worker = self._spawn(name, args, self._environment(directory / "local"))
        patterns = {
            "port": re.compile(r"Starting Spark worker [^:\s]+:(\d+) with"),
            "registered": re.compile(r"Successfully registered with master"),
        }
        found = _wait_for_log(worker, patterns, time.monotonic() + self.startup_timeout_s, offset)
        worker.rpc_port = int(found["port"].group(1))
        self.worker_daemons[index] = worker

    def wait_for_workers(self, count: int, timeout_s: float | None = None) -> list[dict]:
        """Wait until the master lists ``count`` ALIVE workers; return them (the master's JSON entries)."""
        deadline = time.monotonic() + (self.startup_timeout_s if timeout_s is None else timeout_s)
        alive: list[dict] = []
        while time.monotonic() < deadline:
            if not self.is_running():
                raise LocalSparkError(f"the Spark master exited.\n{_log_tail(self.master)}")
            with contextlib.suppress(LocalSparkError):
                alive = [w for w in self.master_state().get("workers", []) if w.get("state") == "ALIVE"]
                if len(alive) >= count:
                    return alive
            time.sleep(0.2)
        raise LocalSparkError(
            f"the Spark master at {self.master_url} lists {len(alive)} ALIVE worker(s), expected {count}, after "
            f"{timeout_s or self.startup_timeout_s:.0f} s. Logs in {self.state_dir / 'logs'}:\n"
            + "\n".join(_log_tail(d) for d in self.worker_daemons.values())
        )

    def master_state(self) -> dict:
        """The master's JSON state (workers, applications), from its web UI."""
        url = f"{self.master_web_url}/json/"
        try:
            with urllib.request.urlopen(url, timeout=_HTTP_TIMEOUT_S) as response:
                return json.loads(response.read())
        except (urllib.error.URLError, OSError, ValueError) as error:
            raise LocalSparkError(f"the Spark master's state at {url} is unreadable: {error}") from None

    # -- failures (tests) ------------------------------------------------------------------------------------

    def kill_worker(self, index: int, sig: int = signal.SIGKILL) -> None:
        """Kill worker ``index`` and its executors (its process group) at once, as a lost machine would."""
        worker = self.worker_daemons.get(index)
        if worker is None:
            raise LocalSparkError(f"no worker {index}")
        _signal_group(worker.pid, sig)
        self._reap(worker, 15)

    def executor_pids(self, index: int) -> list[int]:
        """The executor JVMs worker ``index`` runs now (its children: other processes than the driver)."""
        worker = self.worker_daemons.get(index)
        if worker is None or not worker.alive():
            return []
        return [pid for pid in _group_members(worker.pid) if _is_executor(pid)]

    # -- stop ------------------------------------------------------------------------------------------------

    def stop(self, timeout_s: float = 20) -> None:
        """SIGTERM the workers (with their executors), then the master; SIGKILL after ``timeout_s``. Idempotent.
        Removes ``cluster.json``, and the whole state dir when it was a temporary one."""
        started = time.monotonic()
        for daemon in [*self.worker_daemons.values(), *([self.master] if self.master else [])]:
            if not terminate(daemon.pid, f"Spark {daemon.name}", timeout_s,
                             lambda seconds, d=daemon: self._reap(d, seconds)):  # fmt: skip
                raise LocalSparkError(f"Spark {daemon.name} (pid {daemon.pid}) survived SIGKILL")
        if self.master is not None and self._state_dir is not None:
            with contextlib.suppress(FileNotFoundError):
                (self._state_dir / "cluster.json").unlink()
        self.master = None
        self.worker_daemons = {}
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = self._state_dir = None
        self.timings["stop_s"] = time.monotonic() - started

    @staticmethod
    def _reap(daemon: _Daemon, timeout_s: float) -> bool:
        if daemon.proc is not None:
            try:
                daemon.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                return False
            # Its process group may still hold executors for a moment: they exit with their worker.
            return _wait_group_gone(daemon.pid, timeout_s)
        return _wait_pid_gone(daemon.pid, timeout_s) and _wait_group_gone(daemon.pid, timeout_s)

    def _kill_all(self) -> None:
        for daemon in [*self.worker_daemons.values(), *([self.master] if self.master else [])]:
            _signal_group(daemon.pid, signal.SIGKILL)
            self._reap(daemon, 10)
        self.master = None
        self.worker_daemons = {}

    # -- cluster.json (up/down/status) -----------------------------------------------------------------------

    def _write_info(self) -> None:
        info = {
            "master_url": self.master_url,
            "master_web_url": self.master_web_url,
            "master_pid": self.master.pid if self.master else None,
            "master_port": self.master.rpc_port if self.master else None,
            "master_web_port": self.master.web_port if self.master else None,
            "workers": {str(i): {"pid": d.pid, "port": d.rpc_port} for i, d in self.worker_daemons.items()},
            "worker_cores": self.worker_cores,
            "worker_memory": self.worker_memory,
            "state_dir": str(self.state_dir),
            "started_at": now_iso(),
            "die_with_parent": self.die_with_parent,
            "startup_seconds": round(self.timings.get("start_s", 0.0), 3),
        }
        _atomic_write(self.state_dir / "cluster.json", json.dumps(info, indent=2) + "\n")

    @classmethod
    def _attach(cls, state_dir: Path, info: Mapping[str, Any]) -> LocalSparkCluster:
        """A handle on a cluster another process started in ``state_dir`` (``stop()`` still works)."""
        workers = info.get("workers") or {}
        cluster = cls(state_dir, workers=max(1, len(workers)), worker_cores=int(info.get("worker_cores", 1)),
                      worker_memory=str(info.get("worker_memory", DEFAULT_WORKER_MEMORY)),
                      die_with_parent=bool(info.get("die_with_parent", False)))  # fmt: skip
        logs = state_dir / "logs"
        cluster.master = _Daemon("master", int(info["master_pid"]), logs / "master.out",
                                 rpc_port=int(info["master_port"]), web_port=int(info["master_web_port"]))  # fmt: skip
        cluster.worker_daemons = {
            int(i): _Daemon(f"worker-{i}", int(w["pid"]), logs / f"worker-{i}.out", rpc_port=w.get("port"))
            for i, w in workers.items()
        }
        return cluster


# ----------------------------------------------------------------------------------------------------------
# CLI helpers: a detached cluster kept in a state dir


def up(
    state_dir: Path | str | None = None,
    *,
    workers: int = DEFAULT_WORKERS,
    worker_cores: int = DEFAULT_WORKER_CORES,
    worker_memory: str = DEFAULT_WORKER_MEMORY,
    timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S,
) -> tuple[LocalSparkCluster, bool]:
    """Start a detached cluster (it outlives this process) in ``state_dir``, or reuse the healthy one there.
    Returns the cluster and whether it was started now. A cluster whose master does not answer, or that lacks
    workers, is stopped and replaced."""
    state = Path(state_dir).expanduser().resolve() if state_dir is not None else default_state_dir().resolve()
    state.mkdir(parents=True, exist_ok=True)
    with file_lock(state / ".lock"):
        info = _read_info(state)
        if info and _is_our_master(int(info["master_pid"]), state):
            running = LocalSparkCluster._attach(state, info)
            try:
                running.wait_for_workers(len(info.get("workers") or {}), timeout_s=min(timeout_s, 10))
                return running, False
            except LocalSparkError:
                _log.warning("the Spark cluster in %s is not healthy; replacing it", state)
                running.stop()
        cluster = LocalSparkCluster(state, workers=workers, worker_cores=worker_cores, worker_memory=worker_memory,
                                    die_with_parent=False, startup_timeout_s=timeout_s)  # fmt: skip
        return cluster.start(), True


def down(state_dir: Path | str | None = None, timeout_s: float = 20) -> bool:
    """Stop the cluster running in ``state_dir``; True if one was stopped, False if none was running."""
    state = Path(state_dir).expanduser().resolve() if state_dir is not None else default_state_dir().resolve()
    if not state.is_dir():
        return False
    with file_lock(state / ".lock"):
        info = _read_info(state)
        if not info:
            return False
        cluster = LocalSparkCluster._attach(state, info)
        if not _is_our_master(int(info["master_pid"]), state):
            # The master is gone (crash, reboot): stop what is left of ours, then forget it.
            cluster.worker_daemons = {i: d for i, d in cluster.worker_daemons.items() if _is_our_worker(d.pid, state)}
            cluster.master = None
            cluster.stop(timeout_s)
            (state / "cluster.json").unlink(missing_ok=True)
            return False
        cluster.worker_daemons = {i: d for i, d in cluster.worker_daemons.items() if _is_our_worker(d.pid, state)}
        cluster.stop(timeout_s)
        return True


def status(state_dir: Path | str | None = None) -> dict[str, Any]:
    """``{"state_dir", "running", "answering", "master_url", "workers_alive", ...}`` for the cluster there."""
    state = Path(state_dir).expanduser().resolve() if state_dir is not None else default_state_dir().resolve()
    info = _read_info(state) or {}
    running = bool(info) and _is_our_master(int(info["master_pid"]), state)
    result: dict[str, Any] = {"state_dir": str(state), "running": running, "answering": False,
                              "master_url": None, "master_web_url": None, "workers_alive": 0,
                              "workers_expected": len(info.get("workers") or {}), "applications": []}  # fmt: skip
    if running:
        cluster = LocalSparkCluster._attach(state, info)
        result.update(master_url=cluster.master_url, master_web_url=cluster.master_web_url,
                      master_pid=info["master_pid"], started_at=info.get("started_at"))  # fmt: skip
        with contextlib.suppress(LocalSparkError):
            master = cluster.master_state()
            result["answering"] = True
            result["workers_alive"] = sum(1 for w in master.get("workers", []) if w.get("state") == "ALIVE")
            result["applications"] = [{"id": a.get("id"), "name": a.get("name"), "cores": a.get("cores")}
                                       for a in master.get("activeapps", [])]  # fmt: skip
    return result


# ----------------------------------------------------------------------------------------------------------
# Internals


def _wait_for_log(daemon: _Daemon, patterns: Mapping[str, re.Pattern[str]], deadline: float, offset: int = 0):
    """Wait until every pattern matched the daemon's log after ``offset``; fail when it exits or times out."""
    found: dict[str, re.Match[str]] = {}
    text = ""
    while True:
        with contextlib.suppress(FileNotFoundError):
            with open(daemon.log, "rb") as fh:
                fh.seek(offset)
                text = fh.read().decode(errors="replace")
        for key, pattern in patterns.items():
            if key not in found and (match := pattern.search(text)):
                found[key] = match
        if len(found) == len(patterns):
            return found
        if not daemon.alive():
            exited = daemon.proc.poll() if daemon.proc is not None else None
            raise LocalSparkError(
                f"Spark {daemon.name} exited (code {exited}) before it was ready. Log {daemon.log}:\n"
                f"{tail_text(text, 30)}"
            )
        if time.monotonic() >= deadline:
            missing = ", ".join(sorted(set(patterns) - set(found)))
            _signal_group(daemon.pid, signal.SIGKILL)
            raise LocalSparkError(
                f"Spark {daemon.name} (pid {daemon.pid}) was not ready in time (no '{missing}' in its log). "
                f"Log {daemon.log}:\n{tail_text(text, 30)}"
            )
        time.sleep(0.1)


def _log_tail(daemon: _Daemon | None, lines: int = 20) -> str:
    if daemon is None:
        return ""
    try:
        text = daemon.log.read_text(errors="replace")
    except OSError:
        return f"== {daemon.log}: unreadable =="
    return f"== {daemon.log} (tail) ==\n{tail_text(text, lines)}"


def _cmdline(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def _is_executor(pid: int) -> bool:
    return b"org.apache.spark.executor.CoarseGrainedExecutorBackend" in _cmdline(pid)


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                if int(entry.joinpath("stat").read_text().rsplit(")", 1)[1].split()[2]) == pgid and _pid_alive(
                    int(entry.name)
                ):
                    members.append(int(entry.name))
    return members


def _wait_group_gone(pgid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _group_members(pgid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def _is_our_master(pid: int, state_dir: Path) -> bool:
    """``pid`` is alive and is the Master JVM of ``state_dir`` (its properties file is ours: no pid reuse)."""
    args = _cmdline(pid)
    return _pid_alive(pid) and _MASTER_CLASS.encode() in args and _owns(args, state_dir)


def _is_our_worker(pid: int, state_dir: Path) -> bool:
    args = _cmdline(pid)
    return _pid_alive(pid) and _WORKER_CLASS.encode() in args and _owns(args, state_dir)


def _owns(args: list[bytes], state_dir: Path) -> bool:
    return str(state_dir / "conf" / "spark-defaults.conf").encode() in args


def _read_info(state_dir: Path) -> dict[str, Any] | None:
    try:
        info = json.loads((state_dir / "cluster.json").read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None
    return info if isinstance(info, dict) and "master_pid" in info and "master_port" in info else None


def _remove_orphaned_temp_dirs() -> None:
    """Delete temporary state dirs of clusters that died without stop() (their parent was killed)."""
    for directory in Path(tempfile.gettempdir()).glob(f"{_TEMP_PREFIX}*"):
        info = _read_info(directory)
        if info is None:
            continue
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            if not _is_our_master(int(info["master_pid"]), directory):
                shutil.rmtree(directory, ignore_errors=True)
