"""Alembic environment for the jitgate store.

Three ways in:

* :func:`jitgate.store.migrate` passes an open (synchronous facade of an
  asyncio) connection in ``config.attributes["connection"]``, inside a
  transaction it commits;
* the ``alembic`` command line (developers) gives a URL with ``-x url=...``,
  ``JITGATE_DATABASE_URL`` or ``sqlalchemy.url``; the environment then opens
  its own asyncio engine;
* ``--sql`` (offline) renders the SQL for that URL instead of running it.

``render_as_batch`` makes ALTERs work on SQLite (table copy and rename).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, Literal

from alembic import context
from sqlalchemy import JSON
from sqlalchemy.engine import Connection

from jitgate.store.database import Database, database_url
from jitgate.store.tables import UTCDateTime, metadata

#: Key of the PostgreSQL advisory lock that serializes concurrent migrations
#: (two servers starting at once); SQLite serializes through BEGIN IMMEDIATE.
MIGRATION_LOCK_KEY = 0x6A6974676174  # "jitgat"

config = context.config


def _url() -> str:
    url = (
        context.get_x_argument(as_dictionary=True).get("url")
        or os.environ.get("JITGATE_DATABASE_URL")
        or config.get_main_option("sqlalchemy.url")
    )
    if not url:
        raise SystemExit("no database URL: pass -x url=... or set JITGATE_DATABASE_URL")
    return database_url(url, Path.cwd())


def render_item(type_: str, obj: Any, autogen_context: Any) -> str | Literal[False]:
    """Render application types as plain SQLAlchemy types in new revisions.

    A revision must not import jitgate: it has to keep working when the
    application types change.
    """
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    if type_ == "type" and isinstance(obj, JSON):
        return "sa.JSON()"
    return False


def _run(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=True,
        compare_type=True,
        render_item=render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_with_own_engine(url: str) -> None:
    db = Database(url)
    try:
        async with db.engine.begin() as connection:
            await connection.run_sync(_run)
    finally:
        await db.close()


def _run_offline(url: str) -> None:
    context.configure(
        url=url,
        target_metadata=metadata,
        render_as_batch=True,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    _run_offline(_url())
elif (shared := config.attributes.get("connection")) is not None:
    _run(shared)
else:
    asyncio.run(_run_with_own_engine(_url()))
