"""Liveness and readiness of a stream process (docs/DESIGN.md §11 "Health"), answered in JSON.

Liveness: every running loop has polled (or retried) within its ``stuck_after_s`` and has no commit in flight
for longer than ``commit_stuck_after_s``. Readiness: the brokers answer a metadata request and the lake
answers a listing, each within ``READY_TIMEOUT_S``.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from ingest_platform.kafka.client import KafkaConnection
from ingest_platform.lake.tables import LakeLocation

READY_TIMEOUT_S = 3.0


def liveness(stuck: dict[str, str]) -> tuple[int, dict]:
    if stuck:
        return 503, {"status": "stuck", "stuck": stuck}
    return 200, {"status": "ok"}


class Readiness:
    """Broker and lake reachability, probed live on each call (in parallel, each with a deadline)."""

    def __init__(self, kafka: KafkaConnection, lake: LakeLocation, timeout_s: float = READY_TIMEOUT_S):
        self.kafka = kafka
        self.lake = lake
        self.timeout_s = timeout_s
        self._admin = AdminClient({**kafka.base_config(), "socket.timeout.ms": int(timeout_s * 1000),
                                   "log_level": 0})  # fmt: skip
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="readyz")

    def check(self) -> tuple[int, dict]:
        started = time.monotonic()
        probes = {"kafka": self._pool.submit(self._kafka), "lake": self._pool.submit(self._lake)}
        problems: dict[str, str] = {}
        for name, future in probes.items():
            remaining = max(0.0, self.timeout_s + 0.5 - (time.monotonic() - started))
            try:
                problem = future.result(timeout=remaining)
            except FutureTimeout:
                problem = f"no answer within {self.timeout_s:g} s"
            if problem:
                problems[name] = problem
        if problems:
            return 503, {"status": "not ready", "problems": problems}
        return 200, {"status": "ready"}

    def _kafka(self) -> str | None:
        try:
            metadata = self._admin.list_topics(timeout=self.timeout_s)
        except KafkaException as error:
            return f"brokers {self.kafka.bootstrap_servers} do not answer metadata requests: {error.args[0].str()}"
        return None if metadata.brokers else f"brokers {self.kafka.bootstrap_servers} list no broker"

    def _lake(self) -> str | None:
        try:
            filesystem, base = self.lake.filesystem()
            filesystem.get_file_info(base)
        except Exception as error:  # noqa: BLE001 - any failure to list is "not ready", named
            return f"the lake at {self.lake.root} cannot be listed: {str(error).splitlines()[0][:300]}"
        return None
