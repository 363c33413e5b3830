"""External stream workers report to Dagster (``ingest-platform stream --report-to-dagster``, docs/DESIGN.md
§10.8): the same materialization summaries and ``stream`` check evaluations as a Dagster stream run, written as
runless asset events (``DagsterInstance.report_runless_asset_event``) into the instance that ``DAGSTER_HOME``
points at (its ``dagster.yaml`` names the storage: the production Postgres, or a local folder).

A thread reports every ``every_s``; a failed report (the instance's database unreachable) is logged, at most
every 60 s, and dropped: reports are monitoring, the stream's data and ledger never depend on them.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterable

import dagster as dg

from ingest_platform.catalog import Dataset
from ingest_platform.defs.stream_events import StreamEvents
from ingest_platform.lake.tables import LakeLocation

#: How often the reporter looks for due summaries (a rare commit is reported within this delay).
REPORT_EVERY_S = 1.0
LOG_EVERY_S = 60.0


class ReporterSetupError(RuntimeError):
    """The Dagster instance cannot be reached or configured; the message says what to set."""


def open_instance() -> dg.DagsterInstance:
    """The instance of ``DAGSTER_HOME`` (its dagster.yaml), with a message a user can act on if it fails."""
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        raise ReporterSetupError(
            "--report-to-dagster needs DAGSTER_HOME: the folder holding the Dagster instance's dagster.yaml "
            "(the same storage as the webserver and daemon, e.g. the production Postgres)"
        )
    try:
        return dg.DagsterInstance.get()
    except Exception as error:  # noqa: BLE001 - any configuration or storage error, told with its folder
        raise ReporterSetupError(
            f"cannot open the Dagster instance of DAGSTER_HOME={home}: {type(error).__name__}: {error}"
        ) from None


class RunlessReporter:
    """Reports a stream process's ``StreamEvents`` to a Dagster instance as runless asset events."""

    def __init__(self, instance: dg.DagsterInstance, datasets: Iterable[Dataset], lake: LakeLocation,
                 every_s: float = REPORT_EVERY_S, log: logging.Logger | None = None):  # fmt: skip
        self.instance = instance
        self.events = StreamEvents(datasets, lake, runner="external",
                                   where=f"external stream worker {socket.gethostname()} (pid {os.getpid()})")
        self.every_s = every_s
        self.log = log or logging.getLogger(__name__)
        self.reported = 0
        self.dropped = 0
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._main, name="dagster-reporter", daemon=True)
        self._logged_at = 0.0

    # the stream process's callbacks
    def on_commit(self, event) -> None:  # type: ignore[no-untyped-def]
        self.events.on_commit(event)

    def on_state(self, state) -> None:  # type: ignore[no-untyped-def]
        self.events.on_state(state)

    def start(self) -> RunlessReporter:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the thread, then report everything still pending (the stream has stopped)."""
        self._halt.set()
        self._thread.join(timeout_s)
        self.report(final=True)

    def report(self, final: bool = False) -> None:
        for event in self.events.take(final=final):
            try:
                self.instance.report_runless_asset_event(event)
                self.reported += 1
            except Exception as error:  # noqa: BLE001 - the stream goes on; the report is dropped and counted
                self.dropped += 1
                now = time.monotonic()
                if now - self._logged_at >= LOG_EVERY_S:
                    self._logged_at = now
                    self.log.warning(f"reporting to Dagster failed ({self.dropped} report(s) dropped so far): "
                                     f"{type(error).__name__}: {error}")  # fmt: skip

    def _main(self) -> None:
        while not self._halt.wait(self.every_s):
            self.report()
