"""The audit trail: events appended in the caller's transaction, read by ``seq``.

``seq`` orders the trail. Readers page with ``after_seq`` (the SSE stream, the
audit export), which is only sound if a smaller ``seq`` never becomes visible
after a larger one. A sequence alone does not give that on PostgreSQL: two
transactions may draw 7 and 8 and commit 8 first, and a reader that saw 8
then skips 7 forever. So appends serialize: on PostgreSQL an append takes a
transaction-scoped advisory lock (held until commit or rollback), on SQLite
every write transaction already holds the database write lock. Appending is
cheap, but the lock is held for the rest of the transaction: **append events
as the last writes of a transaction**, after the row updates they record,
so a transaction never waits for a row lock while holding the trail.

``prev_hash`` and ``hash`` are reserved for the hash chain (a later change).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, cast

from sqlalchemy import Table, func, insert, select, text
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession

from jitgate.store._common import aware, dialect_name
from jitgate.store.errors import InvalidValueError
from jitgate.store.tables import EventTable

EVENTS: Final = cast(Table, EventTable.__table__)

#: Key of the PostgreSQL advisory lock that serializes appends.
APPEND_LOCK_KEY: Final = 0x6A67617564697400  # "jgaudit\0"
#: Most events one :func:`list_events` call returns.
MAX_PAGE: Final = 10_000


@dataclass(frozen=True, slots=True, kw_only=True)
class EventRow:
    seq: int
    id: str
    at: datetime
    type: str
    actor: str | None
    request_id: str | None
    payload: dict[str, Any] = field(hash=False)
    prev_hash: str | None = None
    hash: str | None = None


async def append_event(
    session: AsyncSession,
    type: str,
    actor: str | None,
    request_id: str | None,
    payload: Mapping[str, Any],
    at: datetime,
) -> int:
    """Append an event in the caller's transaction; its ``seq``.

    The event becomes visible when (and if) the transaction commits.
    """
    if not type:
        raise InvalidValueError("an event needs a type")
    at = aware(at, "at")
    if dialect_name(session) == "postgresql":
        await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": APPEND_LOCK_KEY})
    # Core INSERT on the table (not the ORM entity), so the key comes back
    # through lastrowid on SQLite (no RETURNING needed: SQLite < 3.35 works).
    result = await session.execute(
        insert(EVENTS).values(
            id=str(uuid.uuid4()),
            at=at,
            type=type,
            actor=actor,
            request_id=request_id,
            payload=dict(payload),
        )
    )
    assert isinstance(result, CursorResult)
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


async def list_events(
    session: AsyncSession,
    *,
    request_id: str | None = None,
    after_seq: int = 0,
    limit: int = 1000,
) -> list[EventRow]:
    """Events with ``seq > after_seq`` (of one request, if given), oldest first."""
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidValueError(f"limit must be between 1 and {MAX_PAGE}")
    stmt = select(EventTable).where(EventTable.seq > after_seq)
    if request_id is not None:
        stmt = stmt.where(EventTable.request_id == request_id)
    stmt = stmt.order_by(EventTable.seq).limit(limit)
    rows = (await session.execute(stmt.execution_options(populate_existing=True))).scalars()
    return [_event(row) for row in rows]


async def last_seq(session: AsyncSession) -> int:
    """The highest ``seq`` visible to the transaction; 0 for an empty trail."""
    return (await session.execute(select(func.coalesce(func.max(EventTable.seq), 0)))).scalar_one()


def _event(row: EventTable) -> EventRow:
    return EventRow(
        seq=row.seq,
        id=row.id,
        at=row.at,
        type=row.type,
        actor=row.actor,
        request_id=row.request_id,
        payload=row.payload,
        prev_hash=row.prev_hash,
        hash=row.hash,
    )
