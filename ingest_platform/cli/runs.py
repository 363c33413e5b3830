"""``ingest-platform runs release``: free a dataset whose pool slot a killed Dagster run still holds.

Without a Dagster daemon nothing notices a run killed with SIGKILL: it stays STARTED and holds the dataset's
pool slot (one run at a time, dagster.yaml), and every later run waits. This fails such runs through the
instance (``DAGSTER_HOME``) and frees their slots, only when their process is gone (docs/DESIGN.md §7).
"""

from __future__ import annotations

import sys

import click

from ingest_platform.catalog import CatalogError, load_catalog
from ingest_platform.settings import Settings


@click.group(help="Dagster runs of the datasets (the instance of $DAGSTER_HOME).")
def runs() -> None:
    pass


@runs.command("release", help=(
    "Fail the runs that hold DATASET's pool slot but whose process is gone (killed), and free the slot. Runs "
    "whose process still runs are left alone (exit 1). Run it on the host that ran them. The table is never "
    "at risk: two writers cannot both commit (the ledger guard)."
))  # fmt: skip
@click.argument("dataset")
@click.option("--catalog", "catalog_path", help="Catalog file or folder (default: $INGEST_CATALOG).")
def release(dataset: str, catalog_path: str | None) -> None:
    import dagster as dg

    from ingest_platform.defs.assets import pool_name
    from ingest_platform.defs.run_slots import release_dead_runs

    try:
        chosen = load_catalog(catalog_path or Settings.from_env().catalog_path).get(dataset)
    except CatalogError as error:
        raise click.ClickException(str(error)) from None
    except KeyError as error:
        raise click.ClickException(error.args[0]) from None
    pool = pool_name(chosen)
    with dg.DagsterInstance.get() as instance:
        result = release_dead_runs(instance, pool, chosen.name)
    for holder in result.released:
        click.echo(f"released {holder.describe()}: marked failed, its slots of {pool} freed")
    for holder in result.kept:
        click.echo(f"kept {holder.describe()}: it is not dead; wait for it, or cancel it in the UI", err=True)
    if not result.released and not result.kept:
        click.echo(f"{pool}: no run holds it")
    if result.kept:
        sys.exit(1)
