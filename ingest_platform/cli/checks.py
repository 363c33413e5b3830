"""``ingest-platform checks``: every dataset's asset checks against a lake, through Dagster's own check
execution (a job selecting the checks, executed in process on an ephemeral instance). docs/DESIGN.md §8."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass

import click

from ingest_platform.settings import Settings, normalize_lake_root

#: Dagster's console logger at ERROR: the command prints its own table (or JSON lines).
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


@dataclass(frozen=True)
class CheckRow:
    dataset: str
    asset: str
    check: str
    passed: bool
    severity: str  # "ERROR" or "WARN"
    description: str
    metadata: dict

    @property
    def status(self) -> str:
        return "ok" if self.passed else ("FAIL" if self.severity == "ERROR" else "warn")


def run_checks(settings: Settings, datasets: tuple[str, ...] = ()) -> list[CheckRow]:
    """Evaluate the checks (of ``datasets``, default all) of the catalog in ``settings`` against its lake.

    A check whose step crashed yields no evaluation: it is reported as a failed ERROR check named by the
    step's error, so a broken check can never pass silently.
    """
    import warnings

    import dagster as dg

    from ingest_platform.catalog import load_catalog
    from ingest_platform.definitions import build_definitions
    from ingest_platform.defs.checks import check_keys, checks_job

    warnings.filterwarnings("ignore", category=dg.BetaWarning)  # the CLI's output is the table or JSON lines
    catalog = load_catalog(settings.catalog_path)
    selected = [catalog.get(name) for name in datasets] if datasets else list(catalog.datasets)
    # the table checks only: a continuous dataset's `stream` check is reported by its stream, not computed
    keys = [key for d in selected for key in check_keys(d)]
    job = checks_job(dg.AssetSelection.checks(*keys), name="ingest_checks_cli")
    defs = dg.Definitions.merge(build_definitions(settings), dg.Definitions(jobs=[job]))
    with dg.DagsterInstance.ephemeral() as instance:
        result = defs.resolve_job_def(job.name).execute_in_process(
            instance=instance, raise_on_error=False, run_config=QUIET
        )
    by_key = {tuple(d.asset_path): d for d in selected}
    rows = []
    for evaluation in result.get_asset_check_evaluations():
        dataset = by_key[tuple(evaluation.asset_key.path)]
        rows.append(CheckRow(
            dataset=dataset.name, asset=evaluation.asset_key.to_user_string(), check=evaluation.check_name,
            passed=evaluation.passed, severity=evaluation.severity.value, description=evaluation.description or "",
            metadata={k: _plain(v) for k, v in evaluation.metadata.items()},
        ))  # fmt: skip
    for event in result.all_events:
        error = event.step_failure_data.error if event.is_step_failure else None
        # A failed blocking check fails its step too; its evaluation is reported above already.
        if event.is_step_failure and (error is None or error.cls_name != "DagsterAssetCheckFailedError"):
            rows.append(CheckRow(
                dataset="?", asset="?", check=event.step_key or "?", passed=False, severity="ERROR",
                description=f"check step failed: {error.message.strip() if error else 'unknown error'}", metadata={},
            ))  # fmt: skip
    return sorted(rows, key=lambda r: (r.asset, r.check))


def _plain(value) -> object:
    raw = getattr(value, "value", value)
    return raw if isinstance(raw, (int, float, str, bool, list, dict, type(None))) else str(raw)


def format_rows(rows: list[CheckRow]) -> str:
    header = f"{'dataset':<24} {'check':<15} {'result':<6} summary"
    lines = [header, "-" * 100]
    for row in rows:
        lines.append(f"{row.asset:<24} {row.check:<15} {row.status:<6} {row.description}")
    failed = [r for r in rows if not r.passed]
    errors = [r for r in failed if r.severity == "ERROR"]
    lines.append("")
    lines.append(f"{len(rows)} checks: {len(rows) - len(failed)} passed, {len(failed) - len(errors)} warnings, "
                 f"{len(errors)} errors")  # fmt: skip
    return "\n".join(lines)


@click.command(help="Evaluate every dataset's asset checks against the lake; exit 1 when an ERROR check fails.")
@click.argument("datasets", nargs=-1)
@click.option("--catalog", "catalog_path", help="Catalog file or folder (default: $INGEST_CATALOG).")
@click.option("--lake-root", help="Lake root (default: $INGEST_LAKE_ROOT or ./lake).")
@click.option("--bootstrap", help="Kafka bootstrap servers (default: $INGEST_KAFKA_BOOTSTRAP); checks read no topic.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per check result, one a line.")
def checks(datasets, catalog_path, lake_root, bootstrap, as_json) -> None:
    from ingest_platform.catalog import CatalogError

    settings = Settings.from_env()
    settings = Settings(
        catalog_path=catalog_path or settings.catalog_path,
        lake_root=normalize_lake_root(lake_root) if lake_root else settings.lake_root,
        kafka_bootstrap=bootstrap or settings.kafka_bootstrap,
    )
    try:
        rows = run_checks(settings, tuple(datasets))
    except CatalogError as error:
        raise click.ClickException(str(error)) from None
    except KeyError as error:
        raise click.ClickException(error.args[0]) from None
    if as_json:
        for row in rows:
            click.echo(json.dumps({k: v for k, v in asdict(row).items() if k != "asset"} | {"asset": row.asset},
                                  default=str))  # fmt: skip
    else:
        click.echo(format_rows(rows))
    if any(not r.passed and r.severity == "ERROR" for r in rows):
        sys.exit(1)
