"""Approval chains as a policy builds them: from the file, and merged.

When several ``require_approval`` rules match one action the action must
satisfy all of them, so their chains merge into one that is at least as
strict as each: stages in rule order, stages of the same name combined.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import timedelta

from jitgate.approvals.chain import ApprovalChain, GrantScope, Quorum, Stage
from jitgate.policy.model import ChainSpec, DefaultsSpec


def build_chain(spec: ChainSpec, defaults: DefaultsSpec) -> ApprovalChain:
    grant = spec.grant
    return ApprovalChain(
        stages=tuple(
            Stage(
                name=s.name,
                groups=_unique(s.groups),
                approvals=s.approvals,
                quorum=s.quorum,
                mfa=s.mfa,
                timeout=s.timeout,
                escalate_to=_unique(s.escalate_to),
            )
            for s in spec.stages
        ),
        ttl=spec.ttl or defaults.ttl,
        break_glass=defaults.break_glass if spec.break_glass is None else spec.break_glass,
        grant_scope=grant.scope if grant is not None else defaults.grant_scope,
        grant_ttl=(grant.ttl if grant is not None and grant.ttl else None) or defaults.grant_ttl,
    )


def merge_chains(chains: Sequence[ApprovalChain]) -> ApprovalChain:
    """The strictest combination of ``chains`` (which must not be empty)."""
    if len(chains) == 1:
        return chains[0]
    stages: dict[str, Stage] = {}
    for chain in chains:
        for stage in chain.stages:
            seen = stages.get(stage.name)
            stages[stage.name] = stage if seen is None else merge_stages(seen, stage)
    return ApprovalChain(
        stages=tuple(stages.values()),
        ttl=min(c.ttl for c in chains),
        # Self-authorization is only open if every rule involved allows it.
        break_glass=all(c.break_glass for c in chains),
        grant_scope=(
            GrantScope.ACTION
            if any(c.grant_scope is GrantScope.ACTION for c in chains)
            else GrantScope.RULE
        ),
        grant_ttl=min(c.grant_ttl for c in chains),
    )


def merge_stages(a: Stage, b: Stage) -> Stage:
    """Two stages of the same name (the policy guarantees the same groups)."""
    return Stage(
        name=a.name,
        groups=_unique((*a.groups, *b.groups)),
        approvals=max(a.approvals, b.approvals),
        quorum=Quorum.ALL if Quorum.ALL in (a.quorum, b.quorum) else Quorum.ANY,
        mfa=a.mfa or b.mfa,
        timeout=_min_timeout(a.timeout, b.timeout),
        escalate_to=_unique((*a.escalate_to, *b.escalate_to)),
    )


def _min_timeout(a: timedelta | None, b: timedelta | None) -> timedelta | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def _unique(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))
