"""``ingest-platform stream`` (the stream process) and ``ingest-platform metrics`` (the lag exporter).

docs/DESIGN.md §10–11. Exit codes of ``stream``: 0 after a clean stop (SIGTERM/SIGINT, ``--duration``),
1 when a dataset stopped on an error that retrying cannot fix (the others were served until the end).
"""

from __future__ import annotations

import logging
import sys

import click

from ingest_platform.catalog import Catalog, CatalogError, Dataset, load_catalog
from ingest_platform.settings import Settings, normalize_lake_root
from ingest_platform.streaming.shard_map import DEFAULT_PARTITIONS, DEFAULT_SESSION_TIMEOUT_S


def _load(catalog_path: str | None) -> Catalog:
    try:
        return load_catalog(catalog_path or Settings.from_env().catalog_path)
    except CatalogError as error:
        raise click.ClickException(str(error)) from None


def _places(lake_root: str | None, bootstrap: str | None):  # type: ignore[no-untyped-def]
    from ingest_platform.kafka.client import KafkaConnection
    from ingest_platform.lake.tables import lake_location

    settings = Settings.from_env()
    kafka = KafkaConnection.from_env(bootstrap=bootstrap or settings.kafka_bootstrap)  # + INGEST_KAFKA_* security
    lake = lake_location(normalize_lake_root(lake_root) if lake_root else settings.lake_root)
    return kafka, lake


def select_stream_datasets(catalog: Catalog, names: tuple[str, ...], all_continuous: bool,
                           group: str | None) -> list[Dataset]:  # fmt: skip
    """The named datasets, or every continuous one (of one stream group, with ``group``)."""
    if names:
        try:
            chosen = [catalog.get(name) for name in names]
        except KeyError as error:
            raise click.ClickException(error.args[0]) from None
        return [d for d in chosen if group is None or d.pipeline == group]
    if not all_continuous and group is None:
        raise click.UsageError("name one or more datasets, or pass --all-continuous or --group NAME")
    chosen = [d for d in catalog.datasets if d.continuous and (group is None or d.pipeline == group)]
    if not chosen:
        groups = sorted({d.pipeline for d in catalog.datasets if d.continuous}) or ["none"]
        raise click.ClickException(
            f"no continuous dataset{f' in stream group {group!r}' if group else ''} in the catalog "
            f"(groups with continuous datasets: {', '.join(groups)}); set continuous: true on a dataset"
        )
    return chosen


def select_external_datasets(catalog: Catalog, group: str | None) -> list[Dataset]:
    """A shard group's datasets: the continuous ones of the stream groups with ``stream_runner: external`` (the
    Dagster supervisor stands down for those), of one stream group with ``group``."""
    chosen = [d for d in catalog.datasets if d.continuous and d.stream_runner == "external"
              and (group is None or d.pipeline == group)]  # fmt: skip
    if not chosen:
        groups = sorted({d.pipeline for d in catalog.datasets if d.continuous and d.stream_runner == "external"})
        raise click.ClickException(
            f"no continuous dataset with stream_runner: external{f' in stream group {group!r}' if group else ''} "
            f"in the catalog (external stream groups: {', '.join(groups) or 'none'}); a shard group serves only "
            "those: set stream_runner: external on the stream group's continuous datasets"
        )
    return chosen


_BYTES = click.INT


@click.command(help=(
    "Serve datasets continuously: one micro-batch loop per dataset, each batch one Delta commit with its "
    "offsets (docs/DESIGN.md §10). Runs until SIGTERM/SIGINT or --duration; /metrics, /healthz and /readyz on "
    "--metrics-port. Exit 0 after a clean stop, 1 when a dataset stopped on an error."
))
@click.argument("datasets", nargs=-1)
@click.option("--all-continuous", is_flag=True, help="Every dataset with continuous: true.")
@click.option("--group", help="Only the datasets of this stream group (stream_group, default the source).")
@click.option("--trigger-interval", type=float, help="Seconds per micro-batch for every dataset [default: each "
                                                     "dataset's trigger_interval_s].")
