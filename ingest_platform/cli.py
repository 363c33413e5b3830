"""The ``ingest-platform`` console script."""

from __future__ import annotations

import json
import logging
import sys

import click

from ingest_platform.catalog import CatalogError, load_catalog
from ingest_platform.cli_capacity import plan, preflight, topics
from ingest_platform.cli_checks import checks
from ingest_platform.kafka.cli_kafka import kafka
from ingest_platform.settings import Settings, normalize_lake_root


@click.group(help="Kafka topics into Delta Lake tables as Dagster assets, exactly once.")
def main() -> None:
    pass


main.add_command(kafka)
main.add_command(plan)  # capacity planning, topics and the guide's checklist (docs/DESIGN.md §6)
main.add_command(topics)
main.add_command(preflight)
main.add_command(checks)  # asset checks against a lake (docs/DESIGN.md §8)


@main.group(help="Inspect and validate the dataset catalog.")
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


@main.command(help="Run datasets once with their engine, outside Dagster, and print one JSON report per dataset.")
@click.argument("datasets", nargs=-1)
@click.option("--all", "run_all", is_flag=True, help="Run every dataset of the catalog.")
@click.option("--catalog", "catalog_path", help="Catalog file or folder (default: $INGEST_CATALOG).")
@click.option("--lake-root", help="Lake root (default: $INGEST_LAKE_ROOT or ./lake).")
@click.option("--bootstrap", help="Kafka bootstrap servers (default: $INGEST_KAFKA_BOOTSTRAP).")
@click.option("-v", "--verbose", is_flag=True, help="Log each Delta commit.")
def ingest(datasets, run_all, catalog_path, lake_root, bootstrap, verbose) -> None:
    from ingest_platform.engines.offset_ranges import OffsetRangeError
    from ingest_platform.engines.run_plan import IngestError
    from ingest_platform.engines.runner import run_dataset
    from ingest_platform.kafka.client import KafkaConnection
    from ingest_platform.lake.commit import LakeWriteError
    from ingest_platform.lake.storage import lake_location
    from ingest_platform.lake.tables import LakeAccessError

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")
    settings = Settings.from_env()
    try:
        loaded = load_catalog(catalog_path or settings.catalog_path)
    except CatalogError as error:
        raise click.ClickException(str(error)) from None
    if not datasets and not run_all:
        raise click.UsageError("name one or more datasets, or pass --all")
    try:
        selected = loaded.datasets if run_all else [loaded.get(name) for name in datasets]
    except KeyError as error:
        raise click.ClickException(error.args[0]) from None
    connection = KafkaConnection(bootstrap or settings.kafka_bootstrap)
    lake = lake_location(normalize_lake_root(lake_root) if lake_root else settings.lake_root)
    failed = False
    for dataset in selected:
        try:
            report = run_dataset(dataset, connection, lake)
        except (IngestError, OffsetRangeError, LakeWriteError, LakeAccessError) as error:
            click.echo(f"error: {error}", err=True)
            failed = True
            continue
        click.echo(json.dumps(report.as_dict(), default=str, sort_keys=True))
    if failed:
        sys.exit(1)


@main.command(help="Run the demo: local broker, demo topics, ~240K records, every asset materialized, a summary.")
@click.option("--lake-root", default=".demo/lake", show_default=True, envvar="INGEST_DEMO_LAKE_ROOT",
              help="Where the demo lake is written (deleted first): a folder or s3://bucket/prefix, S3 settings "
                   "from AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, ... ($INGEST_DEMO_LAKE_ROOT).")
@click.option("--scale", default=1.0, show_default=True, help="Multiply the demo's record counts.")
def demo(lake_root: str, scale: float) -> None:
    from ingest_platform.dev.demo import format_table, run_demo

    root = normalize_lake_root(lake_root)
    rows = run_demo(root, scale=scale, echo=click.echo)
    click.echo("")
    click.echo(format_table(rows))
    click.echo(f"\nlake: {root}")
    mismatched = [row.dataset for row in rows if not row.ok]
    if mismatched:
        raise click.ClickException(f"produced vs ingested records or table vs expected rows differ for {mismatched}")


if __name__ == "__main__":
    main()
