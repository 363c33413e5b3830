"""The Spark engine: the same protocol on pyspark + delta-spark (docs/DESIGN.md §4, §9.2).

``engine.py`` runs the protocol (one Delta commit per run with a ``txn`` per partition); ``session.py`` builds
sessions with the Maven-resolved connectors and wraps delta-spark's internals; ``profiles.py`` loads
deploy/spark/profiles; ``changes.py`` and ``merge.py`` are the change-record (CDC) half. Importing this package
does not import pyspark (an optional extra).
"""
