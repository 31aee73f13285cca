"""The ``/api/v1`` routes: validate, call the service, answer its view.

Nothing here decides anything: who may see or change what is the service's
business (it raises :class:`ServiceError`, turned into the error answer by
:mod:`jitgate.server.errors`). The routes only guarantee that the service is
never called with input that does not fit the models.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Path, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, Response, StreamingResponse

from jitgate.server.auth import CurrentPrincipal
from jitgate.server.errors import ErrorResponse
from jitgate.server.metrics import FINAL_STATUSES, Metrics
from jitgate.server.models import (
    ActionBody,
    ApproveBody,
    AuthorizeBody,
    BreakGlassBody,
    CancelBody,
    DenyBody,
    EvaluationOut,
    OutcomeBody,
    RequestList,
    RequestView,
    ReviewBody,
    SubmitOut,
)
from jitgate.service import ApprovalService, ServiceError

#: Error answers every route may give (documented in the OpenAPI schema).
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "Malformed JSON, a body or parameter that does not fit, an invalid action",
        401: "Missing, unknown, expired or revoked token",
        403: "Not allowed (role, eligibility, self-approval, MFA)",
        404: "No such request, or not visible to the caller",
        409: "The request's state does not allow it",
        413: "The body is larger than the limit",
        422: "A required reason or justification is missing",
    }.items()
}

RequestId = Annotated[str, Path(alias="id", description="The request id (`req_...`).")]

#: How often an idle event stream sends a comment, so proxies keep it open.
DEFAULT_HEARTBEAT_SECONDS = 15.0


class ApiContext:
    """What the routes need, kept on ``app.state.jitgate``."""

    def __init__(
        self,
        service: ApprovalService,
        metrics: Metrics,
        *,
        heartbeat: float = DEFAULT_HEARTBEAT_SECONDS,
    ) -> None:
        self.service = service
        self.metrics = metrics
        self.heartbeat = heartbeat
        #: Set when the server shuts down: open event streams end.
        self.shutdown = asyncio.Event()


def context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.jitgate
    return ctx


def view_response(view: Mapping[str, Any] | None, status: int = 200) -> JSONResponse:
    return JSONResponse(jsonable_encoder(view), status_code=status)


def action_record(body: ActionBody) -> dict[str, Any]:
    """The fields the client sent (``null`` meaning absent), for the service."""
    return body.model_dump(exclude_unset=True, exclude_none=True)


router = APIRouter(prefix="/api/v1", responses=ERRORS)


# --- evaluation and submission ----------------------------------------------------------


@router.post("/evaluate", response_model=EvaluationOut, tags=["actions"])
async def evaluate(request: Request, principal: CurrentPrincipal, body: ActionBody) -> Response:
    """Decide on an action without holding it (a non-allow decision is audited);
    ``grant``: the active rule grant that would let it go ahead, else null."""
    ctx = context(request)
    evaluation = await ctx.service.evaluation(principal, action_record(body))
    ctx.metrics.observe_decision(evaluation.decision.outcome.label)
    return view_response({**evaluation.decision.to_dict(), "grant": evaluation.grant})


@router.post(
    "/requests",
    response_model=SubmitOut,
    status_code=201,
    tags=["requests"],
    responses={200: {"model": SubmitOut, "description": "Allowed or denied: nothing is held"}},
)
async def submit(request: Request, principal: CurrentPrincipal, body: ActionBody) -> Response:
    """Submit an action: held for approval (201) or decided at once (200); a
    `require_approval` covered by an active rule grant is allowed by that grant
    (200, `request` null, `grant` set)."""
    ctx = context(request)
    submission = await ctx.service.submit(principal, action_record(body))
    ctx.metrics.observe_decision(submission.decision.outcome.label)
    held = submission.request is not None
    return view_response(
        {
            "decision": submission.decision.to_dict(),
            "request": submission.request,
            "grant": submission.grant,
        },
        201 if held else 200,
    )


# --- reading ------------------------------------------------------------------------------


@router.get("/requests", response_model=RequestList, tags=["requests"])
async def list_requests(
    request: Request,
    principal: CurrentPrincipal,
    status: Annotated[
        str | None,
        Query(
            max_length=200,
            description="Only these statuses (comma-separated: `pending,approved`).",
        ),
    ] = None,
    mine: Annotated[bool, Query(description="Only requests I submitted.")] = False,
    awaiting_me: Annotated[bool, Query(description="Only requests I may approve now.")] = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    """Requests visible to the caller, newest first, a page at a time."""
    views, next_cursor = await context(request).service.list(
        principal,
        status=status,
        mine=mine,
        awaiting_me=awaiting_me,
        limit=limit,
        cursor=cursor,
    )
    return view_response({"requests": views, "next_cursor": next_cursor})


@router.get("/requests/{id}", response_model=RequestView, tags=["requests"])
async def get_request(
    request: Request, principal: CurrentPrincipal, request_id: RequestId
) -> Response:
    return view_response(await context(request).service.get(principal, request_id))


# --- changes ------------------------------------------------------------------------------


def changed(request: Request, view: Mapping[str, Any]) -> Response:
    context(request).metrics.observe_view(view)
    return view_response(view)


@router.post("/requests/{id}/approve", response_model=RequestView, tags=["requests"])
async def approve(
    request: Request,
    principal: CurrentPrincipal,
    request_id: RequestId,
    body: ApproveBody | None = None,
) -> Response:
    comment, otp = (body.comment, body.otp) if body is not None else ("", None)
    view = await context(request).service.approve(principal, request_id, comment=comment, otp=otp)
    return changed(request, view)


@router.post("/requests/{id}/deny", response_model=RequestView, tags=["requests"])
async def deny(
    request: Request, principal: CurrentPrincipal, request_id: RequestId, body: DenyBody
) -> Response:
    view = await context(request).service.deny(principal, request_id, body.reason)
    return changed(request, view)


@router.post("/requests/{id}/cancel", response_model=RequestView, tags=["requests"])
async def cancel(
    request: Request,
    principal: CurrentPrincipal,
    request_id: RequestId,
    body: CancelBody | None = None,
) -> Response:
    reason = body.reason if body is not None else ""
    view = await context(request).service.cancel(principal, request_id, reason)
    return changed(request, view)


@router.post("/requests/{id}/break-glass", response_model=RequestView, tags=["requests"])
async def break_glass(
    request: Request, principal: CurrentPrincipal, request_id: RequestId, body: BreakGlassBody
) -> Response:
    view = await context(request).service.break_glass(
        principal, request_id, body.justification, body.otp
    )
    return changed(request, view)


@router.post("/requests/{id}/review", response_model=RequestView, tags=["requests"])
async def review(
    request: Request, principal: CurrentPrincipal, request_id: RequestId, body: ReviewBody
) -> Response:
    view = await context(request).service.review(principal, request_id, body.verdict, body.comment)
    return changed(request, view)


@router.post("/requests/{id}/authorize", response_model=RequestView, tags=["requests"])
async def authorize(
    request: Request, principal: CurrentPrincipal, request_id: RequestId, body: AuthorizeBody
) -> Response:
    """Consume the single-use grant just before running the action."""
    view = await context(request).service.authorize(principal, request_id, body.fingerprint)
    return changed(request, view)


@router.post("/requests/{id}/outcome", response_model=RequestView, tags=["requests"])
async def outcome(
    request: Request, principal: CurrentPrincipal, request_id: RequestId, body: OutcomeBody
) -> Response:
    """Report how the authorized action ran."""
    view = await context(request).service.report_outcome(
        principal,
        request_id,
        exit_code=body.exit_code,
        rows_affected=body.rows_affected,
        error=body.error,
        duration_ms=body.duration_ms,
        receipt_sha256=body.receipt_sha256,
    )
    return changed(request, view)


# --- events -------------------------------------------------------------------------------


def sse_event(view: Mapping[str, Any]) -> bytes:
    data = json.dumps(jsonable_encoder(view), separators=(",", ":"), ensure_ascii=False)
    return f"event: state\ndata: {data}\n\n".encode()


def is_final(view: Mapping[str, Any]) -> bool:
    return view.get("status") in FINAL_STATUSES


HEARTBEAT = b": ping\n\n"

#: One event of the stream (OpenAPI 3.2 ``itemSchema``): ``data`` is a request view.
SSE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "const": "state"},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {"$ref": "#/components/schemas/RequestView"},
        },
    },
}


async def _aclose(iterator: AsyncIterator[Any]) -> None:
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()


async def event_stream(
    first: Mapping[str, Any],
    views: AsyncIterator[Mapping[str, Any]],
    *,
    heartbeat: float,
    shutdown: asyncio.Event,
) -> AsyncIterator[bytes]:
    """``first``, then every view of ``views``, with a comment while idle.

    Ends after a final state, when ``views`` ends, or at server shutdown.
    ``views`` is read by one task at a time (a pending read survives a
    heartbeat), and closed when the stream ends, however it ends.
    """
    pending: asyncio.Future[Mapping[str, Any]] | None = None
    stopping: asyncio.Future[Any] = asyncio.ensure_future(shutdown.wait())
    try:
        yield sse_event(first)
        if is_final(first):
            return
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(views))
            waiting: set[asyncio.Future[Any]] = {pending, stopping}
            done, _ = await asyncio.wait(
                waiting, timeout=heartbeat, return_when=asyncio.FIRST_COMPLETED
            )
            if pending in done:
                read, pending = pending, None
                try:
                    view = read.result()
                except StopAsyncIteration:
                    return
                yield sse_event(view)
                if is_final(view):
                    return
            elif stopping in done:
                return
            else:
                yield HEARTBEAT
    finally:
        stopping.cancel()
        # The client may be gone and this task cancelled: finish cleaning up anyway.
        with anyio.CancelScope(shield=True):
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending
            with contextlib.suppress(Exception):
                await _aclose(views)


@router.get(
    "/requests/{id}/events",
    tags=["requests"],
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "Server-Sent Events: `event: state`, `data: <request view>` at "
            "once and on every change; the stream ends after a final state.",
            "content": {"text/event-stream": {"itemSchema": SSE_EVENT_SCHEMA}},
        }
    },
)
async def events(request: Request, principal: CurrentPrincipal, request_id: RequestId) -> Response:
    ctx = context(request)
    views = ctx.service.watch(principal, request_id)
    # The first view comes at once: read it now, so a request the caller may
    # not see is a plain 404 answer, not a stream that breaks.
    try:
        first = await anext(views)
    except StopAsyncIteration:
        await _aclose(views)
        raise ServiceError("not_found", f"no request {request_id}", 404) from None
    except BaseException:
        with contextlib.suppress(Exception):
            await _aclose(views)
        raise
    return StreamingResponse(
        event_stream(first, views, heartbeat=ctx.heartbeat, shutdown=ctx.shutdown),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
