"""The approval request: an immutable record of one held action's journey.

A request is only ever replaced, never mutated: the transition functions in
:mod:`jitgate.approvals.machine` return a new request and the events that
explain the difference. Everything an auditor needs to re-check the decision
(who approved which stage as which group, with or without MFA, who denied and
why, who ran the action and how it went) is kept on the request itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from jitgate.actions.model import Action, Actor
from jitgate.approvals.chain import ApprovalChain, Stage
from jitgate.approvals.grant import Grant


class RequestStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    EXECUTING = "executing"
    EXECUTED = "executed"
    FAILED = "failed"
    DENIED = "denied"
    EXPIRED = "expired"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES: frozenset[RequestStatus] = frozenset(
    {
        RequestStatus.EXECUTED,
        RequestStatus.FAILED,
        RequestStatus.DENIED,
        RequestStatus.EXPIRED,
        RequestStatus.CANCELLED,
    }
)

#: The only edges a request's status may follow. ``approved -> cancelled`` is
#: a grant revoked before use; ``approved -> expired`` a grant left unused.
ALLOWED_TRANSITIONS: Mapping[RequestStatus, frozenset[RequestStatus]] = {
    RequestStatus.PENDING: frozenset(
        {
            RequestStatus.APPROVED,
            RequestStatus.DENIED,
            RequestStatus.EXPIRED,
            RequestStatus.CANCELLED,
        }
    ),
    RequestStatus.APPROVED: frozenset(
        {RequestStatus.EXECUTING, RequestStatus.EXPIRED, RequestStatus.CANCELLED}
    ),
    RequestStatus.EXECUTING: frozenset({RequestStatus.EXECUTED, RequestStatus.FAILED}),
    **{status: frozenset() for status in TERMINAL_STATUSES},
}


class ExpiryReason(StrEnum):
    #: The request stayed pending past its time to live.
    TTL = "ttl"
    #: A stage timed out with no (further) escalation target.
    STAGE_TIMEOUT = "stage_timeout"
    #: The grant's validity window passed unused.
    GRANT_EXPIRED = "grant_expired"


class ReviewVerdict(StrEnum):
    JUSTIFIED = "justified"
    UNJUSTIFIED = "unjustified"


@dataclass(frozen=True, slots=True)
class Approval:
    approver: str
    #: The stage's eligible groups the approver belonged to when approving;
    #: which one the approval counts for is derived (see ``quorum``).
    groups: tuple[str, ...]
    at: datetime
    comment: str = ""
    mfa_verified: bool = False


@dataclass(frozen=True, slots=True)
class StageState:
    #: When the stage began waiting; ``None`` for a stage not reached yet.
    started_at: datetime | None = None
    #: The stage's groups, plus its escalation groups once escalated.
    eligible_groups: tuple[str, ...] = ()
    approvals: tuple[Approval, ...] = ()
    escalated_at: datetime | None = None
    completed_at: datetime | None = None
    timed_out_at: datetime | None = None

    @property
    def escalated(self) -> bool:
        return self.escalated_at is not None

    @property
    def completed(self) -> bool:
        return self.completed_at is not None

    @property
    def approvers(self) -> tuple[str, ...]:
        return tuple(a.approver for a in self.approvals)


@dataclass(frozen=True, slots=True)
class Denial:
    by: str
    reason: str
    at: datetime
    #: The stage the request was waiting in.
    stage_index: int


@dataclass(frozen=True, slots=True)
class Cancellation:
    by: str
    reason: str
    at: datetime
    #: Cancelled by an administrator rather than the requester.
    as_admin: bool = False


@dataclass(frozen=True, slots=True)
class BreakGlass:
    by: str
    justification: str
    at: datetime


@dataclass(frozen=True, slots=True)
class Review:
    reviewer: str
    verdict: ReviewVerdict
    comment: str
    at: datetime


@dataclass(frozen=True, slots=True)
class ExecutionOutcome:
    exit_code: int | None = None
    rows_affected: int | None = None
    error: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.error is None and self.exit_code in (None, 0)


#: How long an executor has to report the outcome once it consumed the grant.
DEFAULT_EXECUTION_TIMEOUT = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class Execution:
    #: Who consumed the grant and runs the action.
    executor: str
    started_at: datetime
    finished_at: datetime | None = None
    outcome: ExecutionOutcome | None = None
    reported_by: str | None = None
    #: Without an outcome by ``started_at + timeout`` the execution counts as
    #: failed (the executor died): ``tick`` ends the request.
    timeout: timedelta = DEFAULT_EXECUTION_TIMEOUT

    @property
    def deadline(self) -> datetime:
        return self.started_at + self.timeout


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    id: str
    action: Action
    #: The fingerprint the approvers approve; the grant binds to it.
    fingerprint: str
    #: The decision summary: matched rules, reasons and risk label.
    rules: tuple[str, ...]
    reasons: tuple[str, ...]
    risk: str
    chain: ApprovalChain
    requester: Actor
    created_at: datetime
    expires_at: datetime
    #: The latest time the request has seen; commands never go back before it.
    updated_at: datetime
    #: One entry per chain stage.
    stages: tuple[StageState, ...]
    status: RequestStatus = RequestStatus.PENDING
    #: The stage waiting for approvals; ``len(chain.stages)`` once all completed.
    stage_index: int = 0
    approved_at: datetime | None = None
    denial: Denial | None = None
    cancellation: Cancellation | None = None
    expired_at: datetime | None = None
    expiry_reason: ExpiryReason | None = None
    break_glass: BreakGlass | None = None
    review_required: bool = False
    review: Review | None = None
    grant: Grant | None = None
    execution: Execution | None = None

    @property
    def terminal(self) -> bool:
        return self.status.terminal

    @property
    def current_stage(self) -> Stage | None:
        """The stage waiting for approvals, while the request is pending."""
        if self.status is not RequestStatus.PENDING:
            return None
        return self.chain.stages[self.stage_index]

    @property
    def current_stage_state(self) -> StageState | None:
        if self.status is not RequestStatus.PENDING:
            return None
        return self.stages[self.stage_index]

    @property
    def approvers(self) -> frozenset[str]:
        """Everybody who approved any stage."""
        return frozenset(a.approver for s in self.stages for a in s.approvals)

    @property
    def review_pending(self) -> bool:
        return self.review_required and self.review is None
