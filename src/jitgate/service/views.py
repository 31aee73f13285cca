"""The request view: what the API, the CLI and the dashboard show of a request.

The shape is docs/api.md's "Request view", with a few additive keys (marked
*extra* below). A view is the same for every viewer and never contains
secrets (no tokens, no MFA secrets). Times are ISO 8601 in UTC with a ``Z``.

``stages[].state``: ``waiting`` (not reached yet), ``active`` (the stage the
request waits in, or stopped in), ``escalated`` (that stage, after its
timeout widened it to its escalation groups), ``completed``.
``stages[].approvals_required`` is the total the stage needs (for quorum
``all``: ``approvals`` per group times the groups). ``waiting_for`` is null
unless the request is pending; its ``groups`` are the groups whose members can
still move the stage forward.

Extra keys: ``submitted_by`` (the service account that submitted on the
requester's behalf, else the requester), ``approved_at``, ``expiry``
(``{"at", "reason"}`` or null), ``review_required``; ``decision`` is the full
decision object (``jitgate evaluate --json``: also ``findings``,
``fingerprint`` and ``chain``); ``grant`` also has ``id`` (for
``/grants/{id}/revoke``), ``issued_at``, ``break_glass`` and ``revoked_at``;
``execution`` also has ``executor``, ``duration_ms`` and ``deadline`` (no
outcome by then: ``failed``); ``denial.stage`` names the stage it was denied in;
``review`` is ``{"by", "verdict", "comment", "at"}`` with the verdict spelt as
the API takes it (``ok`` or ``concern``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from jitgate.approvals import (
    ApprovalRequest,
    Quorum,
    RequestStatus,
    ReviewVerdict,
    Stage,
    StageState,
    stage_deadline,
)
from jitgate.approvals.quorum import counted_approvals, required_approvals, stage_allocation
from jitgate.policy.decision import chain_to_dict
from jitgate.service.codec import RequestMeta

#: Statuses after which nothing changes any more (a waiter stops).
FINAL_STATUSES: frozenset[str] = frozenset(
    s.value
    for s in (
        RequestStatus.EXECUTED,
        RequestStatus.FAILED,
        RequestStatus.DENIED,
        RequestStatus.EXPIRED,
        RequestStatus.CANCELLED,
    )
)


def iso(value: datetime | None) -> str | None:
    """``value`` in UTC, ISO 8601 with ``Z``; None stays None."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _stage_state_name(state: StageState) -> str:
    if state.completed:
        return "completed"
    if state.started_at is None:
        return "waiting"
    if state.escalated:
        return "escalated"
    return "active"


def _stage_view(
    req: ApprovalRequest, index: int, stage: Stage, state: StageState
) -> dict[str, Any]:
    allocation = stage_allocation(stage, state.approvals)
    current = req.status is RequestStatus.PENDING and index == req.stage_index
    return {
        "name": stage.name,
        "groups": list(stage.groups),
        "eligible_groups": list(state.eligible_groups),
        "approvals_required": required_approvals(stage),
        "quorum": stage.quorum.value,
        "mfa": stage.mfa,
        "state": _stage_state_name(state),
        "started_at": iso(state.started_at),
        "deadline": iso(stage_deadline(req)) if current else None,
        "escalated_at": iso(state.escalated_at),
        "approvals": [
            {
                "user": a.approver,
                "group": allocation.get(a.approver, a.groups[0] if a.groups else None),
                "at": iso(a.at),
                "comment": a.comment,
                "mfa": a.mfa_verified,
            }
            for a in state.approvals
        ],
    }


def _open_groups(stage: Stage, state: StageState) -> list[str]:
    """The eligible groups whose members could still count towards the stage."""
    if stage.quorum is Quorum.ANY:
        return list(state.eligible_groups)
    filled: dict[str, int] = {}
    for group in stage_allocation(stage, state.approvals).values():
        filled[group] = filled.get(group, 0) + 1
    open_groups = [g for g in stage.groups if filled.get(g, 0) < stage.approvals]
    if state.escalated and open_groups:
        # Escalation-only groups may stand in for any group still open.
        open_groups += [g for g in state.eligible_groups if g in stage.stand_in_groups]
    return open_groups


