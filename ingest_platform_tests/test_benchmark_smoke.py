"""The benchmark runs end to end at a tiny size (a smoke test: no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _bench(name: str, args: list[str], tmp_path: Path, timeout_s: float) -> tuple[subprocess.CompletedProcess, dict]:
    """``benchmarks/<name>.py args --out tmp_path``: the finished process and its JSON result ({} if none)."""
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / f"{name}.py"), *args, "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=timeout_s)  # fmt: skip
    result = tmp_path / f"{name}.json"
    return done, json.loads(result.read_text()) if result.exists() else {}


@pytest.mark.slow
@pytest.mark.kafka
def test_ingest_bench_smoke(tmp_path):
    done, result = _bench("ingest_bench", ["--records", "3000", "--partitions", "3"], tmp_path, 300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert result["engine_records"] == 3000
    for key in ("a_raw_consume_records_per_s", "b_arrow_decode_records_per_s", "c_parquet_write_records_per_s",
                "serial_bound_records_per_s", "d_engine_records_per_s", "ratio_d_to_serial_bound"):
        assert result[key] > 0, key
    assert "| (d) engine through the asset |" in (tmp_path / "ingest_bench.md").read_text()


@pytest.mark.slow
@pytest.mark.kafka
def test_cdc_bench_smoke(tmp_path):
    done, result = _bench("cdc_bench", ["--keys", "300", "--changes", "600", "--partitions", "2"], tmp_path, 300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert result["c_table_rows"] == result["c_expected_live_keys"] == result["d_table_rows"]
    assert result["d_upsert"]["rows_updated"] == result["d_steady_updates"] == 300
    assert "| (c) upsert: last change per key + MERGE |" in (tmp_path / "cdc_bench.md").read_text()


@pytest.mark.slow
@pytest.mark.kafka
def test_memory_bench_smoke(tmp_path):
    done, result = _bench("memory_bench", ["--records", "30000", "--partitions", "3", "--batch-mb", "1"],
                          tmp_path, 600)  # fmt: skip
    assert done.returncode in (0, 1), done.stderr[-3000:]  # 1: above the bound (reported, not asserted here)
    reference, engine, stream = result["runs"]
    assert [(r["target"], r["batch_mib"]) for r in result["runs"]] == [("consume", None), ("engine", 1), ("stream", 1)]
    for run in (engine, stream):
        assert run["peak_rss_mib"] >= run["peak_anon_rss_mib"] > 0 and run["samples"]
    assert "| engine | 1 MiB |" in (tmp_path / "memory_bench.md").read_text()


@pytest.mark.slow
@pytest.mark.kafka
def test_reliability_bench_smoke(tmp_path):
    done, result = _bench("reliability_bench", ["--records", "5000", "--kills", "2", "--races", "2",
                                                 "--restarts", "1"], tmp_path, 900)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert [s["scenario"] for s in result["scenarios"]] == ["race", "kill", "restart", "broker_down", "new_partition"]
    assert result["violations"] == 0


def test_stream_bench_smoke(tmp_path):
    done, result = _bench("stream_bench", ["--quick", "--duration", "6", "--scenarios", "one,upkeep",
                                            "--upkeep-commits", "80"], tmp_path, 600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (one,) = result["scenarios"]
    assert one["produced"] > 0 and one["lost"] == 0 and one["duplicated"] == 0 and one["stream_exit_code"] == 0
    assert one["latency_p99_s"] is not None
    assert result["upkeep"]["without_upkeep"]["files"] == 80 > result["upkeep"]["with_upkeep"]["files"]
    assert "| one | 1 |" in (tmp_path / "stream_bench.md").read_text()


def test_definitions_bench_smoke(tmp_path):
    done, result = _bench("definitions_bench", ["--sizes", "20", "--repeat", "1", "--validate-size", "20"],
                          tmp_path, 600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (row,) = result["rows"]
    assert row["ours"]["assets"] == row["bare"]["assets"] == 20 and row["ours"]["checks"] == 100
    assert row["ratio"] > 0 and row["cpu_ratio"] > 0 and result["validate"]["ours_s"] > 0
    assert "| 20 | ours |" in (tmp_path / "definitions_bench.md").read_text()
