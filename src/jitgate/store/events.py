"""The audit trail: events appended in the caller's transaction, read by ``seq``.

Every event is sealed into the hash chain (:mod:`jitgate.audit.chain`) as it
is appended: it gets ``seq`` = previous + 1 and ``prev_hash`` = the previous
event's hash. Both come from the head of the trail read under the append
lock, so appends serialize: on PostgreSQL an append takes a
transaction-scoped advisory lock (held until commit or rollback; several
server processes on one database still make one gap-free chain), on SQLite
every write transaction already holds the database write lock. A rolled-back
transaction takes its events with it and leaves no gap, because ``seq`` is
not drawn from a sequence.

The lock is held for the rest of the transaction: **append events as the
last writes of a transaction**, after the row updates they record, so a
transaction never waits for a row lock while holding the trail. Within one
transaction the head is remembered (``session.info``), so a transaction
appending several events reads it once.

Readers page with ``after_seq`` (the SSE stream, the audit export); because
appends serialize, a smaller ``seq`` never becomes visible after a larger one.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, cast

from sqlalchemy import Table, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from jitgate.audit.chain import GENESIS, seal
from jitgate.store._common import aware, dialect_name
from jitgate.store.errors import InvalidValueError
from jitgate.store.tables import AnchorTable, EventTable

EVENTS: Final = cast(Table, EventTable.__table__)

#: Key of the PostgreSQL advisory lock that serializes appends.
APPEND_LOCK_KEY: Final = 0x6A67617564697400  # "jgaudit\0"
#: Where a transaction remembers the head of the trail it appended to.
_HEAD_KEY: Final = "jitgate.audit.head"
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
    target: str | None = None
    environment: str | None = None


async def append_event(
    session: AsyncSession,
    type: str,
    actor: str | None,
    request_id: str | None,
    payload: Mapping[str, Any],
    at: datetime,
    *,
    target: str | None = None,
    environment: str | None = None,
) -> int:
    """Append an event in the caller's transaction; its ``seq``.

    The event becomes visible when (and if) the transaction commits.
    ``payload`` must be JSON data without floats that JSON cannot carry
    (NaN, infinities): anything else raises :class:`InvalidValueError`.
    """
    if not type:
        raise InvalidValueError("an event needs a type")
    at = aware(at, "at")
    head = session.info.get(_HEAD_KEY)
    if head is None:
        if dialect_name(session) == "postgresql":
            await session.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": APPEND_LOCK_KEY}
            )
        head = await chain_head(session)
    try:
        sealed = seal(
            seq=head[0] + 1,
            id=str(uuid.uuid4()),
            at=at,
            type=type,
            actor=actor,
            request_id=request_id,
            target=target,
            environment=environment,
            payload=payload,
            prev_hash=head[1],
        )
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidValueError(f"event payload is not JSON data: {exc}") from None
    await session.execute(
        insert(EVENTS).values(
            seq=sealed.seq,
            id=sealed.id,
            at=at,
            type=type,
            actor=actor,
            request_id=request_id,
            target=target,
            environment=environment,
            payload=dict(sealed.payload),
            prev_hash=sealed.prev_hash,
            hash=sealed.hash,
        )
    )
    session.info[_HEAD_KEY] = (sealed.seq, sealed.hash)
    return sealed.seq


async def chain_head(session: AsyncSession) -> tuple[int, str]:
    """``(seq, hash)`` of the newest event; the archive anchor or the genesis
    ``(0, GENESIS)`` when no event is stored."""
    row = (
        await session.execute(
            select(EventTable.seq, EventTable.hash).order_by(EventTable.seq.desc()).limit(1)
        )
    ).first()
    if row is not None:
        return int(row[0]), str(row[1] or GENESIS)
    anchor = (
        await session.execute(
            select(AnchorTable.seq, AnchorTable.hash).order_by(AnchorTable.seq.desc()).limit(1)
        )
    ).first()
    if anchor is not None:
        return int(anchor[0]), str(anchor[1])
    return 0, GENESIS


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
        target=row.target,
        environment=row.environment,
    )
