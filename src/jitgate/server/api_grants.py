"""The ``/api/v1/grants`` routes: list grants, revoke one.

Like :mod:`jitgate.server.api`, nothing here decides: who may see or revoke a
grant is the service's business (:meth:`ApprovalService.list_grants`,
:meth:`ApprovalService.revoke_grant`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response
from pydantic import Field

from jitgate.server.api import ERRORS, context, view_response
from jitgate.server.auth import CurrentPrincipal
from jitgate.server.models import Body, View

GrantId = Annotated[str, Path(alias="id", description="The grant id (`grt_...`).")]


class RevokeBody(Body):
    reason: str = Field(description="Why the grant is withdrawn (required, not blank).")


class GrantView(View):
    """A grant (the ``grants`` table's row) as the caller may see it."""

    id: str
    request_id: str
    scope: str
    requester: str
    target: str
    environment: str
    rules: list[str]
    fingerprint: str
    issued_at: datetime
    expires_at: datetime
    break_glass: bool = False
    used_at: datetime | None = None
    revoked_at: datetime | None = None
    revoked_by: str | None = None
    revoke_reason: str = ""
    active: bool = Field(description="Usable now: unrevoked, unexpired, (action scope) unused.")


class GrantList(View):
    grants: list[GrantView]


router = APIRouter(prefix="/api/v1", responses=ERRORS, tags=["grants"])


@router.get("/grants", response_model=GrantList)
async def list_grants(
    request: Request,
    principal: CurrentPrincipal,
    active: Annotated[bool, Query(description="Only grants usable now.")] = False,
    mine: Annotated[bool, Query(description="Only my grants (admins, auditors).")] = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    """Grants, newest first: your own; admins and auditors see everybody's."""
    grants = await context(request).service.list_grants(
        principal, active=active, mine=mine, limit=limit
    )
    return view_response({"grants": grants})


@router.post("/grants/{id}/revoke", response_model=GrantView)
async def revoke_grant(
    request: Request, principal: CurrentPrincipal, grant_id: GrantId, body: RevokeBody
) -> Response:
    """Revoke a grant (its requester or an admin): it never applies again; an
    unused grant's request is cancelled."""
    grant = await context(request).service.revoke_grant(principal, grant_id, body.reason)
    return view_response(grant)
