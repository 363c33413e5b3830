"""Dagster resources: thin configuration shells over the core's Kafka connection and lake location."""

import os

import dagster as dg

from ingest_platform.engines.spark_profiles import default_profile_name
from ingest_platform.kafka.client import KafkaConnection
from ingest_platform.lake.tables import LakeLocation
from ingest_platform.settings import Settings


class KafkaResource(dg.ConfigurableResource):
    """Kafka brokers and credentials. Pass secrets as ``dg.EnvVar`` so they never enter config or logs."""

    bootstrap_servers: str
    security_protocol: str | None = None
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_ca_location: str | None = None
    timeout_s: float = 30.0

    def connection(self) -> KafkaConnection:
        security = {
            "security.protocol": self.security_protocol,
            "sasl.mechanism": self.sasl_mechanism,
            "sasl.username": self.sasl_username,
            "sasl.password": self.sasl_password,
            "ssl.ca.location": self.ssl_ca_location,
        }
        return KafkaConnection(
            bootstrap_servers=self.bootstrap_servers,
            security={k: v for k, v in security.items() if v},
            timeout_s=self.timeout_s,
        )


class SparkResource(dg.ConfigurableResource):
    """Spark sessions from the profiles in deploy/spark/profiles (``local`` default, ``k8s`` in production).

    Nothing starts until a dataset that runs on Spark asks for a session; then one session per run process.
    """

    profile: str = "local"

    def session(self, profile_name: str | None = None):
        from ingest_platform.engines.spark_profiles import load_profile
        from ingest_platform.engines.spark_session import spark_for_profile

        return spark_for_profile(load_profile(profile_name or self.profile))


class LakeResource(dg.ConfigurableResource):
    """Root of the lake: tables live at ``<root>/<source>/<name>``."""

    root: str

    def location(self) -> LakeLocation:
        return LakeLocation(root=self.root)


def _env_or(name: str, default: str) -> str | dg.EnvVar:
    """An ``EnvVar`` when the variable is set (resolved at run time, never stored), else the default."""
    return dg.EnvVar(name) if os.environ.get(name) else default


def _optional_env(name: str) -> dg.EnvVar | None:
    return dg.EnvVar(name) if os.environ.get(name) else None


def resource_definitions(settings: Settings) -> dg.Definitions:
    kafka = KafkaResource(
        bootstrap_servers=_env_or("INGEST_KAFKA_BOOTSTRAP", settings.kafka_bootstrap),
        security_protocol=_optional_env("INGEST_KAFKA_SECURITY_PROTOCOL"),
        sasl_mechanism=_optional_env("INGEST_KAFKA_SASL_MECHANISM"),
        sasl_username=_optional_env("INGEST_KAFKA_SASL_USERNAME"),
        sasl_password=_optional_env("INGEST_KAFKA_SASL_PASSWORD"),
        ssl_ca_location=_optional_env("INGEST_KAFKA_SSL_CA_LOCATION"),
    )
    spark = SparkResource(profile=default_profile_name())
    return dg.Definitions(resources={"kafka": kafka, "lake": LakeResource(root=settings.lake_root), "spark": spark})
