"""``ingest-platform dev up|down``: the local stack behind ``make dev`` / ``make dev-stop``
(``ingest_platform/dev/local_stack.py``): broker, demo topics and a steady producer, ``dagster dev``."""

from __future__ import annotations

from pathlib import Path

import click

from ingest_platform.dev import local_stack
from ingest_platform.dev.local_stack import LocalStack, StackError

_ROOT = click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=local_stack.DEFAULT_ROOT,
                     show_default=True, help="Folder of the stack's broker, lake, Dagster instance and log.")


@click.group(help="A local development stack: Kafka, the demo topics with data flowing, and `dagster dev`.")
def dev() -> None:
    pass


@dev.command(help="Start the stack and serve the Dagster UI until Ctrl-C or `ingest-platform dev down`.")
@_ROOT
@click.option("--port", default=local_stack.DEFAULT_PORT, show_default=True, help="Port of the Dagster UI.")
@click.option("--rate", default=2.0, show_default=True, help="Records per second produced to each demo topic.")
@click.option("--scale", default=0.05, show_default=True,
              help="Backlog on new topics, as a share of the demo's volume (`ingest-platform demo`).")
@click.option("--catalog", "catalog_path", help="Catalog file or folder (default: the demo catalog).")
def up(root: Path, port: int, rate: float, scale: float, catalog_path: str | None) -> None:
    stack = LocalStack(root, port=port, rate=rate, scale=scale, catalog_path=catalog_path, echo=click.echo)
    try:
        local_stack.run_stack(stack)
    except StackError as error:
        raise click.ClickException(str(error)) from None


@dev.command(help="Stop the stack running from --root: the producer, dagster dev and its processes, the broker.")
@_ROOT
def down(root: Path) -> None:
    try:
        click.echo(local_stack.stop_stack(root))
    except StackError as error:
        raise click.ClickException(str(error)) from None
