"""Picks the engine a dataset runs on and runs it (docs/DESIGN.md §4)."""

from __future__ import annotations

import logging

from ingest_platform.catalog import Dataset
from ingest_platform.engines.embedded import EmbeddedEngine
from ingest_platform.engines.report import RunReport
from ingest_platform.engines.run_plan import IngestError
from ingest_platform.kafka.client import KafkaConnection
from ingest_platform.lake.tables import LakeLocation


def resolve_engine(dataset: Dataset) -> str:
    """``auto`` is embedded until the Spark engine lands; then it picks by expected throughput (DESIGN §4)."""
    return "embedded" if dataset.engine == "auto" else dataset.engine


def run_dataset(
    dataset: Dataset,
    kafka: KafkaConnection,
    lake: LakeLocation,
    log: logging.Logger | None = None,
    run_id: str | None = None,
) -> RunReport:
    engine = resolve_engine(dataset)
    if engine == "embedded":
        return EmbeddedEngine(kafka, lake, log=log).run(dataset, run_id=run_id)
    raise IngestError(
        f"dataset '{dataset.name}': engine '{engine}' is not available in this version; "
        "set engine: embedded (or auto) in the catalog."
    )
