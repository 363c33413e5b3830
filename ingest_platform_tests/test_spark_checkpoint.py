"""The Spark stream's checkpoint is used only when it resumes exactly where the ledger says (docs/DESIGN.md §10.10).

The files are written in the layout Spark 4.2 writes (``offsets/<batch>``: ``v1``, the batch metadata, one line
per source; ``commits/<batch>``), as read from a real query's checkpoint in test_spark_stream.py."""

from __future__ import annotations

import json
from pathlib import Path

from ingest_platform.streaming.spark_checkpoint import checkpoint_dir, disagreement, resume_offsets

TOPIC = "orders"


def write_batch(checkpoint: Path, batch: int, ends: dict[int, int], committed: bool) -> None:
    (checkpoint / "offsets").mkdir(parents=True, exist_ok=True)
    (checkpoint / "commits").mkdir(parents=True, exist_ok=True)
    metadata = {"batchWatermarkMs": 0, "batchTimestampMs": 1796006549016, "conf": {}}
    offsets = {TOPIC: {str(p): o for p, o in ends.items()}}
    (checkpoint / "offsets" / str(batch)).write_text(f"v1\n{json.dumps(metadata)}\n{json.dumps(offsets)}")
    if committed:
        (checkpoint / "commits" / str(batch)).write_text('v1\n{"nextBatchWatermarkMs":0}')


def test_resumes_from_the_last_committed_batch_not_from_one_in_flight(tmp_path):
    checkpoint = tmp_path / "ck"
    assert resume_offsets(checkpoint, TOPIC) is None  # no checkpoint at all
    write_batch(checkpoint, 0, {0: 10, 1: 20}, committed=True)
    write_batch(checkpoint, 1, {0: 15, 1: 26}, committed=True)
    write_batch(checkpoint, 2, {0: 30, 1: 40}, committed=False)  # started, killed before foreachBatch returned
    assert resume_offsets(checkpoint, TOPIC) == {0: 15, 1: 26}
    assert resume_offsets(checkpoint, "another-topic") is None


def test_only_a_checkpoint_that_agrees_with_the_ledger_is_used(tmp_path):
    starts = {0: 15, 1: 26}  # ledger + 1 per partition
    assert disagreement({0: 15, 1: 26}, starts) is None
    assert "no committed batch" in disagreement(None, starts)
    # A batch run went further than the stream (checkpoint behind): re-reading would only be filtered, but a
    # retention gap below the ledger would be reported as data loss; the ledger's positions are used instead.
    assert "[1] 20 where the ledger says 26" in disagreement({0: 15, 1: 20}, starts)
    # A batch that committed nothing (stopping), trailing transaction markers, a restored table (ahead).
    assert "[0] 16 where the ledger says 15" in disagreement({0: 16, 1: 26}, starts)
    # A partition the checkpoint does not know would be read from its earliest offset, whatever the ledger says.
    assert "[2] nothing where the ledger says 0" in disagreement({0: 15, 1: 26}, {**starts, 2: 0})


def test_one_checkpoint_per_table(tmp_path):
    one = checkpoint_dir(tmp_path, "shop/orders", "/lake-a/shop/orders")
    assert one == checkpoint_dir(tmp_path, "shop/orders", "/lake-a/shop/orders")
    assert one != checkpoint_dir(tmp_path, "shop/orders", "s3://bucket/shop/orders")
    assert one.parent == tmp_path / "shop" and one.name.startswith("orders-")