def _waiting_for(req: ApprovalRequest) -> dict[str, Any] | None:
    stage, state = req.current_stage, req.current_stage_state
    if stage is None or state is None:
        return None
    return {
        "stage": stage.name,
        "groups": _open_groups(stage, state),
        "approvals_needed": max(
            0, required_approvals(stage) - counted_approvals(stage, state.approvals)
        ),
    }


def request_view(
    req: ApprovalRequest, meta: RequestMeta, decision: dict[str, Any] | None
) -> dict[str, Any]:
    """The JSON view of ``req`` (docs/api.md), ``decision`` as stored with it."""
    action = req.action
    grant, execution = req.grant, req.execution
    denial, cancellation, glass, review = req.denial, req.cancellation, req.break_glass, req.review
    outcome = execution.outcome if execution is not None else None
    return {
        "id": req.id,
        "status": req.status.value,
        "requester": req.requester.user,
        "submitted_by": meta.submitted_by or req.requester.user,
        "created_at": iso(req.created_at),
        "updated_at": iso(req.updated_at),
        "expires_at": iso(req.expires_at),
        "action": {
            "kind": action.kind.value,
            "text": action.text,
            "payload": dict(action.payload),
            "target": action.target,
            "environment": action.environment,
            "attributes": dict(action.attributes),
        },
        "fingerprint": req.fingerprint,
        "decision": decision
        if decision is not None
        else {
            "decision": "require_approval",
            "risk": req.risk,
            "reasons": list(req.reasons),
            "rules": list(req.rules),
        },
        "chain": chain_to_dict(req.chain),
        "stages": [
            _stage_view(req, i, stage, state)
            for i, (stage, state) in enumerate(zip(req.chain.stages, req.stages, strict=True))
        ],
        "current_stage": req.stage_index if req.status is RequestStatus.PENDING else None,
        "waiting_for": _waiting_for(req),
        "approved_at": iso(req.approved_at),
        "denial": None
        if denial is None
        else {
            "by": denial.by,
            "reason": denial.reason,
            "at": iso(denial.at),
            "stage": req.chain.stages[denial.stage_index].name
            if denial.stage_index < len(req.chain.stages)
            else None,
        },
        "cancellation": None
        if cancellation is None
        else {
            "by": cancellation.by,
            "reason": cancellation.reason,
            "at": iso(cancellation.at),
            "as_admin": cancellation.as_admin,
        },
        "expiry": None
        if req.expired_at is None
        else {
            "at": iso(req.expired_at),
            "reason": None if req.expiry_reason is None else req.expiry_reason.value,
        },
        "break_glass": None
        if glass is None
        else {"by": glass.by, "justification": glass.justification, "at": iso(glass.at)},
        "review_required": req.review_required,
        "review": None
        if review is None
        else {
            "by": review.reviewer,
            "verdict": "ok" if review.verdict is ReviewVerdict.JUSTIFIED else "concern",
            "comment": review.comment,
            "at": iso(review.at),
        },
        "grant": None
        if grant is None
        else {
            "id": meta.grant_id,
            "fingerprint": grant.fingerprint,
            "scope": grant.scope.value,
            "issued_at": iso(grant.issued_at),
            "expires_at": iso(grant.expires_at),
            "used_at": iso(grant.used_at),
            "break_glass": grant.break_glass,
            "revoked_at": iso(grant.revoked_at),
        },
        "execution": None
        if execution is None
        else {
            "executor": execution.executor,
            "started_at": iso(execution.started_at),
            "finished_at": iso(execution.finished_at),
            "exit_code": None if outcome is None else outcome.exit_code,
            "rows_affected": None if outcome is None else outcome.rows_affected,
            "error": None if outcome is None else outcome.error,
            "reported_by": execution.reported_by,
            "duration_ms": meta.duration_ms,
            "deadline": iso(execution.deadline),
        },
    }


