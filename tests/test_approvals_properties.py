"""Security properties of single commands, over generated chains, people and times."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TypeVar

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from jitgate.actions.findings import Analysis, Risk
from jitgate.actions.model import Action, Actor, fingerprint
from jitgate.approvals import (
    DEFAULT_EXECUTION_TIMEOUT,
    MIN_JUSTIFICATION,
    TIMEOUT_REPORTER,
    ApprovalChain,
    ApprovalError,
    ApprovalRequest,
    GrantScope,
    Quorum,
    RequestStatus,
    Stage,
    approve,
    authorize,
    break_glass,
    create_request,
    deny,
    next_deadline,
    report_outcome,
    scope_allows,
    stage_satisfied,
    tick,
)
from jitgate.approvals.request import Approval
from jitgate.policy.decision import Decision, Outcome

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)
Result = TypeVar("Result")
GROUPS = ("dba", "security", "sre", "managers")
USERS = tuple(f"user{i}" for i in range(8))

group_sets = st.lists(st.sampled_from(GROUPS), min_size=1, max_size=4, unique=True).map(tuple)
memberships = st.dictionaries(
    st.sampled_from(USERS), st.frozensets(st.sampled_from(GROUPS)), min_size=len(USERS)
)


@st.composite
def stages(draw: st.DrawFn) -> Stage:
    groups = draw(group_sets)
    timeout = draw(st.none() | st.integers(5, 120).map(lambda m: timedelta(minutes=m)))
    return Stage(
        name=draw(st.sampled_from(["dba", "security", "owner", "cab"])),
        groups=groups,
        approvals=draw(st.integers(1, 3)),
        quorum=draw(st.sampled_from(Quorum)),
        mfa=draw(st.booleans()),
        timeout=timeout,
        escalate_to=draw(st.just(()) | group_sets) if timeout else (),
    )


chains = st.builds(
    ApprovalChain,
    stages=st.lists(stages(), min_size=1, max_size=3).map(tuple),
    ttl=st.integers(10, 240).map(lambda m: timedelta(minutes=m)),
    break_glass=st.booleans(),
    grant_scope=st.sampled_from(GrantScope),
    grant_ttl=st.integers(1, 60).map(lambda m: timedelta(minutes=m)),
)
texts = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=40
)


def make_action(text: str, user: str, target: str = "db-main") -> Action:
    return Action.create("sql", text, target=target, environment="prod", user=user, at=T0)


def make_decision(action: Action, chain: ApprovalChain) -> Decision:
    return Decision(
        outcome=Outcome.REQUIRE_APPROVAL,
        risk=Risk.HIGH,
        rules=("rule-a",),
        reasons=("because",),
        fingerprint=fingerprint(action),
        analysis=Analysis(),
        chain=chain,
    )


def new_request(
    chain: ApprovalChain, requester: str, text: str = "DELETE FROM t"
) -> ApprovalRequest:
    action = make_action(text, requester)
    return create_request("r", action, make_decision(action, chain), T0)[0]


def attempt(command: Callable[[], Result]) -> Result | ApprovalError:
    """The command's result, or its refusal as a value to assert on."""
    try:
        return command()
    except ApprovalError as refusal:
        return refusal


def drive_to_approval(
    req: ApprovalRequest, members: dict[str, frozenset[str]], order: Sequence[str]
) -> ApprovalRequest:
    """Offer every person (with MFA) to each stage in turn, as often as it helps."""
    now = T0
    for _ in req.chain.stages:
        for user in order:
            if req.status is not RequestStatus.PENDING:
                return req
            with contextlib.suppress(ApprovalError):
                req, _ = approve(req, Actor(user, members[user]), now, mfa_verified=True)
            now += timedelta(seconds=1)
    return req


