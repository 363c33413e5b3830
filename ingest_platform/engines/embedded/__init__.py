"""The embedded engine: confluent-kafka -> Arrow -> deltalake in the calling process, no JVM (docs/DESIGN.md §4).

``engine.py`` runs the protocol; ``decode.py`` turns JSON records into Arrow, ``debezium.py`` reads change
events, ``batch_rows.py`` makes one batch's rows and bad records.
"""
