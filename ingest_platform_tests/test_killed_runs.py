"""A killed Dagster run must not block its dataset for good (docs/DESIGN.md §7 "Killed runs").

Real Dagster processes against the repository's dagster.yaml: ``dagster asset materialize`` killed with SIGKILL
inside the ingest step; without a daemon the next run is told how to free the slot and ``ingest-platform runs
release`` does (never for a live run); with ``dagster dev`` the daemon frees it by itself within its bound. The
ingest step is kept busy by a Kafka address nobody answers (it retries until its deadline), so no broker is
needed and the table is never touched.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner

from ingest_platform.cli.main import main
from ingest_platform.defs.run_slots import pool_holders, process_alive, run_process

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
POOL = "ingest.shop.orders"
ASSET = "lake/shop/orders"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text("datasets:\n  - {name: orders, source: shop, topic: shop.orders, format: json}\n")
    values = {k: v for k, v in os.environ.items() if not k.startswith(("INGEST_", "DAGSTER_"))}
    values.update(DAGSTER_HOME=str(home), INGEST_CATALOG=str(catalog), INGEST_LAKE_ROOT=str(tmp_path / "lake"),
                  INGEST_KAFKA_BOOTSTRAP=f"127.0.0.1:{_free_port()}")  # nobody answers: the step waits 30 s
    return values


class _Process:
    """A Dagster command in its own process group, its output collected line by line."""

    def __init__(self, args: list[str], env: dict[str, str]):
        command = [str(Path(sys.executable).with_name(args[0])), *args[1:]]
        self.popen = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, start_new_session=True)  # fmt: skip
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line)

    def wait_for(self, text: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not any(text in line for line in self.lines):
            assert time.monotonic() < deadline, f"no {text!r} after {timeout_s} s:\n{''.join(self.lines[-40:])}"
            time.sleep(0.5)

    def kill(self) -> None:
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait(30)


def _instance(env: dict[str, str]) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_config(env["DAGSTER_HOME"])


def _run_in_step(instance: dg.DagsterInstance, timeout_s: float, exclude: set[str] = frozenset()) -> dg.DagsterRun:
    """The run whose ingest step has started (it holds the pool slot)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for run in instance.get_runs():
            if run.run_id in exclude:
                continue
            started = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.STEP_START).records
            if started:
                return run
        time.sleep(0.5)
    raise AssertionError(f"no run reached its ingest step within {timeout_s} s")


def _release(env: dict[str, str], monkeypatch) -> object:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return CliRunner().invoke(main, ["runs", "release", "orders"])


def test_without_a_daemon_the_blocked_run_says_how_to_free_it_and_runs_release_does(env, monkeypatch):
    first = _Process(["dagster", "asset", "materialize", "-m", "ingest_platform.definitions", "--select", ASSET], env)
    second = None
    try:
        instance = _instance(env)
        killed = _run_in_step(instance, 180)
        first.kill()  # the whole run: the command and its step process
        (holder,) = pool_holders(instance, POOL)
        assert holder.run_id == killed.run_id and holder.alive is False and holder.status == dg.DagsterRunStatus.STARTED

        second = _Process(["dagster", "asset", "materialize", "-m", "ingest_platform.definitions", "--select", ASSET],
                          env)  # fmt: skip
        second.wait_for("ingest-platform runs release orders", 180)  # blocked: told who holds it, and what to do
        told = next(line for line in second.lines if "runs release" in line)
        assert killed.run_id in told and "is gone" in told and "never at risk" in told

        released = _release(env, monkeypatch)
        assert released.exit_code == 0, released.output
        assert f"released run {killed.run_id}" in released.output
        assert instance.get_run_by_id(killed.run_id).status == dg.DagsterRunStatus.FAILURE

        waiting = _run_in_step(instance, 120, exclude={killed.run_id})  # the blocked run now gets the slot
        assert process_alive(run_process(instance, waiting).pid, time.time())
        refused = _release(env, monkeypatch)  # a live run is never released
        assert refused.exit_code == 1 and f"kept run {waiting.run_id}" in refused.output
        assert instance.get_run_by_id(waiting.run_id).status == dg.DagsterRunStatus.STARTED
    finally:
        first.kill()
        if second is not None:
            second.kill()


def test_with_dagster_dev_the_daemon_frees_the_slots_of_killed_runs(env):
    """Two kills: a ``dagster asset materialize`` killed before the daemon started (no code server knows it:
    only the launcher's health check can tell it is dead — with Dagster's default launcher it stayed STARTED
    for good), and a run launched from the UI killed while the daemon runs (its code server reports it)."""
    from dagster_graphql import DagsterGraphQLClient

    cli = _Process(["dagster", "asset", "materialize", "-m", "ingest_platform.definitions", "--select", ASSET], env)
    instance = _instance(env)
    try:
        orphan = _run_in_step(instance, 180)
    finally:
        cli.kill()
    port = _free_port()
    dev = _Process(["dagster", "dev", "-m", "ingest_platform.definitions", "-p", str(port)], env)
    try:
        _wait_for_webserver(port, dev)
        _wait_until_free(instance, orphan.run_id, dev)

        client = DagsterGraphQLClient("127.0.0.1", port_number=port)
        run_id = client.submit_job_execution("__ASSET_JOB", asset_selection=[ASSET.split("/")])
        run = _run_in_step(instance, 240, exclude={orphan.run_id})
        assert run.run_id == run_id
        worker = run_process(instance, run)
        assert worker.alive
        _kill_with_children(worker.pid)
        _wait_until_free(instance, run_id, dev)
    finally:
        dev.popen.send_signal(signal.SIGINT)  # dagster dev stops its webserver, daemon and code servers
        try:
            dev.popen.wait(60)
        except subprocess.TimeoutExpired:
            dev.kill()


#: dagster.yaml: run monitoring polls every 20 s, slots are freed 20 s after a run ended; plus a margin.
DAEMON_BOUND_S = 3 * 20 + 20 + 40


def _wait_for_webserver(port: int, dev: _Process) -> None:
    deadline = time.monotonic() + 240
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2)
            return
        except OSError:
            assert time.monotonic() < deadline, "".join(dev.lines[-40:])
            time.sleep(1)


def _wait_until_free(instance: dg.DagsterInstance, run_id: str, dev: _Process) -> None:
    """The run is marked failed and the pool holds no slot of it, within the daemon's bound."""
    started = time.monotonic()
    while (run_id in {h.run_id for h in pool_holders(instance, POOL)}
           or instance.get_run_by_id(run_id).status != dg.DagsterRunStatus.FAILURE):  # fmt: skip
        assert time.monotonic() - started < DAEMON_BOUND_S, (
            f"run {run_id} still holds {POOL} after {DAEMON_BOUND_S} s: {pool_holders(instance, POOL)}\n"
            + "".join(dev.lines[-30:]))  # fmt: skip
        time.sleep(1)


def _kill_with_children(pid: int) -> None:
    """SIGKILL a run worker and the step processes it started (the multiprocess executor's children)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    for target in [pid, *children]:
        try:
            os.kill(target, signal.SIGKILL)
        except ProcessLookupError:
            pass
