"""Spark sessions with Delta Lake (any master: local, standalone, Kubernetes), and the offset-ledger primitives
of the Spark engine.

The Spark engine speaks the same offset protocol as the embedded (deltalake) engine, see
:mod:`ingest_platform.lake.ledger`: one Delta ``txn`` action per Kafka partition, app id
``<dataset>-<partition>``, version = last offset covered (inclusive). delta-spark writes ONE ``txn`` action
per DataFrame write (``txnAppId``/``txnVersion`` options) and skips a write whose version is not above the
one recorded for that app id (idempotent writes).

No dagster import here: this module is also used by tests and scripts.

Jars: the delta-spark jar comes from Maven Central through Spark's ``spark.jars.packages`` (Ivy) and is
cached outside the repository (``$INGEST_CACHE_DIR/ivy`` or ``~/.cache/ingest_platform/ivy``). The Python
package and the jar are released separately: delta-spark 4.4.1 on PyPI has NO 4.4.1 jar on Maven Central
(only 4.4.0), see :func:`delta_spark_jar_version`.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ingest_platform.engines.spark.jvm_functions import share_platform_jar, with_platform_jar

if TYPE_CHECKING:  # pyspark is an optional dependency (extra "spark")
    from pyspark.sql import DataFrame, SparkSession

SCALA_BINARY_VERSION = "2.13"
MAVEN_CENTRAL = "https://repo1.maven.org/maven2"
#: Environment variable that pins the delta-spark jar version (skips the Maven Central probe).
DELTA_JAR_VERSION_ENV = "INGEST_DELTA_SPARK_JAR_VERSION"
CACHE_DIR_ENV = "INGEST_CACHE_DIR"

DELTA_SQL_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"


def cache_dir() -> Path:
    """The platform's cache directory, outside the repository: ``$INGEST_CACHE_DIR`` or
    ``~/.cache/ingest_platform``."""
    configured = os.environ.get(CACHE_DIR_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "ingest_platform"


def default_ivy_dir() -> Path:
    """Where Spark's Ivy resolver keeps the Maven Central jars: ``<cache_dir>/ivy``."""
    return cache_dir() / "ivy"


def delta_spark_artifact() -> str:
    """The delta-spark Maven artifact for the installed pyspark, e.g. ``delta-spark_4.2_2.13``.

    Since delta 4.1 the artifact name carries the Spark minor version (delta-spark 4.4 is built for Spark 4.0,
    4.1 and 4.2), which is what ``delta.pip_utils.configure_spark_with_delta_pip`` uses too. For Spark 4.2 the
    unsuffixed ``delta-spark_2.13`` is the very same jar (same SHA-1), but it is only right for the newest
    Spark.
    """
    import pyspark

    spark_minor = ".".join(pyspark.__version__.split(".")[:2])
    return f"delta-spark_{spark_minor}_{SCALA_BINARY_VERSION}"


def _version_candidates(installed: str) -> list[str]:
    """``installed`` and the earlier patches of the same minor, newest first (4.4.1 -> 4.4.1, 4.4.0)."""
    parts = installed.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        return [installed]
    major, minor, patch = parts
    return [f"{major}.{minor}.{p}" for p in range(int(patch), -1, -1)]


def _jar_in_ivy_cache(ivy_dir: Path, artifact: str, version: str) -> bool:
    return (ivy_dir / "jars" / f"io.delta_{artifact}-{version}.jar").is_file()


def _published_on_maven_central(artifact: str, version: str, timeout: float = 10.0) -> bool | None:
    """True/False when Maven Central answers whether the jar's POM exists, None when it cannot be reached."""
    url = f"{MAVEN_CENTRAL}/io/delta/{artifact}/{version}/{artifact}-{version}.pom"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout) as response:
            return 200 <= response.status < 300
    except urllib.error.HTTPError as exc:
        return False if exc.code == 404 else None
    except (urllib.error.URLError, OSError):
        return None


