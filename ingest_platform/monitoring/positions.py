"""The tables' positions (their offset ledgers), read cheaply enough to do for every dataset on every tick.

The ledger is the truth about what a table holds (docs/DESIGN.md §2). Opening a Delta table costs a few ms;
for a thousand datasets per tick that is seconds. So positions are cached per process by table version:
each tick asks the store, in one batched ``get_file_info``, whether ``_delta_log/<version + 1>.json`` exists
for every cached table (a commit always creates it; checkpoints and log clean-up never remove the newest
one), and opens only the tables that moved, were never read, or gained Kafka partitions. docs/DESIGN.md §7.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow.fs as pafs

from ingest_platform.lake.ledger import read_ledger
from ingest_platform.lake.tables import LakeLocation

#: Threads opening changed tables (delta-rs does the I/O and parsing in Rust).
OPEN_THREADS = 8


@dataclass(frozen=True)
class TablePosition:
    """A table's ledger at one version; ``version`` None means there is no table yet (position: nothing)."""

    version: int | None
    ledger: dict[int, int]  # partition -> last offset the table holds (inclusive)
    partitions: frozenset[int]  # the Kafka partitions the ledger was read for
    last_commit_ms: int | None  # timestamp of the table's latest commit


@dataclass(frozen=True)
class PositionRequest:
    dataset: str
    table_path: str
    partitions: frozenset[int]


class PositionCache:
    """Ledgers of many tables by table version; thread-safe; one per (process, lake root)."""

    def __init__(self, lake: LakeLocation):
        self.lake = lake
        self._known: dict[str, TablePosition] = {}
        self._lock = threading.Lock()
        self.opened = 0  # tables opened by the last ``positions`` call (for tests and the benchmark)

    def positions(self, requests: Iterable[PositionRequest]) -> dict[str, TablePosition]:
        """``{dataset: TablePosition}`` now, opening only the tables whose log moved since the last call."""
        requests = list(requests)
        with self._lock:
            known = dict(self._known)
        stale = self._stale(requests, known)
        fresh: dict[str, TablePosition] = {}
        if stale:
            with ThreadPoolExecutor(max_workers=min(OPEN_THREADS, len(stale))) as pool:
                for request, position in zip(stale, pool.map(self._read, stale)):
                    fresh[request.table_path] = position
        with self._lock:
            self._known.update(fresh)
            self.opened = len(stale)
            return {r.dataset: self._known[r.table_path] for r in requests}

    def _stale(self, requests: list[PositionRequest], known: Mapping[str, TablePosition]) -> list[PositionRequest]:
        stale, check = [], []
        for request in requests:
            position = known.get(request.table_path)
            if position is None or not request.partitions <= position.partitions:
                stale.append(request)
            else:
                check.append((request, position))
        if not check:
            return stale
        filesystem, base = self.lake.filesystem()
        paths = []
        for request, position in check:
            log = f"{base.rstrip('/')}/{request.table_path}/_delta_log"
            # The next version appears with any commit; the current one vanishes when the table is deleted.
            version = -1 if position.version is None else position.version
            paths += [f"{log}/{version + 1:020d}.json", f"{log}/{max(version, 0):020d}.json"]
        infos = filesystem.get_file_info(paths)
        for index, (request, position) in enumerate(check):
            following, current = infos[2 * index], infos[2 * index + 1]
            moved = following.type != pafs.FileType.NotFound
            deleted = position.version is not None and current.type == pafs.FileType.NotFound
            if moved or deleted:
                stale.append(request)
        return stale

    def _read(self, request: PositionRequest) -> TablePosition:
        table = self.lake.open_table(request.table_path)
        if table is None:
            return TablePosition(None, {}, request.partitions, None)
        version = table.version()
        history = table.history(1)
        stamp = history[0].get("timestamp") if history else None
        return TablePosition(
            version=version,
            ledger=read_ledger(table, request.dataset, request.partitions),
            partitions=request.partitions,
            last_commit_ms=int(stamp) if stamp is not None else None,
        )


_caches: dict[str, PositionCache] = {}
_caches_lock = threading.Lock()


def position_cache(lake: LakeLocation) -> PositionCache:
    """The process-wide cache for ``lake`` (sensor ticks in one code server share it)."""
    with _caches_lock:
        return _caches.setdefault(lake.root, PositionCache(lake))
