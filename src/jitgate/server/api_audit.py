"""``GET /api/v1/audit``: the trail for auditors and admins, filtered, cursor-paged."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict

from jitgate.server.api import ERRORS, context
from jitgate.server.auth import CurrentPrincipal
from jitgate.service import ServiceError
from jitgate.store.audit import EventFilter, event_page

router = APIRouter(prefix="/api/v1", tags=["audit"])

#: Largest page of events.
MAX_AUDIT_LIMIT = 1000


class AuditEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seq: int
    id: str
    at: str
    type: str
    actor: str | None
    request_id: str | None
    target: str | None
    environment: str | None
    payload: dict[str, Any]
    prev_hash: str
    hash: str


class AuditPage(BaseModel):
    events: list[AuditEvent]
    #: Pass as ``cursor`` for the next page; null on the last one.
    next_cursor: str | None


@router.get("/audit", response_model=AuditPage, responses=ERRORS)
async def list_audit_events(
    request: Request,
    principal: CurrentPrincipal,
    since: Annotated[datetime | None, Query(description="Events at or after (ISO 8601).")] = None,
    until: Annotated[datetime | None, Query(description="Events before (ISO 8601).")] = None,
    actor: Annotated[str | None, Query(max_length=200)] = None,
    type: Annotated[
        str | None, Query(max_length=200, description="An event type, or a family: `request.*`.")
    ] = None,
    request_id: Annotated[str | None, Query(max_length=200)] = None,
    target: Annotated[str | None, Query(max_length=500)] = None,
    environment: Annotated[str | None, Query(max_length=200)] = None,
    cursor: Annotated[str | None, Query(max_length=20, description="From `next_cursor`.")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_AUDIT_LIMIT)] = 100,
) -> dict[str, Any]:
    """The audit trail, oldest first, each event with its chain hashes (auditors, admins)."""
    if not (principal.is_auditor or principal.is_admin):
        raise ServiceError("forbidden", "the audit trail is for auditors and admins", 403)
    after = 0
    if cursor is not None:
        if not cursor.isdigit():
            raise ServiceError("invalid_query", "cursor must come from next_cursor", 400)
        after = int(cursor)
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.tzinfo is None:
            raise ServiceError("invalid_query", f"{name} needs a time zone offset", 400)
    where = EventFilter(
        since=since,
        until=until,
        actor=actor,
        type=type,
        request_id=request_id,
        target=target,
        environment=environment,
    )
    db = context(request).service.db
    async with db.transaction(readonly=True) as session:
        page = await event_page(session, after_seq=after, limit=limit, where=where)
    return {
        "events": [event.to_dict() for event in page],
        "next_cursor": str(page[-1].seq) if len(page) == limit else None,
    }
