"""A small pool of commit threads shared by every dataset loop of a stream process.

Each loop has at most one commit in flight (its commits stay ordered); the pool runs the commits of
different datasets side by side, so one slow table does not stall the others. Workers are daemon threads:
a process that must exit while a commit is still running leaves it to the OS — a Delta commit lands whole
or not at all, and the next start re-reads from the ledger (docs/DESIGN.md §10, crash table).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any


class CommitPool:
    def __init__(self, threads: int, name: str = "stream-commit"):
        self._tasks: queue.Queue[tuple[Future, Callable[[], Any]] | None] = queue.Queue()
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(max(1, threads))
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[[], Any]) -> Future:
        future: Future = Future()
        self._tasks.put((future, fn))
        return future

    def shutdown(self) -> None:
        """Workers finish their current task and exit; queued tasks not yet started are cancelled."""
        while True:
            try:
                item = self._tasks.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[0].cancel()
        for _ in self._threads:
            self._tasks.put(None)

    def _work(self) -> None:
        while True:
            item = self._tasks.get()
            if item is None:
                return
            future, fn = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as error:  # noqa: BLE001 - handed to the loop that owns the commit
                future.set_exception(error)
