"""``ingest-platform demo``: the demo (local broker, demo topics, every asset materialized, a summary)."""

from __future__ import annotations

import os
import sys

import click

from ingest_platform.settings import normalize_lake_root


@click.command(help="Run the demo: local broker, demo topics, ~225K records, every asset materialized, a summary.")
@click.option("--lake-root", default=".demo/lake", show_default=True, envvar="INGEST_DEMO_LAKE_ROOT",
              help="Where the demo lake is written (deleted first): a folder or s3://bucket/prefix, S3 settings "
                   "from AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, ... ($INGEST_DEMO_LAKE_ROOT).")
@click.option("--scale", default=1.0, show_default=True, help="Multiply the demo's record counts.")
@click.option("--stream", "stream_s", type=float, help="Instead: stream the continuous demo datasets for this many "
                                                       "seconds while producing to them, then show latencies.")
@click.option("--rate", default=200.0, show_default=True, help="With --stream: records/s produced to each dataset.")
def demo(lake_root: str, scale: float, stream_s: float | None, rate: float) -> None:
    root = normalize_lake_root(lake_root)
    if stream_s is not None:
        from ingest_platform.dev.stream_demo import format_stream_table, run_stream_demo

        streamed = run_stream_demo(root, stream_s, rate, echo=click.echo)
        click.echo("")
        click.echo(format_stream_table(streamed))
        click.echo(f"\nlake: {root}")
        ok = all(row.ok for row in streamed)
        if not ok:
            click.echo("Error: the tables do not hold exactly the records produced", err=True)
        # Everything durable is done and the demo's broker is gone: leave without interpreter finalization, where
        # native client threads still tearing down against the stopped broker once aborted the process
        # ("terminate called without an active exception", exit -6) after a successful demo.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0 if ok else 1)
    from ingest_platform.dev.demo import format_table, run_demo

    rows = run_demo(root, scale=scale, echo=click.echo)
    click.echo("")
    click.echo(format_table(rows))
    click.echo(f"\nlake: {root}")
    mismatched = [row.dataset for row in rows if not row.ok]
    if mismatched:
        raise click.ClickException(f"produced vs ingested records or table vs expected rows differ for {mismatched}")
