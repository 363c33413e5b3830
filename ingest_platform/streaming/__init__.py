"""Continuous ingestion: the stream process (docs/DESIGN.md §10–11). No Dagster here.

``process.StreamProcess`` serves many datasets; ``loop.DatasetLoop`` is one dataset's micro-batch loop on the
offset protocol of §2; ``upkeep``, ``metrics``, ``health``, ``endpoints`` and ``exporter`` are one concern each.
"""
