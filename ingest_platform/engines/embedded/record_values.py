"""A batch's record values as newline-delimited buffers, filled while consuming (docs/DESIGN.md §2 "Memory").

A list of ``bytes`` costs a Python object per record (33 B of header and an 8 B pointer on ~400 B values)
whose small blocks are spread over the interpreter's arenas, given back only when wholly empty: a run's
memory crept up with the records it read. Here the values go into ``bytearray`` segments of at most
``SEGMENT_BYTES``, each value followed by a newline, with their end offsets in an ``array``: a batch costs
its bytes plus 9 B per record, and each segment already is the newline-delimited JSON Arrow's reader parses
(no join, no copy: ``arrow_buffer``). Decoding takes the segments one at a time (``pop_segment``), so the raw
bytes of a batch are released as its rows are made. It still reads as a sequence of ``bytes`` (one value
per index) for the code that names or dead-letters single records.
"""

from __future__ import annotations

import bisect
import itertools
import operator
from array import array
from collections.abc import Iterator, Sequence
from typing import overload

import pyarrow as pa

#: Largest segment: the unit decoded at a time, so Arrow's transient memory follows it, not the batch.
SEGMENT_BYTES = 16 << 20
#: First segment; each next one is 4x larger up to ``SEGMENT_BYTES`` (a small batch stays small).
FIRST_SEGMENT_BYTES = 64 << 10


class RecordValues(Sequence[bytes]):
    """Values appended in order; ``values[i]`` is the i-th value (without its newline).

    Segments are allocated at their full size and filled in place, never grown: a growing ``bytearray`` is
    re-allocated on the C heap's top, which then stays pinned and keeps the freed memory of earlier batches
    (it did, by ~100 MiB). Allocated at once, a segment above the allocator's mmap threshold is mapped and
    unmapped as a whole (``engines/embedded/memory.py`` fixes that threshold).
    """

    __slots__ = ("_payloads", "_views", "_used", "_ends", "_firsts", "_segment_bytes")

    def __init__(self, values: Sequence[bytes] = (), segment_bytes: int = SEGMENT_BYTES):
        self._segment_bytes = segment_bytes
        self._payloads: list[bytearray] = []
        self._views: list[memoryview] = []
        self._used: list[int] = []  # bytes filled per segment
        self._ends: list[array] = []  # per segment: end of each value's line within the segment
        self._firsts: list[int] = []  # index of each segment's first value
        for value in values:
            self.append(value)

    def _new_segment(self, at_least: int) -> None:
        previous = len(self._payloads[-1]) if self._payloads else FIRST_SEGMENT_BYTES // 4
        size = max(at_least, min(self._segment_bytes, previous * 4))
        self._firsts.append(len(self))
        self._payloads.append(bytearray(size))
        self._views.append(memoryview(self._payloads[-1]))
        self._used.append(0)
        self._ends.append(array("q"))

    def append(self, value: bytes) -> None:
        start = self._used[-1] if self._used else -1
        end = start + len(value)
        if start < 0 or end >= len(self._payloads[-1]):
            self._new_segment(len(value) + 1)
            start, end = 0, len(value)
        self._views[-1][start:end] = value
        self._payloads[-1][end] = 10  # b"\n"
        self._used[-1] = end + 1
        self._ends[-1].append(end + 1)

    def __len__(self) -> int:
        return self._firsts[-1] + len(self._ends[-1]) if self._ends else 0

    @overload
    def __getitem__(self, index: int) -> bytes: ...

    @overload
    def __getitem__(self, index: slice) -> list[bytes]: ...

    def __getitem__(self, index: int | slice) -> bytes | list[bytes]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        segment = bisect.bisect_right(self._firsts, index) - 1
        ends, at = self._ends[segment], index - self._firsts[segment]
        begin = ends[at - 1] if at else 0
        return bytes(self._views[segment][begin : ends[at] - 1])

    def __iter__(self) -> Iterator[bytes]:
        for view, ends in zip(self._views, self._ends):
            begin = 0
            for end in ends:
                yield bytes(view[begin : end - 1])
                begin = end

    @property
    def nbytes(self) -> int:
        """Bytes of the values themselves (newlines not counted)."""
        return sum(self._used) - len(self)

    def newline_count(self) -> int:
        return sum(payload.count(b"\n", 0, used) for payload, used in zip(self._payloads, self._used))

    def largest(self) -> int:
        """Length of the longest value."""
        longest = 0
        for ends in self._ends:
            if ends:
                lines = map(operator.sub, itertools.islice(ends, 1, None), ends)
                longest = max(longest, ends[0], *lines)
        return max(0, longest - 1)

    def arrow_buffer(self) -> pa.Buffer:
        """The values as newline-delimited lines: a one-segment sequence without a copy (do not append while
        Arrow reads it); several segments are joined."""
        if len(self._payloads) == 1:
            return pa.py_buffer(self._payloads[0]).slice(0, self._used[0])
        return pa.py_buffer(b"".join(view[:used] for view, used in zip(self._views, self._used)))

    def segments(self) -> Iterator[RecordValues]:
        """Each segment as a sequence of its own (sharing the bytes)."""
        for k in range(len(self._payloads)):
            yield self._segment(k)

    def pop_segment(self) -> RecordValues:
        """Remove and return the first segment (its values, in order): the caller then holds its bytes alone."""
        if not self._payloads:
            return RecordValues(segment_bytes=self._segment_bytes)
        first = self._segment(0)
        count = len(first)
        for parts in (self._payloads, self._views, self._used, self._ends, self._firsts):
            del parts[0]
        self._firsts = [f - count for f in self._firsts]
        return first

    def _segment(self, k: int) -> RecordValues:
        part = RecordValues(segment_bytes=self._segment_bytes)
        part._payloads, part._views, part._used = [self._payloads[k]], [self._views[k]], [self._used[k]]
        part._ends, part._firsts = [self._ends[k]], [0]
        return part


def int_array(values: Sequence[int], kind: pa.DataType) -> pa.Array:
    """An Arrow integer array of ``values``: without a copy for an ``array`` of the same width (a batch's
    partitions, offsets and timestamps), converted otherwise."""
    if isinstance(values, array) and values.itemsize * 8 == kind.bit_width:
        return pa.Array.from_buffers(kind, len(values), [None, pa.py_buffer(values)])
    return pa.array(values, kind)
