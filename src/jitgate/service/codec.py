"""Serialization of the approval core for the store: requests, rows and events.

:func:`encode_request` / :func:`decode_request` turn an
:class:`~jitgate.approvals.ApprovalRequest` into a JSON-able dict and back with
full fidelity (``decode_request(encode_request(r)) == r``, also through
``json.dumps``/``json.loads``). Times keep their UTC offset (ISO 8601), time
spans are whole microseconds, enums are their values, tuples are lists and
frozensets sorted lists.

The ``state`` column of a request row holds more than the domain request: the
service's own bookkeeping about it (:class:`RequestMeta`: who submitted it, the
id of its row in ``grants``). :func:`encode_state` / :func:`decode_state`
wrap both in a versioned envelope::

    {"format": 1, "request": {...}, "meta": {"submitted_by": "ci-bot", ...}}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from jitgate.actions.model import Action, ActionKind, Actor
from jitgate.approvals import (
    DEFAULT_EXECUTION_TIMEOUT,
    Approval,
    ApprovalChain,
    ApprovalRequest,
    BreakGlass,
    Cancellation,
    Denial,
    Event,
    Execution,
    ExecutionOutcome,
    ExpiryReason,
    Grant,
    GrantScope,
    Quorum,
    RequestStatus,
    Review,
    ReviewVerdict,
    Stage,
    StageState,
    next_deadline,
)
from jitgate.store import RequestRow

#: Version of the ``state`` envelope; bump (and keep decoding the old one) on change.
STATE_FORMAT: Final = 1

#: Audit trail names of the approval core's events (``request_approved`` ->
#: ``request.approved``). Explicit, so a renamed core event cannot silently
#: change what the trail calls it; a test checks every core type is mapped.
EVENT_NAMES: Final[Mapping[str, str]] = {
    "request_created": "request.created",
    "stage_started": "stage.started",
    "approval_given": "approval.given",
    "stage_completed": "stage.completed",
    "stage_escalated": "stage.escalated",
    "stage_timed_out": "stage.timed_out",
    "request_approved": "request.approved",
    "request_denied": "request.denied",
    "request_cancelled": "request.cancelled",
    "request_expired": "request.expired",
    "grant_issued": "grant.issued",
    "grant_consumed": "grant.consumed",
    "grant_expired": "grant.expired",
    "grant_revoked": "grant.revoked",
    "execution_started": "execution.started",
    "execution_finished": "execution.finished",
    "break_glass_used": "break_glass.used",
    "review_recorded": "review.recorded",
}


class CodecError(ValueError):
    """A stored document that does not decode into a request."""


@dataclass(frozen=True, slots=True)
class RequestMeta:
    """What the service keeps about a request beyond the domain request."""

    #: The principal that submitted it: the requester, or the service account
    #: that submitted on the requester's behalf.
    submitted_by: str | None = None
    #: Id of the mirror of the request's grant in the ``grants`` table.
    grant_id: str | None = None
    #: The executor's reported duration of the run, if given.
    duration_ms: int | None = None
    #: SHA-256 (hex) of the signed approval receipt the executor kept, if given.
    receipt_sha256: str | None = None


# --- scalars ----------------------------------------------------------------------


def _time(value: datetime) -> str:
    return value.isoformat()


def _opt_time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _parse_time(value: Any) -> datetime:
    if not isinstance(value, str):
        raise CodecError(f"expected an ISO 8601 time, got {value!r}")
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise CodecError(f"time without an offset: {value!r}")
    return parsed


def _parse_opt_time(value: Any) -> datetime | None:
    return None if value is None else _parse_time(value)


def _span(value: timedelta) -> int:
    return value // timedelta(microseconds=1)


def _opt_span(value: timedelta | None) -> int | None:
    return None if value is None else _span(value)


def _parse_span(value: Any) -> timedelta:
    if isinstance(value, bool) or not isinstance(value, int):
        raise CodecError(f"expected a number of microseconds, got {value!r}")
    return timedelta(microseconds=value)


def _parse_opt_span(value: Any) -> timedelta | None:
    return None if value is None else _parse_span(value)


def _strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CodecError(f"expected a list of strings, got {value!r}")
    return tuple(value)


def _json(value: Any) -> Any:
    """A JSON-able deep copy of payload-like data (tuples become lists)."""
    if isinstance(value, Mapping):
        return {str(k): _json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json(v) for v in value]
    if isinstance(value, (frozenset, set)):
        return sorted(_json(v) for v in value)
    return value


# --- parts ------------------------------------------------------------------------


def _actor(actor: Actor) -> dict[str, Any]:
    return {"user": actor.user, "groups": sorted(actor.groups)}


def _parse_actor(data: Mapping[str, Any]) -> Actor:
    return Actor(user=data["user"], groups=frozenset(_strings(data["groups"])))


def _action(action: Action) -> dict[str, Any]:
    return {
        "kind": action.kind.value,
        "text": action.text,
        "payload": _json(action.payload),
        "target": action.target,
        "environment": action.environment,
        "actor": _actor(action.actor),
        "at": _time(action.at),
        "attributes": _json(action.attributes),
    }


def _parse_action(data: Mapping[str, Any]) -> Action:
    return Action(
        kind=ActionKind(data["kind"]),
        text=data["text"],
        payload=dict(data["payload"]),
        target=data["target"],
        environment=data["environment"],
        actor=_parse_actor(data["actor"]),
        at=_parse_time(data["at"]),
        attributes=dict(data["attributes"]),
    )


def _stage(stage: Stage) -> dict[str, Any]:
    return {
        "name": stage.name,
        "groups": list(stage.groups),
        "approvals": stage.approvals,
        "quorum": stage.quorum.value,
        "mfa": stage.mfa,
        "timeout_us": _opt_span(stage.timeout),
        "escalate_to": list(stage.escalate_to),
    }


def _parse_stage(data: Mapping[str, Any]) -> Stage:
    return Stage(
        name=data["name"],
        groups=_strings(data["groups"]),
        approvals=data["approvals"],
        quorum=Quorum(data["quorum"]),
        mfa=data["mfa"],
        timeout=_parse_opt_span(data["timeout_us"]),
        escalate_to=_strings(data["escalate_to"]),
    )


def encode_chain(chain: ApprovalChain) -> dict[str, Any]:
    return {
        "stages": [_stage(s) for s in chain.stages],
        "ttl_us": _span(chain.ttl),
        "break_glass": chain.break_glass,
        "grant_scope": chain.grant_scope.value,
        "grant_ttl_us": _span(chain.grant_ttl),
    }


def decode_chain(data: Mapping[str, Any]) -> ApprovalChain:
    return ApprovalChain(
        stages=tuple(_parse_stage(s) for s in data["stages"]),
        ttl=_parse_span(data["ttl_us"]),
        break_glass=data["break_glass"],
        grant_scope=GrantScope(data["grant_scope"]),
        grant_ttl=_parse_span(data["grant_ttl_us"]),
    )


def _approval(approval: Approval) -> dict[str, Any]:
    return {
        "approver": approval.approver,
        "groups": list(approval.groups),
        "at": _time(approval.at),
        "comment": approval.comment,
        "mfa_verified": approval.mfa_verified,
    }


def _parse_approval(data: Mapping[str, Any]) -> Approval:
    return Approval(
        approver=data["approver"],
        groups=_strings(data["groups"]),
        at=_parse_time(data["at"]),
        comment=data["comment"],
        mfa_verified=data["mfa_verified"],
    )


def _stage_state(state: StageState) -> dict[str, Any]:
    return {
        "started_at": _opt_time(state.started_at),
        "eligible_groups": list(state.eligible_groups),
        "approvals": [_approval(a) for a in state.approvals],
        "escalated_at": _opt_time(state.escalated_at),
        "completed_at": _opt_time(state.completed_at),
        "timed_out_at": _opt_time(state.timed_out_at),
    }


def _parse_stage_state(data: Mapping[str, Any]) -> StageState:
    return StageState(
        started_at=_parse_opt_time(data["started_at"]),
        eligible_groups=_strings(data["eligible_groups"]),
        approvals=tuple(_parse_approval(a) for a in data["approvals"]),
        escalated_at=_parse_opt_time(data["escalated_at"]),
        completed_at=_parse_opt_time(data["completed_at"]),
        timed_out_at=_parse_opt_time(data["timed_out_at"]),
    )


def _grant(grant: Grant) -> dict[str, Any]:
    return {
        "request_id": grant.request_id,
        "fingerprint": grant.fingerprint,
        "scope": grant.scope.value,
        "rule_ids": list(grant.rule_ids),
        "target": grant.target,
        "environment": grant.environment,
        "requester": grant.requester,
        "issued_at": _time(grant.issued_at),
        "expires_at": _time(grant.expires_at),
        "break_glass": grant.break_glass,
        "used_at": _opt_time(grant.used_at),
        "revoked_at": _opt_time(grant.revoked_at),
        "revoked_by": grant.revoked_by,
        "revoke_reason": grant.revoke_reason,
    }


def _parse_grant(data: Mapping[str, Any]) -> Grant:
    return Grant(
        request_id=data["request_id"],
        fingerprint=data["fingerprint"],
        scope=GrantScope(data["scope"]),
        rule_ids=_strings(data["rule_ids"]),
        target=data["target"],
        environment=data["environment"],
        requester=data["requester"],
        issued_at=_parse_time(data["issued_at"]),
        expires_at=_parse_time(data["expires_at"]),
        break_glass=data["break_glass"],
        used_at=_parse_opt_time(data["used_at"]),
        revoked_at=_parse_opt_time(data["revoked_at"]),
        revoked_by=data["revoked_by"],
        revoke_reason=data["revoke_reason"],
    )


def _execution(execution: Execution) -> dict[str, Any]:
    outcome = execution.outcome
    return {
        "executor": execution.executor,
        "started_at": _time(execution.started_at),
        "finished_at": _opt_time(execution.finished_at),
        "outcome": None
        if outcome is None
        else {
            "exit_code": outcome.exit_code,
            "rows_affected": outcome.rows_affected,
            "error": outcome.error,
        },
        "reported_by": execution.reported_by,
        "timeout_us": _span(execution.timeout),
    }


def _parse_execution(data: Mapping[str, Any]) -> Execution:
    outcome = data["outcome"]
    # Stored before executions had a deadline: the default one, so that a
    # request whose executor died does not stay executing forever.
    timeout = data.get("timeout_us")
    return Execution(
        executor=data["executor"],
        started_at=_parse_time(data["started_at"]),
        finished_at=_parse_opt_time(data["finished_at"]),
        outcome=None
        if outcome is None
        else ExecutionOutcome(
            exit_code=outcome["exit_code"],
            rows_affected=outcome["rows_affected"],
            error=outcome["error"],
        ),
        reported_by=data["reported_by"],
        timeout=DEFAULT_EXECUTION_TIMEOUT if timeout is None else _parse_span(timeout),
    )


# --- the request ------------------------------------------------------------------


def encode_request(req: ApprovalRequest) -> dict[str, Any]:
    """``req`` as a JSON-able dict (see the module docstring)."""
    denial, cancellation, glass, review = req.denial, req.cancellation, req.break_glass, req.review
    return {
        "id": req.id,
        "action": _action(req.action),
        "fingerprint": req.fingerprint,
        "rules": list(req.rules),
        "reasons": list(req.reasons),
        "risk": req.risk,
        "chain": encode_chain(req.chain),
        "requester": _actor(req.requester),
        "created_at": _time(req.created_at),
        "expires_at": _time(req.expires_at),
        "updated_at": _time(req.updated_at),
        "stages": [_stage_state(s) for s in req.stages],
        "status": req.status.value,
        "stage_index": req.stage_index,
        "approved_at": _opt_time(req.approved_at),
        "denial": None
        if denial is None
        else {
            "by": denial.by,
            "reason": denial.reason,
            "at": _time(denial.at),
            "stage_index": denial.stage_index,
        },
        "cancellation": None
        if cancellation is None
        else {
            "by": cancellation.by,
            "reason": cancellation.reason,
            "at": _time(cancellation.at),
            "as_admin": cancellation.as_admin,
        },
        "expired_at": _opt_time(req.expired_at),
        "expiry_reason": None if req.expiry_reason is None else req.expiry_reason.value,
        "break_glass": None
        if glass is None
        else {"by": glass.by, "justification": glass.justification, "at": _time(glass.at)},
        "review_required": req.review_required,
        "review": None
        if review is None
        else {
            "reviewer": review.reviewer,
            "verdict": review.verdict.value,
            "comment": review.comment,
            "at": _time(review.at),
        },
        "grant": None if req.grant is None else _grant(req.grant),
        "execution": None if req.execution is None else _execution(req.execution),
    }


def decode_request(data: Mapping[str, Any]) -> ApprovalRequest:
    """The request :func:`encode_request` made ``data`` from.

    Raises :class:`CodecError` for a document that is not one.
    """
    try:
        return _decode_request(data)
    except CodecError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CodecError(f"not a serialized approval request: {type(exc).__name__}: {exc}") from exc


def _decode_request(data: Mapping[str, Any]) -> ApprovalRequest:
    denial, cancellation = data["denial"], data["cancellation"]
    glass, review = data["break_glass"], data["review"]
    expiry = data["expiry_reason"]
    return ApprovalRequest(
        id=data["id"],
        action=_parse_action(data["action"]),
        fingerprint=data["fingerprint"],
        rules=_strings(data["rules"]),
        reasons=_strings(data["reasons"]),
        risk=data["risk"],
        chain=decode_chain(data["chain"]),
        requester=_parse_actor(data["requester"]),
        created_at=_parse_time(data["created_at"]),
        expires_at=_parse_time(data["expires_at"]),
        updated_at=_parse_time(data["updated_at"]),
        stages=tuple(_parse_stage_state(s) for s in data["stages"]),
        status=RequestStatus(data["status"]),
        stage_index=data["stage_index"],
        approved_at=_parse_opt_time(data["approved_at"]),
        denial=None
        if denial is None
        else Denial(
            by=denial["by"],
            reason=denial["reason"],
            at=_parse_time(denial["at"]),
            stage_index=denial["stage_index"],
        ),
        cancellation=None
        if cancellation is None
        else Cancellation(
            by=cancellation["by"],
            reason=cancellation["reason"],
            at=_parse_time(cancellation["at"]),
            as_admin=cancellation["as_admin"],
        ),
        expired_at=_parse_opt_time(data["expired_at"]),
        expiry_reason=None if expiry is None else ExpiryReason(expiry),
        break_glass=None
        if glass is None
        else BreakGlass(
            by=glass["by"], justification=glass["justification"], at=_parse_time(glass["at"])
        ),
        review_required=data["review_required"],
        review=None
        if review is None
        else Review(
            reviewer=review["reviewer"],
            verdict=ReviewVerdict(review["verdict"]),
            comment=review["comment"],
            at=_parse_time(review["at"]),
        ),
        grant=None if data["grant"] is None else _parse_grant(data["grant"]),
        execution=None if data["execution"] is None else _parse_execution(data["execution"]),
    )


# --- the stored envelope and row --------------------------------------------------


def encode_state(req: ApprovalRequest, meta: RequestMeta) -> dict[str, Any]:
    """The ``state`` column: the request and the service's metadata about it."""
    return {
        "format": STATE_FORMAT,
        "request": encode_request(req),
        "meta": {
            "submitted_by": meta.submitted_by,
            "grant_id": meta.grant_id,
            "duration_ms": meta.duration_ms,
            "receipt_sha256": meta.receipt_sha256,
        },
    }


