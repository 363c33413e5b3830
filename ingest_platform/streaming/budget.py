"""The process-wide budget of buffered bytes that every dataset loop of a stream process shares.

A loop adds the key + value bytes of the records it buffers and gives them back when their batch has been
committed (or dropped). While the budget is exhausted, loops pause their partitions (librdkafka stops
fetching them) and resume once commits have freed room; a batch still closes at its trigger, so memory
always frees itself. docs/DESIGN.md §10 "Memory".
"""

from __future__ import annotations

import threading


class BufferBudget:
    def __init__(self, limit_bytes: int):
        if limit_bytes <= 0:
            raise ValueError("the buffer budget must be positive")
        self.limit = int(limit_bytes)
        self._used = 0
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> None:
        """Account for records already received (they are in memory whatever the budget says)."""
        with self._lock:
            self._used += nbytes

    def give(self, nbytes: int) -> None:
        with self._lock:
            self._used = max(0, self._used - nbytes)

    @property
    def used(self) -> int:
        return self._used

    @property
    def exhausted(self) -> bool:
        return self._used >= self.limit
