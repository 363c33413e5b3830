"""Where the catalog, the lake and Kafka are: environment variables and their defaults.

The same code location serves any catalog: ``INGEST_CATALOG`` (a YAML file or a folder of them),
``INGEST_LAKE_ROOT`` (a local folder, or ``s3://bucket/prefix`` reached with the standard AWS environment
variables, ``ingest_platform/lake/storage.py``) and
``INGEST_KAFKA_BOOTSTRAP`` override the defaults below. Read once, where definitions or the CLI start.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEMO_CATALOG = Path(__file__).parent / "catalogs" / "demo.yaml"
DEFAULT_LAKE_ROOT = "lake"
DEFAULT_KAFKA_BOOTSTRAP = "127.0.0.1:9092"


@dataclass(frozen=True)
class Settings:
    catalog_path: str
    lake_root: str
    kafka_bootstrap: str

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        return cls(
            catalog_path=env.get("INGEST_CATALOG") or str(DEMO_CATALOG),
            lake_root=normalize_lake_root(env.get("INGEST_LAKE_ROOT") or DEFAULT_LAKE_ROOT),
            kafka_bootstrap=env.get("INGEST_KAFKA_BOOTSTRAP") or DEFAULT_KAFKA_BOOTSTRAP,
        )


def normalize_lake_root(root: str) -> str:
    """Absolute path for local roots (so every process agrees on it); URIs are kept as they are."""
    if "://" in root:
        return root.rstrip("/")
    return str(Path(root).expanduser().resolve())
