"""A private MariaDB 10.11 server (Debian's ``mariadb-server``) with a row-based binlog: the real CDC source.

Debezium's MariaDB connector reads the binlog, so the server runs with ``--log-bin --binlog-format=ROW
--binlog-row-image=FULL --server-id=1``. Nothing system-wide is touched: the package's service is never
started (``make system-deps`` installs it with starts refused); this module initialises its own datadir in a
temporary directory, listens on a free loopback port and a socket inside that directory, and is stopped by
``stop()`` — or by the kernel when the Python process dies (``PR_SET_PDEATHSIG``, as the local broker)::

    with LocalMariaDB() as db:
        db.execute("CREATE DATABASE inventory")
        ...   # db.host, db.port, db.user, db.password for clients (Debezium, pymysql)

Every wait has a deadline; a failure names what failed and quotes the server's error log.
Administration uses the ``mariadb`` client binary (no Python driver needed here).
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from ingest_platform.dev.local_kafka import _free_ports, spawn
from ingest_platform.dev.local_process import ChildService, run_captured, tail_text

_log = logging.getLogger(__name__)

_TEMP_PREFIX = "ingest-mariadb-"
#: The Debian packages that hold the binaries (deploy/local/debian-packages.txt).
_PACKAGES = "mariadb-server and mariadb-client"


class LocalMariaDBError(RuntimeError):
    """The local MariaDB could not be initialised, started, reached or stopped."""


def _binary(name: str) -> str:
    for folder in ("/usr/sbin", "/usr/bin"):
        candidate = Path(folder) / name
        if candidate.is_file():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise LocalMariaDBError(
            f"`{name}` is not installed: the local CDC source needs Debian's {_PACKAGES} "
            "(listed in deploy/local/debian-packages.txt; run `make system-deps`)"
        )
    return found


class LocalMariaDB(ChildService):
    """One private ``mariadbd``; a context manager (``start()`` on enter, ``stop()`` on exit).

    The datadir lives in a fresh temporary directory that ``stop()`` deletes. ``user``/``password`` is one
    account for Debezium and the tests, over TCP: all privileges, which include what the connector needs to
    snapshot and read the binlog (SELECT, RELOAD, SHOW DATABASES, REPLICATION SLAVE/CLIENT, LOCK TABLES).
    """

    WHAT = "local MariaDB"  # stop(): SIGTERM is a clean InnoDB shutdown

    def __init__(self, *, startup_timeout_s: float = 60.0, die_with_parent: bool = True,
                 buffer_pool: str = "64M") -> None:  # fmt: skip
        self.startup_timeout_s = startup_timeout_s
        self.die_with_parent = die_with_parent
        self.buffer_pool = buffer_pool
        self.host = "127.0.0.1"
        self.port: int | None = None
        self.user = "cdc"
        self.password = secrets.token_hex(12)
        self.timings: dict[str, float] = {}
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # -- paths ------------------------------------------------------------------------------------------------

    @property
    def state_dir(self) -> Path:
        if self._dir is None:
            raise LocalMariaDBError("the MariaDB server is not started")
        return self._dir

    @property
    def socket(self) -> Path:
        return self.state_dir / "mysqld.sock"

    @property
    def error_log(self) -> Path:
        return self.state_dir / "error.log"

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> LocalMariaDB:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = f"{self.host}:{self.port}, pid={self._proc.pid}" if self.is_running() else "stopped"
        return f"LocalMariaDB({where})"

    # -- start ------------------------------------------------------------------------------------------------

    def start(self) -> LocalMariaDB:
        """Initialise a datadir, start the server, create the CDC account; no-op when running."""
        if self.is_running():
            return self
        t0 = time.monotonic()
        server, install = _binary("mariadbd"), _binary("mariadb-install-db")
        _binary("mariadb")
        self._dir = Path(tempfile.mkdtemp(prefix=_TEMP_PREFIX))
        try:
            self._install(install)
            self.timings["install_s"] = time.monotonic() - t0
            self._launch(server)
            self._create_account()
        except BaseException:
            self._kill_now()
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
            raise
        self.timings["start_s"] = time.monotonic() - t0
        _log.info("local MariaDB up at %s:%s in %.1f s", self.host, self.port, self.timings["start_s"])
        return self

    def _user_option(self) -> list[str]:
        # mariadbd refuses to run as root unless told so explicitly; as any other user it needs nothing.
        return ["--user=root"] if os.geteuid() == 0 else []

    def _install(self, install: str) -> None:
        cmd = [install, "--no-defaults", f"--datadir={self.state_dir / 'data'}", "--skip-test-db",
               "--auth-root-authentication-method=normal", "--skip-name-resolve", *self._user_option()]  # fmt: skip
        try:
            proc = run_captured(cmd, 120)
        except subprocess.TimeoutExpired:
            raise LocalMariaDBError(f"mariadb-install-db did not finish within 120 s in {self.state_dir}") from None
        if proc.returncode != 0:
            raise LocalMariaDBError(
                f"mariadb-install-db failed (exit {proc.returncode}) in {self.state_dir}:\n{tail_text(proc.stdout)}"
            )

    def _launch(self, server: str) -> None:
        for attempt in (1, 2):
            self.port = _free_ports(1)[0]
            cmd = [
                server, "--no-defaults", *self._user_option(), f"--datadir={self.state_dir / 'data'}",
                f"--bind-address={self.host}", f"--port={self.port}", f"--socket={self.socket}",
                f"--pid-file={self.state_dir / 'mysqld.pid'}", f"--log-error={self.error_log}",
                f"--log-bin={self.state_dir / 'data' / 'binlog'}", "--binlog-format=ROW", "--binlog-row-image=FULL",
                "--server-id=1", "--skip-name-resolve", f"--innodb-buffer-pool-size={self.buffer_pool}",
                "--innodb-log-file-size=32M", "--max-connections=50", "--character-set-server=utf8mb4",
                "--collation-server=utf8mb4_unicode_ci", "--default-time-zone=+00:00", "--performance-schema=OFF",
            ]  # fmt: skip
            kwargs = {"cwd": self.state_dir, "stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL,
                      "stderr": subprocess.DEVNULL, "start_new_session": True, "close_fds": True}  # fmt: skip
            self._proc = spawn(cmd, kwargs, self.die_with_parent)
            deadline = time.monotonic() + self.startup_timeout_s
            why = self._wait_ready(deadline)
            if why is None:
                return
            self._kill_now()
            log = self._error_tail()
            if attempt == 1 and "Address already in use" in log:
                _log.warning("port %s was taken before MariaDB bound it; retrying", self.port)
                continue
            raise LocalMariaDBError(f"local MariaDB on {self.host}:{self.port} {why}. Error log tail:\n{log}")

    def _wait_ready(self, deadline: float) -> str | None:
        """None once the server answers a query; else why it is not up (exited, or the deadline passed)."""
        last = ""
        while True:
            if self._proc is None or self._proc.poll() is not None:
                return f"exited with code {self._proc.returncode if self._proc else '?'} while starting"
            if self.socket.exists():
                proc = self._client(["-e", "SELECT 1"], user="root", password=None, timeout_s=5, check=False)
                if proc.returncode == 0:
                    return None
                last = proc.stdout.strip()
            if time.monotonic() > deadline:
                return f"did not answer within {self.startup_timeout_s:.0f} s ({last or 'socket not created'})"
            time.sleep(0.2)

    def _create_account(self) -> None:
        self.execute(
            f"CREATE USER '{self.user}'@'%' IDENTIFIED BY '{self.password}'; "
            f"GRANT ALL PRIVILEGES ON *.* TO '{self.user}'@'%'; FLUSH PRIVILEGES;"
        )

    # -- use --------------------------------------------------------------------------------------------------

    def execute(self, sql: str, database: str | None = None, timeout_s: float = 60) -> str:
        """Run SQL as root through the socket; returns the client's tab-separated output."""
        args = (["--database", database] if database else []) + ["--batch", "-e", sql]
        return self._client(args, user="root", password=None, timeout_s=timeout_s).stdout

    def _client(self, args: list[str], *, user: str, password: str | None, timeout_s: float,
                check: bool = True) -> subprocess.CompletedProcess[str]:  # fmt: skip
        cmd = [_binary("mariadb"), "--no-defaults", f"--socket={self.socket}", f"--user={user}",
               "--default-character-set=utf8mb4", *([f"--password={password}"] if password else []), *args]  # fmt: skip
        try:
            proc = run_captured(cmd, timeout_s)
        except subprocess.TimeoutExpired:
            raise LocalMariaDBError(
                f"the mariadb client did not finish within {timeout_s:.0f} s: {args[-1][:200]}"
            ) from None
        if check and proc.returncode != 0:
            raise LocalMariaDBError(f"SQL failed on the local MariaDB ({self.host}:{self.port}): {args[-1][:300]}\n"
                                    f"{tail_text(proc.stdout)}")  # fmt: skip
        return proc

    def connect_kwargs(self, database: str | None = None) -> dict[str, object]:
        """Arguments for a Python client (``pymysql.connect(**db.connect_kwargs("inventory"))``)."""
        return {"host": self.host, "port": self.port, "user": self.user, "password": self.password,
                "database": database, "charset": "utf8mb4", "connect_timeout": 10, "read_timeout": 60,
                "write_timeout": 60}  # fmt: skip


    def _error_tail(self) -> str:
        try:
            return tail_text(self.error_log.read_text(errors="replace"), 25)
        except OSError:
            return f"(no error log at {self.error_log})"
