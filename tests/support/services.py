"""Real services for integration tests: a redis-server of our own, a PostgreSQL database of our own."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql

PG_HOST = os.environ.get("PANIC_METRICS_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("PANIC_METRICS_TEST_PG_PORT", "5432"))
PG_ROLE = os.environ.get("PANIC_METRICS_TEST_PG_ROLE", "panic_metrics_test")
PG_PASSWORD = os.environ.get("PANIC_METRICS_TEST_PG_PASSWORD", "panic_metrics_test")


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(predicate: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll `predicate` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


# What the README recommends for a production broker: every write appended and
# fsynced once a second, and writes refused rather than keys evicted when full.
PRODUCTION_PERSISTENCE = ("--appendonly", "yes", "--appendfsync", "everysec", "--maxmemory-policy", "noeviction")


class RedisServer:
    """A redis-server process on its own port and directory; no persistence unless `persistence` is given."""

    def __init__(self, directory: Path, port: int | None = None, persistence: tuple[str, ...] = ()) -> None:
        self.port = port or free_port()
        self.directory = directory
        self.persistence = persistence
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: run `make services` (or `make test`)")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                *self.persistence,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._answers, timeout=10, what=f"redis-server on port {self.port}")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


class PostgresDatabase:
    """A database created for this test run with the test role, dropped afterwards."""

    def __init__(self) -> None:
        self.name = f"panic_metrics_test_{uuid.uuid4().hex[:12]}"

    def _admin(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            host=PG_HOST, port=PG_PORT, user=PG_ROLE, password=PG_PASSWORD, dbname="postgres", autocommit=True
        )

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://{PG_ROLE}:{PG_PASSWORD}@{PG_HOST}:{PG_PORT}/{self.name}"

    def create(self) -> None:
        try:
            with self._admin() as connection:
                connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))
        except psycopg.OperationalError as exc:
            raise RuntimeError(
                f"cannot reach PostgreSQL as {PG_ROLE}@{PG_HOST}:{PG_PORT}: run `make services` (or `make test`)"
            ) from exc

    def drop(self) -> None:
        with self._admin() as connection:
            connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.name)))


PG_BIN = Path(os.environ.get("PANIC_METRICS_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


class PrivateCluster:
    """A PostgreSQL cluster of this test run only, for faults that stop or restart the server.

    The machine's cluster is shared with other runs and must never be stopped;
    this one lives in a temporary directory owned by the `postgres` user
    (postgres refuses to run as root) on a free port, trusting local logins.
    """

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        # Its own directory under /tmp: a test's tmp_path is private to root.
        self.directory = Path(tempfile.mkdtemp(prefix="panic-metrics-pg-"))
        self.data = self.directory / "data"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, *argv: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        done = subprocess.run([*prefix, *argv], capture_output=True, text=True, check=False)
        if done.returncode:
            raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr.strip()}")

    def init(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
        self._as_postgres(str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.directory / "postgres.log")
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", log, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def destroy(self) -> None:
        if self.running():
            self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)


@contextmanager
def silent_listener(port: int) -> Iterator[None]:
    """A TCP listener on `port` that accepts connections and never sends a byte (a hung broker)."""
    server = socket.create_server(("127.0.0.1", port))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)
        for connection in accepted:
            connection.close()
        server.close()
