"""Small helpers of the local services (Kafka broker, MariaDB, Kafka Connect, Prometheus): the project's cache
folder, a tool run with captured output and a deadline, log tails for error messages, a lock file between
processes, stopping a child process (SIGTERM, SIGKILL after a deadline)."""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

CACHE_ENV = "INGEST_CACHE_DIR"
TAIL_LINES = 40

_log = logging.getLogger(__name__)


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


def signal_group(pid: int, sig: int) -> None:
    """Signal the process group of ``pid`` (pgid == pid: it was started with start_new_session), else ``pid``."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def stop_child(proc: subprocess.Popen[bytes] | None, timeout_s: float, what: str) -> None:
    """SIGTERM the process group of ``proc`` (started with ``start_new_session``), SIGKILL after ``timeout_s``."""
    if proc is None or proc.poll() is not None:
        return
    signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout_s)
        return
    except subprocess.TimeoutExpired:
        if timeout_s > 0:
            _log.warning("%s (pid %s) ignored SIGTERM for %.0f s; sending SIGKILL", what, proc.pid, timeout_s)
    signal_group(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


def terminate(pid: int, what: str, timeout_s: float, gone: Callable[[float], bool]) -> bool:
    """SIGTERM the process group of ``pid``, SIGKILL after ``timeout_s``; ``gone(seconds)`` waits for it to end.
    False when it survived SIGKILL for 10 s more (also for processes this one did not start, found by pid)."""
    signal_group(pid, signal.SIGTERM)
    if gone(timeout_s):
        return True
    _log.warning("%s (pid %s) ignored SIGTERM for %.0f s; sending SIGKILL", what, pid, timeout_s)
    signal_group(pid, signal.SIGKILL)
    return gone(10)


class ChildService:
    """Stopping a local service run as one child process in its own directory (MariaDB, Kafka Connect):
    subclasses set ``WHAT`` (for messages), ``_proc``, ``_dir`` and ``timings``."""

    WHAT = "local service"
    _proc: subprocess.Popen[bytes] | None
    _dir: Path | None
    timings: dict[str, float]

    def stop(self, timeout_s: float = 30) -> None:
        """SIGTERM the process (a clean shutdown), SIGKILL after ``timeout_s``; delete its directory. Idempotent."""
        t0 = time.monotonic()
        stop_child(self._proc, timeout_s, self.WHAT)
        self._proc = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        self.timings["stop_s"] = time.monotonic() - t0

    def _kill_now(self) -> None:
        stop_child(self._proc, 0, self.WHAT)
        self._proc = None