@click.option("--metrics-port", type=int, help="Serve /metrics, /healthz, /readyz on this port (0: any free port).")
@click.option("--metrics-host", default="0.0.0.0", show_default=True, help="Address the endpoints listen on.")
@click.option("--duration", type=float, help="Stop after this many seconds (clean stop, exit 0).")
@click.option("--max-buffer-bytes", type=_BYTES, help="Budget of buffered record bytes shared by every dataset "
                                                      "[default: a quarter of the memory limit, at most 512 MiB].")
@click.option("--memory-limit", type=_BYTES, help="The process's memory limit in bytes [default: the cgroup's].")
@click.option("--commit-threads", type=int, default=4, show_default=True, help="Commits running at once.")
@click.option("--no-upkeep", is_flag=True, help="No checkpoints, compaction or vacuum from this process.")
@click.option("--spark-checkpoint-root", help="Local folder of the engine: spark datasets' query checkpoints "
                                              "[default: <cache>/spark-stream-checkpoints]; never the source of "
                                              "truth: the ledger is (docs/DESIGN.md §10.10).")
@click.option("--shard-group", metavar="NAME", help="Run as one worker of the shard group NAME (DESIGN §12): the "
                                                    "group's workers share the continuous datasets with "
                                                    "stream_runner: external (narrow with --group), each served by "
                                                    "one worker; scale by starting or stopping workers.")
@click.option("--shard-partitions", type=click.IntRange(1, 10_000), default=DEFAULT_PARTITIONS, show_default=True,
              help="Coordination partitions of the shard group: the same in every worker, above the most workers "
                   "ever run.")
@click.option("--shard-session-timeout", type=click.FloatRange(6, 1800), default=DEFAULT_SESSION_TIMEOUT_S,
              show_default=True, help="Seconds after which a killed worker's datasets move to the others.")
@click.option("--catalog", "catalog_path", help="Catalog file or folder (default: $INGEST_CATALOG).")
@click.option("--lake-root", help="Lake root (default: $INGEST_LAKE_ROOT or ./lake).")
@click.option("--bootstrap", help="Kafka bootstrap servers (default: $INGEST_KAFKA_BOOTSTRAP).")
@click.option("--report-to-dagster", is_flag=True, help="Report the commits to the Dagster instance of "
              "$DAGSTER_HOME as runless asset materializations (summaries, at most one per dataset per "
              "materialization_interval_s) and each dataset's health as its 'stream' check (docs/DESIGN.md §10.8).")
