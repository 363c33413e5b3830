"""Picks the engine a dataset runs on and runs it (docs/DESIGN.md §4)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from ingest_platform.catalog import Dataset
from ingest_platform.engines.embedded.engine import EmbeddedEngine
from ingest_platform.engines.report import RunReport
from ingest_platform.engines.run_plan import IngestError
from ingest_platform.kafka.client import KafkaConnection
from ingest_platform.lake.tables import LakeLocation

#: Builds (or returns the running) Spark session for a profile name; None means "use the profile files".
SparkSessionFactory = Callable[[str], object]


def resolve_engine(dataset: Dataset) -> str:
    """``auto`` picks by the dataset's expected load (the planner's rule, docs/DESIGN.md §6)."""
    if dataset.engine != "auto":
        return dataset.engine
    from ingest_platform.capacity import recommend_engine

    return recommend_engine(dataset)


def default_spark_session(profile_name: str, s3: bool = False):
    from ingest_platform.engines.spark.profiles import load_profile
    from ingest_platform.engines.spark.session import spark_for_profile

    return spark_for_profile(load_profile(profile_name), s3=s3)


def run_dataset(
    dataset: Dataset,
    kafka: KafkaConnection,
    lake: LakeLocation,
    log: logging.Logger | None = None,
    run_id: str | None = None,
    spark_session: SparkSessionFactory | None = None,
    spark_profile: str | None = None,
) -> RunReport:
    engine = resolve_engine(dataset)
    if engine == "embedded":
        return EmbeddedEngine(kafka, lake, log=log).run(dataset, run_id=run_id)
    if engine == "spark":
        try:
            from ingest_platform.engines.spark.engine import SparkEngine
        except ImportError as error:
            raise IngestError(
                f"dataset '{dataset.name}' runs on Spark, but pyspark is not installed ({error}); "
                "install the 'spark' extra: pip install -e '.[spark]'"
            ) from None
        from ingest_platform.engines.spark.profiles import default_profile_name

        profile = dataset.spark_profile or spark_profile or default_profile_name()
        if spark_session is None:
            from ingest_platform.lake.storage import is_s3

            session = default_spark_session(profile, s3=is_s3(lake.root))
        else:
            session = spark_session(profile)
        return SparkEngine(kafka, lake, session, log=log).run(dataset, run_id=run_id)
    raise IngestError(f"dataset '{dataset.name}': unknown engine '{engine}'")
