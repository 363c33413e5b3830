"""Process-wide allocator settings the embedded engine's memory bound relies on (docs/DESIGN.md §2 "Memory").

Measured on a 2M-record backlog with 64 MiB batches (benchmarks/memory_bench.py, probes in the same run):

* glibc raises its mmap threshold each time a large block is freed (up to 32 MiB), so after the first batch
  a batch's large buffers came from the heap, whose top stayed pinned by later small blocks: ~130 MiB of
  freed memory kept per process. A fixed threshold (glibc's default starting value, 128 KiB) keeps every
  large buffer mapped on its own and unmapped when freed.
* Arrow's default pool (mimalloc) kept ~90 MiB more than the system allocator for the same decoding, at a
  speed within this machine's noise; the engine's Arrow work goes through the system allocator.

Both are set once per process, before the first run (``bound_native_heap``); other allocators and platforms
are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

import pyarrow as pa

#: glibc's mallopt parameter and the value set for it.
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 128 * 1024

_done = threading.Event()
_lock = threading.Lock()


def bound_native_heap() -> None:
    """Fix glibc's mmap threshold and route Arrow through the system allocator; once per process."""
    if _done.is_set():
        return
    with _lock:
        if _done.is_set():
            return
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name) if name else None
            if libc is not None and hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version"):
                libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        except OSError:
            pass  # not glibc: nothing to fix
        pa.set_memory_pool(pa.system_memory_pool())
        _done.set()
