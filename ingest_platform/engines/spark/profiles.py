"""Spark profiles kept as data under deploy/spark/profiles/: ``local`` (default), ``standalone`` (a Spark
standalone cluster, e.g. the local one of ``ingest-platform spark cluster up``) and ``k8s`` (production).

A profile is a YAML file with ``master`` and a ``conf`` map of ``spark.*`` settings. ``${VAR}`` in a value
is read from the environment (cluster address, image, namespace), and a missing variable is an error that
names the profile file and the variable. The deployment picks the default profile: ``$INGEST_SPARK_PROFILE``
when set, else ``DAGSTER_DEPLOYMENT`` (``prod``/``production`` -> ``k8s``, anything else -> ``local``); a
dataset's ``spark_profile`` overrides it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

PROFILES_ENV = "INGEST_SPARK_PROFILES_DIR"
#: Names the default profile of this deployment (e.g. ``standalone``), whatever ``DAGSTER_DEPLOYMENT`` says.
PROFILE_ENV = "INGEST_SPARK_PROFILE"
PRODUCTION_DEPLOYMENTS = ("prod", "production")
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class SparkProfileError(ValueError):
    """A Spark profile is missing, unreadable or needs an environment variable that is not set."""


@dataclass(frozen=True)
class SparkProfile:
    name: str
    master: str
    conf: Mapping[str, str] = field(default_factory=dict)
    path: str = ""


def profiles_dir() -> Path:
    configured = os.environ.get(PROFILES_ENV)
    return Path(configured) if configured else Path(__file__).resolve().parents[3] / "deploy" / "spark" / "profiles"


def default_profile_name(environ: Mapping[str, str] | None = None) -> str:
    env = environ if environ is not None else os.environ
    if env.get(PROFILE_ENV):
        return env[PROFILE_ENV]
    return "k8s" if env.get("DAGSTER_DEPLOYMENT", "local").lower() in PRODUCTION_DEPLOYMENTS else "local"


def available_profiles() -> list[str]:
    directory = profiles_dir()
    return sorted(p.stem for p in directory.glob("*.yaml")) if directory.is_dir() else []


def load_profile(
    name: str, environ: Mapping[str, str] | None = None, resolve: bool = True, missing_ok: bool = False
) -> SparkProfile:
    """The named profile; ``resolve=False`` keeps ``${VAR}`` placeholders (for inspection and preflight);
    ``missing_ok`` fills the variables that are set and keeps the others' placeholders (dry runs)."""
    path = profiles_dir() / f"{name}.yaml"
    if not path.is_file():
        raise SparkProfileError(
            f"Spark profile '{name}' not found: no {path} (available: {', '.join(available_profiles()) or 'none'})"
        )
    profile = read_profile(path, name)
    return resolve_profile(profile, environ, missing_ok) if resolve else profile


def read_profile(path: Path, name: str) -> SparkProfile:
    """The profile file at ``path`` as written, ``${VAR}`` placeholders kept (also the deployment renderer's
    source of the k8s Spark settings); YAML booleans become Spark's ``true``/``false``."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as error:
        raise SparkProfileError(f"{path}: unreadable: {error}") from None
    except yaml.YAMLError as error:
        raise SparkProfileError(f"{path}: unreadable YAML: {error}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("conf", {}), dict) or "master" not in raw:
        raise SparkProfileError(f"{path}: expected 'master' and a 'conf' mapping of spark.* settings")
    conf = {str(k): _conf_value(v) for k, v in (raw.get("conf") or {}).items()}
    return SparkProfile(name=name, master=str(raw["master"]), conf=conf, path=str(path))


def _conf_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).strip()


def resolve_profile(
    profile: SparkProfile, environ: Mapping[str, str] | None = None, missing_ok: bool = False
) -> SparkProfile:
    """``profile`` with every ``${VAR}`` read from the environment; an unset variable is an error naming the
    profile and the variable (with ``missing_ok`` its placeholder stays)."""
    env = environ if environ is not None else os.environ

    def fill(key: str, text: str) -> str:
        missing = [var for var in _VARIABLE.findall(text) if not env.get(var)]
        if missing and missing_ok:
            return _VARIABLE.sub(lambda m: env.get(m.group(1)) or m.group(0), text)
        if missing:
            raise SparkProfileError(
                f"{profile.path or profile.name}: '{key}' needs the environment variable(s) {', '.join(missing)}; "
                "set them for this deployment"
            )
        return _VARIABLE.sub(lambda m: env[m.group(1)], text)

    conf = {key: fill(key, value) for key, value in profile.conf.items()}
    return SparkProfile(name=profile.name, master=fill("master", profile.master), conf=conf, path=profile.path)


def profile_variables(profile: SparkProfile) -> list[str]:
    """The ``${VAR}`` names a profile's master and settings read (those still in an unresolved profile)."""
    texts = [profile.master, *profile.conf.values()]
    return sorted({var for text in texts for var in _VARIABLE.findall(text)})
