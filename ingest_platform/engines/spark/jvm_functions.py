"""The platform's own JVM functions for Spark (docs/DESIGN.md §4): Java sources shipped in ``jvm/``, compiled
once per source/Spark/Java version with the JDK's ``javac`` into ``<cache_dir>/jvm/``, put on the driver's class
path (``spark.driver.extraClassPath``, read when the driver JVM starts) and given to the executors with
``SparkContext.addJar`` (a standalone cluster's executors fetch it from the driver). Not ``spark.jars``: the
session's conf would replace the list Spark builds from ``spark.jars.packages`` (the Kafka and Delta jars).

Today one function: :class:`UnknownKeys`, the new-field check of every decoded record (one forward scan of
the text, where Spark's own ``array_except(json_object_keys(...))`` is a second full parse). Without a JDK
(``javac`` missing), on a Kubernetes master (the driver image would have to carry the jar) or when the class
cannot be loaded, the engine keeps Spark's built-in expression: same answer, slower.

No dagster import here.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import Column, SparkSession

log = logging.getLogger(__name__)

SOURCES = Path(__file__).parent / "jvm"
#: ``INGEST_SPARK_JVM_FUNCTIONS=0`` keeps Spark's built-in expressions (e.g. to compare the two).
ENABLE_ENV = "INGEST_SPARK_JVM_FUNCTIONS"
_COMPILE_TIMEOUT_S = 120


def enabled() -> bool:
    return os.environ.get(ENABLE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def platform_jar(cache: Path) -> Path | None:
    """The compiled platform jar under ``cache`` (built now if missing), or None when it cannot be built here
    (no ``javac``; a compile failure is logged with javac's message)."""
    javac = shutil.which("javac")
    if javac is None:
        log.warning("no javac on PATH: the Spark engine checks new fields with Spark's built-in (slower) expression")
        return None
    import pyspark

    sources = sorted(SOURCES.glob("*.java"))
    digest = hashlib.sha256(pyspark.__version__.encode() + javac.encode())
    for source in sources:
        digest.update(source.read_bytes())
    jar = cache / "jvm" / f"ingest-platform-spark-{digest.hexdigest()[:16]}.jar"
    if jar.is_file():
        return jar
    jar.parent.mkdir(parents=True, exist_ok=True)
    classpath = str(Path(pyspark.__file__).parent / "jars" / "*")
    with tempfile.TemporaryDirectory(dir=jar.parent) as build:
        try:
            compiled = subprocess.run(
                [javac, "--release", "17", "-nowarn", "-cp", classpath, "-d", build, *map(str, sources)],
                capture_output=True, text=True, timeout=_COMPILE_TIMEOUT_S, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            log.warning("javac took over %d s: keeping Spark's built-in new-field check", _COMPILE_TIMEOUT_S)
            return None
        if compiled.returncode != 0:
            log.warning("javac could not build %s (%s): keeping Spark's built-in new-field check",
                        SOURCES, compiled.stderr.strip()[-500:])  # fmt: skip
            return None
        partial = Path(build) / jar.name  # per process: two sessions building at once never share a file
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(Path(build).rglob("*.class")):
                archive.write(path, path.relative_to(build).as_posix())
        partial.replace(jar)  # atomic: a concurrent session sees the whole jar or none
    return jar


DRIVER_CLASS_PATH = "spark.driver.extraClassPath"


def with_platform_jar(conf: dict[str, str], cache: Path) -> dict[str, str]:
    """``conf`` plus the platform jar on the driver's class path (local and standalone masters, when it can be
    built); :func:`share_platform_jar` gives it to the executors once the session runs."""
    if not enabled() or str(conf.get("spark.master", "")).startswith("k8s://"):
        return conf
    jar = platform_jar(cache)
    if jar is None:
        return conf
    paths = [p for p in str(conf.get(DRIVER_CLASS_PATH, "")).split(os.pathsep) if p]
    return {**conf, DRIVER_CLASS_PATH: os.pathsep.join([*paths, str(jar)])}


def share_platform_jar(spark: SparkSession) -> None:
    """The executors get the platform jar that the driver's class path has (``addJar``: fetched per executor)."""
    for path in spark.sparkContext.getConf().get(DRIVER_CLASS_PATH, "").split(os.pathsep):
        if Path(path).name.startswith("ingest-platform-spark-"):
            spark.sparkContext._jsc.sc().addJar(path)  # pyspark has no addJar of its own


def unknown_keys(spark: SparkSession, column: str, known) -> Column | None:
    """``UnknownKeys`` over ``column`` for the names ``known``: the top-level keys of each JSON object that are
    not known (null when none), or None when the class is not on this session (no jar: use Spark's expression).

    The function is registered on the session under a name made from the known names, so a frame built on a
    clone of the session (a streaming micro-batch) registers it again on its own."""
    if not enabled():
        return None
    from pyspark.sql import functions as F

    names = sorted(known)
    name = "ip_unknown_keys_" + hashlib.sha1("\0".join(names).encode()).hexdigest()[:12]
    if not spark.catalog.functionExists(name):  # not yet on this session (registering again would warn)
        try:
            _register(spark, name, names)
        except Exception as error:  # py4j: the class is not on the driver's classpath (a session without the jar)
            log.warning("UnknownKeys unavailable on this session (%s): Spark's built-in expression is used", error)
            return None
    return F.call_function(name, F.col(column).cast("binary"))  # the UTF-8 bytes (of a string column: a copy)


def _register(spark: SparkSession, name: str, names: list[str]) -> None:
    jvm = spark._jvm
    array = spark.sparkContext._gateway.new_array(jvm.java.lang.String, len(names))
    for index, value in enumerate(names):
        array[index] = value
    types = jvm.org.apache.spark.sql.types.DataTypes
    function = jvm.ingest_platform.spark.UnknownKeys(array)
    spark._jsparkSession.udf().register(name, function, types.createArrayType(types.StringType))
