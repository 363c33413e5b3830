"""Dagster resources: thin configuration shells over the core's Kafka connection and lake location."""

import os
from typing import Any

import dagster as dg
from pydantic import PrivateAttr

from ingest_platform.engines.spark.profiles import default_profile_name
from ingest_platform.kafka.client import BOOTSTRAP_ENV, SECURITY_ENV, KafkaConnection, security_settings
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
        values = {name: getattr(self, _field_of(name)) for name in SECURITY_ENV}
        return KafkaConnection(self.bootstrap_servers, security_settings(values), timeout_s=self.timeout_s)


try:  # dagster-pyspark comes with the 'spark' extra (it imports pyspark)
    from dagster_pyspark import LazyPySparkResource as _SparkBase
except ImportError:  # a deployment without Spark: the same fields, and an error when a Spark run asks for it
    _SparkBase = dg.ConfigurableResource  # type: ignore[assignment,misc]


class SparkResource(_SparkBase):  # type: ignore[valid-type,misc]
    """dagster-pyspark's ``LazyPySparkResource``: no session until a Spark dataset asks for one, then one per run
    process. Its ``spark_config`` is the deployment's profile (deploy/spark/profiles: ``spark.master`` and the
    profile's ``conf``, ``${VAR}`` placeholders resolved when the session starts), so the launchpad shows it and
    run config can change it. The session is started by the core (``start_session``), which adds the connectors,
    Delta and the platform's defaults, refuses a second profile or a late S3 lake in one process (a plain
    ``getOrCreate`` would silently return a session without those jars) and names a connector that cannot be
    resolved. A dataset's own ``spark_profile`` gets that profile's session instead.
    """

    profile: str = "local"
    spark_config: dict[str, Any] = {}
    _s3: bool = PrivateAttr(default=False)

    @classmethod
    def for_profile(cls, profile: str) -> "SparkResource":
        from ingest_platform.engines.spark.profiles import load_profile

        unresolved = load_profile(profile, resolve=False)
        return cls(profile=profile, spark_config={"spark.master": unresolved.master, **unresolved.conf})

    def session(self, profile_name: str | None = None, s3: bool = False):
        if profile_name not in (None, self.profile):
            from ingest_platform.engines.spark.profiles import load_profile
            from ingest_platform.engines.spark.session import spark_for_profile

            return spark_for_profile(load_profile(profile_name), s3=s3)
        self._s3 = s3
        return self.spark_session  # LazyPySparkResource: started by _init_session on first use

    def _init_session(self) -> None:
        if getattr(self, "_spark_session", None) is not None:
            return
        from ingest_platform.engines.spark.profiles import SparkProfile, resolve_profile
        from ingest_platform.engines.spark.session import session_conf, start_session

        conf = {str(k): str(v) for k, v in (self.spark_config or {}).items()}
        master = conf.pop("spark.master", None)
        if master is None:
            raise dg.DagsterInvalidConfigError(
                f"SparkResource '{self.profile}': spark_config has no spark.master", [], self.spark_config
            )
        profile = resolve_profile(SparkProfile(name=self.profile, master=master, conf=conf))
        self._spark_session = start_session(self.profile, session_conf(profile, s3=self._s3))

    @property
    def spark_session(self) -> Any:
        self._init_session()
        return self._spark_session


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


def _field_of(variable: str) -> str:
    """``INGEST_KAFKA_SASL_PASSWORD`` -> the ``KafkaResource`` field ``sasl_password``."""
    return variable.removeprefix("INGEST_KAFKA_").lower()


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
        bootstrap_servers=_env_or(BOOTSTRAP_ENV, settings.kafka_bootstrap),
        **{_field_of(name): _optional_env(name) for name in SECURITY_ENV},  # the core's variables, as EnvVars
    )
    spark = SparkResource.for_profile(default_profile_name())
    if is_s3(settings.lake_root):
        lake = LakeResource(root=settings.lake_root, **s3_fields_from_env())
    else:
        lake = LakeResource(root=settings.lake_root)
    return dg.Definitions(resources={"kafka": kafka, "lake": lake, "spark": spark})
