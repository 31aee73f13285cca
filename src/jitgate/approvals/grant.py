"""Grants: what a satisfied approval chain authorizes, and for how long.

A grant with scope ACTION authorizes exactly the fingerprinted action, once,
through :func:`jitgate.approvals.machine.authorize`. A grant with scope RULE
additionally authorizes, for its time box, further actions by the same
requester on the same target whose matched rules it covers: the gateway asks
:func:`scope_allows` before holding such an action again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from jitgate.actions.model import Action, fingerprint
from jitgate.approvals.chain import GrantScope
from jitgate.approvals.errors import (
    ApprovalError,
    DecisionMismatchError,
    GrantExpiredError,
    GrantMismatchError,
    GrantRevokedError,
    InvalidTimeError,
    NotRequesterError,
)

if TYPE_CHECKING:
    # jitgate.policy.decision imports this package (for ApprovalChain); a
    # run-time import here would be circular.
    from jitgate.policy.decision import Decision


def requires_approval(decision: Decision) -> bool:
    """Whether ``decision`` is a REQUIRE_APPROVAL (and so something a grant may satisfy)."""
    from jitgate.policy.decision import Outcome  # circular at import time, see above

    return decision.outcome is Outcome.REQUIRE_APPROVAL


@dataclass(frozen=True, slots=True)
class Grant:
    request_id: str
    #: The exact action the approvers saw.
    fingerprint: str
    scope: GrantScope
    #: The rules whose approval requirement the chain satisfied.
    rule_ids: tuple[str, ...]
    target: str
    environment: str
    #: Only this user may use the grant.
    requester: str
    issued_at: datetime
    expires_at: datetime
    #: Issued by break-glass, not by approvers.
    break_glass: bool = False
    #: When the held action itself was authorized (single use).
    used_at: datetime | None = None
    revoked_at: datetime | None = None
    revoked_by: str | None = None
    revoke_reason: str = ""

    @property
    def used(self) -> bool:
        return self.used_at is not None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def expired(self, now: datetime) -> bool:
        return now >= self.expires_at

    def valid_at(self, now: datetime) -> bool:
        """Not revoked and inside its validity window."""
        return not self.revoked and self.issued_at <= now < self.expires_at


def check_scope(grant: Grant, action: Action, decision: Decision, now: datetime) -> None:
    """Refuse unless a RULE grant covers ``action`` (decided by ``decision``) at ``now``.

    The decision must be the policy's answer for this very action: a grant
    relaxes a REQUIRE_APPROVAL the chain already satisfied, it never turns a
    DENY into an allow, and it never covers a rule it was not approved for.
    """
    if now.tzinfo is None:
        raise InvalidTimeError("times must carry a timezone")
    if grant.scope is not GrantScope.RULE:
        raise GrantMismatchError("an action grant covers its one action only; use authorize")
    if grant.revoked:
        raise GrantRevokedError()
    if not grant.valid_at(now):
        raise GrantExpiredError("the grant is not valid at this time")
    if not requires_approval(decision):
        raise GrantMismatchError(
            f"a grant only satisfies an approval requirement, not {decision.outcome.label!r}"
        )
    if decision.fingerprint != fingerprint(action):
        raise DecisionMismatchError("the decision was made for a different action")
    if action.actor.user != grant.requester:
        raise NotRequesterError("only the requester may use the grant")
    if action.target != grant.target or action.environment != grant.environment:
        raise GrantMismatchError("the grant covers another target")
    # An empty rule set would be a subset of anything: a REQUIRE_APPROVAL
    # without a rule to blame is a policy bug, so it stays held.
    if not decision.rules or not set(decision.rules) <= set(grant.rule_ids):
        raise GrantMismatchError("the action matches rules the grant does not cover")


def scope_allows(grant: Grant, action: Action, decision: Decision, now: datetime) -> bool:
    """Whether a RULE grant covers ``action`` at ``now``; see :func:`check_scope`."""
    try:
        check_scope(grant, action, decision, now)
    except ApprovalError:
        return False
    return True
