"""The local Kafka broker (ingest_platform.dev.local_kafka) against a real Kafka 4.x JVM: no mocks.

Each broker-starting test costs a few seconds (format ~1 s, JVM up and answering ~2-4 s on 2 cores, stop
~1 s);
the first run on a machine also resolves the jars with Maven (~10 s, then cached).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from ingest_platform.cli.kafka import kafka
from ingest_platform.dev import local_kafka
from ingest_platform.dev.local_kafka import LocalKafka, LocalKafkaError, create_topic

REPO = Path(__file__).resolve().parents[1]


def _alive(pid: int) -> bool:
    """/proc/<pid> exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _our_kafka_jvms(tmp_path: Path) -> set[int]:
    """Live kafka.Kafka JVMs started by this test: children of this process or configured under ``tmp_path``.

    (Other brokers on the machine, e.g. another session's, are none of this test's business.)
    """
    pids = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if b"kafka.Kafka" not in args or not _alive(int(proc.name)):
            continue
        if ppid == os.getpid() or any(str(tmp_path).encode() in a for a in args):
            pids.add(int(proc.name))
    return pids


def _answers_metadata(bootstrap: str) -> bool:
    md = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0}).list_topics(timeout=10)
    return len(md.brokers) == 1


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ingest_platform.cli.kafka", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


@pytest.fixture
def no_leftover_brokers(tmp_path: Path):
    before = _our_kafka_jvms(tmp_path)
    yield
    leftover = _our_kafka_jvms(tmp_path) - before
    for pid in leftover:  # do not leak into the rest of the session even when the test failed
        os.killpg(pid, signal.SIGKILL)
    assert not leftover, f"broker processes left behind: {sorted(leftover)}"


# ----------------------------------------------------------------------------------------------------------


def test_cli_help() -> None:
    runner = CliRunner()
    result = runner.invoke(kafka, ["--help"])
    assert result.exit_code == 0, result.output
    assert "KRaft" in result.output
    for command in ("up", "down", "status"):
        sub = runner.invoke(kafka, [command, "--help"])
        assert sub.exit_code == 0, sub.output
        assert "--state-dir" in sub.output


def test_status_of_empty_state_dir(tmp_path: Path) -> None:
    result = CliRunner().invoke(kafka, ["status", "--state-dir", str(tmp_path / "nothing")])
    assert result.exit_code == 1, result.output
    assert "not running" in result.output
    assert local_kafka.down(tmp_path / "nothing") is False