@functools.lru_cache(maxsize=8)
def delta_spark_jar_version(ivy_dir: str | None = None) -> str:
    """The delta-spark jar version to load: the installed Python package's version if its jar exists.

    Python package and jar are published separately, and a patch release can be Python-only: delta-spark
    4.4.1 is on PyPI but Maven Central has only ``io.delta:delta-spark_4.2_2.13:4.4.0`` (of the 4.4.1
    artifacts only ``delta-kernel-api`` exists). Patch releases of one minor share the protocol and the
    Python-JVM API, so the newest published patch of the installed minor is used: an already cached jar wins,
    else Maven Central is asked (one HEAD request per candidate, newest first). Offline, the newest cached
    patch is used. ``$INGEST_DELTA_SPARK_JAR_VERSION`` pins the version.
    """
    pinned = os.environ.get(DELTA_JAR_VERSION_ENV)
    if pinned:
        return pinned
    installed = importlib.metadata.version("delta-spark")
    artifact = delta_spark_artifact()
    ivy = Path(ivy_dir) if ivy_dir else default_ivy_dir()
    candidates = _version_candidates(installed)
    cached = [version for version in candidates if _jar_in_ivy_cache(ivy, artifact, version)]
    for version in candidates:
        if version in cached:
            return version
        published = _published_on_maven_central(artifact, version)
        if published:
            return version
        if published is None:  # offline: the newest cached patch, else let Ivy try (and report) the installed
            return cached[0] if cached else installed
    return installed


#: Transitive dependencies of delta-spark 4.4 (through delta-kernel-defaults / delta-kernel-unitycatalog) that
#: pyspark already ships in ``pyspark/jars`` in a newer version (pyspark 4.2.0: hadoop 3.5.0, parquet 1.17.0,
#: jackson 2.21, log4j 2.25.4, ...). Ivy would otherwise download older duplicates (hadoop-client 3.4.2,
#: parquet 1.16.0, jackson 2.13.5: 33 jars, 174 MB instead of 8 jars, 27 MB) and put them on the classpath
#: behind Spark's own copies. Passed as ``spark.jars.excludes``.
PYSPARK_PROVIDED_EXCLUDES: tuple[str, ...] = (
    "com.fasterxml.jackson.core:jackson-annotations",
    "com.fasterxml.jackson.core:jackson-core",
    "com.fasterxml.jackson.core:jackson-databind",
    "com.github.luben:zstd-jni",
    "com.google.code.findbugs:jsr305",
    "commons-logging:commons-logging",
    "commons-pool:commons-pool",
    "io.airlift:aircompressor",
    "org.apache.hadoop:hadoop-client-api",
    "org.apache.hadoop:hadoop-client-runtime",
    "org.apache.logging.log4j:log4j-api",
    "org.apache.logging.log4j:log4j-core",
    "org.apache.logging.log4j:log4j-slf4j2-impl",
    "org.apache.parquet:parquet-column",
    "org.apache.parquet:parquet-common",
    "org.apache.parquet:parquet-encoding",
    "org.apache.parquet:parquet-format-structures",
    "org.apache.parquet:parquet-hadoop",
    "org.apache.parquet:parquet-jackson",
    "org.locationtech.jts:jts-core",
    "org.roaringbitmap:RoaringBitmap",
    "org.roaringbitmap:shims",
    "org.slf4j:slf4j-api",
    "org.xerial.snappy:snappy-java",
)


def delta_spark_packages(ivy_dir: str | None = None) -> list[str]:
    """Maven coordinates for ``spark.jars.packages``: ``["io.delta:delta-spark_4.2_2.13:4.4.0"]`` here.

    delta-spark's POM pulls its runtime dependencies transitively (delta-storage, delta-kernel-api/-defaults/
    -unitycatalog, scala-library); Spark itself is ``provided``.
    """
    return [f"io.delta:{delta_spark_artifact()}:{delta_spark_jar_version(ivy_dir)}"]


