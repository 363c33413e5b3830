"""The ``ingest-platform`` console script: one group, a module per command group beside this one."""

from __future__ import annotations

import click

from ingest_platform.cli.capacity import plan, preflight, topics
from ingest_platform.cli.catalog import catalog
from ingest_platform.cli.checks import checks
from ingest_platform.cli.demo import demo
from ingest_platform.cli.dev import dev
from ingest_platform.cli.ingest import ingest
from ingest_platform.cli.kafka import kafka
from ingest_platform.cli.stream import metrics, stream


@click.group(help="Kafka topics into Delta Lake tables as Dagster assets, exactly once.")
def main() -> None:
    pass


main.add_command(catalog)
main.add_command(ingest)
main.add_command(demo)
main.add_command(dev)  # the local stack behind `make dev`
main.add_command(kafka)  # the local development broker
main.add_command(plan)  # capacity planning, topics and the guide's checklist (docs/DESIGN.md §6)
main.add_command(topics)
main.add_command(preflight)
main.add_command(checks)  # asset checks against a lake (docs/DESIGN.md §8)
main.add_command(stream)  # continuous ingestion and its metrics (docs/DESIGN.md §10–11)
main.add_command(metrics)


if __name__ == "__main__":
    main()