@click.option("-v", "--verbose", is_flag=True, help="Log each Delta commit.")
def stream(datasets, all_continuous, group, trigger_interval, metrics_port, metrics_host, duration, max_buffer_bytes,
           memory_limit, commit_threads, no_upkeep, spark_checkpoint_root, shard_group, shard_partitions,
           shard_session_timeout, catalog_path, lake_root, bootstrap, report_to_dagster, verbose) -> None:  # fmt: skip
    from ingest_platform.streaming.endpoints import Endpoints
    from ingest_platform.streaming.health import Readiness
    from ingest_platform.streaming.process import StreamProcess, StreamSettings
    from ingest_platform.streaming.shard_map import ShardSettings
    from ingest_platform.streaming.sharding import ShardedStream, ShardError

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(message)s")  # fmt: skip
    if trigger_interval is not None and trigger_interval <= 0:
        raise click.UsageError("--trigger-interval must be > 0")
    if shard_group is not None and datasets:
        raise click.UsageError("--shard-group serves the continuous datasets the group assigns to this worker; "
                               "do not name datasets (narrow with --group)")  # fmt: skip
    catalog = _load(catalog_path)
    if shard_group is not None:
        selected = select_external_datasets(catalog, group)
    else:
        selected = select_stream_datasets(catalog, datasets, all_continuous, group)
    kafka, lake = _places(lake_root, bootstrap)
    settings = StreamSettings(trigger_interval_s=trigger_interval, max_buffer_bytes=max_buffer_bytes,
                              memory_limit_bytes=memory_limit, commit_threads=commit_threads,
                              upkeep=None if no_upkeep else StreamSettings().upkeep,
                              spark_checkpoint_root=spark_checkpoint_root)  # fmt: skip
    log = logging.getLogger("ingest_platform.stream")
    reporter = _dagster_reporter(selected, lake, log) if report_to_dagster else None
    on_commit, on_state = (reporter.on_commit, reporter.on_state) if reporter else (None, None)
    if shard_group is not None:
        try:
            shard = ShardSettings(shard_group, shard_partitions, shard_session_timeout)
        except ValueError as error:
            raise click.UsageError(f"--shard-group: {error}") from None
        runner = ShardedStream(selected, kafka, lake, settings, shard, on_commit, on_state, log=log)
        process, healthz = runner.process, runner.healthz
        what = (f"shard group {shard_group}: worker session {runner.session}, {len(selected)} dataset(s) shared "
                f"through {shard.topic}")  # fmt: skip
    else:
        runner = process = StreamProcess(selected, kafka, lake, settings, on_commit, on_state, log=log)
        healthz = process.healthz
        what = f"streaming {len(selected)} dataset(s): {', '.join(d.name for d in selected)}"
    endpoints = None
    if metrics_port is not None:
        readiness = Readiness(kafka, lake)
        endpoints = Endpoints(process.metrics.registry, healthz, readiness.check, metrics_port, metrics_host).start()
    click.echo(what + (f"; metrics on port {endpoints.port}" if endpoints else ""), err=True)
    if reporter is not None:
        reporter.start()
    try:
        outcome = runner.run(duration_s=duration)
    except ShardError as error:
        raise click.ClickException(str(error)) from None
    finally:
        if endpoints is not None:
            endpoints.stop()
        if reporter is not None:
            reporter.stop()
    for name, error in outcome.failed.items():
        click.echo(f"error: {name}: {error}", err=True)
    click.echo(f"stream stopped ({outcome.reason}): "
               + ", ".join(f"{name} {state.status}" for name, state in sorted(outcome.states.items())), err=True)
    sys.exit(outcome.exit_code)


def _dagster_reporter(datasets: list[Dataset], lake, log: logging.Logger):  # type: ignore[no-untyped-def]
    """The Dagster layer's runless reporter (imported only with --report-to-dagster: the stream needs no Dagster)."""
    from ingest_platform.defs.stream_reporter import ReporterSetupError, RunlessReporter, open_instance

    try:
        return RunlessReporter(open_instance(), datasets, lake, log=log)
    except ReporterSetupError as error:
        raise click.ClickException(str(error)) from None


@click.command(help=(
    "Serve kafka_consumer_lag_sum, ingestion_last_commit_timestamp_seconds and ingestion_last_commit_version "
    "for every catalog dataset (batch and continuous) on /metrics, read from the tables' ledgers and the "
    "topics' log ends every --interval seconds (docs/DESIGN.md §11)."
))
@click.option("--port", type=int, required=True, help="Port of /metrics and /healthz (0: any free port).")
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to listen on.")
@click.option("--interval", type=float, default=15.0, show_default=True, help="Seconds between two reads.")
@click.option("--duration", type=float, help="Stop after this many seconds.")
@click.option("--catalog", "catalog_path", help="Catalog file or folder (default: $INGEST_CATALOG).")
@click.option("--lake-root", help="Lake root (default: $INGEST_LAKE_ROOT or ./lake).")
@click.option("--bootstrap", help="Kafka bootstrap servers (default: $INGEST_KAFKA_BOOTSTRAP).")
def metrics(port, host, interval, duration, catalog_path, lake_root, bootstrap) -> None:
    from ingest_platform.streaming.exporter import serve_exporter

    catalog = _load(catalog_path)
    kafka, lake = _places(lake_root, bootstrap)
    serve_exporter(list(catalog.datasets), kafka, lake, port, host, interval, duration,
                   echo=lambda text: click.echo(text, err=True))  # fmt: skip
