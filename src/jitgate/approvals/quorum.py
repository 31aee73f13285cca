"""When a stage's approvals satisfy its quorum.

Quorum ANY needs ``approvals`` approvals from members of any eligible group.
Quorum ALL needs ``approvals`` approvals *per group*, and an approver who is
in several groups counts for one of them only. Which one is not fixed when
they approve: fixing it greedily could strand a later approver (alice in
dba+security counted for dba, then bob, only in dba, has nowhere to go), so
the allocation is a maximum matching of approvals to per-group slots,
recomputed deterministically from the recorded approvals.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from jitgate.approvals.chain import Quorum, Stage
from jitgate.approvals.request import Approval


def _fits(stage: Stage, approval: Approval, group: str) -> bool:
    if group in approval.groups:
        return True
    # Only escalation-only groups give stand-in power; their members could
    # not have approved (and so not be recorded) before the escalation.
    return not stage.stand_in_groups.isdisjoint(approval.groups)


def _slots(stage: Stage) -> list[str]:
    return [g for g in stage.groups for _ in range(stage.approvals)]


def _match(stage: Stage, approvals: Sequence[Approval]) -> list[int | None]:
    """For each ALL slot, the index of the approval filling it (Kuhn's algorithm).

    Sizes are tiny (groups x approvals slots), so clarity beats speed; the
    order of approvals and of slots makes the result deterministic.
    """
    slots = _slots(stage)
    owner: list[int | None] = [None] * len(slots)

    def augment(a: int, seen: set[int]) -> bool:
        for s, group in enumerate(slots):
            if s in seen or not _fits(stage, approvals[a], group):
                continue
            seen.add(s)
            holder = owner[s]
            if holder is None or augment(holder, seen):
                owner[s] = a
                return True
        return False

    for a in range(len(approvals)):
        augment(a, set())
    return owner


def counted_approvals(stage: Stage, approvals: Sequence[Approval]) -> int:
    """How many of ``approvals`` count towards the stage's quorum."""
    if stage.quorum is Quorum.ANY:
        return sum(1 for a in approvals if a.groups)
    return sum(1 for holder in _match(stage, approvals) if holder is not None)


def required_approvals(stage: Stage) -> int:
    if stage.quorum is Quorum.ANY:
        return stage.approvals
    return stage.approvals * len(stage.groups)


def stage_satisfied(stage: Stage, approvals: Sequence[Approval]) -> bool:
    return counted_approvals(stage, approvals) >= required_approvals(stage)


def approval_counts(stage: Stage, approvals: Sequence[Approval], new: Approval) -> bool:
    """Whether ``new`` would bring the stage closer to its quorum."""
    return counted_approvals(stage, (*approvals, new)) > counted_approvals(stage, approvals)


def stage_allocation(stage: Stage, approvals: Sequence[Approval]) -> Mapping[str, str]:
    """Approver -> the group their approval counts for.

    For quorum ANY that is the first eligible group they belong to; for quorum
    ALL the group of the slot the matching gives them. Approvers who count
    for nothing are left out.
    """
    if stage.quorum is Quorum.ANY:
        return {a.approver: a.groups[0] for a in approvals if a.groups}
    slots = _slots(stage)
    return {
        approvals[holder].approver: slots[s]
        for s, holder in enumerate(_match(stage, approvals))
        if holder is not None
    }