def test_server_properties_render(tmp_path: Path) -> None:
    broker = LocalKafka(tmp_path, extra_config={"num.partitions": 4, "log.retention.ms": 1000})
    broker.port, broker.controller_port = 19092, 19093
    broker._write_server_properties()
    props = dict(
        line.split("=", 1)
        for line in (tmp_path / "server.properties").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:19093"
    assert "controller.quorum.voters" not in props  # `format --standalone` refuses it
    assert props["log.dirs"] == str(tmp_path / "data")
    assert props["num.partitions"] == "4"  # overridden in place, not duplicated
    assert props["log.retention.ms"] == "1000"  # appended
    assert props["compression.type"] == "snappy"
    assert props["auto.create.topics.enable"] == "false"
    assert props["offsets.topic.replication.factor"] == "1"


def test_new_cluster_id_is_a_kafka_uuid() -> None:
    import base64

    for _ in range(200):
        cid = local_kafka.new_cluster_id()
        assert len(cid) == 22 and not cid.startswith("-")
        assert len(base64.urlsafe_b64decode(cid + "==")) == 16


# ---- real brokers ------------------------------------------------------------------------------------------


@pytest.mark.kafka
@pytest.mark.slow
def test_local_kafka_produce_consume_and_stop(no_leftover_brokers) -> None:
    topic = f"roundtrip-{uuid.uuid4().hex[:8]}"
    with LocalKafka(heap="512m") as broker:
        pid, state_dir = broker.pid, broker.state_dir
        assert pid is not None and _alive(pid)
        assert broker.bootstrap == f"127.0.0.1:{broker.port}"
        info = json.loads((state_dir / "broker.json").read_text())
        assert info["pid"] == pid and info["bootstrap"] == broker.bootstrap
        assert info["kafka_version"].startswith("4.")
        assert Path(info["log_dir"]).is_dir()
        print(f"\nlocal Kafka start timings: {broker.timings}")

        create_topic(broker.bootstrap, topic, partitions=2, config={"retention.ms": "3600000"})
        with pytest.raises(LocalKafkaError, match="already exists"):
            create_topic(broker.bootstrap, topic, partitions=2)
        create_topic(broker.bootstrap, topic, partitions=2, exist_ok=True)

        producer = Producer(
            {"bootstrap.servers": broker.bootstrap, "enable.idempotence": True, "log_level": 0}
        )
        producer.produce(topic, key=b"k", value=b"hello local kafka")
        assert producer.flush(15) == 0
        del producer

        consumer = Consumer(
            {
                "bootstrap.servers": broker.bootstrap,
                "group.id": f"g-{topic}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "log_level": 0,
            }
        )
        try:
            consumer.subscribe([topic])
            deadline = time.monotonic() + 30
            got = None
            while got is None and time.monotonic() < deadline:
                msg = consumer.poll(1.0)
                if msg is not None and msg.error() is None:
                    got = msg
        finally:
            consumer.close()
        assert got is not None, "the produced message was not consumed back"
        assert (got.key(), got.value()) == (b"k", b"hello local kafka")

        server_log = broker.server_log.read_text()
        assert "Kafka Server started" in server_log  # the broker logs through log4j2 into the file
    assert broker.pid is None
    assert not _alive(pid), f"broker pid {pid} still exists after stop()"
    assert not state_dir.exists(), "the temporary state dir was not removed"
    print(f"local Kafka stop took {broker.timings['stop_s']:.2f} s")
    broker.stop()  # idempotent


@pytest.mark.kafka
@pytest.mark.slow
def test_cli_up_status_down(tmp_path: Path, no_leftover_brokers) -> None:
    state = tmp_path / "state"
    first = _cli("up", "--state-dir", str(state), "--heap", "512m")
    assert first.returncode == 0, first.stdout + first.stderr
    bootstrap = first.stdout.strip().splitlines()[-1]
    host, port = bootstrap.rsplit(":", 1)
    assert host == "127.0.0.1" and port.isdigit()
    # the CLI process has exited; the detached broker keeps answering
    assert _answers_metadata(bootstrap)
    pid = json.loads((state / "broker.json").read_text())["pid"]

    status = _cli("status", "--state-dir", str(state), "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    info = json.loads(status.stdout)
    assert info["running"] and info["answering"] and info["pid"] == pid and info["bootstrap"] == bootstrap

    again = _cli("up", "--state-dir", str(state))  # reuses the healthy broker
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.strip().splitlines()[-1] == bootstrap
    assert "already running" in again.stdout

    down = _cli("down", "--state-dir", str(state))
    assert down.returncode == 0, down.stdout + down.stderr
    assert _wait_gone(pid, 5), f"broker pid {pid} still running after `down`"
    assert not (state / "broker.json").exists()

    after = _cli("status", "--state-dir", str(state))
    assert after.returncode == 1, after.stdout
    assert _cli("down", "--state-dir", str(state)).stdout.startswith("no broker running")


@pytest.mark.kafka
@pytest.mark.slow
def test_broker_dies_with_the_process_that_started_it(tmp_path: Path, no_leftover_brokers) -> None:
    # The child starts the broker from a short-lived thread: PR_SET_PDEATHSIG follows the forking *thread*,
    # so this also checks that LocalKafka forks from its long-lived spawner thread.
    child_code = textwrap.dedent(
        """
        import sys, threading, time
        from ingest_platform.dev.local_kafka import LocalKafka

        broker = LocalKafka(sys.argv[1], heap="512m")
        starter = threading.Thread(target=broker.start)
        starter.start()
        starter.join()
        print(broker.pid, broker.state_dir, flush=True)
        time.sleep(600)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", child_code, str(tmp_path / "child-broker")],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        line = child.stdout.readline()
        assert line, "the child did not start a broker"
        pid = int(line.split()[0])
        time.sleep(0.5)
        assert _alive(pid), "the broker died while its parent was alive (and its starter thread had exited)"
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        t0 = time.monotonic()
        assert _wait_gone(pid, 20), f"broker pid {pid} survived the SIGKILL of the process that started it"
        print(f"\nbroker exited {time.monotonic() - t0:.1f} s after its parent was SIGKILLed")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()


@pytest.mark.kafka
@pytest.mark.slow
def test_start_retries_once_when_a_chosen_port_was_taken(monkeypatch, no_leftover_brokers) -> None:
    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    taken = blocker.getsockname()[1]
    real_free_ports = local_kafka._free_ports
    picks: list[list[int]] = []

    def first_pick_is_taken(n: int) -> list[int]:
        ports = real_free_ports(n)
        if not picks:
            ports[1] = taken  # the CONTROLLER listener cannot bind: the race the retry is for
        picks.append(ports)
        return ports

    monkeypatch.setattr(local_kafka, "_free_ports", first_pick_is_taken)
    try:
        with LocalKafka(heap="512m") as broker:
            assert len(picks) == 2
            assert taken not in (broker.port, broker.controller_port)
            assert _answers_metadata(broker.bootstrap)
    finally:
        blocker.close()


@pytest.mark.kafka
def test_bad_config_fails_fast_with_the_kafka_message() -> None:
    with pytest.raises(LocalKafkaError, match=r"log\.segment\.bytes: Value must be at least"):
        LocalKafka(extra_config={"log.segment.bytes": 10}).start()