@given(
    chain=chains,
    members=memberships,
    requester=st.sampled_from(USERS),
    minutes=st.integers(0, 600),
    mfa=st.booleans(),
    as_groups=st.frozensets(st.sampled_from(GROUPS)),
)
def test_the_requester_never_approves_their_own_request(
    chain: ApprovalChain,
    members: dict[str, frozenset[str]],
    requester: str,
    minutes: int,
    mfa: bool,
    as_groups: frozenset[str],
) -> None:
    req = drive_to_approval(
        new_request(chain, requester), members, [u for u in USERS if u != requester]
    )
    at = T0 + timedelta(minutes=minutes)
    result = attempt(lambda: approve(req, Actor(requester, as_groups), at, mfa_verified=mfa))
    assert isinstance(result, ApprovalError), "the requester approved their own request"
    assert result.code in {"self_approval", "not_pending", "request_expired"}


@given(
    chain=chains,
    members=memberships,
    requester=st.sampled_from(USERS),
    order=st.permutations(USERS),
)
def test_approved_requests_have_distinct_eligible_approvers_per_stage(
    chain: ApprovalChain,
    members: dict[str, frozenset[str]],
    requester: str,
    order: list[str],
) -> None:
    req = drive_to_approval(new_request(chain, requester), members, order)
    seen: set[str] = set()
    for stage, state in zip(chain.stages, req.stages, strict=True):
        for approval in state.approvals:
            assert approval.approver != requester
            assert approval.approver not in seen
            seen.add(approval.approver)
            assert set(approval.groups) <= members[approval.approver]
            assert set(approval.groups) <= set(stage.groups)  # no escalation here
            assert approval.mfa_verified or not stage.mfa
    if req.status is RequestStatus.APPROVED:
        assert all(s.completed for s in req.stages)
        assert all(
            stage_satisfied(s, st_.approvals)
            for s, st_ in zip(chain.stages, req.stages, strict=True)
        )


def _assignable(stage: Stage, approvers: Sequence[frozenset[str]]) -> bool:
    """Brute force: can distinct approvers fill ``approvals`` slots of each group?"""
    slots = [g for g in stage.groups for _ in range(stage.approvals)]
    if len(approvers) < len(slots):
        return False
    for chosen in itertools.permutations(range(len(approvers)), len(slots)):
        if all(slot in approvers[i] for slot, i in zip(slots, chosen, strict=True)):
            return True
    return False


@settings(max_examples=300)
@given(
    groups=st.lists(st.sampled_from(GROUPS[:3]), min_size=1, max_size=3, unique=True).map(tuple),
    approvals=st.integers(1, 2),
    people=st.lists(st.frozensets(st.sampled_from(GROUPS[:3]), min_size=1), max_size=6),
)
def test_quorum_all_completes_exactly_when_an_assignment_exists(
    groups: tuple[str, ...], approvals: int, people: list[frozenset[str]]
) -> None:
    """Offering everybody in any order completes an ALL stage iff the set of
    people could fill every group's slots: refusing an approval that does not
    count never loses a completion that would have been possible."""
    stage = Stage("all", groups, approvals=approvals, quorum=Quorum.ALL)
    chain = ApprovalChain(stages=(stage,))
    members = {f"p{i}": groups_ for i, groups_ in enumerate(people)}
    members["requester"] = frozenset()
    req = new_request(chain, "requester")
    for user, groups_ in members.items():
        if req.status is RequestStatus.PENDING:
            result = attempt(partial(approve, req, Actor(user, groups_), T0))
            if isinstance(result, ApprovalError):
                assert result.code in {"not_eligible", "group_satisfied", "self_approval"}
            else:
                req, _ = result
    eligible = [g & set(groups) for u, g in members.items() if g & set(groups)]
    assert (req.status is RequestStatus.APPROVED) == _assignable(stage, eligible)
    if req.status is RequestStatus.APPROVED:
        approvals_ = req.stages[0].approvals
        assert _assignable(stage, [frozenset(a.groups) for a in approvals_])
        assert stage_satisfied(stage, approvals_)


@given(
    groups=st.lists(st.sampled_from(GROUPS), min_size=1, max_size=3, unique=True).map(tuple),
    approvals=st.integers(1, 3),
    quorum=st.sampled_from(Quorum),
    given_=st.lists(st.frozensets(st.sampled_from(GROUPS)), max_size=8),
)
def test_stage_satisfied_agrees_with_brute_force(
    groups: tuple[str, ...], approvals: int, quorum: Quorum, given_: list[frozenset[str]]
) -> None:
    stage = Stage("s", groups, approvals=approvals, quorum=quorum)
    recorded = [
        Approval(f"p{i}", tuple(g for g in groups if g in gs), T0)
        for i, gs in enumerate(given_)
        if set(gs) & set(groups)
    ]
    if quorum is Quorum.ANY:
        expected = len(recorded) >= approvals
    else:
        expected = _assignable(stage, [frozenset(a.groups) for a in recorded])
    assert stage_satisfied(stage, recorded) == expected


