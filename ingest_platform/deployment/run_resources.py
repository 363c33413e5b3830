"""What a Dagster run of one dataset needs from Kubernetes: the value of its ``dagster-k8s/config`` run tag.

``K8sRunLauncher`` (dagster-k8s) starts every run as a Kubernetes Job; it deep-merges this tag into the
instance's ``run_k8s_config`` (deploy/helm/dagster-values.yaml). The tag is computed from the dataset alone
(pure, no Dagster import: ``ingest_platform/defs/k8s.py`` puts it on the sensors' run requests):

* ``engine: embedded`` — one process: CPU request 1 / limit 2; memory request = limit =
  ``EMBEDDED_BASE_MIB`` + 4 x ``max_batch_bytes`` (two batches in flight, DESIGN §2 step 5, each held as
  Kafka bytes and as decoded Arrow). Default 256 MiB batches: 1,536 MiB.
* ``engine: spark`` — the run pod IS the Spark driver (client mode): CPU and memory as Spark would size a
  driver pod from the dataset's profile (``spark.kubernetes.driver.request/limit.cores``, driver memory +
  overhead) plus ``PYTHON_MIB`` for the Python side; it runs as the ``spark-driver`` ServiceAccount
  (deploy/k8s/base/spark/rbac.yaml) to create its executors, mounts the generated ``spark-config`` and
  ``spark-pod-templates`` ConfigMaps, and learns its pod name, IP and namespace from the downward API
  (the k8s profile's ``${SPARK_DRIVER_POD_NAME}``, ``${SPARK_DRIVER_HOST}``, ``${SPARK_K8S_NAMESPACE}``).
* ``engine: auto`` — whichever engine the planner picks (``engines/runner.resolve_engine``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ingest_platform.catalog import Dataset
from ingest_platform.deployment.render import POD_TEMPLATE_DIR, SPARK_CONF_DIR, pod_cpu, pod_memory_mib
from ingest_platform.engines.spark.profiles import load_profile

#: The tag K8sRunLauncher reads (dagster_k8s.job.USER_DEFINED_K8S_CONFIG_KEY).
K8S_CONFIG_TAG = "dagster-k8s/config"
EMBEDDED_BASE_MIB = 512
PYTHON_MIB = 1024
SPARK_DRIVER_ACCOUNT = "spark-driver"
IN_CLUSTER_MASTER = "k8s://https://kubernetes.default.svc:443"
MIB = 1024 * 1024


def embedded_memory_mib(dataset: Dataset) -> int:
    return EMBEDDED_BASE_MIB + 4 * -(-dataset.max_batch_bytes // MIB)


def run_k8s_config(dataset: Dataset, engine: str, spark_profile: str = "k8s") -> dict[str, Any]:
    """The ``dagster-k8s/config`` value (``container_config``, ``pod_spec_config``, ...) for a run of
    ``dataset`` on ``engine`` (``embedded`` or ``spark``; resolve ``auto`` first) with that Spark profile."""
    if engine == "embedded":
        memory = f"{embedded_memory_mib(dataset)}Mi"
        return {"container_config": {"resources": {"requests": {"cpu": "1", "memory": memory},
                                                   "limits": {"cpu": "2", "memory": memory}}},
                "pod_template_spec_metadata": {"labels": _labels(dataset, engine)}}
    if engine != "spark":
        raise ValueError(f"dataset '{dataset.name}': no Kubernetes resources for engine '{engine}'")
    return spark_driver_config(dataset, load_profile(spark_profile, resolve=False).conf)


def spark_driver_config(dataset: Dataset, conf: Mapping[str, str]) -> dict[str, Any]:
    request_cpu, limit_cpu = pod_cpu(conf, "driver")
    memory = f"{pod_memory_mib(conf, 'driver') + PYTHON_MIB}Mi"
    env = [
        _field_env("SPARK_DRIVER_POD_NAME", "metadata.name"),
        _field_env("SPARK_DRIVER_HOST", "status.podIP"),
        _field_env("SPARK_K8S_NAMESPACE", "metadata.namespace"),
        {"name": "SPARK_K8S_MASTER", "value": IN_CLUSTER_MASTER},
        {"name": "SPARK_CONF_DIR", "value": SPARK_CONF_DIR},
    ]
    mounts = [{"name": "spark-config", "mount_path": SPARK_CONF_DIR, "read_only": True},
              {"name": "spark-pod-templates", "mount_path": POD_TEMPLATE_DIR, "read_only": True}]
    volumes = [{"name": "spark-config", "config_map": {"name": "spark-config"}},
               {"name": "spark-pod-templates", "config_map": {"name": "spark-pod-templates"}}]
    return {
        "container_config": {
            "resources": {"requests": {"cpu": request_cpu, "memory": memory},
                          "limits": {"cpu": limit_cpu, "memory": memory}},
            "env": env,
            "volume_mounts": mounts,
        },
        "pod_spec_config": {
            "service_account_name": conf.get("spark.kubernetes.authenticate.driver.serviceAccountName",
                                             SPARK_DRIVER_ACCOUNT),
            "volumes": volumes,
        },
        "pod_template_spec_metadata": {"labels": _labels(dataset, "spark")},
    }


def _labels(dataset: Dataset, engine: str) -> dict[str, str]:
    return {"ingest-platform/dataset": dataset.name, "ingest-platform/engine": engine}


def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "value_from": {"field_ref": {"field_path": path}}}
