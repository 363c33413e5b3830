"""``ingest-platform plan``, ``topics plan|apply`` and ``preflight``: thin commands over
``capacity``, ``kafka.topics`` and ``preflight`` (docs/DESIGN.md §6)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ingest_platform.catalog import Catalog, CatalogError, load_catalog
from ingest_platform.settings import Settings


def _planner_options(fn):  # type: ignore[no-untyped-def]
    from ingest_platform.capacity import DEFAULT_SETTINGS as d

    options = [
        click.option("--partition-throughput", "partition_throughput_rps", type=float,
                     default=d.partition_throughput_rps, show_default=True,
                     help="Records/s one Kafka partition sustains."),
        click.option("--executor-capacity", "executor_capacity_rps", type=float, default=d.executor_capacity_rps,
                     show_default=True, help="Records/s one Spark executor processes."),
        click.option("--batch-interval", "batch_interval_s", type=float, default=d.batch_interval_s,
                     show_default=True, help="Micro-batch trigger interval, seconds."),
        click.option("--processing-time", "processing_time_s", type=float, default=None,
                     help="Seconds of data per batch [default: the batch interval]."),
        click.option("--executor-cores", type=int, default=d.executor_cores, show_default=True,
                     help="Cores per Spark executor."),
        click.option("--shuffle-factor", type=float, default=d.shuffle_factor, show_default=True,
                     help="Shuffle partitions per core (the guide: 2-3)."),
        click.option("--target-file-size", "target_file_size_mb", type=float, default=None,
                     help="Target file size in MB [default: 256, clamped into each dataset's slo.file_size_mb]."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _planner(kwargs: dict) -> object:
    from ingest_platform.capacity import PlannerSettings

    keys = ("partition_throughput_rps", "executor_capacity_rps", "batch_interval_s", "processing_time_s",
            "executor_cores", "shuffle_factor", "target_file_size_mb")
    try:
        return PlannerSettings(**{k: kwargs.pop(k) for k in keys})
    except ValueError as error:
        raise click.UsageError(str(error)) from None


def _catalog(path: str | None) -> Catalog:
    try:
        return load_catalog(path or Settings.from_env().catalog_path)
    except CatalogError as error:
        raise click.ClickException(str(error)) from None


def _select(loaded: Catalog, names: tuple[str, ...]):  # type: ignore[no-untyped-def]
    try:
        return [loaded.get(n) for n in names] if names else list(loaded.datasets)
    except KeyError as error:
        raise click.ClickException(error.args[0]) from None


_catalog_option = click.option("--catalog", "catalog_path", help="Catalog file or folder (default: $INGEST_CATALOG).")
_bootstrap_option = click.option("--bootstrap", help="Kafka bootstrap servers (default: $INGEST_KAFKA_BOOTSTRAP).")
_profile_option = click.option(
    "--profile", type=click.Choice(["production", "local"]), default="production", show_default=True,
    help="production: replication factor 3, min.insync.replicas 2 (the guide); local: 1 and 1, for a "
         "single-node development broker.",
)


_timeout_option = click.option("--timeout", "timeout_s", type=float, default=15, show_default=True,
                               help="Seconds to wait for each broker request.")


def _connection(bootstrap: str | None, timeout_s: float = 15):  # type: ignore[no-untyped-def]
    from ingest_platform.kafka.client import KafkaConnection

    return KafkaConnection.from_env(bootstrap=bootstrap or Settings.from_env().kafka_bootstrap, timeout_s=timeout_s)


# ---------------------------------------------------------------------------------------------------------
# plan


@click.command(help=(
    "Capacity plan per dataset from the catalog's expected load (expected.peak_rps, expected.record_bytes) "
    "and the tuning guide's formulas: Kafka partitions, Spark executors, shuffle partitions, files per batch, "
    "and the engine that `engine: auto` picks. Datasets without `expected` are planned from slo.throughput_rps."
))
@click.argument("datasets", nargs=-1)
@_catalog_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, one object per dataset.")
@_planner_options
def plan(datasets, catalog_path, as_json, **kwargs) -> None:
    from ingest_platform.capacity import format_plan_table, plan_catalog

    settings = _planner(kwargs)
    plans = plan_catalog(_select(_catalog(catalog_path), datasets), settings)  # type: ignore[arg-type]
    if as_json:
        click.echo(json.dumps([p.as_dict() for p in plans], indent=2))
    else:
        click.echo(format_plan_table(plans))


# ---------------------------------------------------------------------------------------------------------
# topics


@click.group(help=(
    "Create or alter the catalog's topics with the guide's settings: partitions from the planner (never "
    "decreased), replication factor and min.insync.replicas from --profile, compression.type=snappy, 1 GB "
    "segments, 7-day retention. `plan` shows the diff, `apply` makes it; applying twice changes nothing."
))
def topics() -> None:
    pass


def _topic_diffs(datasets, catalog_path, bootstrap, profile, timeout_s, kwargs):  # type: ignore[no-untyped-def]
    from ingest_platform.kafka.topics import PROFILES, TopicAdminError, desired_topics, plan_topics

    settings = _planner(kwargs)
    selected = _select(_catalog(catalog_path), datasets)
    connection = _connection(bootstrap, timeout_s)
    specs = desired_topics(selected, PROFILES[profile], settings)  # type: ignore[arg-type]
    try:
        return connection, plan_topics(connection, specs)
    except TopicAdminError as error:
        raise click.ClickException(f"{error} [bootstrap {connection.bootstrap_servers}]") from None


@topics.command("plan", help="Show what `topics apply` would change (+ create/set, ~ change, = kept, ! blocked).")
@click.argument("datasets", nargs=-1)
@_catalog_option
@_bootstrap_option
@_profile_option
@_timeout_option
@click.option("--json", "as_json", is_flag=True, help="Print the diff as JSON.")
@_planner_options
def topics_plan(datasets, catalog_path, bootstrap, profile, timeout_s, as_json, **kwargs) -> None:
    from ingest_platform.kafka.topics import format_diffs

    _, diffs = _topic_diffs(datasets, catalog_path, bootstrap, profile, timeout_s, kwargs)
    if as_json:
        click.echo(json.dumps([d.as_dict() for d in diffs], indent=2))
    else:
        click.echo(format_diffs(diffs))


@topics.command("apply", help=(
    "Create missing topics, add partitions and set configs. Exits 1 when a change needs an operator "
    "(replication factor of an existing topic, too few brokers for the profile)."
))
@click.argument("datasets", nargs=-1)
@_catalog_option
@_bootstrap_option
@_profile_option
@_timeout_option
@_planner_options
def topics_apply(datasets, catalog_path, bootstrap, profile, timeout_s, **kwargs) -> None:
    from ingest_platform.kafka.topics import TopicAdminError, apply_diffs, format_diffs

    connection, diffs = _topic_diffs(datasets, catalog_path, bootstrap, profile, timeout_s, kwargs)
    click.echo(format_diffs(diffs))
    try:
        done = apply_diffs(connection, diffs)
    except TopicAdminError as error:
        raise click.ClickException(str(error)) from None
    blocked = [(d.spec.name, c) for d in diffs for c in d.blocked]
    click.echo(f"applied {len(done)} change(s)" + (f"; {len(blocked)} blocked:" if blocked else ""))
    for topic, change in blocked:
        click.echo(f"  topic {topic}: {change.message}", err=True)
    if blocked:
        sys.exit(1)


# ---------------------------------------------------------------------------------------------------------
# preflight


@click.command(help=(
    "The tuning guide's pre-production checklist (Spark, Kafka, storage, infrastructure), checked against the "
    "actual configuration: Spark profiles in deploy/spark/, topic configs on the broker, the Kafka client "
    "settings, the catalog, and deploy manifests, dashboards and alert rules when present. Prints pass / fail / "
    "n/a with the reason for each item; exits 1 when any item fails."
))
@_catalog_option
@_bootstrap_option
@_profile_option
@click.option("--deploy-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder with spark/, k8s/, grafana/, prometheus/ [default: the repository's deploy/].")
@click.option("--lake-root", help="Lake root (default: $INGEST_LAKE_ROOT or ./lake); s3a:// enables the S3A items.")
@click.option("--skip-broker", is_flag=True, help="Do not contact Kafka: topic items are reported n/a.")
@_timeout_option
@click.option("--json", "as_json", is_flag=True, help="Print {ok, profile, summary, items: [...]} as JSON (for CI).")
@_planner_options
def preflight(catalog_path, bootstrap, profile, deploy_dir, lake_root, skip_broker, timeout_s, as_json,
              **kwargs) -> None:
    from ingest_platform.kafka.topics import PROFILES
    from ingest_platform.preflight import (
        DEFAULT_DEPLOY_DIR,
        PreflightContext,
        format_results,
        results_json,
        run_preflight,
    )

    settings = _planner(kwargs)
    loaded = _catalog(catalog_path)
    ctx = PreflightContext(
        datasets=loaded.datasets,
        profile=PROFILES[profile],
        connection=_connection(bootstrap, timeout_s),
        deploy_dir=deploy_dir or DEFAULT_DEPLOY_DIR,
        lake_root=lake_root or Settings.from_env().lake_root,
        planner=settings,  # type: ignore[arg-type]
        check_broker=not skip_broker,
    )
    results = run_preflight(ctx)
    if as_json:
        click.echo(json.dumps(results_json(results, profile), indent=2))
    else:
        click.echo(format_results(results))
    if any(r.status == "fail" for r in results):
        sys.exit(1)
