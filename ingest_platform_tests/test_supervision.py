"""The supervisor's rule (streaming/supervision.py) as plain data: which run history leads to which decision."""

from __future__ import annotations

import pytest

from ingest_platform.streaming.supervision import (
    ACTIVE,
    ENDED,
    FAILED,
    GAVE_UP,
    RUNNING,
    START,
    WAIT,
    RunFact,
    SupervisionPolicy,
    backoff_s,
    decide,
)

POLICY = SupervisionPolicy(backoff_s=30, max_backoff_s=600, max_failures=5, healthy_after_s=600)
NOW = 10_000.0


def failed(n: int, ran_s: float = 5, ended_ago_s: float = 1000) -> RunFact:
    end = NOW - ended_ago_s
    return RunFact(f"fail{n:04d}", FAILED, "FAILURE", end - ran_s, end, f"boom {n}")


def test_no_run_starts_one_with_a_key_that_names_no_predecessor():
    decision = decide("stream__g", [], NOW, POLICY)
    assert (decision.action, decision.run_key) == (START, "stream:stream__g:after:none")


@pytest.mark.parametrize("status", ["QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING"])
def test_a_run_in_progress_is_never_doubled(status):
    runs = [RunFact("live0001", ACTIVE, status, NOW - 5), failed(1), failed(2)]
    decision = decide("stream__g", runs, NOW, POLICY)
    assert decision.action == RUNNING and decision.run_key is None and status.lower() in decision.reason


@pytest.mark.parametrize("status", ["SUCCESS", "CANCELED"])
def test_a_clean_end_restarts_at_once(status):
    runs = [RunFact("done0001", ENDED, status, NOW - 100, NOW - 1), failed(1), failed(2)]
    decision = decide("stream__g", runs, NOW, POLICY)
    assert (decision.action, decision.run_key, decision.failures) == (START, "stream:stream__g:after:done0001", 0)


@pytest.mark.parametrize(("failures", "expected"), [(1, 30), (2, 60), (3, 120), (4, 240), (6, 600), (9, 600)])
def test_backoff_doubles_up_to_the_cap(failures, expected):
    assert backoff_s(failures, POLICY) == expected


def test_a_failure_waits_for_its_backoff_then_restarts():
    runs = [failed(2, ended_ago_s=40), failed(1)]  # two in a row: 60 s backoff
    waiting = decide("stream__g", runs, NOW, POLICY)
    assert waiting.action == WAIT and waiting.failures == 2
    assert "in 20 s" in waiting.reason and "boom 2" in waiting.reason
    later = decide("stream__g", runs, NOW + 21, POLICY)
    assert (later.action, later.run_key) == (START, "stream:stream__g:after:fail0002")


def test_repeated_failures_give_up_with_the_reason_and_how_to_resume():
    runs = [failed(n) for n in range(5, 0, -1)]
    decision = decide("stream__g", runs, NOW + 10**6, POLICY)
    assert decision.action == GAVE_UP and decision.run_key is None
    assert "gave up after 5 failed runs in a row" in decision.reason and "boom 5" in decision.reason
    assert "launch stream__g once" in decision.reason


def test_a_run_that_streamed_long_enough_starts_a_new_count():
    runs = [failed(5), failed(4, ran_s=3600), failed(3), failed(2), failed(1)]
    decision = decide("stream__g", runs, NOW, POLICY)
    assert decision.action == START and decision.failures == 2  # not 5: the crash a day is no crash loop


def test_a_clean_run_after_giving_up_resumes_supervision():
    runs = [RunFact("hand0001", ENDED, "SUCCESS", NOW - 50, NOW - 10)] + [failed(n) for n in range(5, 0, -1)]
    assert decide("stream__g", runs, NOW, POLICY).action == START
