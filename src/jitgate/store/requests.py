"""Approval requests: the serialized domain request plus the columns queries need.

The store does not interpret ``state`` or ``decision``; the approval service
serializes the domain request into them and copies the queryable fields
(status, requester, deadlines ...) into columns.

Concurrency is optimistic: every row carries a ``version``, and
:meth:`RequestRepository.update` only writes if the version is still the one
the caller read. Two approvers racing on the last stage both compute a
transition from version N; the first update moves the row to N+1, the second
matches nothing and gets False, so exactly one transition happens.
"""

from __future__ import annotations

import builtins
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from jitgate.store._common import aware, fetch, insert_for, new_id, write
from jitgate.store.errors import DuplicateError, InvalidValueError
from jitgate.store.tables import RequestTable

#: Most rows one :meth:`RequestRepository.list` call returns.
MAX_PAGE = 1000


def new_request_id() -> str:
    """``req_`` + 20 URL-safe random characters (120 bits)."""
    return new_id("req_", 15)


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestRow:
    id: str
    status: str
    requester: str
    fingerprint: str
    kind: str
    environment: str
    target: str
    created_at: datetime
    updated_at: datetime
    expires_at: datetime
    #: The serialized domain request (opaque to the store).
    state: dict[str, Any] = field(hash=False)
    #: The serialized policy decision that held the action.
    decision: dict[str, Any] | None = field(default=None, hash=False)
    #: When the ticker must next look at the request; None: nothing pending.
    next_deadline: datetime | None = None
    version: int = 1


_MUTABLE = (
    "status",
    "requester",
    "fingerprint",
    "kind",
    "environment",
    "target",
    "updated_at",
    "expires_at",
    "next_deadline",
    "state",
    "decision",
)
_TIMES = ("created_at", "updated_at", "expires_at", "next_deadline")


class RequestRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def insert(self, row: RequestRow) -> None:
        """Store a new request. :class:`DuplicateError` if the id is taken."""
        values = _values(row)
        stmt = (
            insert_for(self.session, RequestTable)
            .values(
                id=row.id,
                created_at=values["created_at"],
                version=row.version,
                **{name: values[name] for name in _MUTABLE},
            )
            .on_conflict_do_nothing(index_elements=["id"])
        )
        if await write(self.session, stmt) != 1:
            raise DuplicateError(f"request {row.id!r} already exists")

    async def get(self, request_id: str) -> RequestRow | None:
        found = (
            await fetch(self.session, select(RequestTable).where(RequestTable.id == request_id))
        ).scalar_one_or_none()
        return None if found is None else _row(found)

    async def update(self, row: RequestRow, expected_version: int) -> bool:
        """Write ``row`` if the stored version is still ``expected_version``.

        The stored version becomes ``expected_version + 1`` (``row.version`` is
        ignored); ``id`` and ``created_at`` never change. False if another
        transaction got there first (or the request does not exist): re-read
        and decide again.
        """
        values = _values(row)
        stmt = (
            update(RequestTable)
            .where(RequestTable.id == row.id, RequestTable.version == expected_version)
            .values(version=expected_version + 1, **{name: values[name] for name in _MUTABLE})
        )
        return await write(self.session, stmt) == 1

    async def list(
        self,
        *,
        status: str | Collection[str] | None = None,
        requester: str | None = None,
        ids: Collection[str] | None = None,
        limit: int = 50,
        before_cursor: str | None = None,
    ) -> builtins.list[RequestRow]:
        """Requests, newest first (``created_at``, then ``id``, descending).

        ``before_cursor`` is the id of the last request of the previous page;
        the page continues after it. An unknown cursor gives an empty page.
        """
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidValueError(f"limit must be between 1 and {MAX_PAGE}")
        stmt = select(RequestTable)
        if status is not None:
            statuses = [status] if isinstance(status, str) else builtins.list(status)
            stmt = stmt.where(RequestTable.status.in_(statuses))
        if requester is not None:
            stmt = stmt.where(RequestTable.requester == requester)
        if ids is not None:
            stmt = stmt.where(RequestTable.id.in_(builtins.list(ids)))
        if before_cursor is not None:
            cursor_at = (
                select(RequestTable.created_at)
                .where(RequestTable.id == before_cursor)
                .scalar_subquery()
            )
            stmt = stmt.where(
                or_(
                    RequestTable.created_at < cursor_at,
                    and_(RequestTable.created_at == cursor_at, RequestTable.id < before_cursor),
                )
            )
        stmt = stmt.order_by(RequestTable.created_at.desc(), RequestTable.id.desc()).limit(limit)
        return [_row(found) for found in (await fetch(self.session, stmt)).scalars()]

    async def due(self, now: datetime, *, limit: int = 100) -> builtins.list[RequestRow]:
        """Requests whose ``next_deadline`` has passed at ``now``, earliest first."""
        now = aware(now, "now")
        stmt = (
            select(RequestTable)
            .where(RequestTable.next_deadline <= now)
            .order_by(RequestTable.next_deadline, RequestTable.id)
            .limit(limit)
        )
        return [_row(found) for found in (await fetch(self.session, stmt)).scalars()]


def _values(row: RequestRow) -> dict[str, Any]:
    values: dict[str, Any] = {name: getattr(row, name) for name in ("created_at", *_MUTABLE)}
    for name in _TIMES:
        if values[name] is not None:
            values[name] = aware(values[name], name)
    if not isinstance(row.state, dict):
        raise InvalidValueError("state must be a JSON object (dict)")
    if row.decision is not None and not isinstance(row.decision, dict):
        raise InvalidValueError("decision must be a JSON object (dict) or None")
    return values


def _row(found: RequestTable) -> RequestRow:
    return RequestRow(
        id=found.id,
        status=found.status,
        requester=found.requester,
        fingerprint=found.fingerprint,
        kind=found.kind,
        environment=found.environment,
        target=found.target,
        created_at=found.created_at,
        updated_at=found.updated_at,
        expires_at=found.expires_at,
        next_deadline=found.next_deadline,
        version=found.version,
        state=found.state,
        decision=found.decision,
    )
