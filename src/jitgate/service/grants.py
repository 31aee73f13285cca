"""Rule-scoped grants as the service uses them: which one covers an action, and views.

The grants table mirrors every grant a request was issued (see
:meth:`ApprovalService._write`). A RULE grant additionally covers, for its time
box, further actions of the same requester on the same target and environment
whose matched rules it was approved for; :func:`covering_grant` finds such a
grant and lets the pure :func:`jitgate.approvals.check_scope` have the last
word, so the service can never be more permissive than the core.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from jitgate.actions.model import Action
from jitgate.approvals import Grant, GrantScope, scope_allows
from jitgate.policy import Decision, Outcome
from jitgate.service.views import iso
from jitgate.store import GrantRepository, GrantRow


def domain_grant(row: GrantRow) -> Grant:
    """The core's grant for a stored row (``ValueError`` for an unknown scope)."""
    return Grant(
        request_id=row.request_id,
        fingerprint=row.fingerprint,
        scope=GrantScope(row.scope),
        rule_ids=tuple(row.rule_ids),
        target=row.target,
        environment=row.environment,
        requester=row.requester,
        issued_at=row.issued_at,
        expires_at=row.expires_at,
        break_glass=row.break_glass,
        used_at=row.used_at,
        revoked_at=row.revoked_at,
        revoked_by=row.revoked_by,
        revoke_reason=row.revoke_reason,
    )


async def covering_grant(
    session: AsyncSession, action: Action, decision: Decision, now: datetime
) -> GrantRow | None:
    """The newest RULE grant that lets ``action`` (decided by ``decision``) go
    ahead at ``now`` without a new request, or None.

    Only a REQUIRE_APPROVAL can be satisfied by a grant; the final check is
    :func:`jitgate.approvals.scope_allows` (same requester, target,
    environment, rules covered, unrevoked, inside the time box).
    """
    if decision.outcome is not Outcome.REQUIRE_APPROVAL or not decision.rules:
        return None
    rows = await GrantRepository(session).active_rule_grants(
        action.actor.user,
        action.target,
        now,
        environment=action.environment,
        rule_ids=decision.rules,
    )
    for row in rows:
        try:
            grant = domain_grant(row)
        except ValueError:
            continue  # an unreadable grant covers nothing
        if scope_allows(grant, action, decision, now):
            return row
    return None


def applied_grant(row: GrantRow) -> dict[str, Any]:
    """What a submission (or evaluation) says about the grant that allows it."""
    return {"id": row.id, "request_id": row.request_id, "expires_at": iso(row.expires_at)}


def grant_active(row: GrantRow, now: datetime) -> bool:
    """Still usable at ``now``: unrevoked, inside its window, and (ACTION scope) unused."""
    return (
        row.revoked_at is None
        and row.issued_at <= now < row.expires_at
        and (row.scope == GrantScope.RULE.value or row.used_at is None)
    )


def grant_view(row: GrantRow, now: datetime) -> dict[str, Any]:
    """The JSON view of a grant (docs/api.md, "Grants")."""
    return {
        "id": row.id,
        "request_id": row.request_id,
        "scope": row.scope,
        "requester": row.requester,
        "target": row.target,
        "environment": row.environment,
        "rules": list(row.rule_ids),
        "fingerprint": row.fingerprint,
        "issued_at": iso(row.issued_at),
        "expires_at": iso(row.expires_at),
        "break_glass": row.break_glass,
        "used_at": iso(row.used_at),
        "revoked_at": iso(row.revoked_at),
        "revoked_by": row.revoked_by,
        "revoke_reason": row.revoke_reason,
        "active": grant_active(row, now),
    }
