"""A real PostgreSQL 15 for the key server's tests, started once per test session.

The server binaries come from Debian's ``postgresql-15`` package (``/usr/lib/postgresql/15/bin``;
``PAIRKIT_TEST_PG_BIN`` names another directory).  PostgreSQL refuses to run as root, so when
the tests run as root ``initdb`` and ``pg_ctl`` run as the ``postgres`` user (``runuser``).  The
cluster lives in a fresh temporary directory, trusts local connections, listens on a unix socket
in that directory only (no TCP port), and is stopped (``-m immediate``) and deleted when the
session ends.  Where none can be started (no psycopg, no binaries, no ``postgres`` user,
``initdb`` failing) the tests that need one are skipped, with the reason.

``postgres`` is the session fixture (a :class:`PgCluster`); ``pg_url`` gives each test its own
empty database.  Test modules import both (and list them in ``__all__``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_BIN = Path(os.environ.get("PAIRKIT_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
_names = itertools.count()


@dataclasses.dataclass
class PgCluster:
    """A running PostgreSQL: its socket directory, and a URL per database."""

    root: Path
    socket_dir: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.socket_dir}"

    def create_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        name = f"t{os.getpid()}_{next(_names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _as_postgres(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def why_unavailable() -> str | None:
    """Why no PostgreSQL can be started here (None: it may be; initdb can still fail)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -e '.[postgres]', as make does)"
    if not (PG_BIN / "initdb").is_file() or not (PG_BIN / "pg_ctl").is_file():
        return f"no PostgreSQL server binaries in {PG_BIN} (apt-get install postgresql-15)"
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            return "running as root without runuser, and PostgreSQL refuses to run as root"
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root with no 'postgres' user, and PostgreSQL refuses root"
    return None


class PgUnavailable(Exception):
    """No PostgreSQL can be started here (the text says why)."""


def _run(argv: list[str], what: str) -> None:
    done = subprocess.run(
        _as_postgres(argv), capture_output=True, text=True, timeout=120, check=False,
    )
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise PgUnavailable(f"cannot start PostgreSQL: {what} failed: {' / '.join(tail)}")


@contextlib.contextmanager
def running_cluster() -> Iterator[PgCluster]:
    """A fresh PostgreSQL cluster in a temporary directory, stopped and deleted on exit;
    :class:`PgUnavailable` where none can start (also used by bench/ttp_scale.py)."""
    why = why_unavailable()
    if why is not None:
        raise PgUnavailable(why)
    root = Path(tempfile.mkdtemp(prefix="pairkit-pg-"))
    data, log = root / "data", root / "log"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    started = False
    try:
        _run([str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
              "-E", "UTF8", "--no-sync"], "initdb")
        _run([str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60",
              "-o", f"-k {root} -c listen_addresses='' -F -c max_connections=200",
              "start"], "pg_ctl start")
        started = True
        yield PgCluster(root, root)
    finally:
        if started:
            with contextlib.suppress(Exception):
                subprocess.run(
                    _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate",
                                  "-w", "stop"]),
                    capture_output=True, timeout=60, check=False,
                )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PgCluster]:
    """A PostgreSQL cluster for the whole session (skips the test where none can start)."""
    try:
        cluster = running_cluster()
        pg = cluster.__enter__()
    except PgUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield pg
    finally:
        cluster.__exit__(None, None, None)


@pytest.fixture
def pg_url(postgres: PgCluster) -> str:
    """The URL of a fresh, empty database on the session's cluster."""
    return postgres.create_database()
