"""A request view (docs/api.md) in words, for people: CLI output and the
notices a gateway sends while a statement waits. Light on purpose: gateways
import it without the service layer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["describe_final", "describe_waiting"]


def describe_waiting(view: Mapping[str, Any]) -> str:
    """Who must still act, in words."""
    status = view.get("status", "?")
    if status != "pending":
        return str(status)
    waiting = view.get("waiting_for") or {}
    groups = " or ".join(waiting.get("groups") or []) or "?"
    needed = waiting.get("approvals_needed", "?")
    return f"waiting for {needed} approval(s) from {groups} (stage {waiting.get('stage', '?')})"


def describe_final(view: Mapping[str, Any]) -> str:
    """How a settled request ended, in words (who denied it and why, who approved)."""
    status = view.get("status")
    if status == "denied":
        denial = view.get("denial") or {}
        return f"denied by {denial.get('by', '?')}: {denial.get('reason', '')}"
    if status in {"approved", "executing", "executed"}:
        approvers = [a.get("user") for s in view.get("stages", []) for a in s.get("approvals", [])]
        return "approved by " + (", ".join(str(a) for a in approvers) or "break-glass")
    return str(status)
