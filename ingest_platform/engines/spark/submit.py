"""What the Spark driver of one dataset's run needs, rendered without starting anything (a dry run).

The driver is the process that runs the engine (a Dagster run, or ``ingest-platform ingest``; on Kubernetes the
run pod, client mode: executors are pods it creates). It needs the profile's session settings
(``session.session_conf``: master, connectors, Delta, the profile's ``conf``), the environment the profile and
the platform read, and credentials by name. ``driver_plan`` renders all of it, and the ``spark-submit`` command
line that would start the same driver by hand; ``ingest-platform spark submit --dry-run`` prints it.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ingest_platform.catalog import Dataset
from ingest_platform.engines.spark.profiles import default_profile_name, load_profile, profile_variables
from ingest_platform.engines.spark.session import session_conf
from ingest_platform.lake.storage import is_s3
from ingest_platform.settings import Settings

#: The platform's settings the driver reads (docs/DESIGN.md §1), shown with their values.
SETTINGS_ENV = ("INGEST_CATALOG", "INGEST_LAKE_ROOT", "INGEST_KAFKA_BOOTSTRAP")
#: Credentials: only whether they are set is shown, never their values.
KAFKA_CREDENTIALS_ENV = ("INGEST_KAFKA_SECURITY_PROTOCOL", "INGEST_KAFKA_SASL_MECHANISM",
                         "INGEST_KAFKA_SASL_USERNAME", "INGEST_KAFKA_SASL_PASSWORD", "INGEST_KAFKA_SSL_CA_LOCATION")
S3_CREDENTIALS_ENV = ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                      "AWS_SESSION_TOKEN", "AWS_ALLOW_HTTP")  # fmt: skip
#: spark-submit options that stand for settings (the rest are ``--conf key=value``).
_SUBMIT_OPTIONS = {"spark.master": "--master", "spark.app.name": "--name", "spark.jars.packages": "--packages",
                   "spark.jars.excludes": "--exclude-packages"}  # fmt: skip


@dataclass(frozen=True)
class DriverPlan:
    dataset: str
    profile: str
    profile_path: str
    master: str
    #: Every setting of the driver's SparkConf, as the engine starts its session.
    conf: dict[str, str]
    #: Environment of the driver: the platform's settings and the profile's variables with their values,
    #: credentials as "set"/None (never their values). None = not set.
    environment: dict[str, str | None] = field(default_factory=dict)
    #: Profile variables that are not set here (the rendered settings keep their ``${VAR}``).
    unset: list[str] = field(default_factory=list)
    #: ``spark-submit`` starting the same driver by hand (client mode: the driver runs where it is called).
    command: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"dataset": self.dataset, "profile": self.profile, "profile_path": self.profile_path,
                "master": self.master, "conf": dict(sorted(self.conf.items())), "environment": self.environment,
                "unset": self.unset, "command": self.command}  # fmt: skip

    def render(self) -> str:
        """The plan as text: the command, the settings one per line, the environment."""
        lines = [f"# dataset {self.dataset}, Spark profile '{self.profile}' ({self.profile_path})",
                 f"# master {self.master}", "", "# spark-submit (client mode: the driver runs here)",
                 _shell_lines(self.command), "",
                 "# driver SparkConf (spark-defaults.conf form)"]  # fmt: skip
        lines += [f"{key} {value}" for key, value in sorted(self.conf.items())]
        lines += ["", "# driver environment"]
        lines += [f"{name}={'<not set>' if value is None else value}" for name, value in self.environment.items()]
        if self.unset:
            lines += ["", f"# not set here, left as placeholders: {', '.join(self.unset)}"]
        return "\n".join(lines) + "\n"


def driver_plan(
    dataset: Dataset,
    settings: Settings,
    profile_name: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> DriverPlan:
    """The driver of ``dataset``'s run on ``profile_name`` (default: the dataset's ``spark_profile``, else the
    deployment's). Variables the profile reads that are unset stay ``${VAR}`` and are listed in ``unset``."""
    env = os.environ if environ is None else environ
    name = profile_name or dataset.spark_profile or default_profile_name(env)
    profile = load_profile(name, environ=env, missing_ok=True)
    s3 = is_s3(settings.lake_root)
    conf = session_conf(profile, s3=s3)
    variables = profile_variables(load_profile(name, environ=env, resolve=False))
    environment: dict[str, str | None] = {
        "INGEST_CATALOG": settings.catalog_path,
        "INGEST_LAKE_ROOT": settings.lake_root,
        "INGEST_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
    }
    environment.update({var: env.get(var) or None for var in variables})
    credentials = KAFKA_CREDENTIALS_ENV + (S3_CREDENTIALS_ENV if s3 else ())
    environment.update({var: "set" if env.get(var) else None for var in credentials})
    return DriverPlan(
        dataset=dataset.name, profile=name, profile_path=profile.path, master=profile.master, conf=conf,
        environment=environment, unset=[var for var in variables if not env.get(var)],
        command=submit_command(conf, ["ingest", dataset.name]),
    )  # fmt: skip


def submit_command(conf: Mapping[str, str], arguments: list[str]) -> list[str]:
    """``spark-submit`` with ``conf`` (its own options where it has them) running the platform's CLI."""
    command = ["spark-submit", "--deploy-mode", "client"]
    for key, option in _SUBMIT_OPTIONS.items():
        if conf.get(key):
            command += [option, conf[key]]
    for key, value in sorted(conf.items()):
        if key not in _SUBMIT_OPTIONS:
            command += ["--conf", f"{key}={value}"]
    entry = Path(__file__).resolve().parents[2] / "cli" / "main.py"  # the console script's module, run as a file
    return [*command, str(entry), *arguments]


def _shell_lines(command: list[str]) -> str:
    """The command as shell text, one option and its value per line."""
    parts, index = [shlex.quote(command[0])], 1
    while index < len(command):
        if command[index].startswith("--") and index + 1 < len(command):
            parts.append(f"{command[index]} {shlex.quote(command[index + 1])}")
            index += 2
        else:
            parts.append(" ".join(shlex.quote(part) for part in command[index:]))
            break
    return " \\\n    ".join(parts)
