"""The local Spark standalone cluster (ingest_platform/dev/local_spark.py): real master, worker and executor
JVMs from pyspark's distribution, on loopback, private and bounded; the session's cluster is shared."""

from __future__ import annotations

import ipaddress
import json
import os
import sys
from pathlib import Path

import pytest

from ingest_platform.dev import local_spark
from ingest_platform.dev.local_spark import LocalSparkCluster, LocalSparkError

pytestmark = [pytest.mark.spark, pytest.mark.slow]


def test_workers_have_private_dirs_and_listen_on_loopback_only(spark_cluster):
    workers = spark_cluster.wait_for_workers(spark_cluster.workers, timeout_s=30)
    assert len(workers) == 2 and all(w["host"] == "127.0.0.1" for w in workers)
    master_url = spark_cluster.master_url
    assert master_url.startswith("spark://127.0.0.1:")
    for index in range(2):
        directory = spark_cluster.worker_dir(index)
        assert (directory / "work").is_dir() and (directory / "local").is_dir()
    log = (spark_cluster.state_dir / "logs" / "master.out").read_text()
    assert "REST server" not in log  # the fixed port 6066 is never taken
    listening = _listening_ports(spark_cluster.master.pid)
    assert listening and all(host == "127.0.0.1" for host, _port in listening)


def test_tasks_run_in_the_workers_executor_processes(spark, spark_cluster):
    """The suite's Spark session is a driver of the session cluster: its tasks run in executor JVMs that the
    workers started, none in the driver's JVM."""
    from pyspark.sql import functions as F

    pid = F.expr("reflect('java.lang.ProcessHandle', 'current')").alias("pid")
    ran_in = {int(r["pid"]) for r in spark.range(0, 2000, 1, 8).select(pid).distinct().collect()}
    driver = int(spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid())
    executors = {p for i in range(spark_cluster.workers) for p in spark_cluster.executor_pids(i)}
    assert driver not in ran_in and ran_in <= executors and len(executors) >= 2


def test_the_cli_reports_the_session_cluster_and_down_is_safe(spark_cluster, tmp_path):
    from click.testing import CliRunner

    from ingest_platform.cli.main import main

    runner = CliRunner()
    shown = runner.invoke(main, ["spark", "cluster", "status", "--state-dir", str(spark_cluster.state_dir), "--json"])
    assert shown.exit_code == 0, shown.output
    status = json.loads(shown.output)
    assert status["running"] and status["answering"] and status["workers_alive"] == 2
    assert status["master_url"] == spark_cluster.master_url
    reused = runner.invoke(main, ["spark", "cluster", "up", "--state-dir", str(spark_cluster.state_dir)])
    assert reused.exit_code == 0 and "already running" in reused.output
    assert reused.output.strip().splitlines()[-1] == spark_cluster.master_url
    empty = tmp_path / "none"
    assert runner.invoke(main, ["spark", "cluster", "status", "--state-dir", str(empty)]).exit_code == 1
    stopped = runner.invoke(main, ["spark", "cluster", "down", "--state-dir", str(empty)])
    assert stopped.exit_code == 0 and "no cluster running" in stopped.output


def test_a_worker_that_cannot_start_is_named_with_its_log_and_nothing_is_left(tmp_path):
    cluster = LocalSparkCluster(tmp_path / "broken", workers=1, worker_memory="lots", startup_timeout_s=60)
    with pytest.raises(LocalSparkError) as raised:
        cluster.start()
    message = str(raised.value)
    assert "Spark worker-0 exited" in message and "worker-0.out" in message
    assert "Usage: Worker" in message  # the worker's own complaint, from its log's tail
    assert cluster.master is None  # the master it had started was stopped
    assert _processes_mentioning(tmp_path / "broken") == []


def _listening_ports(pid: int) -> list[tuple[str, int]]:
    """(host, port) of the TCP sockets ``pid`` listens on, from /proc (no ss/netstat needed)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # state LISTEN
                address, port = fields[1].split(":")
                found.append((_proc_net_address(address), int(port, 16)))
    return found


def _proc_net_address(hexed: str) -> str:
    """An address of /proc/net/tcp{,6} (32-bit words in host byte order) as text; IPv4-mapped IPv6 as IPv4."""
    raw = b"".join(bytes.fromhex(hexed[i : i + 8])[::-1] for i in range(0, len(hexed), 8))
    address = ipaddress.ip_address(raw)
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)


def _processes_mentioning(path: Path) -> list[int]:
    """Live processes whose command line names ``path`` (the cluster's daemons carry its conf file)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(path).encode() in (entry / "cmdline").read_bytes() and local_spark._pid_alive(int(entry.name)):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_a_detached_cluster_outlives_its_command_and_down_stops_all_of_it(tmp_path):
    """`spark cluster up` in its own process (as a shell would run it), then status and down from this one."""
    import subprocess

    state = tmp_path / "detached"
    cli = [str(Path(sys.executable).parent / "ingest-platform"), "spark", "cluster"]
    started = subprocess.run([*cli, "up", "--state-dir", str(state), "--workers", "1"], capture_output=True,
                             text=True, timeout=180)  # fmt: skip
    try:
        assert started.returncode == 0, started.stderr[-2000:]
        master_url = started.stdout.strip().splitlines()[-1]
        info = local_spark.status(state)  # the command has exited; its cluster runs on
        assert info["running"] and info["answering"] and info["master_url"] == master_url
        assert info["workers_alive"] == info["workers_expected"] == 1
    finally:
        stopped = subprocess.run([*cli, "down", "--state-dir", str(state)], capture_output=True, text=True,
                                 timeout=120)  # fmt: skip
    assert stopped.returncode == 0 and "stopped the cluster" in stopped.stdout
    assert _processes_mentioning(state) == [] and not local_spark.status(state)["running"]
