"""The benchmark runs end to end at a tiny size (a smoke test: no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.kafka
def test_ingest_bench_smoke(tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "ingest_bench.py"), "--records", "3000", "--partitions", "3",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "ingest_bench.json").read_text())
    assert result["engine_records"] == 3000
    for key in ("a_raw_consume_records_per_s", "b_arrow_decode_records_per_s", "c_parquet_write_records_per_s",
                "serial_bound_records_per_s", "d_engine_records_per_s", "ratio_d_to_serial_bound"):
        assert result[key] > 0, key
    assert "| (d) engine through the asset |" in (tmp_path / "ingest_bench.md").read_text()


@pytest.mark.slow
@pytest.mark.kafka
def test_cdc_bench_smoke(tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "cdc_bench.py"), "--keys", "300", "--changes", "600",
         "--partitions", "2", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "cdc_bench.json").read_text())
    assert result["c_table_rows"] == result["c_expected_live_keys"] == result["d_table_rows"]
    assert result["d_upsert"]["rows_updated"] == result["d_steady_updates"] == 300
    assert "| (c) upsert: last change per key + MERGE |" in (tmp_path / "cdc_bench.md").read_text()


@pytest.mark.slow
@pytest.mark.kafka
def test_stream_bench_smoke(tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "stream_bench.py"), "--quick", "--duration", "6",
         "--scenarios", "one,upkeep", "--upkeep-commits", "80", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "stream_bench.json").read_text())
    (one,) = result["scenarios"]
    assert one["produced"] > 0 and one["lost"] == 0 and one["duplicated"] == 0 and one["stream_exit_code"] == 0
    assert one["latency_p99_s"] is not None
    assert result["upkeep"]["without_upkeep"]["files"] == 80 > result["upkeep"]["with_upkeep"]["files"]
    assert "| one | 1 |" in (tmp_path / "stream_bench.md").read_text()

def test_definitions_bench_smoke(tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "definitions_bench.py"), "--sizes", "20", "--repeat", "1",
         "--validate-size", "20", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "definitions_bench.json").read_text())
    (row,) = result["rows"]
    assert row["ours"]["assets"] == row["bare"]["assets"] == 20 and row["ours"]["checks"] == 100
    assert row["ratio"] > 0 and row["cpu_ratio"] > 0 and result["validate"]["ours_s"] > 0
    assert "| 20 | ours |" in (tmp_path / "definitions_bench.md").read_text()
