"""Schema migrations: bring a database to the schema this version expects.

``jitgate serve`` and the admin commands call :func:`migrate` at start. It is
idempotent, runs in one transaction, and concurrent callers serialize (an
advisory lock on PostgreSQL, the write lock on SQLite).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from jitgate.store.database import Database

MIGRATIONS_DIR = Path(__file__).resolve().with_name("migrations")


def alembic_config() -> Config:
    """An Alembic configuration for the packaged migrations (no ini file needed)."""
    cfg = Config()
    # ConfigParser interpolates '%': escape it in the path.
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    cfg.set_main_option("path_separator", "os")
    return cfg


def head_revision() -> str:
    """The newest revision the packaged migrations know."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "no migrations packaged"
    return head


async def migrate(target: Database | str, revision: str = "head") -> None:
    """Upgrade the database (a :class:`Database` or a URL) to ``revision``."""

    def upgrade(connection: Connection) -> None:
        cfg = alembic_config()
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)

    async with _database(target) as db:
        await _run(db, upgrade)


async def downgrade(target: Database | str, revision: str) -> None:
    """Downgrade to ``revision`` (``"base"``: drop everything). Destroys data."""

    def run(connection: Connection) -> None:
        cfg = alembic_config()
        cfg.attributes["connection"] = connection
        command.downgrade(cfg, revision)

    async with _database(target) as db:
        await _run(db, run)


async def current_revision(target: Database | str) -> str | None:
    """The revision the database is at; ``None`` for an empty database."""
    result: list[str | None] = []

    def read(connection: Connection) -> None:
        result.append(MigrationContext.configure(connection).get_current_revision())

    async with _database(target) as db, db.engine.connect() as connection:
        await connection.run_sync(read)
    return result[0]


#: Alembic keeps the running migration environment in module globals
#: (``alembic.context``, ``alembic.op``), so two migrations in one process
#: must not overlap, whatever event loop or thread they run on. Processes
#: serialize in the database (see ``migrations/env.py``).
_PROCESS_LOCK = threading.Lock()


async def _run(db: Database, fn: Callable[[Connection], None]) -> None:
    # Poll rather than block: blocking would stall this event loop, and with
    # it a migration of the same loop that holds the lock.
    while not _PROCESS_LOCK.acquire(blocking=False):
        await asyncio.sleep(0.02)
    try:
        async with db.engine.begin() as connection:
            await connection.run_sync(fn)
    finally:
        _PROCESS_LOCK.release()


@asynccontextmanager
async def _database(target: Database | str) -> AsyncIterator[Database]:
    if isinstance(target, Database):
        yield target
        return
    db = Database(target)
    try:
        yield db
    finally:
        await db.close()
