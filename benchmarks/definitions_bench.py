"""Code-location load time for many datasets, against bare Dagster definitions measured in the same run.

For each size (100, 1,000 and 5,000 datasets by default) a catalog of that many JSON datasets (one topic each,
no tables yet) is written, and two code locations are loaded, each in a fresh Python process, alternately,
``--repeat`` times (the median is reported):

* **ours**: ``import ingest_platform.definitions`` with ``INGEST_CATALOG`` set to that catalog (the module
  builds its ``Definitions``: catalog, assets, checks, sensors, maintenance, resources).
* **bare**: the same number of bare Dagster assets (``@dg.asset``, one per dataset, each in its own group of
  10 like ours) with one ``@dg.asset_check`` each, and nothing else: the floor any Dagster project pays.

"Load" is what a code server does before the UI can show the location: the imports (dagster and
``dagster.components``, which the code server imports before any module), building the
``Definitions``, resolving the repository (asset graph, implicit jobs) and the repository snapshot the
webserver fetches (``RepositorySnap.from_def(..., defer_snapshots=True)``, serialized). Each phase is timed
inside the process from the interpreter's first line. Then ``dagster definitions validate`` (the CLI, a
fresh process, which also builds every job snapshot) is timed on ``--validate-size`` datasets for both.

Goal (issue 17): ours <= 1.5 x bare at every size. Results: benchmarks/results/definitions_bench.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
GOAL_RATIO = 1.5
SOURCES = 10  # datasets are spread over this many sources (Dagster groups), as in a real catalog

#: Runs in a fresh interpreter; prints one JSON line of phase times. ``KIND`` is "ours" or "bare".
PROBE = r"""
import time
started = time.perf_counter()
cpu_started = time.process_time()
import json, os, sys
import dagster as dg
import dagster.components  # a code server imports it before loading any module (dagster/_grpc/utils.py)
imported = time.perf_counter()
if os.environ["PROBE_KIND"] == "ours":
    import ingest_platform.definitions as location
    defs = location.defs
else:
    sys.path.insert(0, os.environ["PROBE_DIR"])
    import bare_definitions as location
    defs = location.defs
built = time.perf_counter()
repo = defs.get_repository_def()
repo.get_all_jobs()
resolved = time.perf_counter()
from dagster._core.remote_representation.external_data import RepositorySnap
from dagster._serdes import serialize_value
snapshot = serialize_value(RepositorySnap.from_def(repo, defer_snapshots=True))
done = time.perf_counter()
cpu = time.process_time() - cpu_started
print(json.dumps({
    "import_dagster_s": imported - started, "build_s": built - imported, "resolve_s": resolved - built,
    "snapshot_s": done - resolved, "load_s": done - started, "load_cpu_s": cpu, "snapshot_bytes": len(snapshot),
    "assets": len(list(repo.asset_graph.get_all_asset_keys())), "checks": len(repo.asset_graph.asset_check_keys),
    "jobs": len(repo.get_all_jobs()), "schedules": len(repo.schedule_defs), "sensors": len(repo.sensor_defs),
}))
"""

#: The bare reference: one asset and one check per dataset, nothing else.
BARE = r"""
import os
import dagster as dg

N = int(os.environ["BARE_DATASETS"])


