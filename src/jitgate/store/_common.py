"""Helpers shared by the repositories (not public)."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import TypeVarTuple

from sqlalchemy import Executable, Select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import CursorResult, Result
from sqlalchemy.ext.asyncio import AsyncSession

from jitgate.store.errors import InvalidValueError
from jitgate.store.tables import Base

_Ts = TypeVarTuple("_Ts")

#: Longest user, group and token name the store accepts.
MAX_NAME_LENGTH = 200


def utcnow() -> datetime:
    return datetime.now(UTC)


def aware(value: datetime, what: str = "time") -> datetime:
    """``value`` in UTC; the store refuses naive datetimes."""
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise InvalidValueError(f"{what} must be a datetime with a time zone, got {value!r}")
    return value.astimezone(UTC)


async def fetch(session: AsyncSession, stmt: Select[*_Ts]) -> Result[*_Ts]:
    """Run a SELECT whose rows reflect the database, not the session's identity map.

    An ORM session hands back an already loaded object as it was loaded; under
    READ COMMITTED another transaction may have changed the row since (a
    version bump, a consumed grant). ``populate_existing`` reloads it.
    """
    return await session.execute(stmt.execution_options(populate_existing=True))


async def write(session: AsyncSession, stmt: Executable) -> int:
    """Run an INSERT / UPDATE / DELETE; the number of rows it affected.

    Loaded ORM objects are left alone (:func:`fetch` reloads anyway), which
    keeps the statement exactly what was written (no extra SELECT or
    RETURNING to synchronize the session).
    """
    result = await session.execute(stmt, execution_options={"synchronize_session": False})
    assert isinstance(result, CursorResult)
    return result.rowcount


def check_name(kind: str, value: str) -> str:
    """A user, group or token name: non-empty, bounded, printable."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidValueError(f"{kind} name must be a non-empty string")
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidValueError(f"{kind} name longer than {MAX_NAME_LENGTH} characters")
    if not value.isprintable():
        raise InvalidValueError(f"{kind} name {value!r} contains control characters")
    return value


def new_id(prefix: str, nbytes: int = 15) -> str:
    """``prefix`` + URL-safe random text (``nbytes`` of entropy, 4/3 as many chars)."""
    return prefix + secrets.token_urlsafe(nbytes)


def insert_for(session: AsyncSession, table: type[Base]) -> postgresql.Insert | sqlite.Insert:
    """A dialect-specific INSERT (which has ``on_conflict_do_*``) into ``table``."""
    if dialect_name(session) == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def dialect_name(session: AsyncSession) -> str:
    bind = session.bind
    assert bind is not None, "the session must be bound to an engine"
    return bind.dialect.name
