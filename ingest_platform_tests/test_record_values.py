"""A batch's values in segments (docs/DESIGN.md §2 "Memory"): read back exactly, decoded segment by segment
into the same rows as one list, the raw bytes released as the rows are made. No broker."""

from __future__ import annotations

import json
from array import array

import pyarrow as pa
import pytest

from ingest_platform.engines.embedded.batch_rows import KafkaRecords, to_rows
from ingest_platform.engines.embedded.record_values import FIRST_SEGMENT_BYTES, SEGMENT_BYTES, RecordValues
from ingest_platform.engines.run_plan import IngestError
from ingest_platform_tests.helpers import json_dataset


def test_values_read_back_exactly_across_segments():
    values = [json.dumps({"i": i, "pad": "x" * (i % 97)}).encode() for i in range(3000)]
    buffer = RecordValues(values, segment_bytes=4096)
    assert len(buffer) == 3000 and list(buffer) == values
    assert buffer[0] == values[0] and buffer[-1] == values[-1] and buffer[1234] == values[1234]
    assert buffer[10:13] == values[10:13]
    assert buffer.nbytes == sum(map(len, values)) and buffer.largest() == max(map(len, values))
    assert sum(len(s) for s in buffer.segments()) == 3000
    assert b"".join(s.arrow_buffer().to_pybytes() for s in buffer.segments()) == b"".join(v + b"\n" for v in values)


def test_segments_start_small_and_grow_to_the_cap():
    buffer = RecordValues()
    for _ in range(100_000):
        buffer.append(b"y" * 400)
    sizes = [len(s.arrow_buffer()) for s in buffer.segments()]
    assert sizes[0] <= FIRST_SEGMENT_BYTES and max(sizes) <= SEGMENT_BYTES
    assert len(RecordValues([b"z" * 10]).arrow_buffer()) == 11  # a one-value batch holds ~its value, not a segment


def _records(values, segment_bytes: int) -> KafkaRecords:
    n = len(values)
    return KafkaRecords("t", RecordValues(values, segment_bytes=segment_bytes), array("i", [0] * n),
                        array("q", range(n)), array("q", [1_700_000_000_000] * n), [None] * n)  # fmt: skip


def test_decoding_by_segment_gives_the_rows_of_one_read_and_releases_the_raw_bytes():
    values = [json.dumps({"id": i, "price": i if i < 500 else i + 0.5, "late": None if i < 900 else "x"}).encode()
              for i in range(1000)]  # fmt: skip
    dataset = json_dataset("t")
    whole = to_rows(dataset, KafkaRecords("t", values, [0] * 1000, list(range(1000)), [1_700_000_000_000] * 1000,
                                          [None] * 1000), None)  # fmt: skip
    records = _records(values, segment_bytes=2048)
    assert len(list(records.values.segments())) > 5
    parts = to_rows(dataset, records, None, release=True)
    assert len(records.values) == 0  # every segment's bytes were handed over and dropped
    assert parts.rows.schema.field("price").type == pa.float64()  # int in early segments, double later
    drop = ["_ingested_at"]
    assert parts.rows.drop_columns(drop).to_pylist() == whole.rows.drop_columns(drop).to_pylist()


def test_a_bad_value_in_a_later_segment_is_named_by_its_offset():
    values = [json.dumps({"id": i}).encode() for i in range(400)]
    values[333] = b"{not json"
    with pytest.raises(IngestError, match=r"record t\[0\] offset 333: value is not valid JSON"):
        to_rows(json_dataset("t"), _records(values, segment_bytes=1024), None, release=True)
    dead = to_rows(json_dataset("t", max_dlq_ratio=0.1), _records(values, segment_bytes=1024), None, release=True)
    assert [(b.offset, b.value) for b in dead.bad] == [(333, b"{not json")] and dead.rows.num_rows == 399