def _one(i):
    @dg.asset(key=["lake", f"src{i % SOURCES}", f"ds{i:05d}"], group_name=f"src{i % SOURCES}")
    def _asset(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        return dg.MaterializeResult()

    @dg.asset_check(asset=_asset, name="no_loss")
    def _check() -> dg.AssetCheckResult:
        return dg.AssetCheckResult(passed=True)

    return _asset, _check


pairs = [_one(i) for i in range(N)]
defs = dg.Definitions(assets=[a for a, _ in pairs], asset_checks=[c for _, c in pairs])
""".replace("SOURCES", str(SOURCES))


def write_catalog(path: Path, datasets: int) -> None:
    lines = ["datasets:"]
    for i in range(datasets):
        lines.append(f"  - {{name: ds{i:05d}, source: src{i % SOURCES}, topic: bench.ds{i:05d}, format: json}}")
    path.write_text("\n".join(lines) + "\n")


def environment(work: Path, kind: str, datasets: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INGEST_", "DAGSTER_"))}
    env.update({"PROBE_KIND": kind, "PROBE_DIR": str(work), "BARE_DATASETS": str(datasets),
                "INGEST_CATALOG": str(work / f"catalog_{datasets}.yaml"), "INGEST_LAKE_ROOT": str(work / "lake"),
                "DAGSTER_HOME": str(work / "dagster_home"), "PYTHONWARNINGS": "ignore"})  # fmt: skip
    return env


def probe(work: Path, kind: str, datasets: int) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE], env=environment(work, kind, datasets), cwd=REPO,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"{kind} load of {datasets} datasets failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def validate(work: Path, kind: str, datasets: int) -> float:
    target = ["-m", "ingest_platform.definitions"] if kind == "ours" else ["-f", str(work / "bare_definitions.py")]
    command = [str(Path(sys.executable).with_name("dagster")), "definitions", "validate", *target]
    started = time.perf_counter()
    done = subprocess.run(command, env=environment(work, kind, datasets), cwd=REPO, capture_output=True,
                          text=True, timeout=900)  # fmt: skip
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"dagster definitions validate ({kind}, {datasets}) failed:\n{done.stderr[-3000:]}")
    return elapsed


def median_of(samples: list[dict]) -> dict:
    keys = [k for k in samples[0] if k.endswith("_s")]
    result = {k: round(statistics.median(s[k] for s in samples), 3) for k in keys}
    result.update({k: v for k, v in samples[0].items() if not k.endswith("_s")})
    result["load_samples_s"] = [round(s["load_s"], 3) for s in samples]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--repeat", type=int, default=3, help="loads per size and kind (median reported)")
    parser.add_argument("--validate-size", type=int, default=1000, help="0 skips `dagster definitions validate`")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="definitions-bench-") as work:
        work = Path(work)
        (work / "bare_definitions.py").write_text(BARE)
        (work / "dagster_home").mkdir()
        for size in sorted(set(args.sizes) | ({args.validate_size} - {0})):
            write_catalog(work / f"catalog_{size}.yaml", size)
        for size in args.sizes:
            samples: dict[str, list[dict]] = {"ours": [], "bare": []}
            for _ in range(args.repeat):  # alternate, so both see the same machine load
                for kind in ("bare", "ours"):
                    samples[kind].append(probe(work, kind, size))
            ours, bare = median_of(samples["ours"]), median_of(samples["bare"])
            ratio = round(ours["load_s"] / bare["load_s"], 2)
            cpu_ratio = round(ours["load_cpu_s"] / bare["load_cpu_s"], 2)
            rows.append({"datasets": size, "ours": ours, "bare": bare, "ratio": ratio, "cpu_ratio": cpu_ratio})
            print(f"{size:>6} datasets: ours {ours['load_s']:.2f} s ({ours['load_cpu_s']:.2f} s CPU), bare "
                  f"{bare['load_s']:.2f} s ({bare['load_cpu_s']:.2f} s CPU), ratio {ratio:.2f} (CPU {cpu_ratio:.2f})",
                  flush=True)  # fmt: skip
        validation = None
        if args.validate_size:
            bare_s = validate(work, "bare", args.validate_size)
            ours_s = validate(work, "ours", args.validate_size)
            validation = {"datasets": args.validate_size, "ours_s": round(ours_s, 2), "bare_s": round(bare_s, 2),
                          "ratio": round(ours_s / bare_s, 2)}  # fmt: skip
            print(f"dagster definitions validate, {args.validate_size} datasets: ours {ours_s:.2f} s, "
                  f"bare {bare_s:.2f} s", flush=True)  # fmt: skip
    report = {
        "rows": rows,
        "validate": validation,
        "goal_ratio": GOAL_RATIO,
        "repeat": args.repeat,
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, Python {platform.python_version()}, "
        f"load average {os.getloadavg()[0]:.1f} at the end (shared machine)",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "definitions_bench.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "definitions_bench.md").write_text(markdown(report))
    print(markdown(report))
    return 0


def markdown(r: dict) -> str:
    lines = []
    for row in r["rows"]:
        for kind in ("ours", "bare"):
            m = row[kind]
            ratio = f"{row['ratio']:.2f}" if kind == "ours" else ""
            cpu_ratio = f"{row['cpu_ratio']:.2f}" if kind == "ours" else ""
            lines.append(
                f"| {row['datasets']:,} | {kind} | {m['import_dagster_s']:.2f} | {m['build_s']:.2f} | "
                f"{m['resolve_s']:.2f} | {m['snapshot_s']:.2f} | **{m['load_s']:.2f}** | {ratio} | "
                f"{m['load_cpu_s']:.2f} | {cpu_ratio} | "
                f"{m['assets']:,} / {m['checks']:,} / {m['jobs']} / {m['schedules']} / {m['sensors']} |"
            )
    v = r["validate"]
    validate = (
        f"`dagster definitions validate` on {v['datasets']:,} datasets (fresh process, wall time): ours "
        f"**{v['ours_s']:.2f} s**, bare {v['bare_s']:.2f} s (ratio {v['ratio']:.2f})."
        if v else "`dagster definitions validate` not run."
    )
    return f"""# Code-location load: ours vs bare Dagster, same run

Each load is a fresh Python process, median of {r["repeat"]} (ours and bare alternate). Ours: the catalog of N JSON
datasets (no tables) through `ingest_platform.definitions`. Bare: N `@dg.asset` with one `@dg.asset_check` each.
Phases (wall seconds): import dagster; build the `Definitions` (ours: also our imports and the catalog); resolve
the repository; the repository snapshot a code server sends to the webserver. "CPU s" is the load's CPU time,
less disturbed than wall time by other work on a shared machine. Machine: {r["machine"]}.
Last column: assets / checks / jobs / schedules / sensors.

| datasets | location | import | build | resolve | snapshot | load s | ratio | CPU s | ratio | assets/checks/jobs/… |
|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|
{chr(10).join(lines)}

{validate}

Goal: ratio <= {r["goal_ratio"]} at every size. Produced by `benchmarks/definitions_bench.py`.
"""


if __name__ == "__main__":
    sys.exit(main())