def decode_state(state: Mapping[str, Any]) -> tuple[ApprovalRequest, RequestMeta]:
    if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
        raise CodecError("unknown request state format")
    meta = state.get("meta") or {}
    return decode_request(state["request"]), RequestMeta(
        submitted_by=meta.get("submitted_by"),
        grant_id=meta.get("grant_id"),
        duration_ms=meta.get("duration_ms"),
        receipt_sha256=meta.get("receipt_sha256"),
    )


def request_row(
    req: ApprovalRequest,
    meta: RequestMeta,
    decision: dict[str, Any] | None,
    *,
    version: int = 1,
) -> RequestRow:
    """The store row for ``req``: queryable columns copied from it, plus the state.

    ``decision`` is the serialized policy decision
    (:meth:`jitgate.policy.Decision.to_dict`), kept as it was when the request
    was created.
    """
    return RequestRow(
        id=req.id,
        status=req.status.value,
        requester=req.requester.user,
        fingerprint=req.fingerprint,
        kind=req.action.kind.value,
        environment=req.action.environment,
        target=req.action.target,
        created_at=req.created_at,
        updated_at=req.updated_at,
        expires_at=req.expires_at,
        next_deadline=next_deadline(req),
        state=encode_state(req, meta),
        decision=decision,
        version=version,
    )


# --- events -----------------------------------------------------------------------


def event_name(event: Event) -> str:
    """The audit trail's name for a core event (``request.approved``)."""
    return EVENT_NAMES.get(event.type) or event.type.replace("_", ".", 1)


def event_payload(event: Event) -> dict[str, Any]:
    """The event's fields as JSON (ISO times, enum values, lists)."""
    payload = event.to_dict()
    del payload["type"]
    return payload


def audit_payload(event: Event, req: ApprovalRequest, meta: RequestMeta) -> dict[str, Any]:
    """What the audit trail records for ``event`` of ``req``: the event's fields,
    and what an auditor needs without the request row: the action itself on
    creation (what was asked for), the executor's duration, the grant and the
    digest of the approval receipt the executor kept on the outcome (the row
    may be archived long before the trail)."""
    payload = event_payload(event)
    if event.type == "request_created":
        payload["action"] = _action(req.action)
        payload["submitted_by"] = meta.submitted_by
    elif event.type == "execution_finished":
        payload["duration_ms"] = meta.duration_ms
        payload["grant_id"] = meta.grant_id
        payload["receipt_sha256"] = meta.receipt_sha256
    return payload
