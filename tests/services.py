"""Real Redis and PostgreSQL servers on loopback ports, started by the tests that need them.

Why real servers: the scaled-out shape (several ``babysit serve`` processes sharing live
channels through Redis and one PostgreSQL store) is only shown working against the engines
it runs on. Each server is Debian's binary in a temporary folder on a free loopback port,
stopped at the end of the session. A machine without the binaries skips these tests,
unless ``BABYSIT_REQUIRE_SERVICES=1`` (CI, which installs them) makes that a failure.

PostgreSQL refuses to run as root: as root, the cluster belongs to the ``postgres`` user
that Debian's package creates, and its folder lies outside pytest's root-only tmp folder.
Every test gets a database of its own (:func:`fresh_database`).
"""
from __future__ import annotations

import contextlib
import glob
import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

REQUIRED = os.environ.get("BABYSIT_REQUIRE_SERVICES") == "1"
START_TIMEOUT = 30.0


def missing(what: str):
    """Skip (or, where the services are required, fail) a test whose server binary is absent."""
    if REQUIRED:
        pytest.fail(f"{what} is not installed (BABYSIT_REQUIRE_SERVICES=1): apt-get install {what}")
    pytest.skip(f"{what} is not installed (apt-get install {what})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(ready, what: str, process: subprocess.Popen | None = None, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if ready():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} while starting")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start within {timeout:.0f} s")
        time.sleep(0.05)


def stop(process: subprocess.Popen, timeout: float = 10.0, sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ---------------------------------------------------------------------------------- Redis

@contextlib.contextmanager
def redis_server(port: int | None = None):
    """A Redis server on loopback ``port`` (None: a free one), nothing saved to disk; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        missing("redis-server")
    import redis

    port = port or free_port()
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--protected-mode", "yes"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: redis.Redis(port=port, socket_timeout=1).ping(), "redis-server", process)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(process)


# ----------------------------------------------------------------------------- PostgreSQL

def _postgres_bin() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


class Postgres:
    """A running PostgreSQL cluster: ``url(database)``, :meth:`create_database`, :meth:`restart`."""

    _numbers = itertools.count()

    def __init__(self, port: int, start, user: str = "babysit"):
        self.port, self.user = port, user
        self._start = start
        self.process = start()

    def stop(self) -> None:
        """PostgreSQL's fast shutdown (SIGINT): its clients' connections are closed at once."""
        stop(self.process, sig=signal.SIGINT)

    def restart(self) -> None:
        """Stop the server and start it again on the same port."""
        self.stop()
        self.process = self._start()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "babysit") -> str:
        """A new empty database; its URL."""
        import psycopg

        name = f"{prefix}_{os.getpid()}_{next(self._numbers)}"
        with psycopg.connect(self.url(), autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@contextlib.contextmanager
def postgres_server(**settings):
    """A PostgreSQL cluster in a temporary folder on a free loopback port (trust
    authentication, loopback only); yields a :class:`Postgres`. ``settings``: server
    settings (``fsync="off"`` for speed where durability is not what a test shows)."""
    bindir = _postgres_bin()
    if bindir is None:
        missing("postgresql")
    import psycopg

    as_root = os.geteuid() == 0
    folder = tempfile.mkdtemp(prefix="babysit-pg-")
    data = os.path.join(folder, "data")

    # as root, the processes themselves are the postgres user's (not a runuser in between, so
    # that the signals that stop the server reach it)
    as_user = {"user": "postgres", "group": "postgres", "extra_groups": []} if as_root else {}

    if as_root:
        os.chmod(folder, 0o755)
        shutil.chown(folder, "postgres", "postgres")
    port = free_port()
    subprocess.run([f"{bindir}/initdb", "-D", data, "-U", "babysit", "--auth=trust", "-E", "UTF8",
                    "--locale=C", "--no-sync"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                   **as_user)
    options = {"listen_addresses": "127.0.0.1", "port": str(port), "unix_socket_directories": folder,
               "max_connections": "300", **{k: str(v) for k, v in settings.items()}}
    args = [f"{bindir}/postgres", "-D", data, *(x for k, v in options.items() for x in ("-c", f"{k}={v}"))]
    url = f"postgresql://babysit@127.0.0.1:{port}/postgres"

    def start() -> subprocess.Popen:
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **as_user)
        try:
            wait_until(lambda: psycopg.connect(url, connect_timeout=1).close() is None, "postgres", process)
        except BaseException:
            stop(process)
            raise
        return process

    server = None
    try:
        server = Postgres(port, start)
        yield server
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres():
    with postgres_server(fsync="off", full_page_writes="off", synchronous_commit="off") as server:
        yield server


@pytest.fixture
def postgres_url(postgres):
    """The URL of a new empty database on the session's PostgreSQL server."""
    return postgres.create_database()


@pytest.fixture(scope="session")
def redis_url():
    with redis_server() as url:
        yield url