@given(
    text=texts,
    position=st.integers(0, 39),
    replacement=st.characters(codec="utf-8", exclude_categories=["Cs"]),
    target=st.sampled_from(["db-main", "db-other"]),
)
def test_a_grant_authorizes_only_the_exact_fingerprint(
    text: str, position: int, replacement: str, target: str
) -> None:
    assume(text.strip())
    chain = ApprovalChain(stages=(Stage("dba", ("dba",)),))
    req, _ = approve(new_request(chain, "alice", text), Actor.of("bob", ["dba"]), T0)
    position %= len(text)
    changed = make_action(text[:position] + replacement + text[position + 1 :], "alice", target)
    attempted = fingerprint(changed)
    result = attempt(lambda: authorize(req, attempted, Actor.of("alice"), T0 + SECOND))
    if isinstance(result, ApprovalError):
        assert result.code == "grant_mismatch"
        assert attempted != req.fingerprint
        return
    assert attempted == req.fingerprint
    running, _ = result
    assert running.status is RequestStatus.EXECUTING
    # Single use, whatever is attempted next.
    again = attempt(lambda: authorize(running, attempted, Actor.of("alice"), T0 + 2 * SECOND))
    assert isinstance(again, ApprovalError), "a grant was used twice"
    assert again.code == "grant_used"


@given(
    user=st.sampled_from(USERS),
    groups=st.frozensets(st.sampled_from(GROUPS)),
    fingerprint_=st.text(max_size=80),
)
def test_nobody_but_the_requester_uses_the_grant(
    user: str, groups: frozenset[str], fingerprint_: str
) -> None:
    chain = ApprovalChain(stages=(Stage("dba", ("dba",)),))
    req, _ = approve(new_request(chain, "alice"), Actor.of("bob", ["dba"]), T0)
    for attempted in (fingerprint_, req.fingerprint):
        result = attempt(partial(authorize, req, attempted, Actor(user, groups), T0))
        assert isinstance(result, ApprovalError), "somebody else used the grant"
        assert result.code in {"grant_mismatch", "not_requester"}


@given(reason=st.text(alphabet=" \t\r\n\u00a0\u2003", max_size=10))
def test_a_denial_without_a_reason_is_refused(reason: str) -> None:
    req = new_request(ApprovalChain(stages=(Stage("dba", ("dba",)),)), "alice")
    result = attempt(lambda: deny(req, Actor.of("bob", ["dba"]), reason, T0))
    assert isinstance(result, ApprovalError), "denied without a reason"
    assert result.code == "reason_required"


@given(justification=st.text(max_size=30), by=st.sampled_from(["alice", "bob"]))
def test_break_glass_needs_the_requester_and_a_real_justification(
    justification: str, by: str
) -> None:
    chain = ApprovalChain(stages=(Stage("dba", ("dba",)),), break_glass=True)
    req = new_request(chain, "alice")
    result = attempt(lambda: break_glass(req, Actor.of(by, ["dba"]), justification, T0))
    if isinstance(result, ApprovalError):
        assert result.code in {"not_requester", "justification_required"}
        return
    done, _ = result
    assert by == "alice"
    assert len(justification.strip()) >= MIN_JUSTIFICATION
    assert done.review_required
    assert done.break_glass is not None


