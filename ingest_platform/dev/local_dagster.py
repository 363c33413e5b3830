"""A private ``dagster dev`` (webserver, daemon, the code location) for tests and benchmarks: its own
DAGSTER_HOME with the project's ``dagster.yaml``, a free loopback port, the catalog, lake and broker given by
environment, and the UI's GraphQL API (what the UI's buttons call, e.g. "Terminate").

    with LocalDagster(home, {"INGEST_CATALOG": ..., "INGEST_LAKE_ROOT": ..., "INGEST_KAFKA_BOOTSTRAP": ...}) as ui:
        ui.terminate_run(run_id)

The processes run in their own session and die with the caller (``local_kafka.spawn``); ``stop()`` sends
SIGTERM to the whole group (runs included: a stream run finishes its commits), SIGKILL after a deadline.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from ingest_platform.dev.local_kafka import spawn
from ingest_platform.dev.local_process import stop_child, tail_text

REPO = Path(__file__).resolve().parents[2]
DAGSTER = str(Path(sys.executable).parent / "dagster")


class LocalDagsterError(RuntimeError):
    """``dagster dev`` did not come up, or its API refused a request."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LocalDagster:
    def __init__(self, home: Path, env: dict[str, str], startup_timeout_s: float = 180.0,
                 instance_yaml: Path = REPO / "dagster.yaml"):  # fmt: skip
        self.home = Path(home)
        self.env = env
        self.port = free_port()
        self.startup_timeout_s = startup_timeout_s
        self.instance_yaml = instance_yaml
        self.log_path = self.home / "dagster-dev.log"
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LocalDagster:
        self.home.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.instance_yaml, self.home / "dagster.yaml")
        env = {**os.environ, **self.env, "DAGSTER_HOME": str(self.home)}
        cmd = [DAGSTER, "dev", "-m", "ingest_platform.definitions", "-h", "127.0.0.1", "-p", str(self.port)]
        log = open(self.log_path, "wb")  # noqa: SIM115 - the child writes it until stop()
        kwargs = {"env": env, "cwd": str(self.home), "stdout": log, "stderr": subprocess.STDOUT,
                  "stdin": subprocess.DEVNULL, "start_new_session": True}  # fmt: skip
        self._proc = spawn(cmd, kwargs, die_with_parent=True)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise LocalDagsterError(f"dagster dev exited with {self._proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/server_info", timeout=2):
                    return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise LocalDagsterError(f"dagster dev did not answer within {self.startup_timeout_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self) -> str:
        try:
            return tail_text(self.log_path.read_text(errors="replace"))
        except OSError:
            return "(no log)"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def stop(self, timeout_s: float = 60.0) -> None:
        stop_child(self._proc, timeout_s, "dagster dev")

    def __enter__(self) -> LocalDagster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- the UI's API --------------------------------------------------------------------------------------------

    def graphql(self, query: str, variables: dict | None = None, timeout_s: float = 30.0) -> dict:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(f"{self.url}/graphql", body, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                answer = json.loads(response.read())
        except (OSError, ValueError) as error:
            raise LocalDagsterError(f"GraphQL request failed: {error}") from None
        if answer.get("errors"):
            raise LocalDagsterError(f"GraphQL errors: {answer['errors']}")
        return answer["data"]

    def terminate_run(self, run_id: str) -> None:
        """What the UI's "Terminate" button does (safe termination: the run process is interrupted)."""
        data = self.graphql(
            "mutation($runId: String!) { terminateRun(runId: $runId) { __typename "
            "... on TerminateRunFailure { message } ... on PythonError { message } } }", {"runId": run_id})
        result = data["terminateRun"]
        if result["__typename"] != "TerminateRunSuccess":
            raise LocalDagsterError(f"terminating run {run_id}: {result}")
