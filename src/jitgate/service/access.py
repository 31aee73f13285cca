"""Who may see a request, and whether anybody at all can approve one.

Visibility (docs/api.md, roles): the requester, the principal that submitted
the request (a service account acting for the requester), members of any
group of its chain (escalation targets included), admins and auditors.
Everybody else gets ``not_found``, exactly as for an id that does not exist.

Approver availability is checked before a request is stored (fail closed: an
approver group without members must not leave an action pending until it
expires, nor suggest that someone could approve it). The check is a bipartite
matching of people to approval slots, because one person fills one slot only
(one approval per request, one group per approval under quorum ``all``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from jitgate.approvals import ApprovalChain, ApprovalRequest, Quorum, Stage
from jitgate.service.codec import RequestMeta
from jitgate.service.principal import Principal


def can_see(principal: Principal, req: ApprovalRequest, meta: RequestMeta) -> bool:
    if principal.is_admin or principal.is_auditor:
        return True
    if principal.user in (req.requester.user, meta.submitted_by):
        return True
    return not req.chain.approver_groups.isdisjoint(principal.groups)


def acts_for_requester(principal: Principal, req: ApprovalRequest, meta: RequestMeta) -> bool:
    """The principal is the service account that submitted ``req`` for its requester."""
    return (
        principal.is_service_account
        and meta.submitted_by == principal.user
        and principal.user != req.requester.user
    )


def fillable(slots: Sequence[frozenset[str]]) -> bool:
    """Whether every slot can get its own person from its set of candidates.

    Kuhn's augmenting paths; slots are few (stages x groups x approvals), the
    candidate sets may be large.
    """
    owner: dict[str, int] = {}

    def augment(slot: int, seen: set[str]) -> bool:
        for person in sorted(slots[slot]):
            if person in seen:
                continue
            seen.add(person)
            holder = owner.get(person)
            if holder is None or augment(holder, seen):
                owner[person] = slot
                return True
        return False

    return all(augment(slot, set()) for slot in range(len(slots)))


def stage_slots(
    stage: Stage, members: Mapping[str, frozenset[str]], *, escalated: bool
) -> list[frozenset[str]]:
    """The approval slots of ``stage``, each with the people who could fill it."""

    def of(groups: Sequence[str] | frozenset[str]) -> frozenset[str]:
        return frozenset(p for g in groups for p in members.get(g, frozenset()))

    if stage.quorum is Quorum.ANY:
        eligible = of(stage.eligible_groups(escalated))
        return [eligible] * stage.approvals
    stand_ins = of(stage.stand_in_groups) if escalated else frozenset()
    return [of((g,)) | stand_ins for g in stage.groups for _ in range(stage.approvals)]


def approver_shortfall(
    chain: ApprovalChain, members: Mapping[str, frozenset[str]], requester: str
) -> str | None:
    """Why nobody could approve a request under ``chain``, or None if somebody can.

    ``members`` maps every group of the chain (escalation targets included) to
    its enabled members. The first stage must be satisfiable by its own
    groups (an escalation only comes after a timeout, so counting on it would
    hold the action for nothing); the whole chain must be satisfiable at all,
    escalations included, by distinct people other than the requester.
    """
    without = {g: people - {requester} for g, people in members.items()}
    first = chain.stages[0]
    if not fillable(stage_slots(first, without, escalated=False)):
        return (
            f"stage {first.name!r} needs {first.approvals} approval(s)"
            + (" from each of" if first.quorum is Quorum.ALL else " from")
            + f" {', '.join(first.groups)}, and not enough people other than the "
            "requester are in these groups"
        )
    slots = [s for stage in chain.stages for s in stage_slots(stage, without, escalated=True)]
    if not fillable(slots):
        return (
            "the approval chain needs more distinct approvers (other than the requester) "
            "than its groups have members"
        )
    return None
