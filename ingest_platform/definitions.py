"""The code location: every catalog dataset as an asset, with the resources chosen from the environment.

``INGEST_CATALOG``, ``INGEST_LAKE_ROOT`` and ``INGEST_KAFKA_BOOTSTRAP`` pick the catalog, lake and brokers
(ingest_platform/settings.py). An invalid catalog fails the load with a message naming file, dataset, field.
"""

import dagster as dg

from ingest_platform.catalog import CatalogError, load_catalog
from ingest_platform.defs.assets import ingestion_definitions
from ingest_platform.defs.checks import check_definitions
from ingest_platform.defs.example_downstream import example_downstream_definitions
from ingest_platform.defs.executor import executor_definitions
from ingest_platform.defs.maintenance import maintenance_definitions
from ingest_platform.defs.resources import resource_definitions
from ingest_platform.defs.sensors import sensor_definitions
from ingest_platform.defs.streams import stream_definitions
from ingest_platform.settings import Settings


def build_definitions(settings: Settings) -> dg.Definitions:
    catalog = load_catalog(settings.catalog_path)
    return dg.Definitions.merge(
        ingestion_definitions(catalog),
        check_definitions(catalog),
        maintenance_definitions(catalog),
        example_downstream_definitions(catalog),
        sensor_definitions(catalog),
        stream_definitions(catalog),
        resource_definitions(settings),
        executor_definitions(),  # Dagster's default, plus advice when a killed run holds a dataset's pool
    )


try:
    defs = build_definitions(Settings.from_env())
except CatalogError as error:
    # Dagster prints a failed load with the error's traceback (dagster definitions validate, dagster dev). The
    # catalog error already names file, dataset and field: raised afresh here, it shows this line alone.
    raise error.with_traceback(None) from None
