"""Monitoring without reading data: offsets from Kafka, positions from the tables' ledgers (DESIGN.md §7)."""
