"""ApprovalService: the approval use cases, between the pure core and the entrypoints.

One instance per server process, shared by all requests; call :meth:`start`
once the event loop runs (ticker and, on PostgreSQL, the LISTEN connection)
and :meth:`stop` on shutdown.

Every mutating use case is the same unit of work, in ONE transaction::

    read the row -> decode -> pure transition (now = clock())
      -> update(row, expected_version)   lost the race? roll back, start over
      -> grant mirror writes              (grants table: insert / consume)
      -> append the transition's events   (always the last writes)
      -> pg_notify(id, version)           (PostgreSQL; delivered on commit)
    commit -> publish the new view to local waiters -> metrics hooks

so a state change and its audit events commit together or not at all. A
transition the core refuses raises :class:`ServiceError` with the core's code;
if the refusal came from a deadline that had passed (the request expired),
that expiry is committed first (with its events), then the error is raised.

Errors (``ServiceError.code`` / ``.status``): ``not_found`` 404 also for a
request the caller may not see; ``forbidden`` 403 (auditors never change
anything, not even submit; only service accounts pass ``user``); the core's
who-may codes (``self_approval``, ``not_eligible``, ``not_requester``,
``not_executor``, ``mfa_*`` ...) 403; ``reason_required``,
``justification_required``, ``outcome_required``, ``invalid_request`` 422;
``invalid_body``, ``invalid_action``, ``invalid_query``, ``unknown_user`` 400;
state conflicts (``not_pending``, ``already_approved``, ``grant_used``,
``grant_mismatch``, ``no_eligible_approvers``, ``conflict`` ...) 409.

MFA step-up: on a stage with ``mfa`` (and for break-glass on a chain with any
MFA stage) the approver needs a confirmed TOTP secret (``mfa_not_enrolled``)
and a code (``mfa_required``) that is valid (``mfa_invalid``) and fresher than
the last one they used (``mfa_replayed``); the step is consumed in the same
transaction as the approval (rolled back with it). An ``otp`` sent for a stage
without MFA is ignored: neither checked nor consumed, the approval is recorded
without MFA. The other refusals (self-approval, eligibility, state) are
checked before the code, so a refused approval never burns a code.

Waiters: :meth:`watch` yields the current view at once, then every change,
and ends after a final status. Local changes wake waiters through the
in-process :class:`~jitgate.service.hub.Hub` right after commit; changes made
by other processes arrive through PostgreSQL LISTEN/NOTIFY
(:mod:`jitgate.service.listener`). As a safety net (a notification lost while
the LISTEN connection was being replaced is also covered by a re-read on
reconnect) a waiter re-reads its request if nothing arrived for
``resync_interval`` seconds. Close the iterator when done (``async with
contextlib.aclosing(service.watch(...)) as views``): an abandoned one holds
its subscription until garbage collection.

Ticker: a task applies :func:`jitgate.approvals.tick` to due requests
(expiry, escalation, unused grants), sleeping until the earliest
``next_deadline`` in the store, a new local submission, or ``tick_cap``
seconds (deadlines set by other processes), whichever comes first.
:meth:`run_due` does one pass, for tests and tools.

Metrics: ``stats`` (:class:`~jitgate.service.metrics.ServiceStats`) counts
in-process; ``on_change`` is a list of ``(topic, data)`` hooks called after
each commit (topics ``decision``, ``status``, ``decided``, ``refused``; see
:mod:`jitgate.service.metrics`) for a Prometheus exporter.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from jitgate.actions.model import Action, Actor, InvalidAction
from jitgate.approvals import (
    ApprovalError,
    ApprovalRequest,
    Event,
    GrantExpired,
    RequestExpired,
    RequestStatus,
    ReviewVerdict,
    StageEscalated,
    StageTimedOut,
    next_deadline,
    tick,
)
from jitgate.approvals import approve as core_approve
from jitgate.approvals import authorize as core_authorize
from jitgate.approvals import break_glass as core_break_glass
from jitgate.approvals import cancel as core_cancel
from jitgate.approvals import create_request as core_create_request
from jitgate.approvals import deny as core_deny
from jitgate.approvals import report_outcome as core_report_outcome
from jitgate.approvals import review as core_review
from jitgate.approvals import revoke_grant as core_revoke_grant
from jitgate.approvals.totp import check_totp
from jitgate.audit.checkpoint import Checkpoint
from jitgate.audit.keys import SigningKey
from jitgate.audit.receipts import ReceiptError, build_receipt, sign_receipt
from jitgate.evaluator import Evaluator
from jitgate.policy import Decision, Outcome
from jitgate.service.access import acts_for_requester, approver_shortfall, can_see
from jitgate.service.codec import (
    CodecError,
    RequestMeta,
    audit_payload,
    decode_state,
    event_name,
    request_row,
)
from jitgate.service.errors import ServiceError
from jitgate.service.grants import applied_grant, covering_grant, grant_view
from jitgate.service.hub import Hub, wait_event
from jitgate.service.listener import CHANNEL, Listener, asyncpg_dsn, notify_payload
from jitgate.service.metrics import ChangeHook, ServiceStats, emit
from jitgate.service.principal import Principal
from jitgate.service.statements import record_statements as _record_statements
from jitgate.service.throttle import AuthThrottle, FailureReport, TooManyFailures
from jitgate.service.views import FINAL_STATUSES, request_view
from jitgate.store import (
    Database,
    GrantRepository,
    GrantRow,
    Identity,
    RequestRepository,
    RequestRow,
    StoreError,
    append_event,
    hash_token,
    new_grant_id,
    new_request_id,
)
from jitgate.store.audit import write_checkpoint
from jitgate.store.tables import RequestTable

log = logging.getLogger(__name__)

#: Fields an action body may have (docs/api.md); ``user`` for service accounts only.
ACTION_FIELDS: Final = frozenset(
    {"kind", "text", "payload", "env", "environment", "target", "attributes", "user"}
)
#: Largest page of :meth:`ApprovalService.list`.
MAX_LIMIT: Final = 1000
#: How many stored requests one list call looks at before returning a partial page.
MAX_SCAN: Final = 10_000
#: ``last_used_at`` of a token is written at most this often.
TOUCH_INTERVAL: Final = timedelta(minutes=1)
#: Review verdicts as the API spells them, and as the core does.
VERDICTS: Final[Mapping[str, ReviewVerdict]] = {
    "ok": ReviewVerdict.JUSTIFIED,
    "concern": ReviewVerdict.UNJUSTIFIED,
    "justified": ReviewVerdict.JUSTIFIED,
    "unjustified": ReviewVerdict.UNJUSTIFIED,
}

#: Core refusals about who is asking: 403. About the input: 422. Else 409.
_FORBIDDEN: Final = frozenset(
    {
        "self_approval",
        "self_denial",
        "self_review",
        "not_eligible",
        "not_requester",
        "not_executor",
        "already_filled_stage",
        "mfa_required",
        "mfa_invalid",
        "mfa_replayed",
        "anonymous_actor",
        "break_glass_not_allowed",
    }
)
_UNPROCESSABLE: Final = frozenset(
    {"reason_required", "justification_required", "outcome_required", "invalid_request"}
)
_SERVER_FAULTS: Final = frozenset({"invalid_time", "totp_secret_invalid"})
#: Events caused by the clock, not by the principal whose command noticed them.
_TIME_EVENTS: Final = (StageEscalated, StageTimedOut, RequestExpired, GrantExpired)


def service_error(err: ApprovalError) -> ServiceError:
    """The service error for a refusal of the approval core (same code)."""
    if err.code in _FORBIDDEN:
        status = 403
    elif err.code in _UNPROCESSABLE:
        status = 422
    elif err.code in _SERVER_FAULTS:
        status = 500
    else:
        status = 409
    return ServiceError(err.code, err.message, status)


def _not_found(request_id: str) -> ServiceError:
    return ServiceError("not_found", f"no request {request_id!r}", 404)


def _forbidden(message: str) -> ServiceError:
    return ServiceError("forbidden", message, 403)


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Submission:
    decision: Decision
    #: The request view (docs/api.md) when approval is required, else None.
    request: Mapping[str, Any] | None
    #: ``{"id", "request_id", "expires_at"}`` of the RULE grant that allowed a
    #: REQUIRE_APPROVAL decision without a new request, else None. The
    #: decision stays what the policy said: allowed by grant is
    #: ``require_approval`` with no request and this grant.
    grant: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Evaluation:
    decision: Decision
    #: The RULE grant that would allow the action now (as ``Submission.grant``).
    grant: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class _Loaded:
    row: RequestRow
    req: ApprovalRequest
    meta: RequestMeta


_Change = tuple[ApprovalRequest, tuple[Event, ...], RequestMeta]
_Op = Callable[[AsyncSession, _Loaded, datetime], Awaitable[_Change]]
#: Test seam: runs in the transaction just before the optimistic update.
BeforeUpdate = Callable[[AsyncSession, RequestRow], Awaitable[None]]


class _LostRace(Exception):
    """The row changed since it was read: roll back and decide again."""


class ApprovalService:
    def __init__(
        self,
        db: Database,
        evaluator: Evaluator,
        *,
        clock: Callable[[], datetime] | None = None,
        max_attempts: int = 8,
        tick_cap: float = 2.0,
        resync_interval: float | None = 30.0,
        listen: bool = True,
        signing_key: SigningKey | None = None,
        checkpoint_interval: float = 1.0,
    ) -> None:
        """``clock`` returns the current (timezone-aware) time; ``max_attempts``
        bounds the retries of a use case that keeps losing optimistic races;
        ``tick_cap`` is the longest the ticker sleeps; ``resync_interval``
        the longest a waiter goes without re-reading its request (None:
        never); ``listen=False`` skips LISTEN/NOTIFY wake-ups on PostgreSQL;
        ``signing_key`` signs audit checkpoints (every ``checkpoint_interval``
        seconds when events were appended, at start and at stop) and approval
        receipts (None: neither is signed, and receipts are unavailable).
        """
        self.db = db
        self.evaluator = evaluator
        self.signing_key = signing_key
        self._clock = clock or _utcnow
        self.max_attempts = max_attempts
        self.tick_cap = tick_cap
        self.resync_interval = resync_interval
        self.stats = ServiceStats()
        #: ``(topic, data)`` hooks called after each commit; see jitgate.service.metrics.
        self.on_change: list[ChangeHook] = []
        self._postgres = db.backend == "postgresql"
        self._listen = listen and self._postgres
        self._hub = Hub()
        self._listener: Listener | None = None
        self._ticker_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._refreshing: dict[str, asyncio.Task[None]] = {}
        self._refresh_again: set[str] = set()
        self._touched: dict[str, datetime] = {}
        self._stuck: set[str] = set()
        self._stopping = False
        self._before_update: BeforeUpdate | None = None
        #: Failed authentications: coalesced ``auth.failed`` events and the
        #: per-address lockout (see jitgate.service.throttle); replaceable.
        self.auth_throttle = AuthThrottle()
        self.checkpoint_interval = checkpoint_interval
        self._checkpoint_task: asyncio.Task[None] | None = None

    # --- lifecycle ------------------------------------------------------------------

    async def start(self, *, ticker: bool = True) -> None:
        """Start the LISTEN connection (PostgreSQL) and the ticker."""
        if self._listen and self._listener is None:
            self._listener = Listener(
                asyncpg_dsn(self.db.url), self._on_notify, on_connect=self._resync
            )
            await self._listener.start()
        self._stopping = False
        if ticker and self._ticker_task is None:
            self._ticker_task = asyncio.create_task(self._tick_loop(), name="jitgate-ticker")
        if self.signing_key is not None and self._checkpoint_task is None:
            self._checkpoint_task = asyncio.create_task(
                self._checkpoint_loop(), name="jitgate-checkpoints"
            )

    async def stop(self) -> None:
        """Stop the ticker and the LISTEN connection (waiters are left to their owners)."""
        self._stopping = True
        self._wake.set()
        task, self._ticker_task = self._ticker_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.stop()
        # After the ticker (whose flush may be cut short), before the last checkpoint.
        await self._flush_auth_failures_on_stop()
        checkpoints, self._checkpoint_task = self._checkpoint_task, None
        if checkpoints is not None:
            checkpoints.cancel()
            await asyncio.gather(checkpoints, return_exceptions=True)
            try:  # sign what this process appended last
                await self.checkpoint()
            except Exception:
                log.exception("signing the final audit checkpoint failed")
        refreshing = list(self._refreshing.values())
        for refresh in refreshing:
            refresh.cancel()
        await asyncio.gather(*refreshing, return_exceptions=True)

    @property
    def listener(self) -> Listener | None:
        return self._listener

    # --- audit checkpoints ------------------------------------------------------------

    async def checkpoint(self) -> Checkpoint | None:
        """Sign the head of the audit trail now, if anything is unsigned."""
        if self.signing_key is None:
            return None
        return await write_checkpoint(self.db, self.signing_key, self._now())

    async def _checkpoint_loop(self) -> None:
        # Signs the head at start-up too: a tail a crash left unsigned is
        # signed as soon as the server is back.
        while not self._stopping:
            try:
                await self.checkpoint()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("signing an audit checkpoint failed; retrying")
            await asyncio.sleep(self.checkpoint_interval)

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError("the service clock must return timezone-aware datetimes")
        return now

    # --- identity -------------------------------------------------------------------

    async def authenticate(self, token: str, client: str | None = None) -> Principal | None:
        """The principal a bearer token belongs to; None if it is unknown, expired,
        revoked, or its user is disabled. ``client``: the caller's address.

        Failures are recorded as ``auth.failed`` events coalesced per address
        (at most one per address per interval, with counts and 8-character
        token prefixes, never more of a token); an address with too many
        recent failures is refused with :class:`TooManyFailures` (429) before
        the token is looked at, without touching the database
        (:mod:`jitgate.service.throttle`).
        """
        now = self._now()
        wait = self.auth_throttle.check(client, now)
        if wait is not None:
            raise TooManyFailures(wait)
        async with self.db.transaction(readonly=True) as session:
            user = await Identity(session).authenticate(token, now, touch=False)
        if user is not None:
            key = hash_token(token)
            last = self._touched.get(key)
            if last is None or not timedelta(0) <= now - last < TOUCH_INTERVAL:
                async with self.db.transaction() as session:
                    user = await Identity(session).authenticate(token, now, touch=True)
                if user is not None:
                    if len(self._touched) > 10_000:
                        self._touched.clear()
                    self._touched[key] = now
        if user is None:
            await self._write_auth_failures(self.auth_throttle.failure(client, token, now), now)
            return None
        return Principal(
            user=user.name,
            groups=user.groups,
            is_admin=user.is_admin,
            is_auditor=user.is_auditor,
            is_service_account=user.is_service_account,
        )

    async def flush_auth_failures(self, *, drain: bool = False) -> int:
        """Write the coalesced ``auth.failed`` reports whose interval has passed
        (``drain``: all of them); how many events were written."""
        now = self._now()
        throttle = self.auth_throttle
        reports = throttle.drain(now) if drain else throttle.due(now)
        await self._write_auth_failures(reports, now)
        return len(reports)

    async def _write_auth_failures(self, reports: Sequence[FailureReport], now: datetime) -> None:
        if not reports:
            return
        try:
            async with self.db.transaction() as session:
                for report in reports:
                    await append_event(session, "auth.failed", None, None, report.payload(), now)
        except BaseException:
            self.auth_throttle.restore(reports)  # written later, not dropped
            raise

    async def _flush_auth_failures_on_stop(self) -> None:
        try:
            await self.flush_auth_failures(drain=True)
        except Exception:
            log.exception("recording the pending failed authentications failed")
            lost = self.auth_throttle.drain(self._now())
            if lost:
                log.error(
                    "unrecorded failed authentications: %s",
                    ", ".join(f"{r.client}: {r.count} failed, {r.throttled} refused" for r in lost),
                )

    # --- evaluating and submitting --------------------------------------------------

    async def _action(self, principal: Principal, body: Mapping[str, Any], now: datetime) -> Action:
        """The action a body describes, attempted by the principal (or by the
        user a service account names) now, with the actor's groups from the store."""
        if not isinstance(body, Mapping):
            raise ServiceError("invalid_body", "the action must be a JSON object", 400)
        unknown = sorted(str(k) for k in set(body) - ACTION_FIELDS)
        if unknown:
            raise ServiceError("invalid_body", f"unknown field(s): {', '.join(unknown)}", 400)
        on_behalf = body.get("user")
        actor = principal.actor
        if on_behalf is not None and on_behalf != "" and on_behalf != principal.user:
            if not principal.is_service_account:
                raise _forbidden("only service accounts may act on behalf of another user")
            if not isinstance(on_behalf, str):
                raise ServiceError("invalid_body", "user must be a string", 400)
            async with self.db.transaction(readonly=True) as session:
                record = await Identity(session).get_user(on_behalf)
            if record is None or record.disabled:
                raise ServiceError("unknown_user", f"no active user {on_behalf!r}", 400)
            actor = Actor(record.name, record.groups)
        fields = {k: v for k, v in body.items() if k != "user"}
        record_body = {
            **fields,
            "user": actor.user,
            "groups": sorted(actor.groups),
            "at": now.isoformat(),
        }
        try:
            return Action.from_record(record_body)
        except InvalidAction as exc:
            raise ServiceError("invalid_action", str(exc), 400) from None

    def _decide(self, action: Action, *, submitted: bool) -> Decision:
        decision = self.evaluator.evaluate(action)
        data = {
            "decision": decision.outcome.label,
            "kind": action.kind.value,
            "environment": action.environment,
            "submitted": submitted,
        }
        self.stats.record("decision", data)
        emit(self.on_change, "decision", data)
        return decision

    @staticmethod
    def _attempt(principal: Principal, action: Action, decision: Decision) -> dict[str, Any]:
        return {
            "action": {
                "kind": action.kind.value,
                "text": action.text,
                "payload": dict(action.payload),
                "target": action.target,
                "environment": action.environment,
                "attributes": dict(action.attributes),
                "user": action.actor.user,
                "groups": sorted(action.actor.groups),
            },
            "submitted_by": principal.user,
            "decision": decision.to_dict(),
        }

    async def _record(
        self, type: str, principal: Principal, payload: Mapping[str, Any], now: datetime
    ) -> None:
        async with self.db.transaction() as session:
            await append_event(session, type, principal.user, None, payload, now)

    async def evaluate(self, principal: Principal, body: Mapping[str, Any]) -> Decision:
        """The policy's decision on an action body; nothing is held.

        Decisions other than allow are recorded (``action.evaluated``).
        """
        return (await self.evaluation(principal, body)).decision

    async def evaluation(self, principal: Principal, body: Mapping[str, Any]) -> Evaluation:
        """:meth:`evaluate`, and the RULE grant that would let the action go
        ahead now without a request (recorded with ``action.evaluated``;
        nothing is applied)."""
        now = self._now()
        action = await self._action(principal, body, now)
        decision = self._decide(action, submitted=False)
        if decision.outcome is Outcome.ALLOW:
            return Evaluation(decision)
        async with self.db.transaction() as session:
            row = await covering_grant(session, action, decision, now)
            payload = self._attempt(principal, action, decision)
            if row is not None:
                payload["grant"] = applied_grant(row)
            await append_event(session, "action.evaluated", principal.user, None, payload, now)
        return Evaluation(decision, None if row is None else applied_grant(row))

    async def _apply_rule_grant(
        self, principal: Principal, action: Action, decision: Decision, now: datetime
    ) -> dict[str, Any] | None:
        """Let a REQUIRE_APPROVAL through on an active RULE grant, recording
        ``grant.applied`` in the same transaction that found the grant."""
        async with self.db.transaction() as session:
            row = await covering_grant(session, action, decision, now)
            if row is None:
                return None
            payload = {
                "grant_id": row.id,
                "request_id": row.request_id,
                "action": {
                    "kind": action.kind.value,
                    "text": action.text,
                    "payload": dict(action.payload),
                    "target": action.target,
                    "environment": action.environment,
                    "user": action.actor.user,
                },
                "fingerprint": decision.fingerprint,
                "rules": list(decision.rules),
                "submitted_by": principal.user,
                "break_glass": row.break_glass,
                "expires_at": row.expires_at.isoformat(),
            }
            await append_event(
                session,
                "grant.applied",
                principal.user,
                row.request_id,
                payload,
                now,
                target=action.target,
                environment=action.environment,
            )
        return applied_grant(row)

    async def submit(self, principal: Principal, body: Mapping[str, Any]) -> Submission:
        """Evaluate an action body and, when approval is required, hold it as a request.

        Refuses (409 ``no_eligible_approvers``, nothing held, an event
        recorded) when the chain's approvers could not approve it: too few
        enabled members other than the requester in the first stage's groups,
        or in the whole chain counting escalations.

        An active RULE grant of the requester that covers the action (see
        :func:`jitgate.service.grants.covering_grant`) satisfies a
        REQUIRE_APPROVAL: nothing is held, ``grant.applied`` is recorded, and
        the submission carries the grant (the decision is left as it was).
        """
        self._writable(principal)
        now = self._now()
        action = await self._action(principal, body, now)
        decision = self._decide(action, submitted=True)
        if decision.outcome is Outcome.ALLOW:
            return Submission(decision, None)
        if decision.outcome is Outcome.DENY:
            await self._record(
                "action.denied", principal, self._attempt(principal, action, decision), now
            )
            return Submission(decision, None)
        applied = await self._apply_rule_grant(principal, action, decision, now)
        if applied is not None:
            return Submission(decision, None, applied)

        request_id = new_request_id()
        try:
            req, events = core_create_request(request_id, action, decision, now)
        except ApprovalError as err:
            payload = {**self._attempt(principal, action, decision), "reason": err.code}
            await self._record("request.refused", principal, payload, now)
            raise service_error(err) from None
        meta = RequestMeta(submitted_by=principal.user)
        decision_data = decision.to_dict()
        async with self.db.transaction() as session:
            identity = Identity(session)
            members = {
                group: await identity.group_members(group)
                for group in sorted(req.chain.approver_groups)
            }
            shortfall = approver_shortfall(req.chain, members, req.requester.user)
            if shortfall is None:
                await RequestRepository(session).insert(request_row(req, meta, decision_data))
                await self._append(session, events, principal.user, req, meta)
                await self._notify(session, req.id, 1)
            else:
                payload = {
                    **self._attempt(principal, action, decision),
                    "reason": "no_eligible_approvers",
                    "message": shortfall,
                }
                await append_event(session, "request.refused", principal.user, None, payload, now)
        if shortfall is not None:
            data = {"reason": "no_eligible_approvers"}
            self.stats.record("refused", data)
            emit(self.on_change, "refused", data)
            raise ServiceError("no_eligible_approvers", shortfall, 409)
        view = request_view(req, meta, decision_data)
        self._committed(None, req, view, 1, self._published(events, principal.user, req, meta))
        self._wake.set()
        return Submission(decision, view)

    # --- reading --------------------------------------------------------------------

    async def _load(
        self, session: AsyncSession, request_id: str, principal: Principal | None
    ) -> _Loaded:
        if not isinstance(request_id, str):
            raise _not_found(str(request_id))
        row = await RequestRepository(session).get(request_id)
        if row is None:
            raise _not_found(request_id)
        try:
            req, meta = decode_state(row.state)
        except CodecError as exc:
            log.error("request %s does not decode: %s", request_id, exc)
            raise ServiceError("corrupt_request", "the stored request is unreadable", 500) from None
        if principal is not None and not can_see(principal, req, meta):
            raise _not_found(request_id)
        return _Loaded(row, req, meta)

    async def get(self, principal: Principal, request_id: str) -> Mapping[str, Any]:
        async with self.db.transaction(readonly=True) as session:
            loaded = await self._load(session, request_id, principal)
        return request_view(loaded.req, loaded.meta, loaded.row.decision)

    async def list(
        self,
        principal: Principal,
        *,
        status: str | None = None,
        mine: bool = False,
        awaiting_me: bool = False,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[Mapping[str, Any]], str | None]:
        """Requests the principal may see, newest first: ``(views, next_cursor)``.

        ``status`` may list several, comma-separated; ``mine``: requested or
        submitted by the principal; ``awaiting_me``: pending, and the
        principal could approve the current stage now. ``next_cursor`` is
        None on the last page.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise ServiceError("invalid_query", f"limit must be between 1 and {MAX_LIMIT}", 400)
        statuses: set[str] | None = None
        if status is not None and status.strip():
            statuses = {s.strip() for s in status.split(",") if s.strip()}
            unknown = statuses - {s.value for s in RequestStatus}
            if unknown:
                raise ServiceError(
                    "invalid_query", f"unknown status: {', '.join(sorted(unknown))}", 400
                )
        if awaiting_me:
            statuses = {"pending"} if statuses is None else statuses & {"pending"}
            if not statuses:
                return [], None
        requester = principal.user if mine and not principal.is_service_account else None
        page = min(MAX_LIMIT, max(limit, 100))
        now = self._now()
        views: list[Mapping[str, Any]] = []
        after = cursor
        scanned = 0
        exhausted = False
        async with self.db.transaction(readonly=True) as session:
            repo = RequestRepository(session)
            while len(views) < limit and scanned < MAX_SCAN:
                try:
                    rows = await repo.list(
                        status=None if statuses is None else sorted(statuses),
                        requester=requester,
                        limit=page,
                        before_cursor=after,
                    )
                except StoreError as exc:
                    raise ServiceError("invalid_query", exc.message, 400) from None
                scanned += len(rows)
                for row in rows:
                    after = row.id
                    try:
                        req, meta = decode_state(row.state)
                    except CodecError:
                        log.error("request %s does not decode; left out of the list", row.id)
                        continue
                    if not can_see(principal, req, meta):
                        continue
                    if mine and principal.user not in (req.requester.user, meta.submitted_by):
                        continue
                    if awaiting_me and not self._could_approve(principal, req, now):
                        continue
                    views.append(request_view(req, meta, row.decision))
                    if len(views) == limit:
                        break
                if len(rows) < page:
                    exhausted = True
                    break
        if len(views) == limit:
            return views, str(views[-1]["id"])
        return views, None if exhausted else after

    @staticmethod
    def _could_approve(principal: Principal, req: ApprovalRequest, now: datetime) -> bool:
        if principal.is_auditor:
            return False
        try:
            core_approve(req, principal.actor, now, mfa_verified=True)
        except ApprovalError:
            return False
        return True

    # --- the unit of work -----------------------------------------------------------

    def _writable(self, principal: Principal) -> None:
        if principal.is_auditor:
            raise _forbidden("auditors see requests but change nothing")

    async def _append(
        self,
        session: AsyncSession,
        events: tuple[Event, ...],
        actor: str | None,
        req: ApprovalRequest,
        meta: RequestMeta,
    ) -> None:
        for event in events:
            await append_event(
                session,
                event_name(event),
                None if isinstance(event, _TIME_EVENTS) else actor,
                event.request_id,
                audit_payload(event, req, meta),
                event.at,
                target=req.action.target,
                environment=req.action.environment,
            )

    async def _notify(self, session: AsyncSession, request_id: str, version: int) -> None:
        if self._postgres:
            await session.execute(
                text("SELECT pg_notify(:channel, :payload)"),
                {"channel": CHANNEL, "payload": notify_payload(request_id, version)},
            )

    async def _write(
        self,
        session: AsyncSession,
        loaded: _Loaded,
        new: ApprovalRequest,
        events: tuple[Event, ...],
        meta: RequestMeta,
        actor: str | None,
    ) -> RequestMeta:
        """Persist ``new`` over ``loaded`` (optimistically), mirror its grant, append
        ``events``; raise :class:`_LostRace` if the row changed since it was read."""
        old = loaded.req
        issued = new.grant is not None and meta.grant_id is None
        if issued:
            meta = replace(meta, grant_id=new_grant_id())
        row = request_row(new, meta, loaded.row.decision)
        if self._before_update is not None:
            await self._before_update(session, row)
        if not await RequestRepository(session).update(row, loaded.row.version):
            raise _LostRace
        grants = GrantRepository(session)
        grant = new.grant
        if issued and grant is not None and meta.grant_id is not None:
            await grants.insert(
                GrantRow(
                    id=meta.grant_id,
                    request_id=new.id,
                    fingerprint=grant.fingerprint,
                    scope=grant.scope.value,
                    requester=grant.requester,
                    target=grant.target,
                    environment=grant.environment,
                    rule_ids=grant.rule_ids,
                    issued_at=grant.issued_at,
                    expires_at=grant.expires_at,
                    break_glass=grant.break_glass,
                )
            )
        consumed = (
            grant is not None
            and grant.used_at is not None
            and (old.grant is None or old.grant.used_at is None)
        )
        if consumed and grant is not None and grant.used_at is not None:
            ok = meta.grant_id is not None and await grants.consume(meta.grant_id, grant.used_at)
            if not ok:
                # The mirror disagrees with the request: refuse rather than run twice.
                raise ServiceError("grant_used", "the grant has already been used", 409)
        await self._append(session, events, actor, new, meta)
        await self._notify(session, new.id, loaded.row.version + 1)
        return meta

    async def _mutate(
        self, principal: Principal | None, request_id: str, op: _Op
    ) -> dict[str, Any]:
        """Run ``op`` as one optimistic unit of work (see the module docstring)."""
        actor = None if principal is None else principal.user
        for attempt in range(self.max_attempts):
            error: ServiceError | None = None
            try:
                async with self.db.transaction() as session:
                    loaded = await self._load(session, request_id, principal)
                    now = self._now()
                    try:
                        new, events, meta = await op(session, loaded, now)
                    except ApprovalError as err:
                        error = service_error(err)
                        # A deadline that passed may be why: commit what the
                        # clock did (the expiry and its events), then refuse.
                        new, events = tick(loaded.req, now)
                        if not events:
                            raise error from None
                        meta = loaded.meta
                    meta = await self._write(session, loaded, new, events, meta, actor)
            except _LostRace:
                self.stats.lost_races += 1
                await asyncio.sleep(random.uniform(0, 0.002 * (attempt + 1)))
                continue
            view = request_view(new, meta, loaded.row.decision)
            published = self._published(events, actor, new, meta)
            self._committed(loaded.req.status, new, view, loaded.row.version + 1, published)
            if error is not None:
                raise error
            return view
        raise ServiceError(
            "conflict", "the request kept changing while this was decided; try again", 409
        )

    @staticmethod
    def _published(
        events: tuple[Event, ...],
        actor: str | None,
        req: ApprovalRequest,
        meta: RequestMeta,
    ) -> Sequence[dict[str, Any]]:
        """The committed events as the ``events`` hook topic carries them."""
        return [
            {
                "type": event_name(event),
                "actor": None if isinstance(event, _TIME_EVENTS) else actor,
                "at": event.at.isoformat(),
                "payload": audit_payload(event, req, meta),
            }
            for event in events
        ]

    def _committed(
        self,
        previous: RequestStatus | None,
        new: ApprovalRequest,
        view: Mapping[str, Any],
        version: int,
        events: Sequence[dict[str, Any]] = (),
    ) -> None:
        """After a commit: wake local waiters, count, call the hooks."""
        self._hub.publish(new.id, version, view)
        if events:
            emit(
                self.on_change, "events", {"request_id": new.id, "request": view, "events": events}
            )
        if previous is new.status:
            return
        data: dict[str, Any] = {
            "id": new.id,
            "status": new.status.value,
            "previous": None if previous is None else previous.value,
            "final": new.status.value in FINAL_STATUSES,
        }
        self.stats.record("status", data)
        emit(self.on_change, "status", data)
        if previous is RequestStatus.PENDING:
            decided_at: datetime | None = None
            if new.status is RequestStatus.APPROVED:
                decided_at, outcome = new.approved_at, "approved"
            elif new.status is RequestStatus.DENIED and new.denial is not None:
                decided_at, outcome = new.denial.at, "denied"
            if decided_at is not None:
                decided = {
                    "id": new.id,
                    "outcome": outcome,
                    "seconds": (decided_at - new.created_at).total_seconds(),
                }
                self.stats.record("decided", decided)
                emit(self.on_change, "decided", decided)

    # --- MFA --------------------------------------------------------------------------

    async def _step_up(
        self, session: AsyncSession, user: str, otp: str | None, now: datetime
    ) -> None:
        """Verify and consume ``user``'s TOTP code, in the caller's transaction."""
        identity = Identity(session)
        record = await identity.get_mfa_secret(user)
        if record is None or not record.confirmed:
            raise ServiceError(
                "mfa_not_enrolled", "this step needs MFA and you have no confirmed TOTP secret", 403
            )
        if otp is None or not isinstance(otp, str) or not otp.strip():
            raise ServiceError("mfa_required", "this step needs a one-time code (otp)", 403)
        try:
            step = check_totp(record.secret, otp, now, record.last_used_step)
        except ApprovalError as err:
            raise service_error(err) from None
        if not await identity.consume_totp_step(user, step):
            raise ServiceError("mfa_replayed", "the one-time code has already been used", 403)

    # --- the use cases ----------------------------------------------------------------

    async def approve(
        self, principal: Principal, request_id: str, comment: str = "", otp: str | None = None
    ) -> Mapping[str, Any]:
        self._writable(principal)

        async def op(session: AsyncSession, loaded: _Loaded, now: datetime) -> _Change:
            actor = principal.actor
            # Every refusal but MFA first: a refused approval never burns a code.
            core_approve(loaded.req, actor, now, comment, mfa_verified=True)
            stage = tick(loaded.req, now)[0].current_stage
            mfa = stage is not None and stage.mfa
            if mfa:
                await self._step_up(session, principal.user, otp, now)
            new, events = core_approve(loaded.req, actor, now, comment, mfa_verified=mfa)
            return new, events, loaded.meta

        return await self._mutate(principal, request_id, op)

    async def deny(self, principal: Principal, request_id: str, reason: str) -> Mapping[str, Any]:
        self._writable(principal)

        async def op(session: AsyncSession, loaded: _Loaded, now: datetime) -> _Change:
            new, events = core_deny(loaded.req, principal.actor, reason, now)
            return new, events, loaded.meta

        return await self._mutate(principal, request_id, op)

    async def cancel(
        self, principal: Principal, request_id: str, reason: str = ""
    ) -> Mapping[str, Any]:
        """Withdraw a pending request: its requester (or the service account that
        submitted it), or an admin, who must give a ``reason`` for someone
        else's request (422 ``reason_required``)."""
        self._writable(principal)

        async def op(session: AsyncSession, loaded: _Loaded, now: datetime) -> _Change:
            req = loaded.req
            by, as_admin = principal.actor, False
            if acts_for_requester(principal, req, loaded.meta):
                by = req.requester
            elif principal.user != req.requester.user and principal.is_admin:
                as_admin = True
            new, events = core_cancel(req, by, now, reason, as_admin=as_admin)
            return new, events, loaded.meta

        return await self._mutate(principal, request_id, op)

    async def break_glass(
        self, principal: Principal, request_id: str, justification: str, otp: str | None = None
    ) -> Mapping[str, Any]:
        """The requester self-authorizes (if the chain allows it); needs ``otp``
        when any stage of the chain requires MFA."""
        self._writable(principal)

        async def op(session: AsyncSession, loaded: _Loaded, now: datetime) -> _Change:
            req, actor = loaded.req, principal.actor
            core_break_glass(req, actor, justification, now, mfa_verified=True)
            mfa = any(stage.mfa for stage in req.chain.stages)
            if mfa:
                await self._step_up(session, principal.user, otp, now)
            new, events = core_break_glass(req, actor, justification, now, mfa_verified=mfa)
            return new, events, loaded.meta

        return await self._mutate(principal, request_id, op)

    async def review(
        self, principal: Principal, request_id: str, verdict: str, comment: str = ""
    ) -> Mapping[str, Any]:
        """The post-hoc review of a break-glass: ``verdict`` ``ok`` or ``concern``
        (also ``justified``/``unjustified``); a concern needs a comment."""
        self._writable(principal)
        core_verdict = VERDICTS.get(verdict) if isinstance(verdict, str) else None
        if core_verdict is None:
            raise ServiceError("invalid_request", "verdict must be 'ok' or 'concern'", 422)

        async def op(session: AsyncSession, loaded: _Loaded, now: datetime) -> _Change:
            new, events = core_review(loaded.req, principal.actor, core_verdict, now, comment)
            return new, events, loaded.meta

        return await self._mutate(principal, request_id, op)

    async def authorize(
        self, principal: Principal, request_id: str, fingerprint: str
    ) -> Mapping[str, Any]:
        """Consume the single-use grant for the action with ``fingerprint``:
        the requester, or the service account that submitted the request."""
        self._writable(principal)

        async def op(session: AsyncSession, loaded: _Loaded, now: datetime) -> _Change:
            req = loaded.req
            by = req.requester if acts_for_requester(principal, req, loaded.meta) else None
            new, events = core_authorize(req, fingerprint, by or principal.actor, now)
            return new, events, loaded.meta

        return await self._mutate(principal, request_id, op)

    async def report_outcome(
        self,
        principal: Principal,
        request_id: str,
        *,
        exit_code: int | None = None,
        rows_affected: int | None = None,
        error: str | None = None,
        duration_ms: int | None = None,
        receipt_sha256: str | None = None,
    ) -> Mapping[str, Any]:
        """How the run went (``executing`` -> ``executed`` or ``failed``): the
        executor, or the service account that submitted the request.
        ``receipt_sha256``: digest of the approval receipt the executor kept
        (recorded in the ``execution.finished`` event)."""
        self._writable(principal)
        if receipt_sha256 is not None and not self._is_sha256(receipt_sha256):
            raise ServiceError("invalid_request", "receipt_sha256 is 64 lower-case hex digits", 422)
        if duration_ms is not None and (
            isinstance(duration_ms, bool) or not isinstance(duration_ms, int) or duration_ms < 0
        ):
            raise ServiceError("invalid_request", "duration_ms is a non-negative integer", 422)

        async def op(session: AsyncSession, loaded: _Loaded, now: datetime) -> _Change:
            req = loaded.req
            new, events = core_report_outcome(
                req,
                principal.actor,
                now,
                exit_code=exit_code,
                rows_affected=rows_affected,
                error=error,
                as_service=acts_for_requester(principal, req, loaded.meta),
            )
            meta = replace(loaded.meta, duration_ms=duration_ms, receipt_sha256=receipt_sha256)
            return new, events, meta

        return await self._mutate(principal, request_id, op)

    async def record_statements(
        self, principal: Principal, records: Sequence[Any], *, strict: bool = False
    ) -> int:
        """Append one ``statement.executed`` event per record (mappings or
        ``StatementRecord`` objects), all in one transaction; how many. Service
        accounts and admins for anyone, others for themselves only (403); see
        :mod:`jitgate.service.statements` for the limits. ``strict``: records
        as a request body carries them, in the shape the API documents
        (:func:`jitgate.service.statements.statement_event`)."""
        return await _record_statements(self.db, principal, records, self._now(), strict=strict)

    # --- grants -----------------------------------------------------------------------

    async def list_grants(
        self,
        principal: Principal,
        *,
        active: bool = False,
        mine: bool = False,
        limit: int = 100,
    ) -> Sequence[dict[str, Any]]:
        """Grants, newest first: admins and auditors see everybody's (``mine``:
        only their own), everybody else their own. ``active``: only grants
        still usable now."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise ServiceError("invalid_query", f"limit must be between 1 and {MAX_LIMIT}", 400)
        sees_all = principal.is_admin or principal.is_auditor
        requester = principal.user if mine or not sees_all else None
        now = self._now()
        async with self.db.transaction(readonly=True) as session:
            rows = await GrantRepository(session).find(
                requester=requester, active_at=now if active else None, limit=limit
            )
        return [grant_view(row, now) for row in rows]

    async def revoke_grant(
        self, principal: Principal, grant_id: str, reason: str
    ) -> dict[str, Any]:
        """Revoke a grant (its requester, or an admin; a reason is required):
        ``grant.revoked`` is recorded with the change, an unused grant's
        request is cancelled, and a revoked RULE grant never covers another
        action. ``not_found`` for a grant the caller may not see."""
        self._writable(principal)
        row = None
        if isinstance(grant_id, str) and grant_id:
            async with self.db.transaction(readonly=True) as session:
                row = await GrantRepository(session).get(grant_id)
        if row is None or not (principal.is_admin or row.requester == principal.user):
            raise ServiceError("not_found", f"no grant {grant_id!r}", 404)
        found = row
        as_admin = principal.user != found.requester

        async def op(session: AsyncSession, loaded: _Loaded, now: datetime) -> _Change:
            if loaded.meta.grant_id != found.id:
                raise ServiceError("conflict", "the grant and its request disagree", 409)
            new, events = core_revoke_grant(
                loaded.req, principal.actor, reason, now, as_admin=as_admin
            )
            revoked_at = now if new.grant is None else new.grant.revoked_at or now
            if not await GrantRepository(session).revoke(
                found.id, revoked_at, by=principal.user, reason=reason
            ):
                raise ServiceError("grant_revoked", "the grant has already been revoked", 409)
            return new, events, loaded.meta

        await self._mutate(principal, found.request_id, op)
        async with self.db.transaction(readonly=True) as session:
            updated = await GrantRepository(session).get(found.id)
        assert updated is not None
        return grant_view(updated, self._now())

    # --- waiters ----------------------------------------------------------------------

    async def watch(
        self, principal: Principal, request_id: str
    ) -> AsyncIterator[Mapping[str, Any]]:
        """The request's view now, then after every change; ends after a final status.

        The first ``__anext__`` raises ``ServiceError`` ``not_found`` for an
        unknown or invisible request (before anything is yielded).
        """
        sub = self._hub.subscribe(request_id)
        try:
            async with self.db.transaction(readonly=True) as session:
                loaded = await self._load(session, request_id, principal)
            sub.seen(loaded.row.version)
            view: Mapping[str, Any] = request_view(loaded.req, loaded.meta, loaded.row.decision)
            yield view
            while view["status"] not in FINAL_STATUSES:
                item = await sub.get(self.resync_interval)
                if item is None:
                    await self._publish_current(request_id)
                    continue
                view = item[1]
                yield view
        finally:
            sub.close()

    async def _publish_current(self, request_id: str) -> None:
        async with self.db.transaction(readonly=True) as session:
            try:
                loaded = await self._load(session, request_id, None)
            except ServiceError:
                return
        view = request_view(loaded.req, loaded.meta, loaded.row.decision)
        self._hub.publish(request_id, loaded.row.version, view)

    def _on_notify(self, request_id: str, version: int) -> None:
        """A change committed somewhere (maybe here): re-read it for local waiters."""
        if version == 1:
            self._wake.set()  # a new request: its deadline may come before the ticker's
        if self._hub.wants(request_id, version or None):
            self._refresh(request_id)

    async def _resync(self) -> None:
        """After (re)connecting LISTEN: changes may have gone unheard."""
        self._wake.set()
        for request_id in self._hub.watched():
            self._refresh(request_id)

    def _refresh(self, request_id: str) -> None:
        if request_id in self._refreshing:
            self._refresh_again.add(request_id)
            return
        self._refreshing[request_id] = asyncio.create_task(self._refresh_loop(request_id))

    async def _refresh_loop(self, request_id: str) -> None:
        try:
            while True:
                self._refresh_again.discard(request_id)
                await self._publish_current(request_id)
                if request_id not in self._refresh_again:
                    break
        except Exception:
            log.exception("re-reading request %s failed", request_id)
        finally:
            self._refreshing.pop(request_id, None)

    # --- the ticker -------------------------------------------------------------------

    async def run_due(self, now: datetime | None = None) -> int:
        """Apply every time-driven transition due at ``now`` (default: the clock);
        the number of requests that changed.

        A request that cannot be processed (unreadable state, endless races)
        is logged once and left out of the ticker's sleep computation until it
        succeeds, so it cannot make the ticker spin.
        """
        now = now if now is not None else self._now()
        changed = 0
        seen: set[str] = set()
        while True:
            async with self.db.transaction(readonly=True) as session:
                rows = await RequestRepository(session).due(now, limit=100)
            fresh = [row.id for row in rows if row.id not in seen]
            for request_id in fresh:
                seen.add(request_id)
                try:
                    changed += await self._tick_one(request_id, now)
                except Exception:
                    if request_id not in self._stuck:
                        log.exception("applying deadlines to request %s failed", request_id)
                    if len(self._stuck) < 100:
                        self._stuck.add(request_id)
                else:
                    self._stuck.discard(request_id)
            if not fresh or len(rows) < 100:
                return changed

    async def _tick_one(self, request_id: str, now: datetime) -> bool:
        for attempt in range(self.max_attempts):
            try:
                async with self.db.transaction() as session:
                    try:
                        loaded = await self._load(session, request_id, None)
                    except ServiceError as err:
                        if err.code == "not_found":
                            return False
                        raise
                    new, events = tick(loaded.req, now)
                    if not events and loaded.row.next_deadline == next_deadline(new):
                        return False
                    meta = await self._write(session, loaded, new, events, loaded.meta, None)
            except _LostRace:
                self.stats.lost_races += 1
                await asyncio.sleep(random.uniform(0, 0.002 * (attempt + 1)))
                continue
            if not events:
                return False
            view = request_view(new, meta, loaded.row.decision)
            published = self._published(events, None, new, meta)
            self._committed(loaded.req.status, new, view, loaded.row.version + 1, published)
            return True
        raise RuntimeError(f"request {request_id} kept changing while its deadlines were applied")

    async def earliest_deadline(self) -> datetime | None:
        """The earliest ``next_deadline`` in the store (requests the ticker could
        not process left out)."""
        stmt = select(func.min(RequestTable.next_deadline))
        if self._stuck:
            stmt = stmt.where(RequestTable.id.notin_(sorted(self._stuck)))
        async with self.db.transaction(readonly=True) as session:
            earliest: datetime | None = (await session.execute(stmt)).scalar_one_or_none()
        return earliest

    async def _tick_loop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            delay = self.tick_cap
            try:
                await self.run_due()
                await self.flush_auth_failures()
                earliest = await self.earliest_deadline()
                if earliest is not None:
                    until = (earliest - self._now()).total_seconds()
                    delay = min(self.tick_cap, max(0.01, until))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("the ticker failed; retrying in %.1f s", delay)
            await wait_event(self._wake, delay)

    # --- receipts ---------------------------------------------------------------------

    async def receipt(self, principal: Principal, request_id: str) -> Mapping[str, Any]:
        """The signed approval receipt of a request (:mod:`jitgate.audit.receipts`).

        Visible to whoever may see the request (else 404 ``not_found``); 409
        ``not_approved`` unless it was approved (approved, executing, executed
        or failed); 503 ``receipts_unavailable`` when the server has no
        signing key. The same request always gives the same receipt.
        """
        async with self.db.transaction(readonly=True) as session:
            loaded = await self._load(session, request_id, principal)
        try:
            body = build_receipt(loaded.req)
            if self.signing_key is None:
                raise ServiceError(
                    "receipts_unavailable", "this server has no signing key for receipts", 503
                )
            return sign_receipt(body, self.signing_key)
        except ReceiptError as err:
            if err.code == "not_approved":
                raise ServiceError("not_approved", err.message, 409) from None
            log.error("no receipt for request %s: %s", request_id, err.message)
            raise ServiceError("receipt_failed", "the receipt cannot be issued", 500) from None

    @staticmethod
    def _is_sha256(value: object) -> bool:
        return (
            isinstance(value, str)
            and len(value) == 64
            and all(c in "0123456789abcdef" for c in value)
        )
