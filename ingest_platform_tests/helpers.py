"""Small helpers shared by tests: datasets from YAML text, independent reads of a Delta table."""

from __future__ import annotations

import textwrap

import polars as pl

from ingest_platform.catalog import Dataset, parse_catalog_text


def dataset_from_yaml(text: str) -> Dataset:
    (dataset,) = parse_catalog_text(textwrap.dedent(text))
    return dataset


def json_dataset(topic: str, name: str = "events", **extra: object) -> Dataset:
    lines = [f"name: {name}", "source: test", f"topic: {topic}", "format: json", "mode: append"]
    lines += [f"{key}: {value}" for key, value in extra.items()]
    body = "\n".join("    " + line for line in lines[1:])
    return dataset_from_yaml(f"datasets:\n  - {lines[0]}\n{body}\n")


def read_table(path: str) -> pl.DataFrame:
    """The table as an independent reader (polars) sees it."""
    return pl.read_delta(path)


def spark_jobs_of(spark, group: str, run):
    """(run()'s result, the number of Spark jobs it started), counted by a job group."""
    spark.sparkContext.setJobGroup(group, group)
    try:
        result = run()
    finally:
        spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)
    return result, len(spark.sparkContext.statusTracker().getJobIdsForGroup(group))
