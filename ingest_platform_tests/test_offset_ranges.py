"""Offset planning: ranges from the ledger to the watermarks, the cap, retention gaps and reset topics."""

from __future__ import annotations

import pytest

from ingest_platform.engines.offset_ranges import OffsetRangeError, plan_ranges, start_offsets


def test_a_new_table_starts_at_the_earliest_offsets_and_known_partitions_after_the_ledger():
    assert start_offsets("d", "t", ledger={}, marks={0: (7, 20), 1: (5, 8)}) == {0: 7, 1: 5}
    assert start_offsets("d", "t", ledger={0: 9}, marks={0: (0, 20), 1: (0, 8)}) == {0: 10, 1: 0}


def test_a_partition_added_to_a_table_with_a_ledger_starts_at_0_and_retention_below_it_is_loss():
    with pytest.raises(OffsetRangeError, match=r"t\[1\] offsets 0..4 \(5 records\)"):
        start_offsets("d", "t", ledger={0: 9}, marks={0: (0, 20), 1: (5, 8)})
    lost: dict[int, tuple[int, int]] = {}
    starts = start_offsets("d", "t", ledger={0: 9}, marks={0: (0, 20), 1: (5, 8)}, on_data_loss="skip",
                           data_loss=lost)  # fmt: skip
    assert starts == {0: 10, 1: 5} and lost == {1: (0, 4)}


def test_retention_gap_fails_and_names_the_lost_range():
    with pytest.raises(OffsetRangeError) as raised:
        start_offsets("orders", "shop.orders", ledger={0: 9, 1: 3}, marks={0: (15, 30), 1: (0, 10)})
    message = str(raised.value)
    assert "shop.orders[0] offsets 10..14 (5 records)" in message
    assert "orders" in message and "[1]" not in message


def test_topic_behind_the_ledger_is_reported_as_reset():
    with pytest.raises(OffsetRangeError, match=r"shop.orders\[0\]: table holds up to offset 99, topic ends at 3"):
        start_offsets("orders", "shop.orders", ledger={0: 99}, marks={0: (0, 3)})


def test_caught_up_ledger_is_not_an_error():
    assert start_offsets("d", "t", ledger={0: 19}, marks={0: (0, 20)}) == {0: 20}


def test_uncapped_ranges_run_to_the_high_watermark():
    ranges = plan_ranges({0: 10, 1: 0}, {0: 20, 1: 0}, cap=1000)
    assert [(r.partition, r.start, r.end) for r in ranges] == [(0, 10, 20), (1, 0, 0)]


def test_cap_is_shared_by_water_filling():
    ranges = plan_ranges({0: 0, 1: 0, 2: 0}, {0: 2, 1: 100, 2: 100}, cap=50)
    takes = {r.partition: r.count for r in ranges}
    assert takes == {0: 2, 1: 24, 2: 24}
    assert sum(takes.values()) == 50


@pytest.mark.parametrize("cap", [1, 7, 99, 100, 101])
def test_capped_total_is_exactly_the_cap_when_lag_exceeds_it(cap):
    ranges = plan_ranges({p: 0 for p in range(6)}, {p: 17 * (p + 1) for p in range(6)}, cap=cap)
    assert sum(r.count for r in ranges) == min(cap, sum(17 * (p + 1) for p in range(6)))
    assert all(0 <= r.count <= 17 * (r.partition + 1) for r in ranges)