#: What every session gets, whatever its master; a profile's ``conf`` overrides any of them.
BASE_CONF: dict[str, str] = {
    "spark.sql.extensions": DELTA_SQL_EXTENSION,
    "spark.sql.catalog.spark_catalog": DELTA_CATALOG,
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    # Delta's log replay (state reconstruction) uses its own shuffle width, 50 by default.
    "spark.databricks.delta.snapshotPartitions": "2",
    # Timestamps are instants (Kafka timestamps, timestamp[us, tz=UTC] columns): render them in UTC.
    "spark.sql.session.timeZone": "UTC",
    # Spark's default writes TIMESTAMP columns as deprecated INT96 (no min/max stats, read back as
    # timestamp[ns]); deltalake writes INT64 micros, isAdjustedToUTC=true. Write the same as deltalake.
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
}


# ----------------------------------------------------------------------------------------------------------
# Offset ledger
#
# delta-spark has no public API that exposes ``txn`` actions: neither io.delta.tables.DeltaTable (Scala and
# Python) nor SQL (DESCRIBE HISTORY / DESCRIBE DETAIL) shows them. Two ways work in delta-spark 4.4 without
# parsing ``_delta_log`` by hand:
#
# * ``"delta_log"`` (default): delta-spark's own ``DeltaLog.forTableWithSnapshot(spark, path)`` -> the
#   updated ``Snapshot.transactions`` map (internal Scala API, org.apache.spark.sql.delta). It is exactly the
#   state that delta-spark's idempotent writer compares ``txnVersion`` with (``OptimisticTransaction
#   .txnVersion``). Costs a Spark job (log replay) on the first read of a table version, then DeltaLog caches.
# * ``"kernel"``: Delta Kernel's PUBLIC Java API ``io.delta.kernel.Snapshot#getLatestTransactionVersion``;
#   delta-kernel-api/-defaults are runtime dependencies of delta-spark 4.4, so they are on the classpath.
#   Reads the log without a Spark job, but it is a different reader than the one delta-spark's writer uses.


def _ledger_via_delta_log(spark: SparkSession, table_path: str, app_ids: list[str]) -> dict[str, int]:
    jvm = spark._jvm  # type: ignore[attr-defined]
    delta_log_class = jvm.org.apache.spark.sql.delta.DeltaLog
    # forTableWithSnapshot = forTable + update(): the latest committed version, never a cached stale one.
    jsession = spark._jsparkSession  # type: ignore[attr-defined]
    snapshot = delta_log_class.forTableWithSnapshot(jsession, str(table_path))._2()
    if snapshot.version() < 0:  # no table at this path (yet)
        return {}
    transactions = snapshot.transactions()  # scala Map[String, Long]
    ledger: dict[str, int] = {}
    for app_id in app_ids:
        found = transactions.get(app_id)
        if found.isDefined():
            ledger[app_id] = int(found.get())
    return ledger


def _ledger_via_kernel(spark: SparkSession, table_path: str, app_ids: list[str]) -> dict[str, int]:
    from py4j.protocol import Py4JJavaError

    jvm = spark._jvm  # type: ignore[attr-defined]
    hadoop_conf = spark._jsc.hadoopConfiguration()  # type: ignore[attr-defined]
    engine = jvm.io.delta.kernel.defaults.engine.DefaultEngine.create(hadoop_conf)
    try:
        snapshot = jvm.io.delta.kernel.Table.forPath(engine, str(table_path)).getLatestSnapshot(engine)
    except Py4JJavaError as exc:
        if exc.java_exception.getClass().getName() == "io.delta.kernel.exceptions.TableNotFoundException":
            return {}
        raise
    ledger: dict[str, int] = {}
    for app_id in app_ids:
        found = snapshot.getLatestTransactionVersion(engine, app_id)  # java.util.Optional<Long>
        if found.isPresent():
            ledger[app_id] = int(found.get())
    return ledger


def spark_read_ledger(
    spark: SparkSession,
    table_path: str,
    app_ids: Iterable[str],
    *,
    via: str = "delta_log",
) -> dict[str, int]:
    """The ``txn`` versions (app id -> version) in the table's latest snapshot, as delta-spark sees them.

    App ids the table has never recorded are absent; a path without a Delta table gives ``{}``. ``via`` picks
    the reader, ``"delta_log"`` (delta-spark's snapshot, the default) or ``"kernel"`` (Delta Kernel's public
    API), see the notes above.
    """
    ids = list(app_ids)
    if via == "delta_log":
        return _ledger_via_delta_log(spark, table_path, ids)
    if via == "kernel":
        return _ledger_via_kernel(spark, table_path, ids)
    raise ValueError(f"via must be 'delta_log' or 'kernel', not {via!r}")


