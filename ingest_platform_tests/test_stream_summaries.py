"""Materialization summaries (streaming/summaries.py): one report per commit while commits are rare, else one
per interval; the reports' count grows with time, not with the commit rate."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest

from ingest_platform.streaming.events import CommitEvent
from ingest_platform.streaming.summaries import MaterializationSummaries, summarize
from ingest_platform_tests.helpers import json_dataset

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def commit(version: int, at_s: float, records: int = 10, dataset: str = "events", p50: float | None = 1.0,
           p99: float | None = 2.0, ranges: dict | None = None, **extra) -> CommitEvent:  # fmt: skip
    fields = dict(
        dataset=dataset, pipeline="test", topic="t", table_uri="/lake/test/events", version=version,
        records=records, applied=records, rows=records, skipped=0, dead_letters=0, dlq_version=None,
        bytes=records * 100, files=1, bytes_written=records * 50, rows_inserted=0, rows_updated=0, rows_deleted=0,
        ranges=ranges if ranges is not None else {0: (version * records, version * records + records - 1)},
        latency_p50_s=p50, latency_p99_s=p99, batch_opened_at=T0 + timedelta(seconds=at_s - 1),
        committed_at=T0 + timedelta(seconds=at_s), commit_duration_s=0.1,
    )  # fmt: skip
    return CommitEvent(**{**fields, **extra})


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_rare_commits_are_reported_one_by_one():
    clock = Clock()
    summaries = MaterializationSummaries([json_dataset("t", materialization_interval_s=60)], clock=clock)
    reported = []
    for n in range(5):  # one commit every 90 s: rarer than the 60 s interval
        clock.now = n * 90.0
        summaries.add(commit(n, n * 90.0))
        clock.now += 0.5  # the reporter's next look
        reported += summaries.due()
    assert [(s.commits, s.first_version, s.last_version) for s in reported] == [(1, n, n) for n in range(5)]
    assert reported[1].window_s == 90.0 and reported[0].window_s == 1.0  # the first: since its batch opened


def test_frequent_commits_are_summarised_once_per_interval():
    clock = Clock()
    summaries = MaterializationSummaries([json_dataset("t", materialization_interval_s=60)], clock=clock)
    reported = []
    version = 0
    for tick in range(3600):  # one hour, a commit per second, the reporter looking every second
        clock.now = float(tick)
        summaries.add(commit(version, tick, records=7))
        version += 1
        reported += summaries.due()
    reported += summaries.flush()
    assert 60 <= len(reported) <= 62  # ~one per minute, not 3,600
    assert reported[0].commits == 1  # the first commit is reported at once
    assert sum(s.commits for s in reported) == 3600 and sum(s.records for s in reported) == 3600 * 7
    versions = [v for s in reported for v in range(s.first_version, s.last_version + 1)]
    assert versions == list(range(3600))  # every commit in exactly one summary, in order
    middle = reported[10]
    assert middle.commits == 60 and middle.window_s == 60.0 and middle.records_per_s == pytest.approx(7.0)


def test_summaries_per_dataset_keep_their_own_intervals():
    clock = Clock()
    fast, slow = json_dataset("a", name="fast", materialization_interval_s=10), json_dataset("b", name="slow")
    summaries = MaterializationSummaries([fast, slow], clock=clock)
    counts = {"fast": 0, "slow": 0}
    for tick in range(120):
        clock.now = float(tick)
        summaries.add(commit(tick, tick, dataset="fast"))
        summaries.add(commit(tick, tick, dataset="slow"))
        for summary in summaries.due():
            counts[summary.dataset] += 1
    assert counts == {"fast": 12, "slow": 2}  # 120 s at 10 s and at the default 60 s


def test_summary_figures_merge_ranges_and_bound_latency():
    events = [
        commit(3, 10, records=100, p50=1.0, p99=4.0, ranges={0: (0, 59), 1: (0, 39)}),
        commit(4, 11, records=10, p50=9.0, p99=9.5, ranges={0: (60, 69)}, dlq_version=2, dead_letters=1,
               applied=9, rows_inserted=3),
        commit(5, 12, records=100, p50=2.0, p99=3.0, ranges={1: (40, 139)}),
    ]
    summary = summarize(events)
    assert (summary.commits, summary.first_version, summary.last_version, summary.records) == (3, 3, 5, 210)
    assert summary.ranges == {0: (0, 69), 1: (0, 139)}
    assert summary.latency_p50_s == 2.0  # weighted by records: the 10-record commit's 9 s is no median
    assert summary.latency_p99_s == 9.5  # an upper bound: the largest p99
    assert (summary.dead_letters, summary.applied, summary.last_dlq_version, summary.rows_inserted) == (1, 209, 2, 3)
    assert summarize([commit(1, 5, p50=None, p99=None)]).latency_p50_s is None


def test_commits_from_many_threads_are_each_reported_once():
    summaries = MaterializationSummaries([json_dataset("t", name=f"d{i}") for i in range(4)])

    def commits(name: str) -> None:
        for version in range(500):
            summaries.add(commit(version, version, dataset=name))

    threads = [threading.Thread(target=commits, args=(f"d{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    reported = []
    while any(t.is_alive() for t in threads):
        reported += summaries.due()
    for thread in threads:
        thread.join()
    reported += summaries.flush()
    assert summaries.pending_commits() == 0 and summaries.flush() == []
    for i in range(4):
        mine = [s for s in reported if s.dataset == f"d{i}"]
        assert sum(s.commits for s in mine) == 500
        assert [v for s in mine for v in range(s.first_version, s.last_version + 1)] == list(range(500))
