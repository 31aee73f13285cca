"""The service codec: requests round-trip through JSON exactly; rows and events."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jitgate.actions.model import Action, ActionKind, Actor
from jitgate.approvals import (
    DEFAULT_EXECUTION_TIMEOUT,
    EVENT_TYPES,
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
    RequestApproved,
    RequestStatus,
    Review,
    ReviewVerdict,
    Stage,
    StageEscalated,
    StageState,
    next_deadline,
)
from jitgate.service.codec import (
    EVENT_NAMES,
    CodecError,
    RequestMeta,
    decode_request,
    decode_state,
    encode_request,
    encode_state,
    event_name,
    event_payload,
    request_row,
)

T0 = datetime(2031, 3, 4, 10, 0, tzinfo=UTC)

text = st.text(max_size=12)
names = st.text(min_size=1, max_size=8)
name_tuples = st.lists(names, max_size=3).map(tuple)
times = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.sampled_from(
        [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]
    ),
)
opt_times = st.none() | times
spans = st.timedeltas(min_value=timedelta(microseconds=1), max_value=timedelta(days=400))
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)
json_objects = st.dictionaries(text, json_values, max_size=4)
actors = st.builds(Actor, user=text, groups=st.frozensets(names, max_size=3))

actions = st.builds(
    Action,
    kind=st.sampled_from(ActionKind),
    text=text,
    payload=json_objects,
    target=text,
    environment=text,
    actor=actors,
    at=times,
    attributes=json_objects,
)
stages = st.builds(
    Stage,
    name=names,
    groups=name_tuples,
    approvals=st.integers(0, 5),
    quorum=st.sampled_from(Quorum),
    mfa=st.booleans(),
    timeout=st.none() | spans,
    escalate_to=name_tuples,
)
chains = st.builds(
    ApprovalChain,
    stages=st.lists(stages, min_size=1, max_size=3).map(tuple),
    ttl=spans,
    break_glass=st.booleans(),
    grant_scope=st.sampled_from(GrantScope),
    grant_ttl=spans,
)
approvals = st.builds(
    Approval, approver=names, groups=name_tuples, at=times, comment=text, mfa_verified=st.booleans()
)
stage_states = st.builds(
    StageState,
    started_at=opt_times,
    eligible_groups=name_tuples,
    approvals=st.lists(approvals, max_size=3).map(tuple),
    escalated_at=opt_times,
    completed_at=opt_times,
    timed_out_at=opt_times,
)
grants = st.builds(
    Grant,
    request_id=names,
    fingerprint=text,
    scope=st.sampled_from(GrantScope),
    rule_ids=name_tuples,
    target=text,
    environment=text,
    requester=names,
    issued_at=times,
    expires_at=times,
    break_glass=st.booleans(),
    used_at=opt_times,
    revoked_at=opt_times,
    revoked_by=st.none() | names,
    revoke_reason=text,
)
executions = st.builds(
    Execution,
    executor=names,
    started_at=times,
    finished_at=opt_times,
    outcome=st.none()
    | st.builds(
        ExecutionOutcome,
        exit_code=st.none() | st.integers(-255, 255),
        rows_affected=st.none() | st.integers(0, 10**12),
        error=st.none() | text,
    ),
    reported_by=st.none() | names,
    timeout=spans,
)
requests = st.builds(
    ApprovalRequest,
    id=names,
    action=actions,
    fingerprint=text,
    rules=name_tuples,
    reasons=st.lists(text, max_size=3).map(tuple),
    risk=text,
    chain=chains,
    requester=actors,
    created_at=times,
    expires_at=times,
    updated_at=times,
    stages=st.lists(stage_states, min_size=1, max_size=3).map(tuple),
    status=st.sampled_from(RequestStatus),
    stage_index=st.integers(0, 3),
    approved_at=opt_times,
    denial=st.none()
    | st.builds(Denial, by=names, reason=text, at=times, stage_index=st.integers(0, 3)),
    cancellation=st.none()
    | st.builds(Cancellation, by=names, reason=text, at=times, as_admin=st.booleans()),
    expired_at=opt_times,
    expiry_reason=st.none() | st.sampled_from(ExpiryReason),
    break_glass=st.none() | st.builds(BreakGlass, by=names, justification=text, at=times),
    review_required=st.booleans(),
    review=st.none()
    | st.builds(
        Review, reviewer=names, verdict=st.sampled_from(ReviewVerdict), comment=text, at=times
    ),
    grant=st.none() | grants,
    execution=st.none() | executions,
)


@settings(max_examples=300, deadline=None)
@given(requests)
def test_requests_round_trip_through_json(req: ApprovalRequest) -> None:
    data = encode_request(req)
    assert decode_request(data) == req
    again = decode_request(json.loads(json.dumps(data, allow_nan=False)))
    assert again == req
    # offsets survive, not just instants
    assert again.created_at.utcoffset() == req.created_at.utcoffset()
    assert encode_request(again) == data


@settings(max_examples=50, deadline=None)
@given(requests, st.none() | names, st.none() | names, st.none() | st.integers(0, 10**6))
def test_state_envelope_round_trips(
    req: ApprovalRequest, submitted_by: str | None, grant_id: str | None, duration: int | None
) -> None:
    meta = RequestMeta(submitted_by, grant_id, duration)
    state = json.loads(json.dumps(encode_state(req, meta)))
    assert decode_state(state) == (req, meta)


def test_garbage_does_not_decode() -> None:
    with pytest.raises(CodecError):
        decode_request({"id": "x"})
    with pytest.raises(CodecError):
        decode_state({"format": 99, "request": {}})
    good = encode_request(_request())
    for key, bad in [("created_at", "2031-03-04T10:00:00"), ("chain", {"stages": "x"})]:
        with pytest.raises(CodecError):
            decode_request({**good, key: bad})


def _request() -> ApprovalRequest:
    action = Action.create("sql", "DELETE FROM t", target="db", environment="prod", user="ann")
    chain = ApprovalChain(stages=(Stage("a", ("approvers",), timeout=timedelta(minutes=5)),))
    return ApprovalRequest(
        id="req_1",
        action=action,
        fingerprint=action.fingerprint(),
        rules=("r",),
        reasons=("because",),
        risk="high",
        chain=chain,
        requester=action.actor,
        created_at=T0,
        expires_at=T0 + timedelta(hours=1),
        updated_at=T0,
        stages=(StageState(started_at=T0, eligible_groups=("approvers",)),),
    )


def test_request_row_columns() -> None:
    req = _request()
    decision: dict[str, Any] = {"decision": "require_approval"}
    row = request_row(req, RequestMeta(submitted_by="ann"), decision)
    assert (row.id, row.status, row.requester, row.kind, row.environment, row.target) == (
        "req_1",
        "pending",
        "ann",
        "sql",
        "production",
        "db",
    )
    assert row.fingerprint == req.fingerprint
    assert (row.created_at, row.updated_at, row.expires_at) == (
        T0,
        T0,
        T0 + timedelta(hours=1),
    )
    assert row.next_deadline == next_deadline(req) == T0 + timedelta(minutes=5)
    assert row.decision is decision
    assert row.version == 1
    assert decode_state(row.state) == (req, RequestMeta(submitted_by="ann"))


def test_every_core_event_has_an_audit_name() -> None:
    assert set(EVENT_NAMES) == set(EVENT_TYPES)
    assert len(set(EVENT_NAMES.values())) == len(EVENT_NAMES)
    assert event_name(RequestApproved("r", T0, break_glass=False)) == "request.approved"


def test_event_payload() -> None:
    event: Event = StageEscalated("r", T0, 0, "a", ("leads",), deadline=T0 + timedelta(minutes=5))
    assert event_payload(event) == {
        "request_id": "r",
        "at": "2031-03-04T10:00:00+00:00",
        "stage_index": 0,
        "stage": "a",
        "notify_groups": ["leads"],
        "deadline": "2031-03-04T10:05:00+00:00",
    }
    json.dumps(event_payload(event))


def test_an_execution_stored_without_a_timeout_gets_the_default_deadline() -> None:
    """States written before executions had a deadline still decode, and an
    executing request among them is no longer stuck: it gets the default one."""
    started = T0 + timedelta(minutes=1)
    req = replace(
        _request(),
        status=RequestStatus.EXECUTING,
        execution=Execution(executor="ann", started_at=started),
    )
    data = encode_request(req)
    assert data["execution"]["timeout_us"] == 3600 * 10**6
    del data["execution"]["timeout_us"]
    old = decode_request(json.loads(json.dumps(data)))
    assert old.execution is not None
    assert old.execution.timeout == DEFAULT_EXECUTION_TIMEOUT
    assert next_deadline(old) == started + DEFAULT_EXECUTION_TIMEOUT
    row = request_row(old, RequestMeta(submitted_by="ann"), None)
    assert row.next_deadline == started + DEFAULT_EXECUTION_TIMEOUT
    custom = replace(req, execution=Execution("ann", started, timeout=timedelta(minutes=7)))
    assert decode_request(encode_request(custom)).execution == custom.execution
