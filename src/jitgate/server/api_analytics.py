"""``GET /api/v1/audit/report``: approval analytics over the audit trail (auditors, admins)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from jitgate.audit.analytics import Analyzer, Report, parse_bound
from jitgate.server.api import ERRORS
from jitgate.server.auth import CurrentPrincipal
from jitgate.service import ServiceError
from jitgate.store import Database, list_events

analytics_router = APIRouter(prefix="/api/v1", tags=["audit"])

_BOUND_HELP = (
    "7d, 24h, 2w before now, or an ISO 8601 date or date-time (UTC unless it has an offset)."
)


#: Events read per page (one read-only transaction each).
PAGE = 2000


async def read_report(
    database: Database, *, since: datetime | None, until: datetime | None, now: datetime
) -> Report:
    """The report over the whole trail (earlier events are the baselines), page by page."""
    analyzer = Analyzer(since=since, until=until)
    after = 0
    while True:
        async with database.transaction(readonly=True) as session:
            rows = await list_events(session, after_seq=after, limit=PAGE)
        for row in rows:
            analyzer.feed(row)
        if len(rows) < PAGE:
            return analyzer.report(now=now)
        after = rows[-1].seq


def _bound(name: str, value: str | None, now: datetime) -> datetime | None:
    if value is None or not value.strip():
        return None
    try:
        return parse_bound(value, now)
    except ValueError as error:
        raise ServiceError("invalid_query", f"{name}: {error}", 400) from None


@analytics_router.get(
    "/audit/report",
    responses={**ERRORS, 200: {"description": "The report (see docs/audit-analytics.md)"}},
)
async def audit_report(
    request: Request,
    principal: CurrentPrincipal,
    since: Annotated[
        str | None, Query(max_length=64, description=f"Start of the window: {_BOUND_HELP}")
    ] = None,
    until: Annotated[
        str | None,
        Query(max_length=64, description=f"End of the window (excluded): {_BOUND_HELP}"),
    ] = None,
) -> Response:
    """Bottlenecks, outcomes and anomalies over the audit trail, as JSON."""
    if not (principal.is_auditor or principal.is_admin):
        raise ServiceError("forbidden", "only auditors and administrators see audit reports", 403)
    now = datetime.now(UTC)
    start, end = _bound("since", since, now), _bound("until", until, now)
    if start is not None and end is not None and start >= end:
        raise ServiceError("invalid_query", "since must be before until", 400)
    service: Any = request.app.state.jitgate.service
    report = await read_report(service.db, since=start, until=end, now=now)
    return JSONResponse(report.to_dict())


__all__ = ["analytics_router"]
