"""Resolve, at image build time, the Spark connectors the engine loads (spark-sql-kafka, delta-spark, and for
S3 lakes hadoop-aws with the AWS SDK bundle) into the platform's Ivy cache, and check that a session starts
from that cache alone (deploy/docker/install.sh). The engine's own session builder does both, so the image
holds exactly the jars the engine asks for.

    python -m ingest_platform.deployment.connectors resolve [--s3]
    python -m ingest_platform.deployment.connectors check [--s3]   # run it without network (install.sh does)
"""

from __future__ import annotations

import argparse
import sys

#: JVM classes that prove each connector is on the session's classpath.
CONNECTOR_CLASSES = {
    "spark-sql-kafka": "org.apache.spark.sql.kafka010.KafkaSourceProvider",
    "delta-spark": "io.delta.sql.DeltaSparkSessionExtension",
}
S3A_CLASSES = {"hadoop-aws": "org.apache.hadoop.fs.s3a.S3AFileSystem"}


def start_session(s3: bool):
    from ingest_platform.engines.spark.profiles import load_profile
    from ingest_platform.engines.spark.session import spark_for_profile

    return spark_for_profile(load_profile("local"), s3=s3)


def missing_classes(session, s3: bool) -> list[str]:
    wanted = {**CONNECTOR_CLASSES, **(S3A_CLASSES if s3 else {})}
    loader = session._jvm.java.lang.Thread.currentThread().getContextClassLoader()  # type: ignore[attr-defined]
    missing = []
    for connector, name in wanted.items():
        try:
            session._jvm.java.lang.Class.forName(name, False, loader)  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - py4j wraps the JVM's ClassNotFoundException
            missing.append(f"{connector} ({name})")
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["resolve", "check"])
    parser.add_argument("--s3", action="store_true", help="also hadoop-aws and the AWS SDK (S3 lakes)")
    args = parser.parse_args(argv)
    try:
        session = start_session(args.s3)
    except Exception as error:  # noqa: BLE001 - reported with the engine's diagnosis, then exit 1
        print(f"error: the Spark session did not start from the connector cache: {error}", file=sys.stderr)
        return 1
    try:
        missing = missing_classes(session, args.s3)
    finally:
        session.stop()
    if missing:
        print(f"error: connectors missing from the session: {', '.join(missing)}", file=sys.stderr)
        return 1
    print(f"{args.action}: Spark connectors {'resolved' if args.action == 'resolve' else 'load offline'}: "
          f"{', '.join({**CONNECTOR_CLASSES, **(S3A_CLASSES if args.s3 else {})})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
