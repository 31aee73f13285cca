"""Approval chains: the ordered stages a held action must pass.

A chain is data produced by the policy engine and enforced by the approval
state machine; it is immutable and free of I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from jitgate.approvals.errors import InvalidChainError


class Quorum(StrEnum):
    """How a stage's groups combine."""

    #: ``approvals`` approvals from members of any of the stage's groups.
    ANY = "any"
    #: ``approvals`` approvals from members of *each* of the stage's groups.
    ALL = "all"


class GrantScope(StrEnum):
    #: The approval authorizes exactly the fingerprinted action, once.
    ACTION = "action"
    #: The approval authorizes actions matching the same rule on the same
    #: target by the same requester for a time box.
    RULE = "rule"


@dataclass(frozen=True, slots=True)
class Stage:
    name: str
    groups: tuple[str, ...]
    approvals: int = 1
    quorum: Quorum = Quorum.ANY
    mfa: bool = False
    #: After this long without the stage being satisfied it escalates (or, with
    #: no escalation target, the request expires).
    timeout: timedelta | None = None
    escalate_to: tuple[str, ...] = ()

    def eligible_groups(self, escalated: bool) -> tuple[str, ...]:
        """The groups whose members may approve, in a stable order."""
        if not escalated:
            return self.groups
        return tuple(dict.fromkeys((*self.groups, *self.escalate_to)))

    @property
    def stand_in_groups(self) -> frozenset[str]:
        """Escalation groups that are not also regular groups of the stage.

        Once the stage escalates, their members may stand in for any of the
        stage's groups: escalation exists because those groups did not answer.
        """
        return frozenset(self.escalate_to) - frozenset(self.groups)


@dataclass(frozen=True, slots=True)
class ApprovalChain:
    stages: tuple[Stage, ...]
    #: How long a request may stay pending before it expires.
    ttl: timedelta = timedelta(hours=1)
    #: Whether a requester may self-authorize with a justification (break-glass).
    break_glass: bool = False
    grant_scope: GrantScope = GrantScope.ACTION
    #: How long a grant stays valid once the chain is satisfied.
    grant_ttl: timedelta = timedelta(minutes=5)

    @property
    def approver_groups(self) -> frozenset[str]:
        return frozenset(g for s in self.stages for g in (*s.groups, *s.escalate_to))


def validate_chain(chain: ApprovalChain) -> ApprovalChain:
    """Return ``chain`` if the state machine can enforce it, else refuse it.

    A chain nobody can satisfy, or one that could be satisfied by nobody
    (no stages, no groups, zero approvals), must not turn into a request:
    failing closed here keeps the action held instead of approving it by
    accident later.
    """
    if not chain.stages:
        raise InvalidChainError("an approval chain needs at least one stage")
    if chain.ttl <= timedelta(0):
        raise InvalidChainError("the request ttl must be positive")
    if chain.grant_ttl <= timedelta(0):
        raise InvalidChainError("the grant ttl must be positive")
    for number, stage in enumerate(chain.stages, start=1):
        label = f"stage {number} ({stage.name!r})"
        if not stage.groups:
            raise InvalidChainError(f"{label} names no approver groups")
        names = (*stage.groups, *stage.escalate_to)
        if any(not isinstance(g, str) or not g.strip() for g in names):
            raise InvalidChainError(f"{label} has a blank group name")
        if len(set(stage.groups)) != len(stage.groups):
            raise InvalidChainError(f"{label} names a group twice")
        # bool is an int: ``approvals=True`` would silently mean one.
        if isinstance(stage.approvals, bool) or stage.approvals < 1:
            raise InvalidChainError(f"{label} needs at least one approval")
        if not isinstance(stage.quorum, Quorum):
            raise InvalidChainError(f"{label} has an unknown quorum {stage.quorum!r}")
        if stage.timeout is not None and stage.timeout <= timedelta(0):
            raise InvalidChainError(f"{label} has a non-positive timeout")
    if not isinstance(chain.grant_scope, GrantScope):
        raise InvalidChainError(f"unknown grant scope {chain.grant_scope!r}")
    return chain
