"""Request and response models of the REST API (docs/api.md).

Request models refuse unknown fields and coerce nothing (``strict``): a
number is not a string, ``"1"`` is not a number. Response models document
the answers in the OpenAPI schema; they accept fields they do not name
(``extra="allow"``) so the schema stays truthful when the view grows.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

#: Bounds for integers that end up in the store.
INT64 = 2**63 - 1
INT32 = 2**31 - 1

RequestStatusName = Literal[
    "pending", "approved", "executing", "executed", "failed", "denied", "expired", "cancelled"
]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# --- request bodies ----------------------------------------------------------------------


class ActionBody(Body):
    """An attempted action (see ``Action.from_record``)."""

    kind: str = Field(description="sql, shell, deploy, tool_call, http or custom.")
    text: str = Field("", description="The statement or command line (text kinds).")
    payload: dict[str, Any] | None = Field(None, description="Structured kinds: the payload.")
    env: str = Field("", description="Environment (`prod` means `production`).")
    environment: str | None = Field(None, description="Same as `env` (give one of the two).")
    target: str = Field("", description="Connection, cluster, service...")
    attributes: dict[str, Any] | None = Field(None, description="Free attributes for policies.")
    user: str | None = Field(
        None, description="Service accounts only: the user the action is submitted for."
    )


class ApproveBody(Body):
    comment: str = ""
    otp: str | None = Field(None, description="TOTP code, for stages that require MFA.")


class DenyBody(Body):
    reason: str


class CancelBody(Body):
    reason: str = Field(
        "", description="Why; required when an admin cancels someone else's request."
    )


class BreakGlassBody(Body):
    justification: str
    otp: str | None = Field(None, description="TOTP code, when the chain has an MFA stage.")


class ReviewBody(Body):
    verdict: Literal["ok", "concern", "justified", "unjustified"] = Field(
        description="`ok` or `concern` (`justified`, `unjustified`: the same); "
        "a concern needs a comment."
    )
    comment: str = ""


class AuthorizeBody(Body):
    fingerprint: str = Field(description="The fingerprint of the action about to run.")


class OutcomeBody(Body):
    exit_code: int | None = Field(None, ge=-INT32 - 1, le=INT32)
    rows_affected: int | None = Field(None, ge=0, le=INT64)
    error: str | None = None
    duration_ms: int | None = Field(None, ge=0, le=INT64)
    receipt_sha256: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{64}$",
        description="SHA-256 (hex) of the approval receipt the executor kept "
        "(RFC 8785 bytes of the signed receipt).",
    )


# --- answers -----------------------------------------------------------------------------


class View(BaseModel):
    model_config = ConfigDict(extra="allow")


class Health(BaseModel):
    status: Literal["ok"]


class FindingOut(View):
    code: str
    risk: str
    message: str
    unit: int | None = None
    excerpt: str | None = None
    subject: str | None = None


class ChainStageOut(View):
    name: str
    groups: list[str]
    approvals: int
    quorum: str
    mfa: bool
    timeout_seconds: int | None = None
    escalate_to: list[str] = []


class ChainOut(View):
    stages: list[ChainStageOut]
    ttl_seconds: int
    break_glass: bool
    grant_scope: str
    grant_ttl_seconds: int


class DecisionOut(View):
    """A policy decision (as ``jitgate evaluate --json`` prints it)."""

    decision: Literal["allow", "require_approval", "deny"]
    risk: str
    reasons: list[str]
    rules: list[str]
    fingerprint: str | None = None
    findings: list[FindingOut] = []
    message: str | None = None
    chain: ChainOut | None = None


class ActionOut(View):
    kind: str
    text: str = ""
    payload: dict[str, Any] | None = None
    target: str = ""
    environment: str = ""
    attributes: dict[str, Any] | None = None


class ApprovalOut(View):
    user: str
    group: str | None = None
    at: datetime | None = None
    comment: str = ""
    mfa: bool = False


class StageOut(View):
    name: str
    groups: list[str]
    eligible_groups: list[str] = []
    approvals_required: int
    quorum: str
    mfa: bool
    state: Literal["waiting", "active", "completed", "escalated"]
    started_at: datetime | None = None
    deadline: datetime | None = None
    escalated_at: datetime | None = None
    approvals: list[ApprovalOut] = []


class WaitingFor(View):
    stage: str
    groups: list[str]
    approvals_needed: int


class GrantOut(View):
    fingerprint: str
    scope: str
    expires_at: datetime | None = None
    used_at: datetime | None = None


class ExecutionOut(View):
    started_at: datetime | None = None
    finished_at: datetime | None = None
    exit_code: int | None = None
    rows_affected: int | None = None
    error: str | None = None
    reported_by: str | None = None


class RequestView(View):
    """An approval request as the caller may see it."""

    id: str
    status: RequestStatusName
    requester: str
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None = None
    action: ActionOut
    fingerprint: str
    decision: dict[str, Any] | None = None
    chain: dict[str, Any] | None = None
    stages: list[StageOut] = []
    current_stage: int | None = None
    waiting_for: WaitingFor | None = None
    denial: dict[str, Any] | None = None
    cancellation: dict[str, Any] | None = None
    break_glass: dict[str, Any] | None = None
    review: dict[str, Any] | None = None
    grant: GrantOut | None = None
    execution: ExecutionOut | None = None


class AppliedGrantOut(View):
    """The rule-scoped grant that lets a ``require_approval`` action go ahead."""

    id: str
    request_id: str
    expires_at: datetime | None = None


class EvaluationOut(DecisionOut):
    grant: AppliedGrantOut | None = Field(
        None, description="The active rule grant that would let this action go ahead now."
    )


class SubmitOut(View):
    decision: DecisionOut
    request: RequestView | None = Field(
        description="The new request when approval is required, else null."
    )
    grant: AppliedGrantOut | None = Field(
        None,
        description="Allowed by grant: the active rule grant that satisfied the "
        "`require_approval` decision (no request is held), else null.",
    )


class RequestList(View):
    requests: list[RequestView]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page.")
