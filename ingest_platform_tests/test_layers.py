"""The layers of docs/DESIGN.md §1: the core knows nothing of Dagster, the product nothing of the development
package, and no module imports itself back through others."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import ingest_platform

#: The Dagster layer, and the command-line/development modules that run Dagster (checks through Dagster's
#: machinery, the demo's materializations). Everything else is the core.
DAGSTER_LAYER = ("ingest_platform.defs", "ingest_platform.definitions", "ingest_platform.dev.demo",
                 "ingest_platform.cli")  # fmt: skip
#: Development tooling (local services, demo, data generators): the product's ingest path never imports it.
DEV_PACKAGE = "ingest_platform.dev"
#: What may import the development package: itself and the command line that starts its services.
DEV_USERS = (DEV_PACKAGE, "ingest_platform.cli")


def all_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(ingest_platform.__path__, "ingest_platform."))


def core_modules() -> list[str]:
    return [n for n in all_modules() if not n.startswith(DAGSTER_LAYER)]


def module_file(name: str) -> Path:
    root = Path(ingest_platform.__file__).parent
    relative = Path(*name.split(".")[1:])
    package = root / relative / "__init__.py"
    return package if package.exists() else (root / relative).with_suffix(".py")


def imported_modules(name: str, known: set[str]) -> set[str]:
    """The ingest_platform modules ``name`` imports, at module level or inside functions."""
    tree = ast.parse(module_file(name).read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        found.update(t for t in targets if t in known)
    return found - {name}


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    known = set(modules)
    return {name: imported_modules(name, known) for name in modules}


def test_core_modules_do_not_import_dagster():
    modules = core_modules()
    assert "ingest_platform.engines.embedded.engine" in modules and "ingest_platform.lake.ledger" in modules
    assert "ingest_platform.engines.spark.engine" in modules and "ingest_platform.monitoring.lag" in modules
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


def test_the_product_never_imports_the_development_package():
    graph = import_graph()
    assert any(name.startswith(DEV_PACKAGE) for name in graph), "the development package exists"
    offenders = {
        name: sorted(t for t in targets if t.startswith(DEV_PACKAGE))
        for name, targets in graph.items()
        if not name.startswith(DEV_USERS)
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_no_import_circles():
    graph = import_graph()
    circles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                circles.append([*path[path.index(target):], target])
            elif target not in state:
                visit(target, [*path, target])
        state[name] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])
    assert circles == []
