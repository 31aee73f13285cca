"""Example tests of the approval state machine: one per rule and error code."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import FrozenInstanceError, replace
from datetime import UTC, datetime, timedelta

import pytest

from jitgate.actions.findings import Analysis, Risk
from jitgate.actions.model import Action, Actor, fingerprint
from jitgate.approvals import (
    ERROR_CODES,
    EVENT_TYPES,
    ApprovalChain,
    ApprovalError,
    ApprovalRequest,
    Event,
    ExpiryReason,
    GrantScope,
    Quorum,
    RequestStatus,
    ReviewVerdict,
    Stage,
    approve,
    authorize,
    break_glass,
    cancel,
    check_scope,
    create_request,
    deny,
    next_deadline,
    report_outcome,
    review,
    revoke_grant,
    scope_allows,
    stage_allocation,
    stage_deadline,
    tick,
    validate_chain,
)
from jitgate.policy.decision import Decision, Outcome

T0 = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)
MINUTE = timedelta(minutes=1)

ALICE = Actor.of("alice", ["dev"])
BOB = Actor.of("bob", ["dba"])
CAROL = Actor.of("carol", ["dba", "security"])
DAVE = Actor.of("dave", ["security"])
ERIN = Actor.of("erin", ["managers"])
MALLORY = Actor.of("mallory", ["marketing"])

ONE_DBA = ApprovalChain(stages=(Stage("dba", ("dba",)),))


def make_action(
    text: str = "DELETE FROM users WHERE id = 7",
    user: str = "alice",
    target: str = "db-main",
    environment: str = "production",
) -> Action:
    return Action.create(
        "sql", text, target=target, environment=environment, user=user, groups=["dev"], at=T0
    )


def make_decision(
    action: Action,
    chain: ApprovalChain | None = ONE_DBA,
    *,
    outcome: Outcome = Outcome.REQUIRE_APPROVAL,
    rules: tuple[str, ...] = ("sql-delete-prod",),
) -> Decision:
    return Decision(
        outcome=outcome,
        risk=Risk.HIGH,
        rules=rules,
        reasons=("DELETE in production",),
        fingerprint=fingerprint(action),
        analysis=Analysis(),
        chain=chain,
    )


def new_request(chain: ApprovalChain = ONE_DBA, action: Action | None = None) -> ApprovalRequest:
    action = action or make_action()
    req, _ = create_request("req-1", action, make_decision(action, chain), T0)
    return req


def types(events: tuple[Event, ...]) -> list[str]:
    return [e.type for e in events]


@contextmanager
def refused(code: str) -> Iterator[None]:
    """Expect a refusal with exactly this stable code."""
    assert code in ERROR_CODES, code
    with pytest.raises(ApprovalError) as info:
        yield
    assert info.value.code == code, info.value


def approved_request(chain: ApprovalChain = ONE_DBA) -> ApprovalRequest:
    req, _ = approve(new_request(chain), BOB, T0 + MINUTE)
    assert req.status is RequestStatus.APPROVED
    return req


# --- creating ------------------------------------------------------------------


def test_create_request_records_the_decision_and_starts_the_first_stage() -> None:
    action = make_action()
    req, events = create_request("req-1", action, make_decision(action), T0)
    assert req.status is RequestStatus.PENDING
    assert req.fingerprint == fingerprint(action)
    assert req.rules == ("sql-delete-prod",)
    assert req.reasons == ("DELETE in production",)
    assert req.risk == "high"
    assert req.requester == action.actor
    assert req.expires_at == T0 + ONE_DBA.ttl
    assert req.stages[0].started_at == T0
    assert types(events) == ["request_created", "stage_started"]
    assert events[1].to_dict()["notify_groups"] == ["dba"]
    assert next_deadline(req) == req.expires_at


@pytest.mark.parametrize("outcome", [Outcome.ALLOW, Outcome.DENY])
def test_only_require_approval_decisions_become_requests(outcome: Outcome) -> None:
    action = make_action()
    with refused("approval_not_required"):
        create_request("r", action, make_decision(action, outcome=outcome), T0)


@pytest.mark.parametrize(
    "chain",
    [
        None,
        ApprovalChain(stages=()),
        ApprovalChain(stages=(Stage("empty", ()),)),
        ApprovalChain(stages=(Stage("blank", ("dba", " ")),)),
        ApprovalChain(stages=(Stage("twice", ("dba", "dba")),)),
        ApprovalChain(stages=(Stage("zero", ("dba",), approvals=0),)),
        ApprovalChain(stages=(Stage("bool", ("dba",), approvals=True),)),
        ApprovalChain(stages=(Stage("t", ("dba",), timeout=timedelta(0)),)),
        ApprovalChain(stages=(Stage("dba", ("dba",)),), ttl=timedelta(0)),
        ApprovalChain(stages=(Stage("dba", ("dba",)),), grant_ttl=-SECOND),
    ],
)
def test_unenforceable_chains_fail_closed(chain: ApprovalChain | None) -> None:
    action = make_action()
    with refused("invalid_chain"):
        create_request("r", action, make_decision(action, chain), T0)


def test_validate_chain_returns_a_good_chain() -> None:
    assert validate_chain(ONE_DBA) is ONE_DBA


def test_a_decision_for_another_action_is_refused() -> None:
    action = make_action()
    other = make_decision(make_action("DELETE FROM users WHERE id = 8"))
    with refused("decision_mismatch"):
        create_request("r", action, other, T0)


def test_an_anonymous_requester_is_refused() -> None:
    action = make_action(user="")
    with refused("anonymous_actor"):
        create_request("r", action, make_decision(action), T0)


def test_naive_times_and_blank_ids_are_refused() -> None:
    action = make_action()
    with refused("invalid_time"):
        create_request("r", action, make_decision(action), T0.replace(tzinfo=None))
    with refused("invalid_request"):
        create_request(" ", action, make_decision(action), T0)
    with refused("invalid_time"):
        approve(new_request(), BOB, T0.replace(tzinfo=None))


# --- approving -----------------------------------------------------------------


def test_single_approval_approves_and_issues_a_grant() -> None:
    req, events = approve(new_request(), BOB, T0 + MINUTE, comment="checked the WHERE")
    assert req.status is RequestStatus.APPROVED
    assert types(events) == [
        "approval_given",
        "stage_completed",
        "request_approved",
        "grant_issued",
    ]
    approval = req.stages[0].approvals[0]
    assert (approval.approver, approval.groups, approval.comment) == (
        "bob",
        ("dba",),
        "checked the WHERE",
    )
    grant = req.grant
    assert grant is not None
    assert grant.fingerprint == req.fingerprint
    assert grant.requester == "alice"
    assert grant.scope is GrantScope.ACTION
    assert grant.rule_ids == ("sql-delete-prod",)
    assert (grant.target, grant.environment) == ("db-main", "production")
    assert grant.expires_at == T0 + MINUTE + ONE_DBA.grant_ttl
    assert next_deadline(req) == grant.expires_at


def test_the_requester_cannot_approve_even_as_a_member() -> None:
    req = new_request()
    with refused("self_approval"):
        approve(req, Actor.of("alice", ["dba"]), T0)


def test_user_names_are_compared_exactly() -> None:
    # Documented: canonicalising names is the identity adapter's job.
    req, _ = approve(new_request(), Actor.of("Alice", ["dba"]), T0)
    assert req.status is RequestStatus.APPROVED


def test_an_anonymous_approver_is_refused() -> None:
    with refused("anonymous_actor"):
        approve(new_request(), Actor.of("  ", ["dba"]), T0)


def test_only_members_of_the_stage_groups_approve() -> None:
    with refused("not_eligible"):
        approve(new_request(), MALLORY, T0)


def test_one_approval_per_person_per_stage() -> None:
    chain = ApprovalChain(stages=(Stage("dba", ("dba",), approvals=2),))
    req, _ = approve(new_request(chain), BOB, T0)
    with refused("already_approved"):
        approve(req, BOB, T0 + SECOND)


def test_one_person_fills_at_most_one_stage() -> None:
    chain = ApprovalChain(stages=(Stage("dba", ("dba",)), Stage("security", ("security",))))
    req, events = approve(new_request(chain), CAROL, T0)
    assert req.stage_index == 1
    assert types(events) == ["approval_given", "stage_completed", "stage_started"]
    with refused("already_filled_stage"):
        approve(req, CAROL, T0 + SECOND)
    req, _ = approve(req, DAVE, T0 + SECOND)
    assert req.status is RequestStatus.APPROVED


def test_mfa_stages_need_a_verified_step_up() -> None:
    chain = ApprovalChain(stages=(Stage("dba", ("dba",), mfa=True),))
    req = new_request(chain)
    with refused("mfa_required"):
        approve(req, BOB, T0)
    with refused("mfa_required"):
        approve(req, BOB, T0, mfa_verified="123456")  # type: ignore[arg-type]
    req, _ = approve(req, BOB, T0, mfa_verified=True)
    assert req.stages[0].approvals[0].mfa_verified is True


def test_approvals_stop_at_the_ttl() -> None:
    req = new_request()
    almost, _ = approve(req, BOB, req.expires_at - timedelta(microseconds=1))
    assert almost.status is RequestStatus.APPROVED
    with refused("request_expired"):
        approve(req, BOB, req.expires_at)


def test_nothing_is_approved_twice() -> None:
    req = approved_request()
    with refused("not_pending"):
        approve(req, CAROL, T0 + 2 * MINUTE)


def test_quorum_all_needs_each_group() -> None:
    chain = ApprovalChain(stages=(Stage("both", ("dba", "security"), quorum=Quorum.ALL),))
    req, _ = approve(new_request(chain), BOB, T0)
    assert req.status is RequestStatus.PENDING
    with refused("group_satisfied"):
        approve(req, Actor.of("bert", ["dba"]), T0)
    req, _ = approve(req, DAVE, T0)
    assert req.status is RequestStatus.APPROVED


def test_quorum_all_counts_a_member_of_several_groups_once_and_reallocates() -> None:
    # carol (dba + security) approves first; bob, only in dba, must still be
    # able to complete the stage: carol moves to security.
    chain = ApprovalChain(stages=(Stage("both", ("dba", "security"), quorum=Quorum.ALL),))
    req, _ = approve(new_request(chain), CAROL, T0)
    assert req.status is RequestStatus.PENDING
    assert stage_allocation(chain.stages[0], req.stages[0].approvals) == {"carol": "dba"}
    req, _ = approve(req, BOB, T0)
    assert req.status is RequestStatus.APPROVED
    assert stage_allocation(chain.stages[0], req.stages[0].approvals) == {
        "carol": "security",
        "bob": "dba",
    }


def test_quorum_all_with_several_approvals_per_group() -> None:
    stage = Stage("both", ("dba", "security"), approvals=2, quorum=Quorum.ALL)
    chain = ApprovalChain(stages=(stage,))
    req = new_request(chain)
    for n, who in enumerate([CAROL, Actor.of("sam", ["security"]), DAVE, BOB], start=1):
        assert req.status is RequestStatus.PENDING
        req, _ = approve(req, who, T0 + n * SECOND)
    assert req.status is RequestStatus.APPROVED


def test_quorum_any_counts_approvals_from_any_group() -> None:
    chain = ApprovalChain(stages=(Stage("any", ("dba", "security"), approvals=2),))
    req, _ = approve(new_request(chain), BOB, T0)
    assert req.status is RequestStatus.PENDING
    req, _ = approve(req, Actor.of("bert", ["dba"]), T0)
    assert req.status is RequestStatus.APPROVED


# --- escalation and time -----------------------------------------------------


ESCALATING = ApprovalChain(
    stages=(Stage("dba", ("dba",), timeout=30 * MINUTE, escalate_to=("managers",)),),
    ttl=timedelta(hours=4),
)


def test_a_stage_escalates_at_its_timeout_then_expires_at_the_next() -> None:
    req = new_request(ESCALATING)
    assert next_deadline(req) == T0 + 30 * MINUTE
    same, events = tick(req, T0 + 30 * MINUTE - SECOND)
    assert same is req
    assert events == ()
    with refused("not_eligible"):
        approve(req, ERIN, T0 + 29 * MINUTE)

    req, events = tick(req, T0 + 30 * MINUTE)
    assert types(events) == ["stage_escalated"]
    escalated = events[0].to_dict()
    assert escalated["notify_groups"] == ["managers"]
    assert escalated["deadline"] == (T0 + 60 * MINUTE).isoformat()
    assert req.stages[0].eligible_groups == ("dba", "managers")
    assert next_deadline(req) == stage_deadline(req) == T0 + 60 * MINUTE

    req2, _ = approve(req, ERIN, T0 + 31 * MINUTE)
    assert req2.status is RequestStatus.APPROVED

    req, events = tick(req, T0 + 60 * MINUTE)
    assert types(events) == ["stage_timed_out", "request_expired"]
    assert req.status is RequestStatus.EXPIRED
    assert req.expiry_reason is ExpiryReason.STAGE_TIMEOUT
    assert next_deadline(req) is None


def test_a_late_tick_applies_every_deadline_at_its_own_time() -> None:
    req, events = tick(new_request(ESCALATING), T0 + timedelta(hours=3))
    assert types(events) == ["stage_escalated", "stage_timed_out", "request_expired"]
    assert [e.at for e in events] == [T0 + 30 * MINUTE, T0 + 60 * MINUTE, T0 + 60 * MINUTE]
    assert req.expired_at == T0 + 60 * MINUTE
    assert req.updated_at == T0 + timedelta(hours=3)


def test_the_ttl_wins_over_a_later_escalation_deadline() -> None:
    chain = replace(ESCALATING, ttl=45 * MINUTE)
    req, events = tick(new_request(chain), T0 + timedelta(hours=1))
    assert types(events) == ["stage_escalated", "request_expired"]
    # The escalation group is told the real deadline: the ttl, not the stage's.
    assert events[0].to_dict()["deadline"] == (T0 + 45 * MINUTE).isoformat()
    assert req.expiry_reason is ExpiryReason.TTL
    assert req.expired_at == T0 + 45 * MINUTE


def test_a_stage_without_escalation_target_expires_the_request() -> None:
    chain = ApprovalChain(stages=(Stage("dba", ("dba",), timeout=10 * MINUTE),))
    _req, events = tick(new_request(chain), T0 + 10 * MINUTE)
    assert types(events) == ["stage_timed_out", "request_expired"]
    assert events[0].to_dict()["escalated"] is False
    with refused("request_expired"):
        approve(new_request(chain), BOB, T0 + 10 * MINUTE)


def test_the_ttl_expires_a_pending_request() -> None:
    req = new_request()
    req, events = tick(req, req.expires_at)
    assert types(events) == ["request_expired"]
    assert req.expiry_reason is ExpiryReason.TTL


def test_the_next_stage_times_out_from_when_it_started() -> None:
    chain = ApprovalChain(
        stages=(Stage("dba", ("dba",)), Stage("security", ("security",), timeout=10 * MINUTE))
    )
    req, _ = approve(new_request(chain), BOB, T0 + 20 * MINUTE)
    assert req.stages[1].started_at == T0 + 20 * MINUTE
    assert next_deadline(req) == T0 + 30 * MINUTE


def test_approving_after_a_missed_tick_escalates_first() -> None:
    req, events = approve(new_request(ESCALATING), ERIN, T0 + 40 * MINUTE)
    assert types(events)[:2] == ["stage_escalated", "approval_given"]
    assert req.status is RequestStatus.APPROVED


def test_an_escalation_group_stands_in_for_missing_groups_under_quorum_all() -> None:
    stage = Stage(
        "both",
        ("dba", "security"),
        quorum=Quorum.ALL,
        timeout=30 * MINUTE,
        escalate_to=("managers",),
    )
    req, _ = approve(new_request(ApprovalChain(stages=(stage,))), BOB, T0)
    req, _ = approve(req, ERIN, T0 + 31 * MINUTE)
    assert req.status is RequestStatus.APPROVED
    assert stage_allocation(stage, req.stages[0].approvals) == {"bob": "dba", "erin": "security"}


def test_a_clock_that_goes_back_is_clamped_to_the_requests_time() -> None:
    req, _ = approve(new_request(ONE_DBA), BOB, T0 + 10 * MINUTE)
    req, _ = authorize(req, req.fingerprint, ALICE, T0 + MINUTE)
    assert req.execution is not None
    assert req.execution.started_at == T0 + 10 * MINUTE


# --- denying and cancelling ----------------------------------------------------


def test_deny_needs_a_reason_and_an_approver() -> None:
    req = new_request()
    for blank in ("", "   ", "\n\t"):
        with refused("reason_required"):
            deny(req, BOB, blank, T0)
    with refused("self_denial"):
        deny(req, Actor.of("alice", ["dba"]), "no", T0)
    with refused("not_eligible"):
        deny(req, MALLORY, "I do not like it", T0)
    req, events = deny(req, BOB, "wrong table", T0 + MINUTE)
    assert req.status is RequestStatus.DENIED
    assert req.denial is not None
    assert (req.denial.by, req.denial.reason) == ("bob", "wrong table")
    assert types(events) == ["request_denied"]
    with refused("not_pending"):
        approve(req, CAROL, T0 + 2 * MINUTE)


def test_a_later_stage_or_escalation_member_may_deny_early() -> None:
    chain = ApprovalChain(
        stages=(
            Stage("dba", ("dba",), timeout=MINUTE, escalate_to=("managers",)),
            Stage("security", ("security",)),
        )
    )
    for who in (DAVE, ERIN):
        req, _ = deny(new_request(chain), who, "not during the freeze", T0)
        assert req.status is RequestStatus.DENIED


def test_cancel_by_the_requester_or_an_admin_with_a_reason() -> None:
    req = new_request()
    with refused("not_requester"):
        cancel(req, BOB, T0)
    with refused("reason_required"):
        cancel(req, MALLORY, T0, as_admin=True)
    done, events = cancel(req, MALLORY, T0, "duplicate of req-0", as_admin=True)
    assert done.status is RequestStatus.CANCELLED
    assert types(events) == ["request_cancelled"]
    done, _ = cancel(req, ALICE, T0)
    assert done.cancellation is not None
    assert done.cancellation.by == "alice"
    with refused("not_pending"):
        cancel(approved_request(), ALICE, T0 + 2 * MINUTE)


# --- break-glass and review ----------------------------------------------------


GLASS = replace(ONE_DBA, break_glass=True)
WHY = "primary is down, restoring from replica"


def test_break_glass_needs_the_chain_to_allow_it() -> None:
    with refused("break_glass_not_allowed"):
        break_glass(new_request(), ALICE, WHY, T0)


def test_break_glass_is_for_the_requester_with_a_justification() -> None:
    req = new_request(GLASS)
    with refused("not_requester"):
        break_glass(req, BOB, WHY, T0)
    for short in ("", "   ", "urgent!!!", "  fix it  "):
        with refused("justification_required"):
            break_glass(req, ALICE, short, T0)


def test_break_glass_on_an_mfa_chain_needs_mfa() -> None:
    chain = ApprovalChain(stages=(Stage("dba", ("dba",), mfa=True),), break_glass=True)
    req = new_request(chain)
    with refused("mfa_required"):
        break_glass(req, ALICE, WHY, T0)
    req, _ = break_glass(req, ALICE, WHY, T0, mfa_verified=True)
    assert req.status is RequestStatus.APPROVED


def test_break_glass_approves_and_requires_a_review() -> None:
    req, events = break_glass(new_request(GLASS), ALICE, WHY, T0 + MINUTE)
    assert req.status is RequestStatus.APPROVED
    assert req.review_required
    assert req.review_pending
    assert req.grant is not None
    assert req.grant.break_glass
    assert types(events) == ["break_glass_used", "request_approved", "grant_issued"]
    assert events[0].to_dict()["notify_groups"] == ["dba"]

    with refused("self_review"):
        review(req, Actor.of("alice", ["dba"]), ReviewVerdict.JUSTIFIED, T0)
    with refused("not_eligible"):
        review(req, MALLORY, ReviewVerdict.JUSTIFIED, T0)
    with refused("reason_required"):
        review(req, BOB, ReviewVerdict.UNJUSTIFIED, T0)

    # The review usually comes after the action ran.
    req, _ = authorize(req, req.fingerprint, ALICE, T0 + 2 * MINUTE)
    req, _ = report_outcome(req, ALICE, T0 + 3 * MINUTE, exit_code=0)
    reviewed, events = review(req, BOB, ReviewVerdict.JUSTIFIED, T0 + timedelta(hours=5))
    assert types(events) == ["review_recorded"]
    assert reviewed.status is RequestStatus.EXECUTED
    assert not reviewed.review_pending
    with refused("already_reviewed"):
        review(reviewed, CAROL, ReviewVerdict.JUSTIFIED, T0 + timedelta(hours=6))


def test_only_break_glass_approvals_are_reviewed() -> None:
    with refused("review_not_required"):
        review(approved_request(), CAROL, ReviewVerdict.JUSTIFIED, T0 + 2 * MINUTE)


def test_break_glass_after_expiry_is_refused() -> None:
    req = new_request(GLASS)
    with refused("request_expired"):
        break_glass(req, ALICE, WHY, req.expires_at)


# --- grants and execution -----------------------------------------------------


def test_authorize_runs_exactly_the_approved_action_once() -> None:
    req = approved_request()
    at = T0 + 2 * MINUTE
    changed = fingerprint(make_action("DELETE FROM users WHERE id = 8"))
    with refused("grant_mismatch"):
        authorize(req, changed, ALICE, at)
    with refused("grant_mismatch"):
        authorize(req, fingerprint(make_action(target="db-other")), ALICE, at)
    with refused("not_requester"):
        authorize(req, req.fingerprint, BOB, at)
    running, events = authorize(req, req.fingerprint, ALICE, at)
    assert running.status is RequestStatus.EXECUTING
    assert types(events) == ["grant_consumed", "execution_started"]
    assert running.grant is not None
    assert running.grant.used_at == at
    with refused("grant_used"):
        authorize(running, req.fingerprint, ALICE, at)


def test_authorize_before_approval_is_refused() -> None:
    req = new_request()
    with refused("not_approved"):
        authorize(req, req.fingerprint, ALICE, T0)
    denied, _ = deny(req, BOB, "no", T0)
    with refused("not_approved"):
        authorize(denied, req.fingerprint, ALICE, T0)
    with refused("request_expired"):
        authorize(req, req.fingerprint, ALICE, req.expires_at)


def test_an_unused_grant_expires() -> None:
    req = approved_request()
    assert req.grant is not None
    end = req.grant.expires_at
    with refused("grant_expired"):
        authorize(req, req.fingerprint, ALICE, end)
    expired, events = tick(req, end)
    assert types(events) == ["grant_expired", "request_expired"]
    assert expired.status is RequestStatus.EXPIRED
    assert expired.expiry_reason is ExpiryReason.GRANT_EXPIRED
    with refused("grant_expired"):
        authorize(expired, req.fingerprint, ALICE, end)


def test_report_outcome() -> None:
    req = approved_request()
    with refused("not_executing"):
        report_outcome(req, ALICE, T0, exit_code=0)
    req, _ = authorize(req, req.fingerprint, ALICE, T0 + 2 * MINUTE)
    at = T0 + 3 * MINUTE
    with refused("not_executor"):
        report_outcome(req, BOB, at, exit_code=0)
    with refused("outcome_required"):
        report_outcome(req, ALICE, at)
    with refused("outcome_required"):
        report_outcome(req, ALICE, at, error="  ")
    with refused("invalid_request"):
        report_outcome(req, ALICE, at, rows_affected=-1)

    done, events = report_outcome(req, ALICE, at, rows_affected=3)
    assert done.status is RequestStatus.EXECUTED
    assert types(events) == ["execution_finished"]
    assert done.execution is not None
    assert done.execution.finished_at == at
    assert report_outcome(req, ALICE, at, exit_code=0)[0].status is RequestStatus.EXECUTED
    assert report_outcome(req, ALICE, at, exit_code=2)[0].status is RequestStatus.FAILED
    failed, _ = report_outcome(req, ALICE, at, rows_affected=0, error="deadlock detected")
    assert failed.status is RequestStatus.FAILED
    service = Actor.of("jitgate-gateway")
    by_service, _ = report_outcome(req, service, at, exit_code=0, as_service=True)
    assert by_service.execution is not None
    assert by_service.execution.reported_by == "jitgate-gateway"
    with refused("not_executing"):
        report_outcome(done, ALICE, at, exit_code=0)


# --- RULE grants ---------------------------------------------------------------


RULE_CHAIN = replace(ONE_DBA, grant_scope=GrantScope.RULE, grant_ttl=timedelta(hours=1))


def rule_grant_request() -> ApprovalRequest:
    req = approved_request(RULE_CHAIN)
    assert req.grant is not None
    assert req.grant.scope is GrantScope.RULE
    return req


def test_a_rule_grant_covers_similar_actions_for_its_time_box() -> None:
    req = rule_grant_request()
    grant = req.grant
    assert grant is not None
    similar = make_action("DELETE FROM users WHERE id = 99")
    decision = make_decision(similar)
    for minutes in (2, 10, 30, 59):
        assert scope_allows(grant, similar, decision, T0 + minutes * MINUTE)
    assert not scope_allows(grant, similar, decision, grant.expires_at)
    assert not scope_allows(grant, similar, decision, T0)  # before it was issued


@pytest.mark.parametrize(
    ("action_kw", "decision_kw", "code"),
    [
        ({"user": "bob"}, {}, "not_requester"),
        ({"target": "db-other"}, {}, "grant_mismatch"),
        ({"environment": "staging"}, {}, "grant_mismatch"),
        ({}, {"rules": ("sql-delete-prod", "sql-truncate")}, "grant_mismatch"),
        ({}, {"rules": ()}, "grant_mismatch"),
        ({}, {"outcome": Outcome.DENY}, "grant_mismatch"),
        ({}, {"outcome": Outcome.ALLOW}, "grant_mismatch"),
    ],
)
def test_a_rule_grant_covers_nothing_else(
    action_kw: dict[str, str], decision_kw: dict[str, object], code: str
) -> None:
    grant = rule_grant_request().grant
    assert grant is not None
    action = make_action("DELETE FROM users WHERE id = 99", **action_kw)
    decision = make_decision(action, **decision_kw)  # type: ignore[arg-type]
    assert not scope_allows(grant, action, decision, T0 + 2 * MINUTE)
    with refused(code):
        check_scope(grant, action, decision, T0 + 2 * MINUTE)


def test_a_rule_grant_needs_the_decision_of_the_action_itself() -> None:
    grant = rule_grant_request().grant
    assert grant is not None
    action = make_action("DELETE FROM users WHERE id = 99")
    with refused("decision_mismatch"):
        check_scope(grant, action, make_decision(make_action("DROP TABLE users")), T0 + MINUTE)


def test_an_action_grant_covers_no_other_action() -> None:
    grant = approved_request().grant
    assert grant is not None
    action = make_action()
    with refused("grant_mismatch"):
        check_scope(grant, action, make_decision(action), T0 + 2 * MINUTE)


def test_revoking_an_unused_grant_cancels_the_request() -> None:
    req = rule_grant_request()
    at = T0 + 2 * MINUTE
    with refused("not_eligible"):
        revoke_grant(req, MALLORY, "nope", at)
    with refused("reason_required"):
        revoke_grant(req, CAROL, " ", at)
    done, events = revoke_grant(req, CAROL, "incident closed", at)
    assert done.status is RequestStatus.CANCELLED
    assert types(events) == ["grant_revoked", "request_cancelled"]
    assert done.grant is not None
    assert done.grant.revoked
    with refused("grant_revoked"):
        authorize(done, req.fingerprint, ALICE, at)
    with refused("grant_revoked"):
        revoke_grant(done, CAROL, "again", at)
    admin, _ = revoke_grant(req, MALLORY, "security incident", at, as_admin=True)
    assert admin.cancellation is not None
    assert admin.cancellation.as_admin


def test_revoking_a_used_rule_grant_stops_it_covering_more() -> None:
    req = rule_grant_request()
    req, _ = authorize(req, req.fingerprint, ALICE, T0 + 2 * MINUTE)
    req, _ = report_outcome(req, ALICE, T0 + 3 * MINUTE, rows_affected=1)
    similar = make_action("DELETE FROM users WHERE id = 99")
    assert req.grant is not None
    assert scope_allows(req.grant, similar, make_decision(similar), T0 + 4 * MINUTE)
    revoked, events = revoke_grant(req, ALICE, "done for today", T0 + 5 * MINUTE)
    assert revoked.status is RequestStatus.EXECUTED
    assert types(events) == ["grant_revoked"]
    assert revoked.grant is not None
    assert not scope_allows(revoked.grant, similar, make_decision(similar), T0 + 6 * MINUTE)
    with refused("grant_revoked"):
        check_scope(revoked.grant, similar, make_decision(similar), T0 + 6 * MINUTE)


def test_revoke_refusals() -> None:
    with refused("no_grant"):
        revoke_grant(new_request(), ALICE, "why", T0)
    used = approved_request()
    used, _ = authorize(used, used.fingerprint, ALICE, T0 + 2 * MINUTE)
    with refused("grant_used"):
        revoke_grant(used, ALICE, "too late", T0 + 2 * MINUTE)
    expired = approved_request()
    assert expired.grant is not None
    with refused("grant_expired"):
        revoke_grant(expired, ALICE, "too late", expired.grant.expires_at)


# --- the vocabulary -----------------------------------------------------------


def test_error_codes_and_event_types_are_unique_and_stable() -> None:
    def leaves(cls: type[ApprovalError]) -> list[type[ApprovalError]]:
        return [cls, *(c for sub in cls.__subclasses__() for c in leaves(sub))]

    codes = [c.code for c in leaves(ApprovalError)]
    assert len(codes) == len(set(codes)) == len(ERROR_CODES)
    for code in (
        "self_approval",
        "not_eligible",
        "already_approved",
        "already_filled_stage",
        "mfa_required",
        "mfa_replayed",
        "reason_required",
        "not_pending",
        "request_expired",
        "grant_mismatch",
        "grant_used",
        "grant_expired",
        "break_glass_not_allowed",
        "justification_required",
        "not_requester",
    ):
        assert code in ERROR_CODES
    assert {
        "request_created",
        "approval_given",
        "stage_completed",
        "request_approved",
        "request_denied",
        "request_cancelled",
        "request_expired",
        "stage_escalated",
        "stage_timed_out",
        "grant_issued",
        "grant_consumed",
        "grant_expired",
        "execution_started",
        "execution_finished",
        "break_glass_used",
        "review_recorded",
    } <= EVENT_TYPES


def test_events_serialize_to_json() -> None:
    req, events = create_request("req-1", make_action(), make_decision(make_action()), T0)
    req, more = approve(req, BOB, T0 + MINUTE)
    req, most = authorize(req, req.fingerprint, ALICE, T0 + 2 * MINUTE)
    for event in (*events, *more, *most):
        data = json.loads(json.dumps(event.to_dict()))
        assert data["type"] == event.type
        assert data["request_id"] == "req-1"


def test_requests_are_immutable_values() -> None:
    req = new_request()
    with pytest.raises(FrozenInstanceError):
        req.status = RequestStatus.APPROVED  # type: ignore[misc]
    approved, _ = approve(req, BOB, T0 + MINUTE)
    assert req.status is RequestStatus.PENDING
    assert approved is not req
