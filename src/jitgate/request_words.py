"""A request view (docs/api.md) in words, for people: CLI output and the
notices a gateway sends while a statement waits. Light on purpose: gateways
import it without the service layer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["bound_parameters", "describe_final", "describe_waiting"]


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


def bound_parameters(action: Mapping[str, Any]) -> list[str]:
    """A SQL action's bound parameters, one line each: ``$1 = '42'``, ``$2 = NULL``.

    Values as the gateway showed them to approvers (``parameter_values``:
    binary values decoded) where it gave them, else as bound
    (``parameters``, which the approval is bound to). Each value is quoted as
    an SQL literal, so ``'NULL'`` and a null, or ``'1, 2'`` and two values,
    cannot be mistaken for each other.
    """
    attributes = action.get("attributes") or {}
    if not isinstance(attributes, Mapping):
        return []
    values = attributes.get("parameter_values")
    if not isinstance(values, list):
        values = attributes.get("parameters")
    if not isinstance(values, list):
        return []
    return [f"${number} = {_literal(value)}" for number, value in enumerate(values, start=1)]


def _literal(value: object) -> str:
    if value is None:
        return "NULL"
    return "'" + str(value).replace("'", "''") + "'"
