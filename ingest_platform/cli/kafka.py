"""``ingest-platform kafka up|down|status``: a local single-node Kafka broker for development.

Attach to the main CLI with ``main.add_command(kafka)``. Runs without docker: the broker jars come from Maven
Central (first ``up`` only) and the broker is a detached ``java`` process; see ``ingest_platform.dev.local_kafka``.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from ingest_platform.cli.local_service import add_down_command, state_dir_option
from ingest_platform.dev import local_kafka
from ingest_platform.dev.local_kafka import LocalKafkaError

_state_dir_option = state_dir_option("the broker's config, data, logs and broker.json", local_kafka.STATE_DIR_ENV,
                                     "local-kafka")


@click.group(
    help=(
        "Run a real local Apache Kafka 4.x broker (single node, KRaft) on 127.0.0.1 without docker.\n\n"
        "`up` starts it in the background (Java 17+ and, on first use, Maven are needed), `status` checks "
        "it, `down` stops it. Data survives down/up while its ports stay free."
    )
)
def kafka() -> None:
    pass


@kafka.command(
    help=(
        "Start the local broker in the background, or reuse the healthy one already running in the state "
        "dir. The last line of output is the bootstrap address (host:port), e.g. for "
        "INGEST_KAFKA_BOOTSTRAP=$(ingest-platform kafka up | tail -1)."
    )
)
@_state_dir_option
@click.option("--heap", default="1g", show_default=True, help="JVM maximum heap (-Xmx) of the broker.")
@click.option(
    "--timeout",
    type=float,
    default=local_kafka.DEFAULT_STARTUP_TIMEOUT_S,
    show_default=True,
    help="Seconds to wait for the broker to answer a metadata request.",
)
def up(state_dir: Path | None, heap: str, timeout: float) -> None:
    try:
        if local_kafka.cached_broker_jars() is None:
            click.echo(
                f"Resolving the Kafka {local_kafka.kafka_version()} broker jars with Maven (first run only)",
                err=True,
            )
        broker = local_kafka.up(state_dir, heap=heap, timeout_s=timeout)
    except LocalKafkaError as exc:
        raise click.ClickException(str(exc)) from exc
    how = (
        f"started in {broker.timings['start_s']:.1f} s" if "start_s" in broker.timings else "already running"
    )
    click.echo(f"Kafka {broker.kafka_version} broker {how}: pid {broker.pid}, state dir {broker.state_dir}")
    click.echo(f"logs: {broker.server_log}")
    click.echo(broker.bootstrap)


add_down_command(kafka, local_kafka, LocalKafkaError, "broker",
                 "Stop the local broker (SIGTERM, then SIGKILL after --timeout seconds).", _state_dir_option)


@kafka.command(help="Show the local broker's state. Exit code 0 if it is running and answering, 1 otherwise.")
@_state_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(state_dir: Path | None, as_json: bool) -> None:
    info = local_kafka.status(state_dir)
    if as_json:
        click.echo(json.dumps(info, indent=2))
    elif info["running"]:
        health = "answering metadata requests" if info["answering"] else "NOT answering metadata requests"
        click.echo(f"running: pid {info['pid']}, Kafka {info['kafka_version']}, {health}")
        click.echo(f"bootstrap: {info['bootstrap']}")
        click.echo(f"started at: {info['started_at']}; state dir: {info['state_dir']}")
    else:
        click.echo(f"not running (state dir {info['state_dir']})")
    click.get_current_context().exit(0 if info["running"] and info["answering"] else 1)


if __name__ == "__main__":  # python -m ingest_platform.cli.kafka up
    kafka()
