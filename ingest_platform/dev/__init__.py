"""Development tooling, not the product's ingest path: the local Kafka broker, the demo and its data
generators (JSON records, Debezium change streams). The engines never import this package (test_layers.py).
"""
