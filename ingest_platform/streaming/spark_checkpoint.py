"""The Spark checkpoint of a dataset's streaming query, and whether it agrees with the ledger (docs/DESIGN.md
§10.10).

The checkpoint is Spark's memory of where it read, never the protocol's: a query is started on it only when the
position it resumes from (the end offsets of its last committed batch) is exactly the planned start on every
partition of the topic (ledger + 1; the earliest offset where the table has no ledger entry). Anything else —
no committed batch, a partition missing, a position before the ledger (a batch run went further) or after it (a
batch skipped while stopping, trailing transaction markers, a restored table) — discards it, and the query
starts at the positions planned from the ledger.

The checkpoint lives on the driver's local disk (``--spark-checkpoint-root``, default the platform's cache
folder): losing it costs nothing but a fresh query.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping
from pathlib import Path

#: Where checkpoints live unless the stream is told otherwise (``StreamSettings.spark_checkpoint_root``).
CHECKPOINT_FOLDER = "spark-stream-checkpoints"


def checkpoint_dir(root: str | Path, table_path: str, table_uri: str) -> Path:
    """One folder per table: ``<root>/<source>/<name>-<hash of the table URI>`` (two lakes never share one)."""
    digest = hashlib.sha1(table_uri.encode()).hexdigest()[:10]
    return Path(root).expanduser() / f"{table_path}-{digest}"


def resume_offsets(checkpoint: Path, topic: str) -> dict[int, int] | None:
    """Where a query on ``checkpoint`` resumes: the end offsets (partition -> next offset) of its last committed
    batch; None without one. The offset log's entry is ``v1``, the batch metadata, then one line per source."""
    commits = [int(p.name) for p in (checkpoint / "commits").glob("*") if p.name.isdigit()]
    if not commits:
        return None
    entry = checkpoint / "offsets" / str(max(commits))
    try:
        lines = entry.read_text().splitlines()
    except OSError:
        return None
    for line in lines[2:]:
        try:
            offsets = json.loads(line)
        except ValueError:
            continue
        if isinstance(offsets, dict) and topic in offsets:
            return {int(p): int(o) for p, o in offsets[topic].items()}
    return None


def disagreement(resume: Mapping[int, int] | None, starts: Mapping[int, int]) -> str | None:
    """Why the checkpoint cannot be used, or None: ``starts`` are the positions planned from the ledger
    (partition -> ledger + 1, or the earliest offset of a partition the table has never seen)."""
    if resume is None:
        return "it has no committed batch"
    disagree = {p: (resume.get(p), start) for p, start in starts.items() if resume.get(p) != start}
    if disagree:
        return "it resumes at " + ", ".join(
            f"[{p}] {at if at is not None else 'nothing'} where the ledger says {want}"
            for p, (at, want) in sorted(disagree.items())
        )
    return None


def discard(checkpoint: Path) -> None:
    shutil.rmtree(checkpoint, ignore_errors=True)