@given(
    user=st.sampled_from(["alice", "bob"]),
    target=st.sampled_from(["db-main", "db-other"]),
    rules=st.lists(st.sampled_from(["rule-a", "rule-b"]), unique=True).map(tuple),
    outcome=st.sampled_from(Outcome),
    minutes=st.integers(-5, 90),
)
def test_a_rule_grant_allows_only_its_requester_target_and_rules(
    user: str, target: str, rules: tuple[str, ...], outcome: Outcome, minutes: int
) -> None:
    chain = ApprovalChain(
        stages=(Stage("dba", ("dba",)),),
        grant_scope=GrantScope.RULE,
        grant_ttl=timedelta(hours=1),
    )
    req, _ = approve(new_request(chain, "alice"), Actor.of("bob", ["dba"]), T0)
    grant = req.grant
    assert grant is not None
    action = make_action("DELETE FROM t WHERE id = 1", user, target)
    decision = Decision(outcome, Risk.HIGH, rules, (), fingerprint(action), Analysis())
    now = T0 + timedelta(minutes=minutes)
    allowed = scope_allows(grant, action, decision, now)
    expected = (
        user == "alice"
        and target == "db-main"
        and outcome is Outcome.REQUIRE_APPROVAL
        and bool(rules)
        and set(rules) <= {"rule-a"}
        and T0 <= now < T0 + timedelta(hours=1)
    )
    assert allowed == expected


@settings(max_examples=200)
@given(
    timeout_s=st.none() | st.integers(1, 4 * 3600),
    report_at_s=st.none() | st.integers(0, 5 * 3600),
    tick_at_s=st.lists(st.integers(0, 6 * 3600), min_size=1, max_size=4),
)
def test_an_execution_without_an_outcome_fails_exactly_at_its_deadline(
    timeout_s: int | None, report_at_s: int | None, tick_at_s: list[int]
) -> None:
    """An executor that dies after authorize does not leave the request executing:
    at ``started + timeout`` (default one hour) it fails, reported by jitgate;
    an outcome reported before that deadline wins, one after it is refused."""
    chain = ApprovalChain(stages=(Stage("dba", ("dba",)),))
    req, _ = approve(new_request(chain, "alice"), Actor.of("bob", ["dba"]), T0)
    started = T0 + SECOND
    options = {} if timeout_s is None else {"execution_timeout": timedelta(seconds=timeout_s)}
    req, _ = authorize(req, req.fingerprint, Actor.of("alice"), started, **options)
    timeout = DEFAULT_EXECUTION_TIMEOUT if timeout_s is None else timedelta(seconds=timeout_s)
    deadline = started + timeout
    assert next_deadline(req) == deadline
    if report_at_s is not None:
        at = started + timedelta(seconds=report_at_s)
        reported = attempt(lambda: report_outcome(req, Actor.of("alice"), at, exit_code=0))
        if at < deadline:
            assert not isinstance(reported, ApprovalError)
            assert reported[0].status is RequestStatus.EXECUTED
            assert next_deadline(reported[0]) is None
            return
        assert isinstance(reported, ApprovalError), "an outcome reported after the deadline"
        assert reported.code == "not_executing"
    for seconds in sorted(tick_at_s):
        now = started + timedelta(seconds=seconds)
        before = req
        req, events = tick(req, now)
        if now < deadline:
            assert req is before
            assert not events
            assert req.status is RequestStatus.EXECUTING
            continue
        if before.status is RequestStatus.EXECUTING:
            assert [e.type for e in events] == ["execution_finished"]
            (event,) = events
            assert event.at == deadline
            assert event.to_dict()["by"] == TIMEOUT_REPORTER
            assert event.to_dict()["succeeded"] is False
        else:
            assert not events
        assert req.status is RequestStatus.FAILED
        execution = req.execution
        assert execution is not None
        assert execution.outcome is not None
        assert execution.finished_at == deadline
        assert execution.reported_by == TIMEOUT_REPORTER
        assert (execution.outcome.error or "").startswith("no outcome reported within")
        assert next_deadline(req) is None


@given(timeout=st.integers(-3600, 0).map(lambda s: timedelta(seconds=s)))
def test_a_non_positive_execution_timeout_is_refused(timeout: timedelta) -> None:
    chain = ApprovalChain(stages=(Stage("dba", ("dba",)),))
    req, _ = approve(new_request(chain, "alice"), Actor.of("bob", ["dba"]), T0)
    result = attempt(
        lambda: authorize(req, req.fingerprint, Actor.of("alice"), T0, execution_timeout=timeout)
    )
    assert isinstance(result, ApprovalError)
    assert result.code == "invalid_request"
