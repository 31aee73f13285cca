"""Stateful property test: random people driving random requests through random chains.

A directory of 8 people in 3 groups (random, overlapping memberships) plus a
group nobody is in; requests under random chains (1-3 stages, 1-3 approvals,
quorum ANY/ALL, MFA, timeouts with or without escalation, break-glass, ACTION
or RULE grants); and random commands by random people at random times. After
every step the invariants below are re-checked on every request from what the
test itself saw (the directory, the calls that succeeded), not from what the
state machine says about itself.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from jitgate.actions.findings import Analysis, Risk
from jitgate.actions.model import Action, Actor, fingerprint
from jitgate.approvals import (
    ALLOWED_TRANSITIONS,
    DEFAULT_EXECUTION_TIMEOUT,
    MIN_JUSTIFICATION,
    TIMEOUT_REPORTER,
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
    StageState,
    approve,
    authorize,
    break_glass,
    cancel,
    create_request,
    deny,
    next_deadline,
    report_outcome,
    review,
    revoke_grant,
    scope_allows,
    tick,
)
from jitgate.approvals.request import Approval
from jitgate.policy.decision import Decision, Outcome

T0 = datetime(2025, 6, 2, 8, 0, tzinfo=UTC)
USERS = tuple(f"u{i}" for i in range(8))
STAFFED = ("dba", "security", "sre")
#: A group in chains that nobody in the directory belongs to.
EMPTY = "ghosts"
GROUPS = (*STAFFED, EMPTY)
TARGETS = ("db-main", "db-replica")
RULES = ("rule-a", "rule-b")

S = RequestStatus
#: The event that must accompany each status change, and only it.
STATUS_EVENT = {
    S.APPROVED: "request_approved",
    S.DENIED: "request_denied",
    S.EXPIRED: "request_expired",
    S.CANCELLED: "request_cancelled",
    S.EXECUTING: "execution_started",
    S.EXECUTED: "execution_finished",
    S.FAILED: "execution_finished",
}
STATUS_EVENTS = frozenset(STATUS_EVENT.values())
AFTER_GRANT_USE = frozenset({S.EXECUTING, S.EXECUTED, S.FAILED})

group_lists = st.lists(
    st.sampled_from(GROUPS).filter(lambda g: g != EMPTY) | st.just(EMPTY),
    min_size=1,
    max_size=3,
    unique=True,
).map(tuple)


@st.composite
def stages(draw: st.DrawFn) -> Stage:
    timeout = draw(st.none() | st.sampled_from([10, 30, 60]).map(lambda m: timedelta(minutes=m)))
    return Stage(
        name=draw(st.sampled_from(["first", "second", "owner", "cab"])),
        groups=draw(group_lists),
        approvals=draw(st.sampled_from([1, 1, 1, 2, 3])),
        quorum=draw(st.sampled_from(Quorum)),
        mfa=draw(st.booleans()),
        timeout=timeout,
        escalate_to=draw(st.just(()) | group_lists) if timeout else (),
    )


chains = st.builds(
    ApprovalChain,
    stages=st.lists(stages(), min_size=1, max_size=3).map(tuple),
    ttl=st.sampled_from([30, 90, 240]).map(lambda m: timedelta(minutes=m)),
    break_glass=st.booleans(),
    grant_scope=st.sampled_from(GrantScope),
    grant_ttl=st.sampled_from([5, 20, 60]).map(lambda m: timedelta(minutes=m)),
)
users = st.sampled_from(USERS)
#: chain, requester, statement number, target, matched rules.
RequestSpec = tuple[ApprovalChain, str, int, str, tuple[str, ...]]
request_specs = st.tuples(
    chains,
    users,
    st.integers(0, 3),
    st.sampled_from(TARGETS),
    st.lists(st.sampled_from(RULES), min_size=1, unique=True).map(tuple),
)


def could_fill(stage: Stage, approvals: Sequence[Approval]) -> bool:
    """Independent quorum check by backtracking over the slots.

    Quorum ANY: ``approvals`` approvals. Quorum ALL: ``approvals`` distinct
    approvers per group, each counting once; after escalation a member of an
    escalation-only group may stand in for any group.
    """
    if stage.quorum is Quorum.ANY:
        return len(approvals) >= stage.approvals
    stand_in = set(stage.escalate_to) - set(stage.groups)
    slots = [g for g in stage.groups for _ in range(stage.approvals)]

    def fits(a: Approval, group: str) -> bool:
        return group in a.groups or bool(stand_in & set(a.groups))

    def fill(i: int, used: frozenset[int]) -> bool:
        if i == len(slots):
            return True
        return any(
            fill(i + 1, used | {n})
            for n, a in enumerate(approvals)
            if n not in used and fits(a, slots[i])
        )

    return len(approvals) >= len(slots) and fill(0, frozenset())


class ApprovalWorkflow(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        self.members: dict[str, frozenset[str]] = {}
        self.requests: dict[str, ApprovalRequest] = {}
        self.history: dict[str, list[RequestStatus]] = {}
        #: Approvals the test saw accepted: (approver, mfa it passed), in order.
        self.accepted: dict[str, list[tuple[str, bool]]] = {}
        #: Authorizations the test saw accepted: (fingerprint, user).
        self.authorized: dict[str, list[tuple[str, str]]] = {}
        self.glass_mfa: dict[str, bool] = {}
        #: The execution timeout each accepted authorization was given.
        self.execution_timeout: dict[str, timedelta] = {}
        self.created = 0

    # --- plumbing ------------------------------------------------------------

    # An initialize rule always runs; hypothesis' swarm testing may switch
    # off ``create`` for a whole run, which would leave nothing to test.
    @initialize(
        members=st.fixed_dictionaries({u: st.frozensets(st.sampled_from(STAFFED)) for u in USERS}),
        first=st.lists(request_specs, min_size=1, max_size=4),
    )
    def directory(self, members: dict[str, frozenset[str]], first: list[RequestSpec]) -> None:
        self.members = members
        for spec in first:
            self.create(spec)

    def actor(self, user: str) -> Actor:
        return Actor(user, self.members[user])

    def pick(self, data: st.DataObject, where: Callable[[ApprovalRequest], bool] = bool) -> str:
        ids = sorted(rid for rid, req in self.requests.items() if where(req))
        if not ids:
            ids = sorted(self.requests)
        return data.draw(st.sampled_from(ids), label="request")

    def attempt(
        self,
        rid: str,
        command: Callable[[ApprovalRequest], tuple[ApprovalRequest, tuple[Event, ...]]],
    ) -> tuple[ApprovalRequest, tuple[Event, ...]] | ApprovalError:
        old = self.requests[rid]
        try:
            new, events = command(old)
        except ApprovalError as refusal:
            return refusal
        self.commit(rid, old, new, events)
        return new, events

    def commit(
        self, rid: str, old: ApprovalRequest, new: ApprovalRequest, events: tuple[Event, ...]
    ) -> None:
        assert new.id == old.id == rid
        assert new.updated_at >= old.updated_at
        assert all(e.request_id == rid and e.at <= max(self.now, old.updated_at) for e in events)
        kinds = [e.type for e in events]
        if new.status is not old.status:
            assert new.status in ALLOWED_TRANSITIONS[old.status], (old.status, new.status)
            assert STATUS_EVENT[new.status] in kinds
            assert (new.status is S.APPROVED) == ("grant_issued" in kinds)
            assert (new.status is S.EXECUTING) == ("grant_consumed" in kinds)
            self.history[rid].append(new.status)
        else:
            assert STATUS_EVENTS.isdisjoint(kinds), kinds
        if old.terminal:
            # Only the post-hoc review and a RULE grant's revocation may still
            # be added to a finished request; nothing recorded changes.
            assert new.status is old.status
            same_grant = (
                None
                if new.grant is None
                else replace(
                    new.grant,
                    revoked_at=None if old.grant is None else old.grant.revoked_at,
                    revoked_by=None if old.grant is None else old.grant.revoked_by,
                    revoke_reason="" if old.grant is None else old.grant.revoke_reason,
                )
            )
            assert same_grant == old.grant
            assert (
                replace(new, review=old.review, grant=old.grant, updated_at=old.updated_at) == old
            )
        for before, after in zip(old.stages, new.stages, strict=True):
            assert after.approvals[: len(before.approvals)] == before.approvals
        new_approvals = sum(len(s.approvals) for s in new.stages) - sum(
            len(s.approvals) for s in old.stages
        )
        assert new_approvals == kinds.count("approval_given")
        self.requests[rid] = new

    # --- time ------------------------------------------------------------------

    @rule(minutes=st.sampled_from([0, 1, 1, 2, 4, 4, 9, 15, 29, 31, 61, 300]))
    def clock_advances(self, minutes: int) -> None:
        self.now += timedelta(minutes=minutes)

    @precondition(lambda self: any(next_deadline(r) for r in self.requests.values()))
    @rule(data=st.data(), offset=st.sampled_from([-1, 0, 0, 1]))
    def clock_to_a_deadline(self, data: st.DataObject, offset: int) -> None:
        """Land right on (or a second either side of) a request's next deadline,
        where off-by-one mistakes live."""
        rid = self.pick(data, lambda r: next_deadline(r) is not None)
        deadline = next_deadline(self.requests[rid])
        if deadline is not None:
            self.now = max(self.now, deadline + timedelta(seconds=offset))

    @precondition(lambda self: self.requests)
    @rule(data=st.data())
    def tick_one(self, data: st.DataObject) -> None:
        self.tick_and_check(self.pick(data))

    @precondition(lambda self: self.requests)
    @rule()
    def tick_all(self) -> None:
        for rid in list(self.requests):
            self.tick_and_check(rid)

    def tick_and_check(self, rid: str) -> None:
        """After a tick nothing is overdue, judged from the chain, not from the
        machine's own idea of its deadlines."""
        result = self.attempt(rid, lambda r: tick(r, self.now))
        assert not isinstance(result, ApprovalError)
        req, events = result
        now = max(self.now, req.updated_at)
        assert all(e.at <= now for e in events)
        deadline = next_deadline(req)
        assert deadline is None or deadline > now
        if req.status is S.PENDING:
            assert now < req.expires_at, "pending past its ttl"
            stage, state = req.chain.stages[req.stage_index], req.stages[req.stage_index]
            if stage.timeout is not None:
                assert state.started_at is not None
                assert now < state.started_at + stage.timeout or (
                    stage.escalate_to
                    and state.escalated_at == state.started_at + stage.timeout
                    and now < state.escalated_at + stage.timeout
                ), "pending past its stage timeout"
        if req.status is S.APPROVED:
            assert req.grant is not None
            assert now < req.grant.expires_at, "approved past the grant's validity"
        if req.status is S.EXECUTING:
            assert req.execution is not None
            limit = req.execution.started_at + self.execution_timeout[rid]
            assert now < limit, "executing past its execution deadline"

    # --- creating ----------------------------------------------------------

    @rule(spec=request_specs)
    def create(self, spec: RequestSpec) -> None:
        chain, requester, n, on, rules = spec
        action = Action.create(
            "sql",
            f"DELETE FROM users WHERE id = {n}",
            target=on,
            environment="prod",
            user=requester,
            groups=self.members[requester],
            at=self.now,
        )
        decision = Decision(
            Outcome.REQUIRE_APPROVAL,
            Risk.HIGH,
            rules,
            ("r",),
            fingerprint(action),
            Analysis(),
            chain,
        )
        self.created += 1
        rid = f"req-{self.created}"
        req, events = create_request(rid, action, decision, self.now)
        assert req.status is S.PENDING
        assert [e.type for e in events] == ["request_created", "stage_started"]
        self.requests[rid] = req
        self.history[rid] = [S.PENDING]
        self.accepted[rid] = []
        self.authorized[rid] = []

    @rule(
        broken=st.sampled_from(
            [
                ApprovalChain(stages=()),
                ApprovalChain(stages=(Stage("x", ()),)),
                ApprovalChain(stages=(Stage("x", ("dba",)), Stage("y", ()))),
                ApprovalChain(stages=(Stage("x", ("dba",), approvals=0),)),
            ]
        ),
        requester=users,
    )
    def create_with_an_unenforceable_chain(self, broken: ApprovalChain, requester: str) -> None:
        action = Action.create("sql", "DROP TABLE users", user=requester, at=self.now)
        decision = Decision(
            Outcome.REQUIRE_APPROVAL, Risk.HIGH, ("r",), (), fingerprint(action), Analysis(), broken
        )
        with pytest.raises(ApprovalError) as refusal:
            create_request("broken", action, decision, self.now)
        assert refusal.value.code == "invalid_chain", "a chain nobody can satisfy"

    # --- deciding ----------------------------------------------------------

    def record_approval(self, rid: str, user: str, mfa: bool, result: object) -> None:
        if isinstance(result, ApprovalError):
            return
        self.accepted[rid].append((user, mfa))

    @precondition(lambda self: self.requests)
    @rule(data=st.data(), user=users, mfa=st.booleans())
    def approve_by_anybody(self, data: st.DataObject, user: str, mfa: bool) -> None:
        rid = self.pick(data, lambda r: r.status is S.PENDING)
        requester = self.requests[rid].requester.user
        result = self.attempt(
            rid, lambda r: approve(r, self.actor(user), self.now, "ok", mfa_verified=mfa)
        )
        if user == requester and not isinstance(result, ApprovalError):
            raise AssertionError("self-approval accepted")
        if isinstance(result, ApprovalError) and user == requester:
            assert result.code in {"self_approval", "not_pending", "request_expired"}
        self.record_approval(rid, user, mfa, result)

    @precondition(
        lambda self: any(not r.terminal or r.review_pending for r in self.requests.values())
    )
    @rule(data=st.data(), mfa=st.sampled_from([True, True, True, False]))
    def push_one_forward(self, data: st.DataObject, mfa: bool) -> None:
        self.forward(self.pick(data, lambda r: not r.terminal or r.review_pending), data, mfa)

    @precondition(
        lambda self: any(not r.terminal or r.review_pending for r in self.requests.values())
    )
    @rule(data=st.data(), mfa=st.sampled_from([True, True, True, False]))
    def push_all_forward(self, data: st.DataObject, mfa: bool) -> None:
        for rid, req in sorted(self.requests.items()):
            if not req.terminal or req.review_pending:
                self.forward(rid, data, mfa)

    def forward(self, rid: str, data: st.DataObject, mfa: bool) -> None:
        """Random people are mostly refused; this takes a plausible next step
        (an eligible approval, the requester running the approved action, an
        outcome, a review) so that runs reach the later states."""
        req = self.requests[rid]
        requester = req.requester
        if req.status is S.APPROVED:
            result = self.attempt(rid, lambda r: authorize(r, r.fingerprint, requester, self.now))
            if not isinstance(result, ApprovalError):
                self.authorized[rid].append((req.fingerprint, requester.user))
                self.execution_timeout[rid] = DEFAULT_EXECUTION_TIMEOUT
            return
        if req.status is S.EXECUTING:
            outcome = data.draw(
                st.sampled_from([{"exit_code": 0}, {"rows_affected": 3}, {"error": "x"}])
            )
            self.attempt(rid, lambda r: report_outcome(r, requester, self.now, **outcome))  # type: ignore[arg-type]
            return
        if req.review_pending:
            reviewers = [
                u
                for u in USERS
                if u != requester.user and self.members[u] & req.chain.approver_groups
            ]
            if reviewers:
                user = data.draw(st.sampled_from(reviewers), label="reviewer")
                self.attempt(
                    rid, lambda r: review(r, self.actor(user), ReviewVerdict.JUSTIFIED, self.now)
                )
            return
        state = req.current_stage_state
        if state is None:
            return
        candidates = [
            u
            for u in USERS
            if u != requester.user
            and u not in req.approvers
            and self.members[u] & set(state.eligible_groups)
        ]
        if req.chain.break_glass and (not candidates or data.draw(st.booleans(), label="glass")):
            justification = "replica lag is paging, failing over"
            result = self.attempt(
                rid, lambda r: break_glass(r, requester, justification, self.now, mfa_verified=mfa)
            )
            if not isinstance(result, ApprovalError):
                self.glass_mfa[rid] = mfa
            return
        if not candidates:
            return
        user = data.draw(st.sampled_from(candidates), label="approver")
        result = self.attempt(
            rid, lambda r: approve(r, self.actor(user), self.now, mfa_verified=mfa)
        )
        self.record_approval(rid, user, mfa, result)

    @precondition(lambda self: self.requests)
    @rule(
        data=st.data(),
        user=users,
        reason=st.sampled_from(["", "   ", "wrong table", "not in the change window"]),
    )
    def deny_by_anybody(self, data: st.DataObject, user: str, reason: str) -> None:
        rid = self.pick(data, lambda r: r.status is S.PENDING)
        result = self.attempt(rid, lambda r: deny(r, self.actor(user), reason, self.now))
        if not isinstance(result, ApprovalError):
            assert reason.strip()

    @precondition(lambda self: self.requests)
    @rule(
        data=st.data(),
        user=users,
        as_admin=st.sampled_from([False, False, False, True]),
        reason=st.sampled_from(["", "dup"]),
    )
    def cancel_by_anybody(
        self, data: st.DataObject, user: str, as_admin: bool, reason: str
    ) -> None:
        rid = self.pick(data, lambda r: r.status is S.PENDING)
        requester = self.requests[rid].requester.user
        result = self.attempt(
            rid, lambda r: cancel(r, self.actor(user), self.now, reason, as_admin=as_admin)
        )
        if not isinstance(result, ApprovalError):
            assert user == requester or (as_admin and reason)

    @precondition(lambda self: self.requests)
    @rule(
        data=st.data(),
        requester_acts=st.booleans(),
        other=users,
        justification=st.sampled_from(["", "fix", "          x", "primary down, failing over now"]),
        mfa=st.booleans(),
    )
    def break_the_glass(
        self, data: st.DataObject, requester_acts: bool, other: str, justification: str, mfa: bool
    ) -> None:
        rid = self.pick(data, lambda r: r.status is S.PENDING)
        user = self.requests[rid].requester.user if requester_acts else other
        result = self.attempt(
            rid,
            lambda r: break_glass(r, self.actor(user), justification, self.now, mfa_verified=mfa),
        )
        if not isinstance(result, ApprovalError):
            self.glass_mfa[rid] = mfa

    @precondition(lambda self: self.requests)
    @rule(
        data=st.data(),
        user=users,
        verdict=st.sampled_from(ReviewVerdict),
        comment=st.sampled_from(["", "should have waited"]),
    )
    def review_break_glass(
        self, data: st.DataObject, user: str, verdict: ReviewVerdict, comment: str
    ) -> None:
        rid = self.pick(data, lambda r: r.review_pending)
        self.attempt(rid, lambda r: review(r, self.actor(user), verdict, self.now, comment))

    # --- grants and execution ----------------------------------------------

    def tampered(self, req: ApprovalRequest, how: str, data: st.DataObject) -> str:
        action = req.action
        if how == "text":
            action = replace(action, text=action.text.replace("id =", "id >="))
        elif how == "target":
            action = replace(action, target=action.target + "-2")
        elif how == "environment":
            action = replace(action, environment="staging")
        elif how == "other":
            return data.draw(st.sampled_from(sorted(r.fingerprint for r in self.requests.values())))
        return fingerprint(action)

    @precondition(lambda self: self.requests)
    @rule(
        data=st.data(),
        requester_acts=st.sampled_from([True, True, False]),
        other=users,
        how=st.sampled_from(["exact", "exact", "text", "target", "environment", "other"]),
        minutes=st.sampled_from([None, None, 1, 5, 30, 120]),
    )
    def authorize_execution(
        self,
        data: st.DataObject,
        requester_acts: bool,
        other: str,
        how: str,
        minutes: int | None,
    ) -> None:
        rid = self.pick(data, lambda r: r.status is S.APPROVED)
        req = self.requests[rid]
        user = req.requester.user if requester_acts else other
        attempted = self.tampered(req, how, data)
        timeout = DEFAULT_EXECUTION_TIMEOUT if minutes is None else timedelta(minutes=minutes)
        options = {} if minutes is None else {"execution_timeout": timeout}
        result = self.attempt(
            rid, lambda r: authorize(r, attempted, self.actor(user), self.now, **options)
        )
        if isinstance(result, ApprovalError):
            if attempted != req.fingerprint and req.status is S.APPROVED:
                assert result.code in {"grant_mismatch", "grant_expired"}
            return
        assert attempted == req.fingerprint
        assert user == req.requester.user
        self.authorized[rid].append((attempted, user))
        self.execution_timeout[rid] = timeout

    @precondition(lambda self: self.requests)
    @rule(
        data=st.data(),
        executor_acts=st.sampled_from([True, True, False]),
        other=users,
        as_service=st.booleans(),
        outcome=st.sampled_from(
            [{}, {"exit_code": 0}, {"exit_code": 1}, {"rows_affected": 5}, {"error": "boom"}]
        ),
    )
    def report(
        self,
        data: st.DataObject,
        executor_acts: bool,
        other: str,
        as_service: bool,
        outcome: dict[str, int | str],
    ) -> None:
        rid = self.pick(data, lambda r: r.status is S.EXECUTING)
        req = self.requests[rid]
        user = req.requester.user if executor_acts else other
        result = self.attempt(
            rid,
            lambda r: report_outcome(
                r,
                self.actor(user),
                self.now,
                as_service=as_service,
                **outcome,  # type: ignore[arg-type]
            ),
        )
        if not isinstance(result, ApprovalError):
            assert outcome
            assert as_service or (req.execution is not None and user == req.execution.executor)
            assert req.execution is not None
            limit = req.execution.started_at + self.execution_timeout[rid]
            assert max(self.now, req.updated_at) < limit, "an outcome accepted after the deadline"

    @precondition(lambda self: self.requests)
    @rule(
        data=st.data(),
        user=users,
        as_admin=st.booleans(),
        reason=st.sampled_from(["", "incident closed"]),
    )
    def revoke(self, data: st.DataObject, user: str, as_admin: bool, reason: str) -> None:
        rid = self.pick(data, lambda r: r.grant is not None)
        self.attempt(
            rid, lambda r: revoke_grant(r, self.actor(user), reason, self.now, as_admin=as_admin)
        )

    @precondition(lambda self: any(r.grant is not None for r in self.requests.values()))
    @rule(
        data=st.data(),
        user=users,
        n=st.integers(0, 3),
        on=st.sampled_from(TARGETS),
        rules=st.lists(st.sampled_from(RULES), unique=True).map(tuple),
    )
    def reuse_a_rule_grant(
        self, data: st.DataObject, user: str, n: int, on: str, rules: tuple[str, ...]
    ) -> None:
        rid = self.pick(data, lambda r: r.grant is not None)
        grant = self.requests[rid].grant
        assert grant is not None
        action = Action.create(
            "sql", f"DELETE FROM users WHERE id = {n}", target=on, environment="prod", user=user
        )
        decision = Decision(
            Outcome.REQUIRE_APPROVAL, Risk.HIGH, rules, (), fingerprint(action), Analysis()
        )
        if scope_allows(grant, action, decision, self.now):
            assert grant.scope is GrantScope.RULE
            assert not grant.revoked
            assert grant.issued_at <= self.now < grant.expires_at
            assert user == grant.requester
            assert on == grant.target
            assert rules
            assert set(rules) <= set(grant.rule_ids)

    # --- invariants --------------------------------------------------------------

    @invariant()
    def every_request_is_consistent(self) -> None:
        for rid, req in self.requests.items():
            self.check_approvals(rid, req)
            self.check_status(rid, req)
            self.check_grant(rid, req)

    def check_approvals(self, rid: str, req: ApprovalRequest) -> None:
        """Every recorded approval is one the test saw accepted, and legitimate."""
        requester = req.requester.user
        recorded = [(a.approver, a.mfa_verified) for s in req.stages for a in s.approvals]
        assert recorded == self.accepted[rid]
        seen: set[str] = set()
        for index, (stage, state) in enumerate(zip(req.chain.stages, req.stages, strict=True)):
            if state.approvals or state.completed:
                assert state.started_at is not None
            for approval in state.approvals:
                assert approval.approver != requester, "self-approval"
                assert approval.approver not in seen, "one person, one approval, one stage"
                seen.add(approval.approver)
                self.check_eligible(stage, state, approval)
                if stage.mfa:
                    assert approval.mfa_verified, "approval without MFA on an MFA stage"
                assert approval.at < req.expires_at, "approval after the ttl"
            if state.completed:
                assert could_fill(stage, state.approvals), "stage completed without its quorum"
                assert index < req.stage_index or req.stage_index == len(req.stages)
            else:
                assert not could_fill(stage, state.approvals) or req.status is not S.PENDING

    def check_eligible(self, stage: Stage, state: StageState, approval: Approval) -> None:
        assert state.started_at is not None
        assert approval.at >= state.started_at
        escalated = state.escalated_at is not None and state.escalated_at <= approval.at
        eligible = set(stage.groups) | (set(stage.escalate_to) if escalated else set())
        assert approval.groups
        assert set(approval.groups) == self.members[approval.approver] & eligible
        if stage.timeout is not None:
            first = state.started_at + stage.timeout
            if state.escalated_at is None:
                assert approval.at < first, "approval after the stage timed out"
            else:
                assert state.escalated_at == first
                assert approval.at < first + stage.timeout, "approval after escalation timed out"

    def check_status(self, rid: str, req: ApprovalRequest) -> None:
        history = self.history[rid]
        assert history[-1] is req.status
        for before, after in itertools.pairwise(history):
            assert after in ALLOWED_TRANSITIONS[before]
        if S.EXECUTING in history:
            assert S.APPROVED in history[: history.index(S.EXECUTING)], "ran without approval"
        requester = req.requester.user
        status = req.status
        if status is S.PENDING:
            assert req.grant is None
            assert req.execution is None
            assert req.break_glass is None
            assert req.denial is None
            assert req.cancellation is None
            assert req.expired_at is None
            assert req.stage_index < len(req.stages)
            assert all(s.completed for s in req.stages[: req.stage_index])
            later = req.stages[req.stage_index + 1 :]
            assert all(s.started_at is None and not s.approvals for s in later)
        if status is S.DENIED:
            denial = req.denial
            assert denial is not None
            assert denial.reason.strip(), "denied without a reason"
            assert denial.by != requester
            assert self.members[denial.by] & req.chain.approver_groups
            assert denial.at < req.expires_at
        if status is S.CANCELLED:
            cancellation = req.cancellation
            assert cancellation is not None
            assert cancellation.by == requester or cancellation.as_admin or req.grant is not None
        if status is S.EXPIRED:
            assert req.expired_at is not None
            assert req.expiry_reason is not None
            if req.expiry_reason is ExpiryReason.TTL:
                assert req.expired_at == req.expires_at
            elif req.expiry_reason is ExpiryReason.STAGE_TIMEOUT:
                state = req.stages[req.stage_index]
                stage = req.chain.stages[req.stage_index]
                assert state.started_at is not None
                assert stage.timeout is not None
                # Escalation comes first: a stage with somewhere to escalate
                # to does not expire the request at its first timeout.
                assert state.escalated or not stage.escalate_to, "expired instead of escalating"
                since = state.escalated_at or state.started_at
                assert state.timed_out_at == req.expired_at == since + stage.timeout
                assert req.expired_at < req.expires_at or req.expired_at == req.expires_at
            else:
                assert req.grant is not None
                assert req.expired_at == req.grant.expires_at
        if status in (S.EXECUTED, S.FAILED):
            execution = req.execution
            assert execution is not None
            assert execution.outcome is not None
            assert execution.outcome.succeeded == (status is S.EXECUTED)
        if req.execution is not None:
            execution = req.execution
            limit = execution.started_at + self.execution_timeout[rid]
            assert execution.timeout == self.execution_timeout[rid]
            if status is S.EXECUTING:
                assert execution.finished_at is None
                assert next_deadline(req) == limit, "an execution the ticker would never end"
            else:
                assert execution.finished_at is not None
                assert execution.finished_at <= limit
                timed_out = execution.reported_by == TIMEOUT_REPORTER
                # USERS never include the reporter's name: a timeout is exactly this.
                assert timed_out == (execution.finished_at == limit)
                if timed_out:
                    assert status is S.FAILED
                    assert execution.outcome is not None
                    assert execution.outcome.exit_code is None
                    assert (execution.outcome.error or "").startswith("no outcome reported")
        if req.review is not None:
            assert req.break_glass is not None
            assert req.review.reviewer != requester
            assert self.members[req.review.reviewer] & req.chain.approver_groups

    def check_grant(self, rid: str, req: ApprovalRequest) -> None:
        grant = req.grant
        authorized = self.authorized[rid]
        if grant is None:
            assert req.status in (S.PENDING, S.DENIED, S.EXPIRED, S.CANCELLED)
            assert req.approved_at is None
            assert req.execution is None
            assert not authorized
            return
        # A grant exists only for an approved request: by its chain, or by break-glass.
        assert req.approved_at == grant.issued_at < req.expires_at
        assert grant.expires_at == grant.issued_at + req.chain.grant_ttl
        assert grant.fingerprint == req.fingerprint
        assert grant.requester == req.requester.user
        assert grant.rule_ids == req.rules
        assert grant.scope is req.chain.grant_scope
        glass = req.break_glass
        if glass is None:
            assert req.stage_index == len(req.chain.stages)
            assert all(s.completed for s in req.stages), "approved with a stage unsatisfied"
            assert not grant.break_glass
            assert not req.review_required
        else:
            assert req.chain.break_glass
            assert glass.by == req.requester.user
            assert len(glass.justification.strip()) >= MIN_JUSTIFICATION
            assert req.review_required
            assert grant.break_glass
            if any(s.mfa for s in req.chain.stages):
                assert self.glass_mfa[rid] is True
        # Consumed at most once, only for the exact fingerprint, by the requester.
        assert len(authorized) == (1 if grant.used else 0)
        assert all(f == req.fingerprint and u == req.requester.user for f, u in authorized)
        assert grant.used == (req.status in AFTER_GRANT_USE) == (req.execution is not None)
        if grant.used_at is not None:
            assert grant.issued_at <= grant.used_at < grant.expires_at
        if req.status is S.EXPIRED:
            assert req.expiry_reason is ExpiryReason.GRANT_EXPIRED
            assert not grant.used
        if req.status is S.CANCELLED:
            assert grant.revoked
            assert not grant.used
        if req.status is S.APPROVED:
            assert not grant.revoked


ApprovalWorkflow.TestCase.settings = settings(
    max_examples=400,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestApprovalWorkflow = ApprovalWorkflow.TestCase
