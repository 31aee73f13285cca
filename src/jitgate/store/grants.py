"""Grants: what a satisfied approval chain authorizes, stored for single use.

:meth:`GrantRepository.consume` is the single-use gate: one conditional UPDATE
(unused, unrevoked, inside its window) whose row count says whether this
caller got the grant. Concurrent consumers serialize on the row (PostgreSQL
re-checks the condition after the first commits) or on the database write
lock (SQLite), so exactly one wins.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from jitgate.store._common import aware, fetch, insert_for, new_id, write
from jitgate.store.errors import DuplicateError, InvalidValueError
from jitgate.store.tables import GrantTable

#: ``scope`` values (the domain's GrantScope values).
SCOPE_ACTION: Final = "action"
SCOPE_RULE: Final = "rule"


def new_grant_id() -> str:
    """``grt_`` + 20 URL-safe random characters (120 bits)."""
    return new_id("grt_", 15)


@dataclass(frozen=True, slots=True, kw_only=True)
class GrantRow:
    id: str
    request_id: str
    fingerprint: str
    #: ``"action"`` (this fingerprinted action, once) or ``"rule"`` (time box).
    scope: str
    requester: str
    target: str
    environment: str
    rule_ids: tuple[str, ...]
    issued_at: datetime
    expires_at: datetime
    break_glass: bool = False
    used_at: datetime | None = None
    revoked_at: datetime | None = None
    revoked_by: str | None = None
    revoke_reason: str = ""


class GrantRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def insert(self, row: GrantRow) -> None:
        """Store a new grant. :class:`DuplicateError` if the id is taken."""
        if str(row.scope) not in (SCOPE_ACTION, SCOPE_RULE):
            raise InvalidValueError(f"unknown grant scope {row.scope!r}")
        issued_at = aware(row.issued_at, "issued_at")
        expires_at = aware(row.expires_at, "expires_at")
        if expires_at <= issued_at:
            raise InvalidValueError("a grant must expire after it is issued")
        stmt = (
            insert_for(self.session, GrantTable)
            .values(
                id=row.id,
                request_id=row.request_id,
                fingerprint=row.fingerprint,
                scope=str(row.scope),
                requester=row.requester,
                target=row.target,
                environment=row.environment,
                rule_ids=list(row.rule_ids),
                issued_at=issued_at,
                expires_at=expires_at,
                break_glass=row.break_glass,
                used_at=_maybe(row.used_at, "used_at"),
                revoked_at=_maybe(row.revoked_at, "revoked_at"),
                revoked_by=row.revoked_by,
                revoke_reason=row.revoke_reason,
            )
            .on_conflict_do_nothing(index_elements=["id"])
        )
        if await write(self.session, stmt) != 1:
            raise DuplicateError(f"grant {row.id!r} already exists")

    async def get(self, grant_id: str) -> GrantRow | None:
        found = (
            await fetch(self.session, select(GrantTable).where(GrantTable.id == grant_id))
        ).scalar_one_or_none()
        return None if found is None else _grant(found)

    async def for_request(self, request_id: str) -> list[GrantRow]:
        """The grants issued for a request, oldest first."""
        stmt = (
            select(GrantTable)
            .where(GrantTable.request_id == request_id)
            .order_by(GrantTable.issued_at, GrantTable.id)
        )
        return [_grant(found) for found in (await fetch(self.session, stmt)).scalars()]

    async def consume(self, grant_id: str, now: datetime) -> bool:
        """Use the grant at ``now``: True for exactly one caller, ever.

        False if it does not exist, was used or revoked, or ``now`` is outside
        ``[issued_at, expires_at)``.
        """
        now = aware(now, "now")
        stmt = (
            update(GrantTable)
            .where(
                GrantTable.id == grant_id,
                GrantTable.used_at.is_(None),
                GrantTable.revoked_at.is_(None),
                GrantTable.issued_at <= now,
                GrantTable.expires_at > now,
            )
            .values(used_at=now)
        )
        return await write(self.session, stmt) == 1

    async def revoke(
        self, grant_id: str, now: datetime, *, by: str | None = None, reason: str = ""
    ) -> bool:
        """Revoke the grant; False if it does not exist or is already revoked."""
        now = aware(now, "now")
        stmt = (
            update(GrantTable)
            .where(GrantTable.id == grant_id, GrantTable.revoked_at.is_(None))
            .values(revoked_at=now, revoked_by=by, revoke_reason=reason)
        )
        return await write(self.session, stmt) == 1

    async def find(
        self,
        *,
        requester: str | None = None,
        active_at: datetime | None = None,
        limit: int = 100,
    ) -> list[GrantRow]:
        """Grants, newest first: of ``requester`` only, if given; with
        ``active_at``, only those still usable then (unrevoked, inside their
        window, and, for ACTION scope, unused)."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidValueError("limit must be a positive integer")
        stmt = select(GrantTable)
        if requester is not None:
            stmt = stmt.where(GrantTable.requester == requester)
        if active_at is not None:
            now = aware(active_at, "active_at")
            stmt = stmt.where(
                GrantTable.revoked_at.is_(None),
                GrantTable.issued_at <= now,
                GrantTable.expires_at > now,
                or_(GrantTable.scope == SCOPE_RULE, GrantTable.used_at.is_(None)),
            )
        stmt = stmt.order_by(GrantTable.issued_at.desc(), GrantTable.id.desc()).limit(limit)
        return [_grant(found) for found in (await fetch(self.session, stmt)).scalars()]

    async def active_rule_grants(
        self,
        requester: str,
        target: str,
        now: datetime,
        *,
        environment: str | None = None,
        rule_ids: Collection[str] | None = None,
    ) -> list[GrantRow]:
        """RULE-scope grants for ``requester`` on ``target`` valid at ``now``.

        Valid: not revoked and ``issued_at <= now < expires_at`` (whether the
        held action itself was used does not matter for the time box). With
        ``environment``, only grants for it; with ``rule_ids``, only grants
        covering all of them. Newest first.
        """
        now = aware(now, "now")
        stmt = select(GrantTable).where(
            GrantTable.requester == requester,
            GrantTable.target == target,
            GrantTable.scope == SCOPE_RULE,
            GrantTable.revoked_at.is_(None),
            GrantTable.issued_at <= now,
            GrantTable.expires_at > now,
        )
        if environment is not None:
            stmt = stmt.where(GrantTable.environment == environment)
        stmt = stmt.order_by(GrantTable.issued_at.desc(), GrantTable.id)
        grants = [_grant(found) for found in (await fetch(self.session, stmt)).scalars()]
        if rule_ids is not None:
            wanted = set(rule_ids)
            grants = [g for g in grants if wanted <= set(g.rule_ids)]
        return grants


def _maybe(value: datetime | None, what: str) -> datetime | None:
    return None if value is None else aware(value, what)


def _grant(found: GrantTable) -> GrantRow:
    return GrantRow(
        id=found.id,
        request_id=found.request_id,
        fingerprint=found.fingerprint,
        scope=found.scope,
        requester=found.requester,
        target=found.target,
        environment=found.environment,
        rule_ids=tuple(found.rule_ids),
        issued_at=found.issued_at,
        expires_at=found.expires_at,
        break_glass=found.break_glass,
        used_at=found.used_at,
        revoked_at=found.revoked_at,
        revoked_by=found.revoked_by,
        revoke_reason=found.revoke_reason,
    )
