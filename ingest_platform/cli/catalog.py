"""``ingest-platform catalog``: inspect and validate the dataset catalog."""

from __future__ import annotations

import click

from ingest_platform.catalog import CatalogError, load_catalog
from ingest_platform.settings import Settings


@click.group(help="Inspect and validate the dataset catalog.")
def catalog() -> None:
    pass


@catalog.command("validate", help="Validate a catalog file or folder (default: $INGEST_CATALOG or the demo catalog).")
@click.argument("path", required=False)
def catalog_validate(path: str | None) -> None:
    target = path or Settings.from_env().catalog_path
    try:
        loaded = load_catalog(target)
    except CatalogError as error:
        raise click.ClickException(str(error)) from None
    for dataset in loaded.datasets:
        click.echo(f"{'/'.join(dataset.asset_path):<32} topic={dataset.topic} format={dataset.format} "
                   f"mode={dataset.mode} engine={dataset.engine}")
    click.echo(f"{len(loaded.datasets)} datasets in {len(loaded.files)} file(s): valid")
