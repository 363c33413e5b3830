"""The shared batch writer (runs and streams) releases a batch's raw values as it decodes them (docs/DESIGN.md
§2 "Memory"), so a commit retried with the same batch — the stream retries while the lake fails — must write
the decoded rows again, never take the emptied batch for "nothing to write" (that would move the ledger past
its records at the next commit). A real Delta table made unreadable for one commit."""

from __future__ import annotations

import json
import os
import time

import pytest

from ingest_platform.engines.embedded.batch_writer import BatchWriter, RecordBatch
from ingest_platform.lake.commit import LakeWriteError
from ingest_platform.lake.tables import LakeLocation
from ingest_platform_tests.helpers import json_dataset, read_table


def _batch(first: int, count: int) -> RecordBatch:
    batch = RecordBatch()
    for offset in range(first, first + count):
        value = json.dumps({"id": offset}).encode()
        batch.values.append(value)
        batch.partitions.append(0)
        batch.offsets.append(offset)
        batch.timestamps.append(int(time.time() * 1000))
        batch.keys.append(None)
        batch.nbytes += len(value)
    return batch


def test_a_commit_retried_with_the_same_batch_writes_its_rows(tmp_path):
    lake = LakeLocation(str(tmp_path / "lake"))
    dataset = json_dataset("t", name="retried")
    writer = BatchWriter(dataset, lake, "run", "embedded", time.time(), {}, None, {0: 0})
    assert writer.commit(_batch(0, 10)).version == 1  # 0: the empty table (§2 "Table creation")
    log = tmp_path / "lake" / dataset.table_path / "_delta_log"
    second = _batch(10, 10)
    os.rename(log, f"{log}.away")  # the lake fails this commit
    with pytest.raises(LakeWriteError, match="dataset 'retried': reading the ledger of .* failed"):
        writer.commit(second)
    os.rename(f"{log}.away", log)
    done = writer.commit(second)  # the retry, as the stream's commit loop makes it
    assert done.version == 2 and done.applied == 10 and writer.ledger == {0: 19}
    frame = read_table(lake.table_uri(dataset.table_path))
    assert sorted(frame["_kafka_offset"].to_list()) == list(range(20))
