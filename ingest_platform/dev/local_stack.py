"""``make dev``: from a checkout to a running Dagster UI with demo data flowing, and a clean stop.

``LocalStack(root).start()``, in order:

1. a local Kafka broker in ``<root>/kafka`` (``local_kafka.up``: detached, reused while healthy), or the broker
   given (``bootstrap``: the tests' session broker);
2. the catalog's topics (the demo catalog by default) with the demo's partition counts; a topic that is new
   while the lake still holds a table for its dataset (the broker's data was wiped) gets that table deleted,
   since its ledger refers to offsets the new topic never had;
3. ``dagster dev`` in its own process group, on ``127.0.0.1:<port>``, with ``DAGSTER_HOME=<root>/dagster_home``
   holding a copy of the project's ``dagster.yaml`` (pools, the per-dataset run limit, run monitoring) and
   ``INGEST_CATALOG``/``INGEST_LAKE_ROOT=<root>/lake``/``INGEST_KAFKA_BOOTSTRAP`` set; its output goes to
   ``<root>/dagster.log``; start-up waits (bounded) until the webserver answers;
4. a backlog on the new topics (``scale`` x the demo volume, event times within seconds of now), then a
   steady producer: ``rate`` records per second to every topic, so the lag sensor keeps starting runs,
   declarative automation keeps the downstream example fresh, and continuous datasets stream;
5. ``<root>/stack.json``: the pids, port and bootstrap, for ``stop_stack`` (``make dev-stop``).

``stop()`` (Ctrl-C, SIGTERM, ``make dev-stop``) undoes it in reverse: the producer, then ``dagster dev`` (SIGTERM,
which it handles as Ctrl-C, then SIGKILL to its process group after ``DAGSTER_STOP_S``: no webserver, daemon,
code server or run worker is left), then the broker if the stack started it. Data stays in ``<root>`` (broker
log, lake, Dagster instance): the next ``make dev`` continues where this one stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from ingest_platform.catalog import load_catalog
from ingest_platform.dev import local_kafka
from ingest_platform.dev.demo import create_demo_topics, produce_backlog
from ingest_platform.dev.demo_producer import ChangeFeed, Feed, JsonFeed, SteadyProducer, feed_for
from ingest_platform.dev.local_kafka import _pid_alive, _wait_pid_gone
from ingest_platform.dev.local_process import tail_text
from ingest_platform.kafka.client import KafkaConnection
from ingest_platform.monitoring.offsets import read_topic_offsets
from ingest_platform.settings import DEMO_CATALOG

REPO = Path(__file__).resolve().parents[2]
DEFAULT_ROOT = REPO / ".dev"
DEFAULT_PORT = 3000
#: How long ``dagster dev`` may take to answer (first start on a busy machine), and to stop before SIGKILL.
DAGSTER_START_S = 240
DAGSTER_STOP_S = 60
STATE_FILE = "stack.json"


class StackError(RuntimeError):
    """The stack could not start or stop; the message says which part and what to do."""


class LocalStack:
    def __init__(
        self,
        root: Path | str = DEFAULT_ROOT,
        *,
        port: int = DEFAULT_PORT,
        bootstrap: str | None = None,
        catalog_path: str | None = None,
        rate: float = 2.0,
        scale: float = 0.05,
        echo=print,
    ):
        self.root = Path(root).resolve()
        self.port, self.rate, self.scale, self.echo = port, rate, scale, echo
        self.catalog_path = str(catalog_path or DEMO_CATALOG)
        self.bootstrap = bootstrap
        self.own_broker = bootstrap is None
        self.dagster: subprocess.Popen | None = None
        self.producer: SteadyProducer | None = None
        self._stopped = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def lake_root(self) -> Path:
        return self.root / "lake"

    @property
    def dagster_home(self) -> Path:
        return self.root / "dagster_home"

    @property
    def log_file(self) -> Path:
        return self.root / "dagster.log"

    def start(self) -> LocalStack:
        self.root.mkdir(parents=True, exist_ok=True)
        if _running_stack(self.root):
            raise StackError(f"a stack is already running from {self.root} ({self.root / STATE_FILE}); "
                             "stop it first: make dev-stop")  # fmt: skip
        catalog = load_catalog(self.catalog_path)
        try:
            if self.own_broker:
                broker = local_kafka.up(self.root / "kafka")
                self.bootstrap = broker.bootstrap
                self.echo(f"Kafka {broker.kafka_version} on {broker.bootstrap} (logs: {broker.server_log})")
            kafka = KafkaConnection(self.bootstrap, timeout_s=15)
            new = create_demo_topics(catalog, self.bootstrap, exist_ok=True)
            self._forget_tables_of(new)
            self._start_dagster()
            self._write_state()
            produced, _, feeds = produce_backlog(new, kafka, self.scale, self.echo)
            resumed = [d for d in catalog.datasets if d.name not in feeds]
            offsets = read_topic_offsets(kafka, {d.topic for d in resumed}, with_ids=False) if resumed else {}
            feeds.update({d.name: _resumed_feed(d, offsets[d.topic].marks) for d in resumed})
            if self.rate > 0:
                self.producer = SteadyProducer(kafka, feeds.values(), rate=self.rate, on_error=self.echo).start()
                self.echo(f"producing {self.rate:g} records/s to each of {len(feeds)} topics")
        except BaseException:
            self.stop()
            raise
        return self

    def _forget_tables_of(self, datasets) -> None:
        for dataset in datasets:
            for path in (dataset.table_path, dataset.dlq_table_path):
                table = self.lake_root / path
                if table.exists():
                    self.echo(f"{dataset.topic} is new: deleting {table} (its ledger holds offsets of the old topic)")
                    shutil.rmtree(table)

    def _start_dagster(self) -> None:
        home = self.dagster_home
        home.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / "dagster.yaml", home / "dagster.yaml")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("INGEST_", "DAGSTER_"))}
        env.update({"DAGSTER_HOME": str(home), "INGEST_CATALOG": self.catalog_path,
                    "INGEST_LAKE_ROOT": str(self.lake_root),
                    "INGEST_KAFKA_BOOTSTRAP": str(self.bootstrap)})  # fmt: skip
        command = [str(Path(sys.executable).with_name("dagster")), "dev", "-w", str(REPO / "workspace.yaml"),
                   "-h", "127.0.0.1", "-p", str(self.port)]  # fmt: skip
        log = open(self.log_file, "ab")  # noqa: SIM115 - the child holds it; closed with our handle below
        try:
            self.dagster = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True,
                                            preexec_fn=_interruptible)  # fmt: skip
        finally:
            log.close()
        self.echo(f"dagster dev starting (pid {self.dagster.pid}, log {self.log_file}) ...")
        deadline = time.monotonic() + DAGSTER_START_S
        while time.monotonic() < deadline:
            if self.dagster.poll() is not None:
                raise StackError(f"dagster dev exited with code {self.dagster.returncode} before answering; "
                                 f"its log ends:\n{_tail(self.log_file)}")  # fmt: skip
            if _answers(f"{self.url}/server_info"):
                self.echo(f"Dagster UI: {self.url}")
                return
            time.sleep(1)
        raise StackError(f"dagster dev did not answer on {self.url} within {DAGSTER_START_S} s; its log ends:\n"
                         f"{_tail(self.log_file)}")  # fmt: skip

    def _write_state(self) -> None:
        state = {"pid": os.getpid(), "dagster_pid": self.dagster.pid if self.dagster else None, "port": self.port,
                 "bootstrap": self.bootstrap, "own_broker": self.own_broker, "started_at": time.time()}  # fmt: skip
        (self.root / STATE_FILE).write_text(json.dumps(state))

    def wait(self) -> None:
        """Until ``stop()`` is requested (SIGTERM, Ctrl-C) or ``dagster dev`` exits on its own."""
        while not self._stopped.wait(1.0):
            if self.dagster is not None and self.dagster.poll() is not None:
                self.echo(f"dagster dev exited with code {self.dagster.returncode}; stopping the stack")
                return

    def request_stop(self, *_: object) -> None:
        self._stopped.set()

    def stop(self) -> None:
        self._stopped.set()
        if self.producer is not None:
            self.producer.stop()
            self.echo(f"producer stopped ({sum(self.producer.produced.values()):,} records sent)")
            self.producer = None
        if self.dagster is not None:
            _stop_process_group(self.dagster.pid, DAGSTER_STOP_S)
            self.echo("dagster dev stopped")
            self.dagster = None
        if self.own_broker and self.bootstrap is not None:
            local_kafka.down(self.root / "kafka")
            self.echo("Kafka stopped")
        (self.root / STATE_FILE).unlink(missing_ok=True)


def run_stack(stack: LocalStack) -> None:
    """Start, serve until Ctrl-C or SIGTERM (``make dev-stop``), stop everything."""
    previous = signal.signal(signal.SIGTERM, stack.request_stop)
    try:
        stack.start()
        stack.echo("Ctrl-C or `make dev-stop` stops everything")
        stack.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()
        signal.signal(signal.SIGTERM, previous)


def stop_stack(root: Path | str = DEFAULT_ROOT, timeout_s: float = DAGSTER_STOP_S + 60) -> str:
    """Stop the stack running from ``root`` (``make dev-stop``): SIGTERM to its process, which stops the rest;
    if that process is gone, what it left (dagster dev's process group, its broker) is stopped here."""
    root = Path(root).resolve()
    state = _read_state(root)
    if state is None:
        return f"no stack running from {root}"
    pid = int(state["pid"])
    if _pid_alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        if _pid_alive(pid):
            raise StackError(f"the stack (pid {pid}) did not stop within {timeout_s:.0f} s; kill it: kill {pid}")
    if state.get("dagster_pid") and _pid_alive(int(state["dagster_pid"])):
        _stop_process_group(int(state["dagster_pid"]), DAGSTER_STOP_S)
    if state.get("own_broker"):
        local_kafka.down(root / "kafka")
    (root / STATE_FILE).unlink(missing_ok=True)
    return f"stopped the stack running from {root}"


def _resumed_feed(dataset, marks: dict[int, tuple[int, int]]) -> Feed:
    """A feed for a topic that already has records (a restart): JSON ids continue after the records there
    (``marks``: the topic's earliest and log-end offsets); Debezium changes insert users with new ids (the
    live ones of the last run are unknown here)."""
    feed = feed_for(dataset)
    if isinstance(feed, JsonFeed):
        feed.index = sum(end for _, end in marks.values())
    elif isinstance(feed, ChangeFeed):
        feed.next_id = int(time.time())
    return feed


def _running_stack(root: Path) -> bool:
    state = _read_state(root)
    return state is not None and _pid_alive(int(state["pid"]))


def _read_state(root: Path) -> dict | None:
    try:
        return json.loads((root / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None


def _stop_process_group(pid: int, timeout_s: float) -> None:
    """SIGTERM to ``pid`` (dagster dev shuts its children down on it), then SIGKILL to its whole group."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    _wait_pid_gone(pid, timeout_s)  # reaps it when it is our child
    with contextlib.suppress(ProcessLookupError, PermissionError):  # its group (pgid == pid: a new session)
        os.killpg(pid, signal.SIGKILL)  # whatever is left: webserver, daemon, code servers, run workers


def _interruptible() -> None:
    """In the child before exec: SIGINT back to its default. A process started in the background by a
    non-interactive shell inherits SIGINT ignored; Python then installs no KeyboardInterrupt handler, and
    ``dagster dev`` (which maps SIGTERM to the SIGINT handler) would ignore SIGTERM too."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _tail(path: Path) -> str:
    try:
        return tail_text(path.read_text(errors="replace"))
    except OSError:
        return "(no log)"