def spark_append_with_offsets(
    df: DataFrame,
    table_path: str,
    app_id: str,
    version: int,
    user_metadata: str | None = None,
) -> None:
    """Append ``df`` to the Delta table at ``table_path`` with one ``txn`` action ``(app_id, version)``.

    delta-spark skips the whole write (no commit, no error) when the table already records ``version`` or a
    higher one for ``app_id``: a retried write is idempotent. The ``txn`` action gets ``lastUpdated`` = commit
    time. ``user_metadata`` becomes the commit's ``commitInfo.userMetadata`` (deltalake writes
    ``CommitProperties(custom_metadata=...)`` keys as top-level ``commitInfo`` fields instead).

    delta-spark's writer takes ONE ``txnAppId``/``txnVersion`` pair per write, so one write records one Kafka
    partition. Several ``txn`` actions in one commit are only possible through delta-spark's internal
    ``OptimisticTransaction`` (``updateSetTransaction`` per app id + ``commit``), see
    ingest_platform_tests/test_delta_protocol_interop.py::test_multi_txn_commit_via_internal_api.
    """
    writer = df.write.format("delta").mode("append").option("txnAppId", app_id).option("txnVersion", int(version))
    if user_metadata is not None:
        writer = writer.option("userMetadata", user_metadata)
    writer.save(str(table_path))


# ----------------------------------------------------------------------------------------------------------
# Sessions for the Spark engine


def kafka_connector_packages() -> list[str]:
    """spark-sql-kafka-0-10 for the installed pyspark (its kafka-clients and commons-pool2 come transitively)."""
    import pyspark

    return [f"org.apache.spark:spark-sql-kafka-0-10_{SCALA_BINARY_VERSION}:{pyspark.__version__}"]


def hadoop_version() -> str:
    """The Hadoop release pyspark ships (``hadoop-client-api-<version>.jar``), e.g. ``3.5.0``."""
    import pyspark

    jars = Path(pyspark.__file__).parent / "jars"
    for jar in sorted(jars.glob("hadoop-client-api-*.jar")):
        return jar.name[len("hadoop-client-api-") : -len(".jar")]
    raise RuntimeError(f"no hadoop-client-api jar in {jars}: cannot pick the hadoop-aws version")


def s3_connector_packages() -> list[str]:
    """hadoop-aws (the S3A connector) matching pyspark's Hadoop; its POM pulls the AWS SDK v2 ``bundle``
    (software.amazon.awssdk:bundle 2.35.4 for Hadoop 3.5.0: 686 MB, downloaded once into the Ivy cache)."""
    return [f"org.apache.hadoop:hadoop-aws:{hadoop_version()}"]


def session_conf(profile, s3: bool = False, ivy_dir: str | None = None) -> dict[str, str]:
    """Every setting of a profile's session: ``spark.master``, the app name, the connectors from Maven Central
    (delta-spark, spark-sql-kafka, and hadoop-aws when ``s3``: an S3 lake) and :data:`BASE_CONF`, with the
    profile's ``conf`` last (its ``spark.jars.packages``/``spark.jars.excludes`` extend ours, not replace them).

    The same for every master: ``local[*]`` runs everything in the driver's JVM; a standalone or Kubernetes
    master gets executors in other processes, which fetch the resolved jars from the driver (``spark.jars``).
    This is the Dagster resource's ``spark_config`` and what ``ingest-platform spark submit --dry-run`` prints.
    """
    ivy = str(Path(ivy_dir).expanduser() if ivy_dir else default_ivy_dir())
    conf = dict(profile.conf)
    packages = delta_spark_packages(ivy) + kafka_connector_packages() + (s3_connector_packages() if s3 else [])
    packages += [p for p in conf.pop("spark.jars.packages", "").split(",") if p and p not in packages]
    excludes = list(PYSPARK_PROVIDED_EXCLUDES)
    excludes += [e for e in conf.pop("spark.jars.excludes", "").split(",") if e and e not in excludes]
    return {
        "spark.master": profile.master,
        "spark.app.name": f"ingest_platform-{profile.name}",
        **BASE_CONF,
        # Managed tables are never used (the platform writes by path): keep them out of the working directory.
        "spark.sql.warehouse.dir": str(cache_dir() / "spark-warehouse"),
        "spark.jars.ivy": ivy,
        **conf,
        "spark.jars.packages": ",".join(packages),
        "spark.jars.excludes": ",".join(excludes),
    }


