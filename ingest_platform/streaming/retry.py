"""Bounded exponential backoff for the stream's retriable failures (docs/DESIGN.md §10 "Failures").

A broker restart or an unreachable lake is retried with delays doubling from ``initial_s`` up to ``max_s``,
each failure counted and logged; after ``give_up_s`` of failing without a success the dataset stops with
the last error (the supervisor or an operator restarts the process). Waits are cut short by a stop request.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    initial_s: float = 0.5
    max_s: float = 30.0
    give_up_s: float = 900.0


class Backoff:
    """The state of one retried operation: how long to wait next, and whether it is time to give up."""

    def __init__(self, policy: RetryPolicy, stop: threading.Event):
        self.policy = policy
        self.stop = stop
        self.first_failure: float | None = None
        self.delay = policy.initial_s
        self.failures = 0

    def failed(self) -> bool:
        """Record a failure and wait; False when retrying should end (given up, or stop requested)."""
        now = time.monotonic()
        if self.first_failure is None:
            self.first_failure = now
        self.failures += 1
        if now - self.first_failure >= self.policy.give_up_s:
            return False
        wait, self.delay = self.delay, min(self.delay * 2, self.policy.max_s)
        return not self.stop.wait(wait)

    @property
    def failing_for_s(self) -> float:
        return 0.0 if self.first_failure is None else time.monotonic() - self.first_failure

    def succeeded(self) -> None:
        self.first_failure, self.delay, self.failures = None, self.policy.initial_s, 0
