"""The ``dagster-k8s/config`` run tag of a dataset's runs (``K8sRunLauncher``, deploy/helm/dagster-values.yaml):
per-run resources from the dataset's engine and Spark profile, computed by the core
(``ingest_platform/deployment/run_resources.py``). Off Kubernetes the tag is inert (the default run launcher
ignores it)."""

import json

from ingest_platform.catalog import Dataset
from ingest_platform.deployment.run_resources import K8S_CONFIG_TAG, run_k8s_config
from ingest_platform.engines.runner import resolve_engine
from ingest_platform.engines.spark.profiles import SparkProfileError, default_profile_name


def k8s_run_tags(dataset: Dataset) -> dict[str, str]:
    """The tag, or none when the dataset's Spark profile cannot be read: the run then fails with the profile's
    own message, and the sensor keeps serving every other dataset."""
    engine = resolve_engine(dataset)
    profile = dataset.spark_profile or default_profile_name()
    try:
        config = run_k8s_config(dataset, engine, profile)
    except SparkProfileError:
        return {}
    return {K8S_CONFIG_TAG: json.dumps(config, sort_keys=True)}
