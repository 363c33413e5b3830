"""Whether a process runs, and since when: read from /proc (Linux), so a reused pid is not taken for the
process that had it before. Used by the local broker's tooling and by ``runs release`` (defs/run_slots.py)."""

from __future__ import annotations

import os
from pathlib import Path


def process_started_at(pid: int) -> float | None:
    """When process ``pid`` started (Unix seconds), or None when no such process runs (a zombie counts as
    gone). Without /proc only existence can be asked: 0.0 when the pid is taken."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return None
    except OSError:
        try:
            os.kill(pid, 0)
            return 0.0
        except ProcessLookupError:
            return None
        except PermissionError:
            return 0.0
    if fields[0] in ("Z", "X"):
        return None
    boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                if line.startswith("btime"))  # fmt: skip
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
