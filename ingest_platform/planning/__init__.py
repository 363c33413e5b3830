"""Capacity planning from the tuning guide's formulas (pure functions; no Kafka, no Dagster)."""
