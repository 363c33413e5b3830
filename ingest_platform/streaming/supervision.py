"""When to (re)start a stream group's run: the supervisor's rule, as plain data in and a decision out
(docs/DESIGN.md §10.9). The Dagster sensor (``defs/streams.py``) turns the group's recent runs into ``RunFact``s
and the decision into a run request or a skip reason; this module knows nothing of Dagster.

* A run queued, starting, running or canceling: nothing to do (never a second run of a group).
* The latest run ended cleanly (succeeded, or was canceled — a terminated run is restarted: to stop a group,
  stop the supervisor or take its datasets off ``continuous``): start one now.
* The latest runs failed: restart with exponential backoff (``backoff_s`` doubling up to ``max_backoff_s``
  after each consecutive failure), and **give up** after ``max_failures`` failures in a row, saying why. A run
  that streamed for ``healthy_after_s`` before failing starts a new count (a crash a day is not a crash loop).
  After giving up, a run launched by hand that ends cleanly or streams long enough resumes the supervision.
"""

from __future__ import annotations

from dataclasses import dataclass

#: What a run is, for the supervisor.
ACTIVE, FAILED, ENDED = "active", "failed", "ended"
#: Decisions.
START, WAIT, RUNNING, GAVE_UP = "start", "wait", "running", "gave up"


@dataclass(frozen=True)
class SupervisionPolicy:
    backoff_s: float = 30.0  # wait before the first restart after a failure
    max_backoff_s: float = 600.0
    max_failures: int = 5  # consecutive failed runs before giving up
    healthy_after_s: float = 600.0  # a failed run that streamed this long does not count towards giving up


@dataclass(frozen=True)
class RunFact:
    run_id: str
    state: str  # ACTIVE, FAILED or ENDED
    status: str  # the orchestrator's own word (QUEUED, STARTED, FAILURE, CANCELED…), for messages
    started_at: float | None = None  # epoch seconds
    ended_at: float | None = None
    message: str | None = None  # why a failed run failed


@dataclass(frozen=True)
class Decision:
    action: str  # START, WAIT, RUNNING or GAVE_UP
    reason: str
    run_key: str | None = None  # START: unique per predecessor, so one tick's request is never repeated
    failures: int = 0  # consecutive failed runs counted


def consecutive_failures(runs: list[RunFact], policy: SupervisionPolicy) -> int:
    """Failed runs at the head of ``runs`` (newest first), up to and including one that streamed long enough."""
    count = 0
    for run in runs:
        if run.state != FAILED:
            break
        count += 1
        if run.started_at is not None and run.ended_at is not None \
                and run.ended_at - run.started_at >= policy.healthy_after_s:  # fmt: skip
            break
    return count


def backoff_s(failures: int, policy: SupervisionPolicy) -> float:
    return min(policy.max_backoff_s, policy.backoff_s * 2 ** max(0, failures - 1))


def decide(job: str, runs: list[RunFact], now: float, policy: SupervisionPolicy | None = None) -> Decision:
    """What to do about the group whose stream job is ``job``, given its recent runs (newest first)."""
    policy = policy or SupervisionPolicy()
    active = next((r for r in runs if r.state == ACTIVE), None)
    if active is not None:
        return Decision(RUNNING, f"run {active.run_id[:8]} is {active.status.lower()}")
    key = f"stream:{job}:after:{runs[0].run_id if runs else 'none'}"
    failures = consecutive_failures(runs, policy)
    if failures == 0:
        why = "no run yet" if not runs else f"run {runs[0].run_id[:8]} ended ({runs[0].status.lower()})"
        return Decision(START, f"starting: {why}", key)
    last = runs[0]
    cause = f"run {last.run_id[:8]} failed: {_short(last.message)}"
    if failures >= policy.max_failures:
        return Decision(GAVE_UP, (
            f"gave up after {failures} failed runs in a row ({cause}). Fix the cause, then launch {job} once "
            f"(UI or `dagster job launch -j {job}`): supervision resumes when a run ends cleanly or streams for "
            f"{policy.healthy_after_s:.0f} s"
        ), failures=failures)  # fmt: skip
    wait = backoff_s(failures, policy)
    due = (last.ended_at or now) + wait
    if now < due:
        return Decision(WAIT, f"{cause}; restart {failures} of {policy.max_failures - 1} in {due - now:.0f} s "
                              f"(backoff {wait:.0f} s)", failures=failures)  # fmt: skip
    return Decision(START, f"restarting ({failures} of {policy.max_failures - 1}) after {cause}", key, failures)


def _short(message: str | None, limit: int = 300) -> str:
    text = " ".join((message or "no failure message").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
