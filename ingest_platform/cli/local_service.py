"""What the CLIs of the local development services (``kafka``, ``spark cluster``) share: the ``--state-dir``
option and the ``down`` command. Each service module (``dev/local_<thing>.py``) has ``default_state_dir()``
and ``down(state_dir, timeout_s)``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import click


def state_dir_option(holds: str, env: str, default: str):  # type: ignore[no-untyped-def]
    """``--state-dir``: the directory holding ``holds`` [default: ``$env`` or ``~/.cache/ingest_platform/default``]."""
    return click.option(
        "--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
        help=f"Directory holding {holds} [default: ${env} or ~/.cache/ingest_platform/{default}].",
    )  # fmt: skip


def add_down_command(group: click.Group, service: ModuleType, error: type[Exception], what: str, help: str,
                     state_dir: Callable[[Callable], Callable]) -> None:  # fmt: skip
    """Add ``down`` to ``group``: stop ``service``'s ``what`` (e.g. "broker") in the state dir, SIGKILL after
    ``--timeout`` seconds; ``error`` (the service's own error) becomes the command's error message."""

    @group.command(name="down", help=help)
    @state_dir
    @click.option("--timeout", type=float, default=20.0, show_default=True, help="Seconds to wait before SIGKILL.")
    def down(state_dir: Path | None, timeout: float) -> None:
        state = state_dir or service.default_state_dir()
        try:
            stopped = service.down(state_dir, timeout_s=timeout)
        except error as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"stopped the {what} in {state}" if stopped else f"no {what} running in {state}")
