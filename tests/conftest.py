"""Database fixtures: a migrated, empty :class:`jitgate.store.Database` per test.

``db`` runs a test on both backends:

* ``sqlite``: a copy of a database file migrated once per run (copying is
  much faster than migrating), in the test's ``tmp_path``;
* ``postgresql``: a database created for this run (``jitgate_test_<hex>``),
  migrated once, truncated before each test, dropped at the end. The server
  is ``postgresql://postgres@127.0.0.1:5432/postgres`` unless
  ``JITGATE_TEST_PG`` names another one (any database on it: the fixture
  connects there to create and drop its own).

PostgreSQL being down is an error, not a skip: the store's concurrency
guarantees are only tested for real there.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest
from sqlalchemy.engine import URL, make_url

from jitgate.store import Database, metadata, migrate

PG_ENV = "JITGATE_TEST_PG"
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_START_HINT = (
    "start the local server with "
    "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`, "
    f"or point {PG_ENV} at another one (postgresql://user@host:port/postgres)"
)

_T = TypeVar("_T")


def run_sync(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coro`` on a private event loop in a worker thread (safe inside a running loop)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _pg_server() -> URL:
    url = make_url(os.environ.get(PG_ENV) or DEFAULT_PG)
    url = url.set(drivername="postgresql")
    return url if url.database else url.set(database="postgres")


async def _pg_admin(server: URL, sql: str) -> None:
    conn = await asyncpg.connect(server.render_as_string(hide_password=False), timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def create_pg_database() -> tuple[URL, str]:
    """Create an empty database on the test server: ``(server URL, name)``."""
    server = _pg_server()
    name = f"jitgate_test_{secrets.token_hex(6)}"
    try:
        run_sync(_pg_admin(server, f'CREATE DATABASE "{name}"'))
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        where = server.render_as_string(hide_password=True)
        pytest.fail(
            f"PostgreSQL for the store tests is unreachable at {where}: "
            f"{type(exc).__name__}: {exc}; {PG_START_HINT}",
            pytrace=False,
        )
    return server, name


def drop_pg_database(server: URL, name: str) -> None:
    run_sync(_pg_admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """URL of a migrated PostgreSQL database that lives for the test run."""
    server, name = create_pg_database()
    try:
        url = server.set(database=name).render_as_string(hide_password=False)
        run_sync(migrate(url))
        yield url
    finally:
        drop_pg_database(server, name)


@pytest.fixture
def fresh_pg_url() -> Iterator[str]:
    """URL of an empty (not migrated) PostgreSQL database, dropped after the test."""
    server, name = create_pg_database()
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        drop_pg_database(server, name)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite database file, copied by each test that needs one."""
    path = tmp_path_factory.mktemp("sqlite-template") / "jitgate.db"
    run_sync(migrate(f"sqlite:///{path}"))
    # Closing the last connection checkpoints the WAL into the main file.
    assert not path.with_name(path.name + "-wal").exists()
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """URL of a migrated, empty database on each backend."""
    if request.param == "sqlite":
        path = tmp_path / "jitgate.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
async def db(backend_url: str) -> AsyncIterator[Database]:
    """A migrated, empty :class:`Database` (SQLite, then PostgreSQL)."""
    database = Database(backend_url)
    if database.backend == "postgresql":
        # DELETE beats TRUNCATE by far on tables this small (TRUNCATE swaps files).
        async with database.transaction() as session:
            for table in reversed(metadata.sorted_tables):
                await session.execute(table.delete())
    try:
        yield database
    finally:
        await database.close()
