"""``ingest-platform ingest``: run datasets once with their engine, outside Dagster."""

from __future__ import annotations

import json
import logging
import sys

import click

from ingest_platform.catalog import CatalogError, load_catalog
from ingest_platform.settings import Settings, normalize_lake_root


@click.command(help="Run datasets once with their engine, outside Dagster, and print one JSON report per dataset.")
@click.argument("datasets", nargs=-1)
@click.option("--all", "run_all", is_flag=True, help="Run every dataset of the catalog.")
@click.option("--catalog", "catalog_path", help="Catalog file or folder (default: $INGEST_CATALOG).")
@click.option("--lake-root", help="Lake root (default: $INGEST_LAKE_ROOT or ./lake).")
@click.option("--bootstrap", help="Kafka bootstrap servers (default: $INGEST_KAFKA_BOOTSTRAP). Security settings "
              "come from INGEST_KAFKA_SECURITY_PROTOCOL, _SASL_MECHANISM, _SASL_USERNAME, _SASL_PASSWORD, "
              "_SSL_CA_LOCATION.")
@click.option("-v", "--verbose", is_flag=True, help="Log each Delta commit.")
def ingest(datasets, run_all, catalog_path, lake_root, bootstrap, verbose) -> None:
    from ingest_platform.engines.offset_ranges import OffsetRangeError
    from ingest_platform.engines.run_plan import IngestError
    from ingest_platform.engines.runner import run_dataset
    from ingest_platform.kafka.client import KafkaConnection
    from ingest_platform.lake.commit import LakeWriteError
    from ingest_platform.lake.tables import LakeAccessError, lake_location

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")
    # librdkafka repeats a connection failure on every retry; its cause ends up in the error message instead.
    logging.getLogger("ingest_platform.kafka.librdkafka").setLevel(logging.INFO if verbose else logging.CRITICAL)
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
    connection = KafkaConnection.from_env(bootstrap=bootstrap or settings.kafka_bootstrap)  # + INGEST_KAFKA_* security
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
