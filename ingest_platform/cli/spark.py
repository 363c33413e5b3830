"""``ingest-platform spark``: a local Spark standalone cluster (``cluster up|down|status``) and what a dataset's
Spark driver needs (``submit --dry-run``)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ingest_platform.cli.local_service import add_down_command, state_dir_option
from ingest_platform.dev import local_spark
from ingest_platform.dev.local_spark import LocalSparkError


@click.group(help="Spark for the Spark engine: a local standalone cluster, and the driver settings of a run.")
def spark() -> None:
    pass


@spark.group(
    help=(
        "A real Spark standalone cluster on 127.0.0.1 from pyspark's own distribution: one master and "
        "--workers workers, each starting its own executor JVMs. `up` starts it in the background, `status` "
        "checks it, `down` stops it. Use it with the standalone profile: INGEST_SPARK_PROFILE=standalone and "
        f"{local_spark.MASTER_ENV}=<the last line of `up`>."
    )
)
def cluster() -> None:
    pass


_state_dir_option = state_dir_option("the cluster's conf, logs, work dirs and cluster.json", local_spark.STATE_DIR_ENV,
                                     "local-spark")


@cluster.command(
    help=(
        "Start the cluster in the background, or reuse the healthy one already running in the state dir. The "
        f"last line of output is the master URL, e.g. for {local_spark.MASTER_ENV}=$(ingest-platform spark "
        "cluster up | tail -1)."
    )
)
@_state_dir_option
@click.option("--workers", type=int, default=local_spark.DEFAULT_WORKERS, show_default=True)
@click.option("--worker-cores", type=int, default=local_spark.DEFAULT_WORKER_CORES, show_default=True,
              help="Cores each worker offers to applications.")
@click.option("--worker-memory", default=local_spark.DEFAULT_WORKER_MEMORY, show_default=True,
              help="Memory each worker offers to executors.")
@click.option("--timeout", type=float, default=local_spark.DEFAULT_STARTUP_TIMEOUT_S, show_default=True,
              help="Seconds to wait for each daemon.")  # fmt: skip
def up(state_dir: Path | None, workers: int, worker_cores: int, worker_memory: str, timeout: float) -> None:
    try:
        running, started = local_spark.up(state_dir, workers=workers, worker_cores=worker_cores,
                                          worker_memory=worker_memory, timeout_s=timeout)  # fmt: skip
    except LocalSparkError as error:
        raise click.ClickException(str(error)) from None
    how = f"started in {running.timings['start_s']:.1f} s" if started else "already running"
    click.echo(f"Spark standalone cluster {how}: {running.workers} worker(s), master pid {running.master.pid}, "
               f"state dir {running.state_dir}")  # fmt: skip
    click.echo(f"master web UI: {running.master_web_url}; logs: {running.state_dir / 'logs'}")
    click.echo(running.master_url)


add_down_command(cluster, local_spark, LocalSparkError, "cluster",
                 "Stop the cluster: workers and their executors, then the master (SIGTERM, then SIGKILL).",
                 _state_dir_option)


@cluster.command(help="Show the cluster's state. Exit code 0 if its master answers with every worker alive.")
@_state_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(state_dir: Path | None, as_json: bool) -> None:
    info = local_spark.status(state_dir)
    healthy = info["running"] and info["answering"] and info["workers_alive"] >= max(1, info["workers_expected"])
    if as_json:
        click.echo(json.dumps(info, indent=2))
    elif info["running"]:
        click.echo(f"running: {info['master_url']}, {info['workers_alive']}/{info['workers_expected']} workers "
                   f"alive, master {'answering' if info['answering'] else 'NOT answering'}")  # fmt: skip
        click.echo(f"applications: {', '.join(a['name'] for a in info['applications']) or 'none'}")
        click.echo(f"web UI: {info['master_web_url']}; state dir: {info['state_dir']}")
    else:
        click.echo(f"not running (state dir {info['state_dir']})")
    click.get_current_context().exit(0 if healthy else 1)


@spark.command(
    help=(
        "What the Spark driver of DATASET's run needs on a profile: the spark-submit command (client mode), "
        "every driver setting (session conf, connectors) and its environment (credentials by name only). "
        "Nothing is started. Unset variables of the profile are shown as ${VAR}."
    )
)
@click.argument("dataset_name", metavar="DATASET")
@click.option("--dry-run", is_flag=True, required=True, help="Print the plan; required (nothing is submitted).")
@click.option("--profile", help="Spark profile (default: the dataset's spark_profile, else the deployment's).")
@click.option("--catalog", "catalog_path", help="Catalog file or folder (default: $INGEST_CATALOG).")
@click.option("--lake-root", help="Lake root (default: $INGEST_LAKE_ROOT); an s3:// root adds hadoop-aws.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def submit(dataset_name: str, dry_run: bool, profile: str | None, catalog_path: str | None, lake_root: str | None,
           as_json: bool) -> None:  # fmt: skip
    from dataclasses import replace

    from ingest_platform.catalog import CatalogError, load_catalog
    from ingest_platform.engines.spark.profiles import SparkProfileError
    from ingest_platform.engines.spark.submit import driver_plan
    from ingest_platform.settings import Settings, normalize_lake_root

    settings = Settings.from_env()
    settings = replace(settings, catalog_path=catalog_path or settings.catalog_path,
                       lake_root=normalize_lake_root(lake_root) if lake_root else settings.lake_root)  # fmt: skip
    try:
        dataset = load_catalog(settings.catalog_path).get(dataset_name)
        plan = driver_plan(dataset, settings, profile_name=profile)
    except KeyError as error:
        raise click.ClickException(error.args[0]) from None
    except (CatalogError, SparkProfileError) as error:
        raise click.ClickException(str(error)) from None
    click.echo(json.dumps(plan.as_dict(), indent=2) if as_json else plan.render(), nl=as_json)
