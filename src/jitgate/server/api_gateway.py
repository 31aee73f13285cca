"""What a standalone gateway needs from the server (:mod:`jitgate.gateways.remote`).

* ``GET /api/v1/me``: who a bearer token belongs to (any authenticated
  caller). A gateway checks the password a user gives it, which is a jitgate
  API token, by asking this with that token.
* ``GET /api/v1/policy``: the policy in force, as the YAML text it was loaded
  from, and its SHA-256, so a gateway decides ordinary statements locally
  with exactly the server's policy (service accounts, admins, auditors).
* ``POST /api/v1/audit/statements``: a batch of statements that went through
  a gateway, recorded as ``statement.executed`` events in one transaction
  (service accounts and admins; :mod:`jitgate.service.statements`).
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Final

from fastapi import APIRouter, Request
from fastapi import Body as RequestBody
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, PlainValidator, TypeAdapter, ValidationError

from jitgate.policy import Policy
from jitgate.server.api import ERRORS, context, view_response
from jitgate.server.auth import CurrentPrincipal
from jitgate.server.errors import ErrorResponse
from jitgate.server.models import Body, View
from jitgate.service import Principal, ServiceError
from jitgate.service.policy_audit import policy_source
from jitgate.service.statements import MAX_RECORDS, MAX_TEXT_BYTES

router = APIRouter(prefix="/api/v1", responses=ERRORS, tags=["gateways"])


class RolesOut(View):
    admin: bool
    auditor: bool
    service_account: bool


class MeOut(View):
    """The caller, as its token authenticates it."""

    user: str
    groups: list[str]
    roles: RolesOut


class PolicyOut(View):
    """The policy in force."""

    sha256: str = Field(description="SHA-256 (hex) of `text` in UTF-8.")
    source: str = Field(description="Its file on the server, or `builtin:default`.")
    text: str = Field(description="The policy file (YAML), exactly as loaded.")


class StatementIn(Body):
    """One statement that went through a gateway (``jitgate.gateways.StatementRecord``)."""

    user: str = Field(description="Who ran it (the event's actor).")
    target: str
    environment: str
    text: str = Field(description=f"The statement, at most {MAX_TEXT_BYTES} bytes (UTF-8).")
    decision: str = Field(description="`allow`, `require_approval` (released) or `deny`.")
    duration_ms: float = Field(0.0, ge=0)
    tag: str | None = None
    rows: int | None = Field(None, ge=0)
    error: str | None = None
    request_id: str | None = Field(None, description="The request that released it, if any.")
    parameters: list[str | None] | None = None
    session: str = ""
    client: str = ""
    gateway: str = ""
    at: str = Field("", description="When, as the gateway says (recorded as given).")
    extra: dict[str, Any] = Field(default_factory=dict)


class StatementsBody(Body):
    records: list[StatementIn] = Field(description=f"At most {MAX_RECORDS} records.")


def _as_parsed(body: Any) -> Any:
    return body


#: ``POST /audit/statements``' body as FastAPI read it (parsed JSON; the raw
#: bytes when not sent as JSON), documented as :class:`StatementsBody` but not
#: validated by it: :func:`jitgate.service.statements.statement_event` checks
#: every record anyway (all the model does, and more), and a gateway sends
#: up to 1000 records a call, so building models only to dump them back into
#: dicts was a third of the endpoint's cost. The model still answers a body
#: it refuses (:func:`_refusal`), word for word as when it validated it.
StatementsJson = Annotated[
    Any, PlainValidator(_as_parsed, json_schema_input_type=StatementsBody), RequestBody()
]

#: How FastAPI validated a :class:`StatementsBody` body.
_STATEMENTS_BODY: Final = TypeAdapter(StatementsBody)


def _refusal(body: Any) -> RequestValidationError | None:
    """The ``400 invalid_body`` FastAPI answers for a body :class:`StatementsBody`
    refuses (the same errors, ``body.records[0].rows: ...``); None if it fits."""
    try:
        _STATEMENTS_BODY.validate_python(body, from_attributes=True)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        return RequestValidationError(errors, body=body)
    return None


class RecordedOut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    recorded: int


def policy_document(policy: Policy) -> dict[str, str]:
    """``{"sha256", "source", "text"}`` of ``policy``; 503 ``policy_unavailable``
    when it was compiled from a spec built in code (it has no text)."""
    text = policy.source_text
    if text is None:
        raise ServiceError(
            "policy_unavailable", "the policy in force was not loaded from a policy file", 503
        )
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return {"sha256": digest, "source": policy_source(policy), "text": text}


def _gateway_role(principal: Principal, what: str) -> None:
    if not (principal.is_service_account or principal.is_admin):
        raise ServiceError("forbidden", f"{what} is for service accounts and admins", 403)


@router.get("/me", response_model=MeOut)
async def me(principal: CurrentPrincipal) -> Response:
    """Who the bearer token belongs to: user, groups and roles."""
    return view_response(
        {
            "user": principal.user,
            "groups": sorted(principal.groups),
            "roles": {
                "admin": principal.is_admin,
                "auditor": principal.is_auditor,
                "service_account": principal.is_service_account,
            },
        }
    )


@router.get(
    "/policy",
    response_model=PolicyOut,
    responses={503: {"model": ErrorResponse, "description": "The policy has no text"}},
)
async def policy(request: Request, principal: CurrentPrincipal) -> Response:
    """The policy in force as YAML text, with its SHA-256 (service accounts,
    admins, auditors)."""
    if not (principal.is_service_account or principal.is_admin or principal.is_auditor):
        raise ServiceError(
            "forbidden", "the policy is for service accounts, admins and auditors", 403
        )
    return view_response(policy_document(context(request).service.evaluator.policy))


@router.post("/audit/statements", response_model=RecordedOut, status_code=202, tags=["audit"])
async def record_statements(
    request: Request, principal: CurrentPrincipal, body: StatementsJson
) -> Response:
    """Record statements that went through a gateway (``statement.executed``),
    all or none (service accounts and admins)."""
    # The records go to the service as parsed: it checks each of them. A body
    # the model refuses is answered as the model always answered it (its
    # messages, several problems at once, 400 before the role's 403): the
    # model is consulted on those paths only.
    records = body.get("records") if type(body) is dict and body.keys() == {"records"} else None
    if type(records) is not list or not (principal.is_service_account or principal.is_admin):
        refusal = _refusal(body)
        if refusal is not None:
            raise refusal
        _gateway_role(principal, "recording statements")
        records = body["records"]  # what the model takes: {"records": [...]}
    try:
        recorded = await context(request).service.record_statements(principal, records, strict=True)
    except ServiceError as exc:
        refusal = _refusal(body) if exc.status in (400, 413) else None
        if refusal is not None:
            raise refusal from None
        raise
    return view_response({"recorded": recorded}, 202)
