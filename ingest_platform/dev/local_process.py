"""Small helpers of the local services (Kafka broker, MariaDB, Kafka Connect): the project's cache folder, a
tool run with captured output and a deadline, log tails for error messages, a lock file between processes."""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

CACHE_ENV = "INGEST_CACHE_DIR"
TAIL_LINES = 40


def default_cache_dir() -> Path:
    """``$INGEST_CACHE_DIR`` or ``~/.cache/ingest_platform``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "ingest_platform").expanduser()


def run_captured(cmd: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    """Run a tool to completion with stdout and stderr captured together (for error messages)."""
    return subprocess.run(
        cmd, check=False, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, errors="replace", timeout=timeout_s,
    )  # fmt: skip


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def tail_text(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