_SESSIONS: dict[str, SparkSession] = {}


def spark_for_profile(profile, s3: bool = False) -> SparkSession:
    """The process's Spark session for a profile (deploy/spark/profiles), with :func:`session_conf`."""
    return start_session(profile.name, session_conf(profile, s3=s3))


def start_session(profile_name: str, conf: Mapping[str, Any]) -> SparkSession:
    """The process's one Spark session, started with ``conf`` (``spark.master`` included) on first use.

    Spark runs one session per process: a second profile in one process is an error, and so is asking for S3
    (``hadoop-aws`` in ``spark.jars.packages``) from a session started without it; ``getOrCreate`` would
    silently return the running session without the jars. When the JVM cannot start, the error names the
    connector Maven Central does not serve (or that it could not be reached)."""
    wants_s3 = "hadoop-aws" in str(conf.get("spark.jars.packages", ""))
    if profile_name in _SESSIONS:
        session = _SESSIONS[profile_name]
        if wants_s3 and not _has_s3a(session):
            raise RuntimeError(
                f"this process's Spark session (profile '{profile_name}') was started without the S3A connector; "
                "an S3 lake needs a process whose first Spark session is started for it"
            )
        return session
    if _SESSIONS:
        running = next(iter(_SESSIONS))
        raise RuntimeError(
            f"this process already runs Spark profile '{running}'; profile '{profile_name}' needs its own process"
        )
    from pyspark.sql import SparkSession

    Path(str(conf.get("spark.jars.ivy") or default_ivy_dir())).mkdir(parents=True, exist_ok=True)
    conf = with_platform_jar(dict(conf), cache_dir())
    builder = SparkSession.builder
    for key, value in conf.items():
        builder = builder.config(key, str(value))
    try:
        session = builder.getOrCreate()
    except Exception as error:  # the JVM did not start: usually a connector that Ivy could not resolve
        raise SparkConnectorError(_diagnose_connectors(profile_name, conf, error)) from None
    share_platform_jar(session)
    _SESSIONS[profile_name] = session
    return session


def _has_s3a(session: SparkSession) -> bool:
    return "hadoop-aws" in session.sparkContext.getConf().get("spark.jars.packages", "")


class SparkConnectorError(RuntimeError):
    """Spark could not start; the message names the connector artifact that failed to resolve, and why."""


def _diagnose_connectors(profile_name: str, conf: Mapping[str, Any], error: Exception) -> str:
    packages = [p for p in str(conf.get("spark.jars.packages", "")).split(",") if p]
    problems = []
    for coordinate in packages:
        group, artifact, version = coordinate.split(":")
        url = f"{MAVEN_CENTRAL}/{group.replace('.', '/')}/{artifact}/{version}/{artifact}-{version}.pom"
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=10) as response:
                ok = 200 <= response.status < 300
            if not ok:
                problems.append(f"{coordinate}: Maven Central answered HTTP {response.status}")
        except urllib.error.HTTPError as http:
            problems.append(f"{coordinate}: not on Maven Central (HTTP {http.code} for {url})")
        except (urllib.error.URLError, OSError) as network:
            problems.append(
                f"{coordinate}: Maven Central unreachable ({network}); no cached copy in {default_ivy_dir()}"
            )
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if problems:
        return f"Spark profile '{profile_name}' could not start: " + "; ".join(problems) + f" ({first_line})"
    return (
        f"Spark profile '{profile_name}' could not start ({first_line}); every connector "
        f"({', '.join(packages)}) is on Maven Central, so see the Spark/Ivy output above for the cause."
    )
