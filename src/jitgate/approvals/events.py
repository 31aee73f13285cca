"""What happened to an approval request, as the audit trail records it.

Every command returns the events it caused, in order. Events are facts: small,
immutable, and carrying what a notifier or an auditor needs without looking
the request up again (who to notify, who decided, why).

``at`` is when the fact took effect. For time-driven transitions that is the
deadline that passed, not the moment ``tick`` noticed it, so the trail does
not depend on how often the adapter polls.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from enum import Enum
from typing import Any, ClassVar

from jitgate.approvals.chain import GrantScope
from jitgate.approvals.request import ExpiryReason, ReviewVerdict


@dataclass(frozen=True, slots=True)
class Event:
    type: ClassVar[str] = "event"

    request_id: str
    at: datetime

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ISO 8601 times, enum values, lists for tuples."""
        out: dict[str, Any] = {"type": self.type}
        for f in fields(self):
            out[f.name] = _plain(getattr(self, f.name))
        return out


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, (frozenset, set)):
        return sorted(_plain(v) for v in value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


@dataclass(frozen=True, slots=True)
class RequestCreated(Event):
    type: ClassVar[str] = "request_created"

    requester: str
    fingerprint: str
    target: str
    environment: str
    rules: tuple[str, ...]
    reasons: tuple[str, ...]
    risk: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class StageStarted(Event):
    """A stage now waits for approvals: notify its groups."""

    type: ClassVar[str] = "stage_started"

    stage_index: int
    stage: str
    notify_groups: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ApprovalGiven(Event):
    type: ClassVar[str] = "approval_given"

    stage_index: int
    stage: str
    approver: str
    #: The stage's eligible groups the approver belonged to when approving.
    groups: tuple[str, ...]
    mfa_verified: bool
    comment: str


@dataclass(frozen=True, slots=True)
class StageCompleted(Event):
    type: ClassVar[str] = "stage_completed"

    stage_index: int
    stage: str
    approvers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class StageEscalated(Event):
    type: ClassVar[str] = "stage_escalated"

    stage_index: int
    stage: str
    #: The escalation groups that may now approve: notify them.
    notify_groups: tuple[str, ...]
    #: When the request expires unless the stage completes: the escalated
    #: stage's own timeout, or the request's ttl if that comes first.
    deadline: datetime


@dataclass(frozen=True, slots=True)
class StageTimedOut(Event):
    type: ClassVar[str] = "stage_timed_out"

    stage_index: int
    stage: str
    escalated: bool


@dataclass(frozen=True, slots=True)
class RequestApproved(Event):
    type: ClassVar[str] = "request_approved"

    break_glass: bool


@dataclass(frozen=True, slots=True)
class RequestDenied(Event):
    type: ClassVar[str] = "request_denied"

    by: str
    reason: str
    stage_index: int


@dataclass(frozen=True, slots=True)
class RequestCancelled(Event):
    type: ClassVar[str] = "request_cancelled"

    by: str
    reason: str
    as_admin: bool


@dataclass(frozen=True, slots=True)
class RequestExpired(Event):
    type: ClassVar[str] = "request_expired"

    reason: ExpiryReason


@dataclass(frozen=True, slots=True)
class GrantIssued(Event):
    type: ClassVar[str] = "grant_issued"

    scope: GrantScope
    fingerprint: str
    rule_ids: tuple[str, ...]
    requester: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class GrantConsumed(Event):
    type: ClassVar[str] = "grant_consumed"

    by: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class GrantExpired(Event):
    type: ClassVar[str] = "grant_expired"


@dataclass(frozen=True, slots=True)
class GrantRevoked(Event):
    type: ClassVar[str] = "grant_revoked"

    by: str
    reason: str


@dataclass(frozen=True, slots=True)
class ExecutionStarted(Event):
    type: ClassVar[str] = "execution_started"

    by: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class ExecutionFinished(Event):
    type: ClassVar[str] = "execution_finished"

    by: str
    succeeded: bool
    exit_code: int | None
    rows_affected: int | None
    error: str | None


@dataclass(frozen=True, slots=True)
class BreakGlassUsed(Event):
    type: ClassVar[str] = "break_glass_used"

    by: str
    justification: str
    #: Groups whose members owe the post-hoc review: notify them.
    notify_groups: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ReviewRecorded(Event):
    type: ClassVar[str] = "review_recorded"

    reviewer: str
    verdict: ReviewVerdict
    comment: str


#: Every event type name, for adapters that dispatch on them.
EVENT_TYPES: frozenset[str] = frozenset(cls.type for cls in Event.__subclasses__())
