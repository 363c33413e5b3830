"""The ingest core knows nothing of Dagster: importing any core module must not import dagster."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import ingest_platform

DAGSTER_LAYER = ("ingest_platform.defs", "ingest_platform.definitions", "ingest_platform.dev.demo",
                 "ingest_platform.cli.main", "ingest_platform.cli.checks")  # fmt: skip


def core_modules() -> list[str]:
    names = [m.name for m in pkgutil.walk_packages(ingest_platform.__path__, "ingest_platform.")]
    return sorted(n for n in names if not n.startswith(DAGSTER_LAYER))


def test_core_modules_do_not_import_dagster():
    modules = core_modules()
    assert "ingest_platform.engines.embedded.engine" in modules and "ingest_platform.lake.ledger" in modules
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "    if 'dagster' in sys.modules:\n"
        "        print('IMPORTS DAGSTER:', name); break\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "IMPORTS DAGSTER" not in done.stdout, done.stdout
