"""Metrics hooks: what the service reports after each committed change.

The service keeps simple in-process counters (:class:`ServiceStats`) and
calls every hook in ``ApprovalService.on_change`` with ``(topic, data)``
*after* the transaction committed (never for a rolled-back change). Hooks run
on the event loop and must not block; an exception in a hook is logged and
ignored. Topics:

``"decision"``
    Every evaluation (``POST /evaluate`` and ``POST /requests``):
    ``{"decision": "allow" | "deny" | "require_approval", "kind", "environment",
    "submitted": bool}``.
``"status"``
    A request changed status (also on creation, ``previous`` None):
    ``{"id", "status", "previous", "final": bool}``.
``"decided"``
    A pending request was approved (by approvers or break-glass) or denied:
    ``{"id", "outcome": "approved" | "denied", "seconds": float}``, the time
    from creation to the decision (for a time-to-decision histogram).
``"refused"``
    A submission refused because nobody could approve it:
    ``{"reason": "no_eligible_approvers"}``.
``"events"``
    The audit events a committed change of one request wrote, in order:
    ``{"request_id", "request": <the request view>, "events": [{"type",
    "actor", "at", "payload"}]}`` (for notifiers: ``stage.started`` and
    ``stage.escalated`` carry ``notify_groups``).
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: ``(topic, data)``; see the module docstring.
ChangeHook = Callable[[str, Mapping[str, Any]], None]

log = logging.getLogger(__name__)


@dataclass
class ServiceStats:
    """Counters since the service started (this process only)."""

    #: Evaluations by decision label.
    decisions: Counter[str] = field(default_factory=Counter)
    #: Requests that reached each status (creation counts as ``pending``).
    statuses: Counter[str] = field(default_factory=Counter)
    #: Recent creation-to-decision times in seconds (newest last).
    decision_seconds: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))
    #: Submissions refused for want of approvers.
    refused: int = 0
    #: Optimistic updates that lost to a concurrent change and were retried.
    lost_races: int = 0

    def record(self, topic: str, data: Mapping[str, Any]) -> None:
        if topic == "decision":
            self.decisions[str(data["decision"])] += 1
        elif topic == "status":
            self.statuses[str(data["status"])] += 1
        elif topic == "decided":
            self.decision_seconds.append(float(data["seconds"]))
        elif topic == "refused":
            self.refused += 1


def emit(hooks: list[ChangeHook], topic: str, data: Mapping[str, Any]) -> None:
    for hook in list(hooks):
        try:
            hook(topic, data)
        except Exception:
            log.exception("on_change hook %r failed on %s", hook, topic)
