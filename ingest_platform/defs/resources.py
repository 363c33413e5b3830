"""Dagster resources: thin configuration shells over the core's Kafka connection and lake location."""

import os

import dagster as dg

from ingest_platform.engines.spark.profiles import default_profile_name
from ingest_platform.kafka.client import KafkaConnection
from ingest_platform.lake.storage import S3Config, is_s3
from ingest_platform.lake.tables import LakeLocation, lake_location
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

    def session(self, profile_name: str | None = None, s3: bool = False):
        from ingest_platform.engines.spark.profiles import load_profile
        from ingest_platform.engines.spark.session import spark_for_profile

        return spark_for_profile(load_profile(profile_name or self.profile), s3=s3)


class LakeResource(dg.ConfigurableResource):
    """Root of the lake: tables live at ``<root>/<source>/<name>`` (a folder, or ``s3://bucket/prefix``).

    For S3 it has the fields of dagster-aws's ``S3Resource`` under the same names (``region_name``,
    ``endpoint_url``, ``use_ssl``, ``aws_access_key_id``, ``aws_secret_access_key``, ``aws_session_token``;
    pass secrets as ``dg.EnvVar``) plus the root; fields left empty fall back to the standard AWS environment
    variables. ``use_ssl=False`` or an ``http://`` endpoint means plain http (``AWS_ALLOW_HTTP``). Not a
    subclass of ``S3Resource``: importing dagster-aws (boto3 and its components) cost a third of the code
    location's load (benchmarks/definitions_bench.py), and nothing here needs a boto3 client. Not a nested
    resource on purpose: a resource holding another one is built as a generator, which plain
    ``build_*_context`` calls cannot use.
    """

    region_name: str | None = None
    endpoint_url: str | None = None
    use_ssl: bool = True
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    aws_session_token: str | None = None
    root: str

    def location(self) -> LakeLocation:
        if not is_s3(self.root):
            return lake_location(self.root)
        return lake_location(self.root, s3_config(self))


def s3_config(s3: LakeResource) -> S3Config:
    """The core's S3 settings from the lake resource; fields it leaves empty fall back to the environment."""
    env = S3Config.from_env()
    return S3Config(
        endpoint_url=s3.endpoint_url or env.endpoint_url,
        region=s3.region_name or env.region,
        access_key_id=s3.aws_access_key_id or env.access_key_id,
        secret_access_key=s3.aws_secret_access_key or env.secret_access_key,
        session_token=s3.aws_session_token or env.session_token,
        allow_http=(not s3.use_ssl) or env.allow_http,
    )


def s3_fields_from_env() -> dict[str, object]:
    """The lake resource's S3 fields: each standard AWS variable as an ``EnvVar`` when it is set (resolved at run
    time)."""
    allow_http = (os.environ.get("AWS_ALLOW_HTTP") or "").strip().lower() in {"1", "true", "yes", "on"}
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or ""
    fields = {
        "endpoint_url": _optional_env("AWS_ENDPOINT_URL"),
        "region_name": _optional_env("AWS_REGION") or _optional_env("AWS_DEFAULT_REGION"),
        "aws_access_key_id": _optional_env("AWS_ACCESS_KEY_ID"),
        "aws_secret_access_key": _optional_env("AWS_SECRET_ACCESS_KEY"),
        "aws_session_token": _optional_env("AWS_SESSION_TOKEN"),
    }
    return {**{k: v for k, v in fields.items() if v is not None},
            "use_ssl": not (allow_http or endpoint.startswith("http://"))}


def _env_or(name: str, value: str) -> str | dg.EnvVar:
    """``value``, as an ``EnvVar`` (resolved at run time, never stored) when the environment variable holds
    exactly it. A value the settings got elsewhere (the demo's own broker, a command-line option) is used as
    given: an exported variable must not redirect it (issue 17: the demo produced to its broker, then the
    resource read the exported address)."""
    return dg.EnvVar(name) if os.environ.get(name) == value else value


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
    if is_s3(settings.lake_root):
        lake = LakeResource(root=settings.lake_root, **s3_fields_from_env())
    else:
        lake = LakeResource(root=settings.lake_root)
    return dg.Definitions(resources={"kafka": kafka, "lake": lake, "spark": spark})
