"""The approval state machine: pure transition functions.

Every command takes a request and the current time and returns the new
request with the events it caused, or raises an :class:`ApprovalError`
leaving nothing changed (requests are immutable). No function here reads a
clock, touches storage or draws random numbers; adapters pass ``now`` in and
persist what comes back.

Time-driven transitions (request ttl, stage timeouts and escalation, grant
expiry, an execution whose outcome never came) are applied by :func:`tick`,
and every command applies them first: a command never acts on a state the
clock has already moved past. When that first step ends the request (it
expired), the command raises and the adapter persists the expiry by calling
:func:`tick` itself.

User names are compared exactly (case-sensitive, no trimming): the identity
adapter must hand over one canonical name per person, otherwise ``Alice`` and
``alice`` are two people to this module.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from enum import Enum
from typing import TYPE_CHECKING

from jitgate.actions.model import Action, Actor, InvalidAction, fingerprint
from jitgate.approvals.chain import GrantScope, validate_chain
from jitgate.approvals.errors import (
    AlreadyApprovedError,
    AlreadyFilledStageError,
    AlreadyReviewedError,
    AnonymousActorError,
    ApprovalNotRequiredError,
    BreakGlassNotAllowedError,
    DecisionMismatchError,
    GrantExpiredError,
    GrantMismatchError,
    GrantRevokedError,
    GrantUsedError,
    GroupSatisfiedError,
    InvalidChainError,
    InvalidRequestError,
    InvalidTimeError,
    JustificationRequiredError,
    MfaRequiredError,
    NoGrantError,
    NotApprovedError,
    NotEligibleError,
    NotExecutingError,
    NotExecutorError,
    NotPendingError,
    NotRequesterError,
    OutcomeRequiredError,
    ReasonRequiredError,
    RequestExpiredError,
    ReviewNotRequiredError,
    SelfApprovalError,
    SelfDenialError,
    SelfReviewError,
)
from jitgate.approvals.events import (
    ApprovalGiven,
    BreakGlassUsed,
    Event,
    ExecutionFinished,
    ExecutionStarted,
    GrantConsumed,
    GrantExpired,
    GrantIssued,
    GrantRevoked,
    RequestApproved,
    RequestCancelled,
    RequestCreated,
    RequestDenied,
    RequestExpired,
    ReviewRecorded,
    StageCompleted,
    StageEscalated,
    StageStarted,
    StageTimedOut,
)
from jitgate.approvals.grant import Grant, requires_approval
from jitgate.approvals.quorum import approval_counts, stage_satisfied
from jitgate.approvals.request import (
    DEFAULT_EXECUTION_TIMEOUT,
    Approval,
    ApprovalRequest,
    BreakGlass,
    Cancellation,
    Denial,
    Execution,
    ExecutionOutcome,
    ExpiryReason,
    RequestStatus,
    Review,
    ReviewVerdict,
    StageState,
)

if TYPE_CHECKING:
    from jitgate.policy.decision import Decision

#: What every command returns.
Transition = tuple[ApprovalRequest, tuple[Event, ...]]

#: Shortest break-glass justification: long enough that "urgent" or "fix" is
#: refused and the reviewer has something to review.
MIN_JUSTIFICATION = 10

#: Who reports the outcome of an execution that never reported one in time.
TIMEOUT_REPORTER = "jitgate"


# --- helpers ------------------------------------------------------------------


def _aware(now: datetime) -> datetime:
    if not isinstance(now, datetime) or now.tzinfo is None or now.utcoffset() is None:
        raise InvalidTimeError("times must be timezone-aware datetimes")
    return now


def _effective_now(req: ApprovalRequest, now: datetime) -> datetime:
    # Adapters on several hosts may pass slightly skewed clocks. Never moving
    # before what the request has already seen keeps its history ordered, and
    # a later time only ever expires things sooner: the safe direction.
    return max(_aware(now), req.updated_at)


def _user(actor: Actor) -> str:
    if not isinstance(actor.user, str) or not actor.user.strip():
        raise AnonymousActorError("the actor has no user name")
    return actor.user


def _blank(text: str | None) -> bool:
    return text is None or not text.strip()


def _ordered(groups: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(groups))


def _approver_groups(req: ApprovalRequest) -> tuple[str, ...]:
    """Every group of the chain, escalation targets included, in chain order."""
    return _ordered([g for s in req.chain.stages for g in (*s.groups, *s.escalate_to)])


def _member_of_chain(req: ApprovalRequest, actor: Actor) -> bool:
    return not req.chain.approver_groups.isdisjoint(actor.groups)


def _replace_stage(req: ApprovalRequest, index: int, state: StageState) -> tuple[StageState, ...]:
    return (*req.stages[:index], state, *req.stages[index + 1 :])


def _issue_grant(req: ApprovalRequest, now: datetime, *, break_glass: bool) -> Grant:
    return Grant(
        request_id=req.id,
        fingerprint=req.fingerprint,
        scope=req.chain.grant_scope,
        rule_ids=req.rules,
        target=req.action.target,
        environment=req.action.environment,
        requester=req.requester.user,
        issued_at=now,
        expires_at=now + req.chain.grant_ttl,
        break_glass=break_glass,
    )


def _grant_issued(grant: Grant) -> GrantIssued:
    return GrantIssued(
        request_id=grant.request_id,
        at=grant.issued_at,
        scope=grant.scope,
        fingerprint=grant.fingerprint,
        rule_ids=grant.rule_ids,
        requester=grant.requester,
        expires_at=grant.expires_at,
    )


def _require_pending(req: ApprovalRequest) -> None:
    if req.status is RequestStatus.EXPIRED:
        raise RequestExpiredError(f"request {req.id} has expired")
    if req.status is not RequestStatus.PENDING:
        raise NotPendingError(f"request {req.id} is {req.status.value}, not pending")


# --- time ---------------------------------------------------------------------


class _Due(Enum):
    TTL = "ttl"
    STAGE = "stage"
    GRANT = "grant"
    EXECUTION = "execution"


def stage_deadline(req: ApprovalRequest) -> datetime | None:
    """When the current stage times out (escalates, or expires the request)."""
    stage, state = req.current_stage, req.current_stage_state
    if stage is None or state is None or stage.timeout is None or state.started_at is None:
        return None
    since = state.escalated_at if state.escalated_at is not None else state.started_at
    return since + stage.timeout


def _next_due(req: ApprovalRequest) -> tuple[datetime, _Due] | None:
    if req.status is RequestStatus.PENDING:
        due = [(req.expires_at, _Due.TTL)]
        deadline = stage_deadline(req)
        if deadline is not None:
            due.append((deadline, _Due.STAGE))
        # On a tie the request simply expires: escalating at the very moment
        # the request dies would notify people about nothing.
        return min(due, key=lambda d: (d[0], d[1] is not _Due.TTL))
    if req.status is RequestStatus.APPROVED and req.grant is not None and not req.grant.used:
        return (req.grant.expires_at, _Due.GRANT)
    if req.status is RequestStatus.EXECUTING and req.execution is not None:
        return (req.execution.deadline, _Due.EXECUTION)
    return None


def next_deadline(req: ApprovalRequest) -> datetime | None:
    """When :func:`tick` will next change ``req`` if nothing else happens first."""
    due = _next_due(req)
    return None if due is None else due[0]


def _expire(req: ApprovalRequest, at: datetime, reason: ExpiryReason) -> ApprovalRequest:
    return replace(req, status=RequestStatus.EXPIRED, expired_at=at, expiry_reason=reason)


def _span_text(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s" if seconds else f"{span.total_seconds():g}s"


def _execution_timed_out(req: ApprovalRequest, at: datetime) -> Transition:
    execution = req.execution
    assert execution is not None  # _next_due only returns EXECUTION with one
    error = f"no outcome reported within {_span_text(execution.timeout)}"
    outcome = ExecutionOutcome(error=error)
    finished = replace(execution, finished_at=at, outcome=outcome, reported_by=TIMEOUT_REPORTER)
    req = replace(req, status=RequestStatus.FAILED, execution=finished)
    return req, (ExecutionFinished(req.id, at, TIMEOUT_REPORTER, False, None, None, error),)


def _apply_due(req: ApprovalRequest, at: datetime, due: _Due) -> Transition:
    if due is _Due.EXECUTION:
        return _execution_timed_out(req, at)
    if due is _Due.TTL:
        return _expire(req, at, ExpiryReason.TTL), (RequestExpired(req.id, at, ExpiryReason.TTL),)
    if due is _Due.GRANT:
        return _expire(req, at, ExpiryReason.GRANT_EXPIRED), (
            GrantExpired(req.id, at),
            RequestExpired(req.id, at, ExpiryReason.GRANT_EXPIRED),
        )
    index = req.stage_index
    stage, state = req.chain.stages[index], req.stages[index]
    if not state.escalated and stage.escalate_to and stage.timeout is not None:
        escalated = replace(
            state, escalated_at=at, eligible_groups=stage.eligible_groups(escalated=True)
        )
        event = StageEscalated(
            req.id,
            at,
            index,
            stage.name,
            stage.escalate_to,
            deadline=min(at + stage.timeout, req.expires_at),
        )
        return replace(req, stages=_replace_stage(req, index, escalated)), (event,)
    timed_out = replace(state, timed_out_at=at)
    req = replace(req, stages=_replace_stage(req, index, timed_out))
    return _expire(req, at, ExpiryReason.STAGE_TIMEOUT), (
        StageTimedOut(req.id, at, index, stage.name, escalated=state.escalated),
        RequestExpired(req.id, at, ExpiryReason.STAGE_TIMEOUT),
    )


def _advance(req: ApprovalRequest, now: datetime) -> tuple[ApprovalRequest, list[Event], datetime]:
    """Apply every deadline up to ``now``, oldest first."""
    now = _effective_now(req, now)
    events: list[Event] = []
    while (due := _next_due(req)) is not None and due[0] <= now:
        req, caused = _apply_due(req, *due)
        events.extend(caused)
    if events:
        req = replace(req, updated_at=now)
    return req, events, now


def tick(req: ApprovalRequest, now: datetime) -> Transition:
    """Apply the time-driven transitions due at ``now``.

    Pending requests expire at their ttl; a stage that times out escalates
    to its ``escalate_to`` groups (once) or, with none left, expires the
    request; an approved request whose grant passed unused expires; an
    executing request whose executor reported no outcome by the execution's
    deadline (see :func:`authorize`) fails, reported by
    :data:`TIMEOUT_REPORTER`. Returns ``req`` itself when nothing was due.
    """
    new, events, _ = _advance(req, now)
    return new, tuple(events)


# --- creating a request -------------------------------------------------------


def create_request(id: str, action: Action, decision: Decision, now: datetime) -> Transition:
    """Hold ``action`` for approval as ``decision`` requires."""
    now = _aware(now)
    if not isinstance(id, str) or not id.strip():
        raise InvalidRequestError("a request needs an id")
    if not requires_approval(decision):
        raise ApprovalNotRequiredError(
            f"the decision is {decision.outcome.label!r}, not 'require_approval'"
        )
    if decision.chain is None:
        raise InvalidChainError("the decision carries no approval chain")
    chain = validate_chain(decision.chain)
    try:
        actual = fingerprint(action)
    except InvalidAction as exc:
        raise InvalidRequestError(str(exc)) from exc
    if decision.fingerprint != actual:
        raise DecisionMismatchError("the decision was made for a different action")
    requester = action.actor
    user = _user(requester)
    first = chain.stages[0]
    stages = (
        StageState(started_at=now, eligible_groups=first.groups),
        *(StageState(eligible_groups=s.groups) for s in chain.stages[1:]),
    )
    req = ApprovalRequest(
        id=id,
        action=action,
        fingerprint=actual,
        rules=decision.rules,
        reasons=decision.reasons,
        risk=decision.risk.label,
        chain=chain,
        requester=requester,
        created_at=now,
        expires_at=now + chain.ttl,
        updated_at=now,
        stages=stages,
    )
    return req, (
        RequestCreated(
            id,
            now,
            requester=user,
            fingerprint=actual,
            target=action.target,
            environment=action.environment,
            rules=req.rules,
            reasons=req.reasons,
            risk=req.risk,
            expires_at=req.expires_at,
        ),
        StageStarted(id, now, 0, first.name, first.groups),
    )


# --- deciding -----------------------------------------------------------------


def approve(
    req: ApprovalRequest,
    approver: Actor,
    now: datetime,
    comment: str = "",
    mfa_verified: bool = False,
) -> Transition:
    """Record ``approver``'s approval of the current stage.

    Refused for the requester, for anybody who already approved any stage of
    this request (one person fills at most one stage, once), for anybody not
    in the stage's eligible groups, without MFA on a stage that requires it,
    and for an approval that would not count (quorum ALL, their groups
    already have their approvals). ``mfa_verified`` is the adapter's word
    that it checked a fresh TOTP code (see :mod:`jitgate.approvals.totp`).
    """
    req, events, now = _advance(req, now)
    _require_pending(req)
    user = _user(approver)
    if user == req.requester.user:
        raise SelfApprovalError("the requester cannot approve their own request")
    index = req.stage_index
    for i, done in enumerate(req.stages):
        if user in done.approvers:
            if i == index:
                raise AlreadyApprovedError(f"{user} already approved this stage")
            raise AlreadyFilledStageError(f"{user} already approved another stage")
    stage, state = req.chain.stages[index], req.stages[index]
    groups = tuple(g for g in state.eligible_groups if g in approver.groups)
    if not groups:
        raise NotEligibleError(
            f"{user} is in none of the groups of stage {stage.name!r}: "
            + ", ".join(state.eligible_groups)
        )
    # ``is not True``: a truthy stand-in (a code string, a mock) is no proof.
    if stage.mfa and mfa_verified is not True:
        raise MfaRequiredError(f"stage {stage.name!r} requires MFA step-up")
    approval = Approval(user, groups, now, comment, mfa_verified is True)
    if not approval_counts(stage, state.approvals, approval):
        raise GroupSatisfiedError(
            f"the groups {user} could count for in stage {stage.name!r} are already satisfied"
        )
    state = replace(state, approvals=(*state.approvals, approval))
    events.append(
        ApprovalGiven(req.id, now, index, stage.name, user, groups, approval.mfa_verified, comment)
    )
    if not stage_satisfied(stage, state.approvals):
        return replace(req, stages=_replace_stage(req, index, state), updated_at=now), tuple(events)

    state = replace(state, completed_at=now)
    req = replace(req, stages=_replace_stage(req, index, state), updated_at=now)
    events.append(StageCompleted(req.id, now, index, stage.name, state.approvers))
    following = index + 1
    if following < len(req.chain.stages):
        next_stage = req.chain.stages[following]
        started = replace(req.stages[following], started_at=now)
        req = replace(req, stages=_replace_stage(req, following, started), stage_index=following)
        events.append(StageStarted(req.id, now, following, next_stage.name, next_stage.groups))
        return req, tuple(events)

    grant = _issue_grant(req, now, break_glass=False)
    req = replace(
        req, status=RequestStatus.APPROVED, stage_index=following, approved_at=now, grant=grant
    )
    events += [RequestApproved(req.id, now, break_glass=False), _grant_issued(grant)]
    return req, tuple(events)


def deny(req: ApprovalRequest, approver: Actor, reason: str, now: datetime) -> Transition:
    """End a pending request with an approver's reasoned refusal.

    Any member of any of the chain's groups (escalation targets included)
    may deny, at any stage: a later stage's approver who spots a problem
    early should not have to wait for their turn, and refusing is the safe
    direction, so it needs neither MFA nor the stage's turn, and somebody who
    approved an earlier stage may still change their mind.
    """
    req, events, now = _advance(req, now)
    _require_pending(req)
    user = _user(approver)
    if user == req.requester.user:
        raise SelfDenialError("the requester withdraws a request with cancel, not deny")
    if not _member_of_chain(req, approver):
        raise NotEligibleError(f"{user} is in none of the approval chain's groups")
    if _blank(reason):
        raise ReasonRequiredError("a denial needs a reason")
    denial = Denial(user, reason, now, req.stage_index)
    req = replace(req, status=RequestStatus.DENIED, denial=denial, updated_at=now)
    events.append(RequestDenied(req.id, now, user, reason, denial.stage_index))
    return req, tuple(events)


def cancel(
    req: ApprovalRequest, by: Actor, now: datetime, reason: str = "", *, as_admin: bool = False
) -> Transition:
    """Withdraw a pending request: by its requester, or by an administrator.

    ``as_admin`` is the adapter's word that ``by`` holds the admin role; an
    administrator cancelling somebody else's request must say why.
    """
    req, events, now = _advance(req, now)
    _require_pending(req)
    user = _user(by)
    own = user == req.requester.user
    if not own and not as_admin:
        raise NotRequesterError("only the requester (or an administrator) may cancel")
    if not own and _blank(reason):
        raise ReasonRequiredError("cancelling somebody else's request needs a reason")
    cancellation = Cancellation(user, reason, now, as_admin=as_admin)
    req = replace(req, status=RequestStatus.CANCELLED, cancellation=cancellation, updated_at=now)
    events.append(RequestCancelled(req.id, now, user, reason, as_admin))
    return req, tuple(events)


def break_glass(
    req: ApprovalRequest,
    by: Actor,
    justification: str,
    now: datetime,
    *,
    mfa_verified: bool = False,
) -> Transition:
    """Let the requester self-authorize in an emergency, if the chain allows it.

    The request is approved at once with a grant, and a post-hoc review by an
    eligible approver becomes mandatory (:func:`review`). If any stage of the
    chain requires MFA, so does breaking the glass: skipping the approvers
    must not also skip proving who you are.
    """
    req, events, now = _advance(req, now)
    _require_pending(req)
    user = _user(by)
    if not req.chain.break_glass:
        raise BreakGlassNotAllowedError("the approval chain does not allow break-glass")
    if user != req.requester.user:
        raise NotRequesterError("only the requester may break the glass")
    if any(s.mfa for s in req.chain.stages) and mfa_verified is not True:
        raise MfaRequiredError("break-glass on a chain that requires MFA requires MFA")
    if _blank(justification) or len(justification.strip()) < MIN_JUSTIFICATION:
        raise JustificationRequiredError(
            f"break-glass needs a justification of at least {MIN_JUSTIFICATION} characters"
        )
    grant = _issue_grant(req, now, break_glass=True)
    req = replace(
        req,
        status=RequestStatus.APPROVED,
        approved_at=now,
        break_glass=BreakGlass(user, justification, now),
        review_required=True,
        grant=grant,
        updated_at=now,
    )
    events += [
        BreakGlassUsed(req.id, now, user, justification, _approver_groups(req)),
        RequestApproved(req.id, now, break_glass=True),
        _grant_issued(grant),
    ]
    return req, tuple(events)


def review(
    req: ApprovalRequest,
    reviewer: Actor,
    verdict: ReviewVerdict,
    now: datetime,
    comment: str = "",
) -> Transition:
    """Record the mandatory post-hoc review of a break-glass approval.

    The reviewer must be a member of one of the chain's groups and not the
    requester. The review does not change the request's status (the action
    may long have run); an ``unjustified`` verdict needs a comment, since it
    starts a conversation.
    """
    req, events, now = _advance(req, now)
    if req.break_glass is None or not req.review_required:
        raise ReviewNotRequiredError("only break-glass approvals are reviewed")
    if req.review is not None:
        raise AlreadyReviewedError("the break-glass approval has been reviewed")
    user = _user(reviewer)
    if user == req.requester.user:
        raise SelfReviewError("the requester cannot review their own break-glass")
    if not _member_of_chain(req, reviewer):
        raise NotEligibleError(f"{user} is in none of the approval chain's groups")
    try:
        verdict = ReviewVerdict(verdict)
    except ValueError:
        raise InvalidRequestError(f"unknown review verdict {verdict!r}") from None
    if verdict is ReviewVerdict.UNJUSTIFIED and _blank(comment):
        raise ReasonRequiredError("an unjustified verdict needs a comment")
    req = replace(req, review=Review(user, verdict, comment, now), updated_at=now)
    events.append(ReviewRecorded(req.id, now, user, verdict, comment))
    return req, tuple(events)


# --- grants and execution -----------------------------------------------------


def authorize(
    req: ApprovalRequest,
    action_fingerprint: str,
    by: Actor,
    now: datetime,
    *,
    execution_timeout: timedelta = DEFAULT_EXECUTION_TIMEOUT,
) -> Transition:
    """Use the request's grant to run the held action: once, exactly it, by its requester.

    ``action_fingerprint`` is the fingerprint of the action about to run,
    computed by the gateway from what will actually execute; one changed
    character makes another fingerprint and a refusal. The executor must
    report the outcome within ``execution_timeout``; after that :func:`tick`
    fails the request (an executor that died must not leave it executing).
    """
    if not isinstance(execution_timeout, timedelta) or execution_timeout <= timedelta(0):
        raise InvalidRequestError("the execution timeout must be a positive time span")
    req, events, now = _advance(req, now)
    grant = req.grant
    if grant is None:
        if req.status is RequestStatus.EXPIRED:
            raise RequestExpiredError(f"request {req.id} has expired")
        raise NotApprovedError(f"request {req.id} is {req.status.value}, not approved")
    if grant.used:
        raise GrantUsedError("the grant has already been used")
    if grant.revoked:
        raise GrantRevokedError("the grant has been revoked")
    if req.status is RequestStatus.EXPIRED or grant.expired(now):
        raise GrantExpiredError("the grant has expired")
    if req.status is not RequestStatus.APPROVED:
        raise NotApprovedError(f"request {req.id} is {req.status.value}, not approved")
    if action_fingerprint != grant.fingerprint:
        raise GrantMismatchError("the action differs from the one that was approved")
    user = _user(by)
    if user != grant.requester:
        raise NotRequesterError("only the requester may use the grant")
    req = replace(
        req,
        status=RequestStatus.EXECUTING,
        grant=replace(grant, used_at=now),
        execution=Execution(executor=user, started_at=now, timeout=execution_timeout),
        updated_at=now,
    )
    events += [
        GrantConsumed(req.id, now, user, grant.fingerprint),
        ExecutionStarted(req.id, now, user, grant.fingerprint),
    ]
    return req, tuple(events)


def report_outcome(
    req: ApprovalRequest,
    by: Actor,
    now: datetime,
    *,
    exit_code: int | None = None,
    rows_affected: int | None = None,
    error: str | None = None,
    as_service: bool = False,
) -> Transition:
    """Record how the execution went: executed on success, failed otherwise.

    Success means no error and an exit code of 0 (or none, for kinds without
    one). Only the executor who consumed the grant reports, unless the
    adapter vouches with ``as_service`` that ``by`` is the gateway's own
    service identity (which sees the outcome first-hand).
    """
    req, events, now = _advance(req, now)
    execution = req.execution
    if req.status is not RequestStatus.EXECUTING or execution is None:
        raise NotExecutingError(f"request {req.id} is {req.status.value}, not executing")
    user = _user(by)
    if user != execution.executor and not as_service:
        raise NotExecutorError("only the executor (or the gateway's service) may report")
    if error is not None and not error.strip():
        error = None
    if exit_code is None and rows_affected is None and error is None:
        raise OutcomeRequiredError("report an exit code, rows affected or an error")
    if isinstance(exit_code, bool) or isinstance(rows_affected, bool):
        raise InvalidRequestError("exit code and rows affected are numbers")
    if rows_affected is not None and rows_affected < 0:
        raise InvalidRequestError("rows affected cannot be negative")
    outcome = ExecutionOutcome(exit_code, rows_affected, error)
    finished = replace(execution, finished_at=now, outcome=outcome, reported_by=user)
    status = RequestStatus.EXECUTED if outcome.succeeded else RequestStatus.FAILED
    req = replace(req, status=status, execution=finished, updated_at=now)
    events.append(
        ExecutionFinished(req.id, now, user, outcome.succeeded, exit_code, rows_affected, error)
    )
    return req, tuple(events)


def revoke_grant(
    req: ApprovalRequest, by: Actor, reason: str, now: datetime, *, as_admin: bool = False
) -> Transition:
    """Withdraw a grant before it is used up.

    The requester, any member of the chain's groups, or an administrator
    (``as_admin``, vouched for by the adapter) may revoke, with a reason. An
    unused grant takes the request to ``cancelled``; a RULE grant whose own
    action already ran stops covering further actions, the request's status
    staying what it is.
    """
    req, events, now = _advance(req, now)
    grant = req.grant
    if grant is None:
        raise NoGrantError(f"request {req.id} has no grant")
    if grant.revoked:
        raise GrantRevokedError("the grant has already been revoked")
    if grant.expired(now):
        raise GrantExpiredError("the grant has expired")
    user = _user(by)
    if user != req.requester.user and not as_admin and not _member_of_chain(req, by):
        raise NotEligibleError(f"{user} may not revoke this grant")
    if _blank(reason):
        raise ReasonRequiredError("revoking a grant needs a reason")
    revoked = replace(grant, revoked_at=now, revoked_by=user, revoke_reason=reason)
    if req.status is RequestStatus.APPROVED:
        cancellation = Cancellation(user, reason, now, as_admin=as_admin)
        req = replace(
            req,
            status=RequestStatus.CANCELLED,
            grant=revoked,
            cancellation=cancellation,
            updated_at=now,
        )
        events += [
            GrantRevoked(req.id, now, user, reason),
            RequestCancelled(req.id, now, user, reason, as_admin),
        ]
        return req, tuple(events)
    if grant.used and grant.scope is not GrantScope.RULE:
        raise GrantUsedError("an action grant that has been used has nothing left to revoke")
    req = replace(req, grant=revoked, updated_at=now)
    events.append(GrantRevoked(req.id, now, user, reason))
    return req, tuple(events)
