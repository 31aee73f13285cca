"""The policy engine's answer for one action."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from jitgate.actions.findings import Analysis, Risk
from jitgate.approvals.chain import ApprovalChain


class Outcome(IntEnum):
    """Ordered by restrictiveness: among matching rules the highest wins."""

    ALLOW = 0
    REQUIRE_APPROVAL = 1
    DENY = 2

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, name: str) -> Outcome:
        try:
            return cls[name.strip().upper()]
        except KeyError:
            raise ValueError(
                f"unknown outcome {name!r} (expected allow, require_approval or deny)"
            ) from None


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    risk: Risk
    #: Ids of the rules that matched, in policy order.
    rules: tuple[str, ...]
    #: Human-readable reasons, each pointing at the exact statement or command.
    reasons: tuple[str, ...]
    fingerprint: str
    analysis: Analysis
    #: The merged approval chain when the outcome is REQUIRE_APPROVAL.
    chain: ApprovalChain | None = None
    #: The deny message of the denying rule(s).
    message: str = ""

    @property
    def allowed(self) -> bool:
        return self.outcome is Outcome.ALLOW

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape used by the CLI and (later) the API."""
        out: dict[str, Any] = {
            "decision": self.outcome.label,
            "risk": self.risk.label,
            "reasons": list(self.reasons),
            "rules": list(self.rules),
            "fingerprint": self.fingerprint,
            "findings": [
                {
                    "code": f.code,
                    "risk": f.risk.label,
                    "message": f.message,
                    "unit": f.unit,
                    "excerpt": f.excerpt,
                    **({"subject": f.subject} if f.subject else {}),
                }
                for f in self.analysis.findings
            ],
        }
        if self.message:
            out["message"] = self.message
        if self.chain is not None:
            out["chain"] = chain_to_dict(self.chain)
        return out


def chain_to_dict(chain: ApprovalChain) -> dict[str, Any]:
    return {
        "stages": [
            {
                "name": s.name,
                "groups": list(s.groups),
                "approvals": s.approvals,
                "quorum": s.quorum.value,
                "mfa": s.mfa,
                "timeout_seconds": int(s.timeout.total_seconds()) if s.timeout else None,
                "escalate_to": list(s.escalate_to),
            }
            for s in chain.stages
        ],
        "ttl_seconds": int(chain.ttl.total_seconds()),
        "break_glass": chain.break_glass,
        "grant_scope": chain.grant_scope.value,
        "grant_ttl_seconds": int(chain.grant_ttl.total_seconds()),
    }
