"""Approval analytics over the audit trail: bottlenecks, outcomes, anomalies.

Pure code: events in, a :class:`Report` out; no clock reads, no I/O. The
adapters (``jitgate audit report``, ``GET /api/v1/audit/report``) read the
trail and render the report (:mod:`jitgate.audit.report`).

One pass, oldest event first (the order the store returns them, by ``seq``).
Memory grows with the requests *created in the window* (their state is kept
until the end: outcomes, decision times) and with the number of users (a
small fixed-size baseline each), never with the number of events:

* events before ``since`` only feed the per-user baselines the anomaly rules
  compare against (hours of day, request rate, kinds and rules seen);
* events in ``[since, until)`` feed the metrics and can raise anomalies;
* events at or after ``until`` are ignored.

The metrics are about requests created in the window: a decision in the
window about a request created before it is not counted (its creation, the
start of every duration, is outside the window).

Every anomaly rule is *online*: a request is judged against what its
requester did before it, so the report over a window does not depend on what
happened after it. Its thresholds are the fields of :class:`Thresholds`; see
``docs/audit-analytics.md`` for why they are what they are.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol

#: Key under which a request without matched rules is counted.
NO_RULE: Final = "(none)"

#: Names of the anomaly kinds, in the order reports list them.
ANOMALY_KINDS: Final = (
    "break_glass",
    "off_hours",
    "burst",
    "first_kind",
    "repeated_denials",
    "rubber_stamp",
)

#: The outcome a request settles in first (a later ``request.expired`` with
#: reason ``grant_expired`` does not change an approval into an expiry).
_FINAL_TYPES: Final[Mapping[str, str]] = {
    "request.approved": "approved",
    "request.denied": "denied",
    "request.cancelled": "cancelled",
    "request.expired": "expired",
}


# --- configuration --------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Thresholds:
    """When an anomaly rule fires. Defaults are documented in docs/audit-analytics.md."""

    #: Prior requests a requester needs before their hours or rate are judged.
    min_history: int = 20
    #: Hours either side of a request's hour that count as "the same time of day".
    off_hours_band: int = 1
    #: A request is off-hours if less than this share of the requester's prior
    #: requests fell within the band around its hour.
    off_hours_max_share: float = 0.02
    #: The sliding window a burst is counted in.
    burst_window: timedelta = timedelta(hours=1)
    #: A burst needs at least this many requests in the window ...
    burst_min_count: int = 10
    #: ... and at least this many times the requester's typical count per active hour.
    burst_factor: float = 4.0
    #: A first-ever kind or rule is only news after this many prior requests ...
    first_kind_min_history: int = 20
    #: ... and this long after the requester's first request.
    first_kind_min_age: timedelta = timedelta(days=7)
    #: Denials of one requester's requests that make a pattern ...
    denial_min_count: int = 3
    #: ... within this sliding window.
    denial_window: timedelta = timedelta(hours=24)
    #: An approval this soon after its stage started is "fast" ...
    rubber_stamp_fast: timedelta = timedelta(seconds=30)
    #: ... and an approver is flagged with at least this many fast approvals ...
    rubber_stamp_min_count: int = 5
    #: ... making at least this share of their approvals;
    rubber_stamp_min_share: float = 0.5
    #: a single approval this soon is flagged on its own (nobody reads a change in 5 s).
    rubber_stamp_instant: timedelta = timedelta(seconds=5)

    def __post_init__(self) -> None:
        counts = (
            "min_history",
            "burst_min_count",
            "first_kind_min_history",
            "denial_min_count",
            "rubber_stamp_min_count",
        )
        for name in counts:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.off_hours_band < 0 or self.off_hours_band > 11:
            raise ValueError("off_hours_band must be between 0 and 11")
        for name in ("off_hours_max_share", "rubber_stamp_min_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.burst_factor <= 0:
            raise ValueError("burst_factor must be positive")
        for name in ("burst_window", "denial_window", "rubber_stamp_fast"):
            if getattr(self, name) <= timedelta(0):
                raise ValueError(f"{name} must be positive")
        if self.rubber_stamp_instant < timedelta(0) or self.first_kind_min_age < timedelta(0):
            raise ValueError("durations must not be negative")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in asdict(self).items():
            if isinstance(value, timedelta):
                out[f"{name}_seconds"] = value.total_seconds()
            else:
                out[name] = value
        return out


# --- the report -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Durations:
    """Summary of a set of durations, in seconds.

    ``median`` is the usual median (mean of the two middle values for an even
    count); ``p95`` is the nearest-rank 95th percentile, an observed value.
    """

    count: int
    median: float
    p95: float
    min: float
    max: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Durations:
        if not seconds:
            raise ValueError("no durations")
        values = sorted(seconds)
        n = len(values)
        mid = n // 2
        median = values[mid] if n % 2 else (values[mid - 1] + values[mid]) / 2
        return cls(n, median, percentile(values, 95), values[0], values[-1])

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "median_seconds": self.median,
            "p95_seconds": self.p95,
            "min_seconds": self.min,
            "max_seconds": self.max,
        }


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of already sorted values (always one of them)."""
    if not sorted_values:
        raise ValueError("no values")
    if not 0 < pct <= 100:
        raise ValueError("pct must be in (0, 100]")
    rank = math.ceil(pct / 100 * len(sorted_values))
    return sorted_values[max(rank, 1) - 1]


@dataclass(frozen=True, slots=True)
class Timing:
    """Durations for one key (a rule, a stage, an approver, a group)."""

    key: str
    durations: Durations

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, **self.durations.to_dict()}


@dataclass(frozen=True, slots=True)
class Count:
    key: str
    count: int
    request_ids: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "count": self.count, "request_ids": list(self.request_ids)}


@dataclass(frozen=True, slots=True)
class Escalations:
    count: int
    by_stage: tuple[Count, ...]
    by_rule: tuple[Count, ...]
    request_ids: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "by_stage": [c.to_dict() for c in self.by_stage],
            "by_rule": [c.to_dict() for c in self.by_rule],
            "request_ids": list(self.request_ids),
        }


@dataclass(frozen=True, slots=True)
class Bottlenecks:
    #: Creation to ``request.approved``/``request.denied`` (break-glass excluded), per rule.
    decision_by_rule: tuple[Timing, ...]
    #: ``stage.started`` to ``stage.completed``, per stage name.
    stage_by_name: tuple[Timing, ...]
    #: Stage start to the group's approvals (``approval.given``), per approver group.
    response_by_group: tuple[Timing, ...]
    #: Stage start to the approver's approval or denial, per approver.
    response_by_approver: tuple[Timing, ...]
    #: Requests that expired, per reason.
    expired_by_reason: tuple[Count, ...]
    escalations: Escalations

    def to_dict(self) -> dict[str, Any]:
        return {
            "decision_by_rule": [t.to_dict() for t in self.decision_by_rule],
            "stage_by_name": [t.to_dict() for t in self.stage_by_name],
            "response_by_group": [t.to_dict() for t in self.response_by_group],
            "response_by_approver": [t.to_dict() for t in self.response_by_approver],
            "expired_by_reason": [c.to_dict() for c in self.expired_by_reason],
            "escalations": self.escalations.to_dict(),
        }


@dataclass(frozen=True, slots=True)
class OutcomeCounts:
    """How the requests of one rule or one requester ended.

    Rates are over *settled* requests (approved, denied, expired or cancelled);
    0 when none is settled.
    """

    key: str
    created: int
    approved: int
    denied: int
    expired: int
    cancelled: int
    pending: int
    break_glass: int

    @property
    def settled(self) -> int:
        return self.approved + self.denied + self.expired + self.cancelled

    @property
    def approval_rate(self) -> float:
        return round(self.approved / self.settled, 4) if self.settled else 0.0

    @property
    def denial_rate(self) -> float:
        return round(self.denied / self.settled, 4) if self.settled else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "created": self.created,
            "approved": self.approved,
            "denied": self.denied,
            "expired": self.expired,
            "cancelled": self.cancelled,
            "pending": self.pending,
            "break_glass": self.break_glass,
            "approval_rate": self.approval_rate,
            "denial_rate": self.denial_rate,
        }


@dataclass(frozen=True, slots=True)
class FailedExecution:
    """An approved action whose execution reported failure."""

    request_id: str
    at: datetime
    requester: str | None
    rules: tuple[str, ...]
    exit_code: int | None
    error: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "at": self.at.isoformat(),
            "requester": self.requester,
            "rules": list(self.rules),
            "exit_code": self.exit_code,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class Outcomes:
    by_rule: tuple[OutcomeCounts, ...]
    by_requester: tuple[OutcomeCounts, ...]
    failed_executions: tuple[FailedExecution, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "by_rule": [o.to_dict() for o in self.by_rule],
            "by_requester": [o.to_dict() for o in self.by_requester],
            "failed_executions": [f.to_dict() for f in self.failed_executions],
        }


@dataclass(frozen=True, slots=True)
class Anomaly:
    """Something an auditor should look at.

    ``subject`` is the user it is about (the requester, or the approver for
    ``rubber_stamp``); ``evidence`` holds the numbers behind it and a
    human-readable ``message``.
    """

    kind: str
    subject: str
    request_ids: tuple[str, ...]
    at: datetime
    evidence: Mapping[str, Any] = field(hash=False)

    @property
    def message(self) -> str:
        return str(self.evidence.get("message", ""))

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "subject": self.subject,
            "request_ids": list(self.request_ids),
            "at": self.at.isoformat(),
            "evidence": dict(self.evidence),
        }


@dataclass(frozen=True, slots=True)
class Summary:
    events: int
    requests: int
    approved: int
    denied: int
    expired: int
    cancelled: int
    pending: int
    break_glass: int
    #: Requests created in the window, per UTC hour of day (24 counts).
    requests_by_hour: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "requests": self.requests,
            "approved": self.approved,
            "denied": self.denied,
            "expired": self.expired,
            "cancelled": self.cancelled,
            "pending": self.pending,
            "break_glass": self.break_glass,
            "requests_by_hour": list(self.requests_by_hour),
        }


@dataclass(frozen=True, slots=True)
class Report:
    since: datetime | None
    until: datetime | None
    generated_at: datetime | None
    summary: Summary
    bottlenecks: Bottlenecks
    outcomes: Outcomes
    anomalies: tuple[Anomaly, ...]
    thresholds: Thresholds

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ISO 8601 times, durations in seconds."""
        return {
            "since": None if self.since is None else self.since.isoformat(),
            "until": None if self.until is None else self.until.isoformat(),
            "generated_at": None if self.generated_at is None else self.generated_at.isoformat(),
            "summary": self.summary.to_dict(),
            "bottlenecks": self.bottlenecks.to_dict(),
            "outcomes": self.outcomes.to_dict(),
            "anomalies": [a.to_dict() for a in self.anomalies],
            "thresholds": self.thresholds.to_dict(),
        }


# --- input ----------------------------------------------------------------------------


class EventLike(Protocol):
    """What :func:`analyze` reads of an event (:class:`jitgate.store.EventRow` fits)."""

    @property
    def at(self) -> datetime: ...
    @property
    def type(self) -> str: ...
    @property
    def actor(self) -> str | None: ...
    @property
    def request_id(self) -> str | None: ...
    @property
    def payload(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True, slots=True)
class _Event:
    at: datetime
    type: str
    actor: str | None
    request_id: str | None
    payload: Mapping[str, Any]


def _aware(value: datetime) -> datetime:
    """Naive times are taken as UTC (the store only keeps aware ones)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _event(raw: EventLike | Mapping[str, Any]) -> _Event | None:
    """The fields analytics needs; None for something that is not an event."""
    if isinstance(raw, Mapping):
        at, type_ = raw.get("at"), raw.get("type")
        actor, request_id, payload = raw.get("actor"), raw.get("request_id"), raw.get("payload")
    else:
        at, type_ = getattr(raw, "at", None), getattr(raw, "type", None)
        actor = getattr(raw, "actor", None)
        request_id = getattr(raw, "request_id", None)
        payload = getattr(raw, "payload", None)
    if isinstance(at, str):
        try:
            at = datetime.fromisoformat(at)
        except ValueError:
            return None
    if not isinstance(at, datetime) or not isinstance(type_, str):
        return None
    return _Event(
        at=_aware(at),
        type=type_,
        actor=actor if isinstance(actor, str) else None,
        request_id=request_id if isinstance(request_id, str) and request_id else None,
        payload=payload if isinstance(payload, Mapping) else {},
    )


def _text(payload: Mapping[str, Any], key: str) -> str | None:
    value = payload.get(key)
    return value if isinstance(value, str) and value else None


def _texts(payload: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = payload.get(key)
    if not isinstance(value, (list, tuple)):
        return ()
    return tuple(v for v in value if isinstance(v, str) and v)


def _int(payload: Mapping[str, Any], key: str) -> int | None:
    value = payload.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _kind(payload: Mapping[str, Any]) -> str | None:
    action = payload.get("action")
    if isinstance(action, Mapping):
        return _text(action, "kind")
    return None


# --- state ----------------------------------------------------------------------------


@dataclass(slots=True)
class _Request:
    """What is remembered about one request created in the window."""

    id: str
    requester: str
    created_at: datetime
    rules: tuple[str, ...]
    #: stage index -> (stage name, started at)
    stages: dict[int, tuple[str, datetime]] = field(default_factory=dict)
    outcome: str | None = None
    break_glass: bool = False

    @property
    def rule_keys(self) -> tuple[str, ...]:
        return self.rules or (NO_RULE,)

    def stage_start(self, index: int | None) -> datetime | None:
        if index is not None and index in self.stages:
            return self.stages[index][1]
        return self.created_at if index in (None, 0) else None


@dataclass(slots=True)
class _User:
    """A requester's baseline: fixed size but for the kinds and rules they used."""

    requests: int = 0
    first_at: datetime | None = None
    hours: list[int] = field(default_factory=lambda: [0] * 24)
    #: Distinct clock hours (UTC, truncated) with at least one request.
    active_hours: int = 0
    last_hour: datetime | None = None
    kinds: set[str] = field(default_factory=set)
    rules: set[str] = field(default_factory=set)
    #: Creation times and ids of the requests in the trailing burst window.
    recent: deque[tuple[datetime, str]] = field(default_factory=deque)
    #: The open burst anomaly, if the last request was part of one.
    burst: _Open | None = None
    denials: deque[tuple[datetime, str]] = field(default_factory=deque)
    denial_run: _Open | None = None


@dataclass(slots=True)
class _Open:
    """An anomaly that grows while its condition holds (a burst, a run of denials)."""

    at: datetime
    ids: list[str]
    peak: int
    evidence: dict[str, Any]


@dataclass(slots=True)
class _Approver:
    approvals: int = 0
    fast: list[tuple[datetime, str, float]] = field(default_factory=list)
    fastest: float | None = None


def _sorted_timings(durations: Mapping[str, list[float]]) -> tuple[Timing, ...]:
    """Slowest median first, then by key."""
    timings = [Timing(key, Durations.of(values)) for key, values in durations.items() if values]
    return tuple(sorted(timings, key=lambda t: (-t.durations.median, t.key)))


def _counts(counts: Mapping[str, list[str]]) -> tuple[Count, ...]:
    items = [Count(key, len(ids), tuple(sorted(ids))) for key, ids in counts.items()]
    return tuple(sorted(items, key=lambda c: (-c.count, c.key)))


def _seconds(delta: timedelta) -> float:
    return delta.total_seconds()


def _fmt(seconds: float) -> str:
    """A short human duration for messages: ``45s``, ``12m``, ``3h05m``, ``2d04h``."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m" + (f"{s % 60:02d}s" if s % 60 else "")
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


class Analyzer:
    """The streaming form of :func:`analyze`: :meth:`feed` events oldest first,
    then :meth:`report`. For adapters that read the trail a page at a time."""

    def __init__(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        thresholds: Thresholds | None = None,
    ) -> None:
        self.since = None if since is None else _aware(since)
        self.until = None if until is None else _aware(until)
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise ValueError("since must be before until")
        self.t = thresholds or Thresholds()
        self._events = 0
        self._requests: dict[str, _Request] = {}
        self._users: dict[str, _User] = {}
        self._approvers: dict[str, _Approver] = {}
        self._by_hour = [0] * 24
        self._decision: dict[str, list[float]] = {}
        self._stage: dict[str, list[float]] = {}
        self._group: dict[str, list[float]] = {}
        self._approver: dict[str, list[float]] = {}
        self._expired: dict[str, list[str]] = {}
        self._esc_stage: dict[str, list[str]] = {}
        self._esc_rule: dict[str, list[str]] = {}
        self._esc_ids: list[str] = []
        self._failed: list[FailedExecution] = []
        self._anomalies: list[Anomaly] = []

    # --- feeding -------------------------------------------------------------------

    def feed(self, raw: EventLike | Mapping[str, Any]) -> None:
        event = _event(raw)
        if event is None:
            return
        if self.until is not None and event.at >= self.until:
            return
        in_window = self.since is None or event.at >= self.since
        if event.type == "request.created":
            self._created(event, in_window)
            return
        if not in_window:
            return
        self._events += 1
        handler = _HANDLERS.get(event.type)
        if handler is not None:
            handler(self, event)

    def feed_all(self, events: Iterable[EventLike | Mapping[str, Any]]) -> None:
        for event in events:
            self.feed(event)

    def _created(self, event: _Event, in_window: bool) -> None:
        payload = event.payload
        requester = _text(payload, "requester") or event.actor
        if event.request_id is None or requester is None:
            if in_window:
                self._events += 1
            return
        user = self._users.setdefault(requester, _User())
        rules = _texts(payload, "rules")
        kind = _kind(payload)
        if in_window:
            self._events += 1
            if event.request_id not in self._requests:
                self._requests[event.request_id] = _Request(
                    event.request_id, requester, event.at, rules
                )
                self._by_hour[event.at.astimezone(UTC).hour] += 1
                self._judge_request(requester, user, event, kind, rules)
        self._learn(user, event, kind, rules)

    # --- anomaly rules on a new request ------------------------------------------------

    def _judge_request(
        self, requester: str, user: _User, event: _Event, kind: str | None, rules: tuple[str, ...]
    ) -> None:
        t, at, rid = self.t, event.at, event.request_id
        assert rid is not None
        hour = at.astimezone(UTC).hour
        # Off hours: the band around the hour holds too small a share of the history.
        if user.requests >= t.min_history:
            band = [(hour + d) % 24 for d in range(-t.off_hours_band, t.off_hours_band + 1)]
            in_band = sum(user.hours[h] for h in set(band))
            share = in_band / user.requests
            if share < t.off_hours_max_share:
                self._anomalies.append(
                    Anomaly(
                        "off_hours",
                        requester,
                        (rid,),
                        at,
                        {
                            "hour_utc": hour,
                            "band_hours_utc": sorted(set(band)),
                            "prior_requests": user.requests,
                            "prior_in_band": in_band,
                            "share_in_band": round(share, 4),
                            "max_share": t.off_hours_max_share,
                            "message": f"{requester} requested at {hour:02d}:xx UTC; "
                            f"{in_band} of their {user.requests} earlier requests "
                            f"({share:.1%}) were within ±{t.off_hours_band}h of that hour",
                        },
                    )
                )
        # Burst: the trailing window holds many more requests than usual.
        recent = user.recent
        while recent and at - recent[0][0] >= t.burst_window:
            recent.popleft()
        recent.append((at, rid))
        count = len(recent)
        rate = user.requests / user.active_hours if user.active_hours else 0.0
        bursting = (
            user.requests >= t.min_history
            and count >= t.burst_min_count
            and count >= t.burst_factor * rate
        )
        if bursting and user.burst is not None:
            user.burst.ids.append(rid)
            user.burst.peak = max(user.burst.peak, count)
        elif bursting:
            user.burst = _Open(
                at=recent[0][0],
                ids=[r for _, r in recent],
                peak=count,
                evidence={
                    "window_seconds": _seconds(t.burst_window),
                    "baseline_per_active_hour": round(rate, 3),
                    "prior_requests": user.requests,
                    "min_count": t.burst_min_count,
                    "factor": t.burst_factor,
                },
            )
        elif user.burst is not None:
            self._anomalies.append(_burst_anomaly(requester, user.burst))
            user.burst = None
        # First-ever kind or rule, once the requester has a history.
        age = at - user.first_at if user.first_at is not None else timedelta(0)
        if user.requests >= t.first_kind_min_history and age >= t.first_kind_min_age:
            new_kinds = [kind] if kind is not None and kind not in user.kinds else []
            new_rules = sorted(r for r in set(rules) if r not in user.rules)
            if new_kinds or new_rules:
                what = ", ".join(
                    [f"kind {k!r}" for k in new_kinds] + [f"rule {r!r}" for r in new_rules]
                )
                self._anomalies.append(
                    Anomaly(
                        "first_kind",
                        requester,
                        (rid,),
                        at,
                        {
                            "new_kinds": new_kinds,
                            "new_rules": new_rules,
                            "prior_requests": user.requests,
                            "history_days": round(_seconds(age) / 86400, 1),
                            "message": f"first time {requester} triggered {what} "
                            f"after {user.requests} earlier requests",
                        },
                    )
                )

    def _learn(self, user: _User, event: _Event, kind: str | None, rules: tuple[str, ...]) -> None:
        at = event.at.astimezone(UTC)
        user.requests += 1
        if user.first_at is None or at < user.first_at:
            user.first_at = at
        user.hours[at.hour] += 1
        bucket = at.replace(minute=0, second=0, microsecond=0)
        if bucket != user.last_hour:
            user.active_hours += 1
            user.last_hour = bucket
        if kind is not None:
            user.kinds.add(kind)
        user.rules.update(rules)

    # --- request lifecycle ---------------------------------------------------------

    def _req(self, event: _Event) -> _Request | None:
        return None if event.request_id is None else self._requests.get(event.request_id)

    def _stage_started(self, event: _Event) -> None:
        req = self._req(event)
        index = _int(event.payload, "stage_index")
        if req is not None and index is not None:
            req.stages[index] = (_text(event.payload, "stage") or f"stage {index}", event.at)

    def _stage_completed(self, event: _Event) -> None:
        req = self._req(event)
        index = _int(event.payload, "stage_index")
        start = None if req is None else req.stage_start(index)
        if req is None or start is None:
            return
        name = _text(event.payload, "stage") or (
            req.stages[index][0] if index in req.stages else f"stage {index}"
        )
        self._stage.setdefault(name, []).append(_seconds(event.at - start))

    def _approval(self, event: _Event) -> None:
        req = self._req(event)
        approver = _text(event.payload, "approver") or event.actor
        start = None if req is None else req.stage_start(_int(event.payload, "stage_index"))
        if req is None or approver is None or start is None:
            return
        seconds = _seconds(event.at - start)
        self._approver.setdefault(approver, []).append(seconds)
        for group in dict.fromkeys(_texts(event.payload, "groups")):
            self._group.setdefault(group, []).append(seconds)
        stats = self._approvers.setdefault(approver, _Approver())
        stats.approvals += 1
        if seconds < _seconds(self.t.rubber_stamp_fast):
            stats.fast.append((event.at, req.id, seconds))
        if stats.fastest is None or seconds < stats.fastest:
            stats.fastest = seconds

    def _final(self, event: _Event) -> None:
        req = self._req(event)
        if event.type == "request.expired":
            reason = _text(event.payload, "reason") or "unknown"
            if req is not None:
                self._expired.setdefault(reason, []).append(req.id)
        if req is None or req.outcome is not None:
            return
        req.outcome = _FINAL_TYPES[event.type]
        glass = event.type == "request.approved" and event.payload.get("break_glass") is True
        req.break_glass = req.break_glass or glass
        if event.type in ("request.approved", "request.denied") and not req.break_glass:
            seconds = _seconds(event.at - req.created_at)
            for rule in req.rule_keys:
                self._decision.setdefault(rule, []).append(seconds)
        if event.type == "request.denied":
            by = _text(event.payload, "by") or event.actor
            start = req.stage_start(_int(event.payload, "stage_index"))
            if by is not None and start is not None:
                self._approver.setdefault(by, []).append(_seconds(event.at - start))
            self._denied(req, event)

    def _denied(self, req: _Request, event: _Event) -> None:
        t = self.t
        user = self._users.setdefault(req.requester, _User())
        denials = user.denials
        while denials and event.at - denials[0][0] >= t.denial_window:
            denials.popleft()
        denials.append((event.at, req.id))
        if len(denials) >= t.denial_min_count:
            if user.denial_run is None:
                user.denial_run = _Open(
                    at=denials[0][0], ids=[r for _, r in denials], peak=len(denials), evidence={}
                )
            else:
                user.denial_run.ids.append(req.id)
                user.denial_run.peak = max(user.denial_run.peak, len(denials))
        elif user.denial_run is not None:
            self._anomalies.append(_denials_anomaly(req.requester, user.denial_run, t))
            user.denial_run = None

    def _escalated(self, event: _Event) -> None:
        req = self._req(event)
        if req is None:
            return
        stage = _text(event.payload, "stage") or f"stage {_int(event.payload, 'stage_index')}"
        self._esc_ids.append(req.id)
        self._esc_stage.setdefault(stage, []).append(req.id)
        for rule in req.rule_keys:
            self._esc_rule.setdefault(rule, []).append(req.id)

    def _execution_finished(self, event: _Event) -> None:
        if event.payload.get("succeeded") is not False or event.request_id is None:
            return
        req = self._req(event)
        self._failed.append(
            FailedExecution(
                request_id=event.request_id,
                at=event.at,
                requester=None if req is None else req.requester,
                rules=() if req is None else req.rules,
                exit_code=_int(event.payload, "exit_code"),
                error=_text(event.payload, "error"),
            )
        )

    def _break_glass(self, event: _Event) -> None:
        req = self._req(event)
        by = _text(event.payload, "by") or event.actor or (None if req is None else req.requester)
        if event.request_id is None or by is None:
            return
        if req is not None:
            req.break_glass = True
        justification = _text(event.payload, "justification") or ""
        self._anomalies.append(
            Anomaly(
                "break_glass",
                by,
                (event.request_id,),
                event.at,
                {
                    "justification": justification,
                    "rules": [] if req is None else list(req.rules),
                    "message": f"{by} broke the glass: {justification}",
                },
            )
        )

    # --- the report ----------------------------------------------------------------

    def _rubber_stamps(self) -> list[Anomaly]:
        t = self.t
        found = []
        instant = _seconds(t.rubber_stamp_instant)
        for approver, stats in self._approvers.items():
            fast = sorted(stats.fast)
            share = len(fast) / stats.approvals if stats.approvals else 0.0
            pattern = len(fast) >= t.rubber_stamp_min_count and share >= t.rubber_stamp_min_share
            instants = [f for f in fast if f[2] < instant]
            if not (pattern or instants):
                continue
            flagged = fast if pattern else instants
            median = Durations.of([f[2] for f in fast]).median
            reason = (
                f"{len(fast)} of {approver}'s {stats.approvals} approvals ({share:.0%}) came "
                f"within {_fmt(_seconds(t.rubber_stamp_fast))} of the stage starting "
                f"(median {median:.0f}s)"
                if pattern
                else f"{approver} approved {len(instants)} time(s) within "
                f"{instant:g}s of the stage starting (fastest {fast[0][2]:.1f}s)"
            )
            found.append(
                Anomaly(
                    "rubber_stamp",
                    approver,
                    tuple(f[1] for f in flagged),
                    flagged[0][0],
                    {
                        "approvals": stats.approvals,
                        "fast_approvals": len(fast),
                        "fast_share": round(share, 4),
                        "instant_approvals": len(instants),
                        "fastest_seconds": fast[0][2],
                        "fast_seconds": _seconds(t.rubber_stamp_fast),
                        "instant_seconds": instant,
                        "pattern": pattern,
                        "message": reason,
                    },
                )
            )
        return found

    def report(self, *, now: datetime | None = None) -> Report:
        """The report over what was fed so far (feeding may continue after)."""
        anomalies = list(self._anomalies)
        for name, user in self._users.items():
            if user.burst is not None:
                anomalies.append(_burst_anomaly(name, user.burst))
            if user.denial_run is not None:
                anomalies.append(_denials_anomaly(name, user.denial_run, self.t))
        anomalies += self._rubber_stamps()
        order = {kind: i for i, kind in enumerate(ANOMALY_KINDS)}
        anomalies.sort(key=lambda a: (a.at, order.get(a.kind, 99), a.subject, a.request_ids))

        by_rule: dict[str, list[_Request]] = {}
        by_requester: dict[str, list[_Request]] = {}
        for req in self._requests.values():
            for rule in req.rule_keys:
                by_rule.setdefault(rule, []).append(req)
            by_requester.setdefault(req.requester, []).append(req)
        everything = _outcome("all", list(self._requests.values()))
        return Report(
            since=self.since,
            until=self.until,
            generated_at=now,
            summary=Summary(
                events=self._events,
                requests=everything.created,
                approved=everything.approved,
                denied=everything.denied,
                expired=everything.expired,
                cancelled=everything.cancelled,
                pending=everything.pending,
                break_glass=everything.break_glass,
                requests_by_hour=tuple(self._by_hour),
            ),
            bottlenecks=Bottlenecks(
                decision_by_rule=_sorted_timings(self._decision),
                stage_by_name=_sorted_timings(self._stage),
                response_by_group=_sorted_timings(self._group),
                response_by_approver=_sorted_timings(self._approver),
                expired_by_reason=_counts(self._expired),
                escalations=Escalations(
                    count=len(self._esc_ids),
                    by_stage=_counts(self._esc_stage),
                    by_rule=_counts(self._esc_rule),
                    request_ids=tuple(sorted(set(self._esc_ids))),
                ),
            ),
            outcomes=Outcomes(
                by_rule=_sorted_outcomes(by_rule),
                by_requester=_sorted_outcomes(by_requester),
                failed_executions=tuple(sorted(self._failed, key=lambda f: (f.at, f.request_id))),
            ),
            anomalies=tuple(anomalies),
            thresholds=self.t,
        )


def _burst_anomaly(requester: str, burst: _Open) -> Anomaly:
    evidence = {
        **burst.evidence,
        "requests": len(burst.ids),
        "peak_in_window": burst.peak,
        "message": f"{requester} made {burst.peak} requests within "
        f"{_fmt(burst.evidence['window_seconds'])} (usually "
        f"{burst.evidence['baseline_per_active_hour']} per active hour); "
        f"{len(burst.ids)} requests in the burst",
    }
    return Anomaly("burst", requester, tuple(burst.ids), burst.at, evidence)


def _denials_anomaly(requester: str, run: _Open, t: Thresholds) -> Anomaly:
    return Anomaly(
        "repeated_denials",
        requester,
        tuple(run.ids),
        run.at,
        {
            "denials": len(run.ids),
            "peak_in_window": run.peak,
            "window_seconds": _seconds(t.denial_window),
            "min_count": t.denial_min_count,
            "message": f"{run.peak} of {requester}'s requests were denied within "
            f"{_fmt(_seconds(t.denial_window))} ({len(run.ids)} denials in the run)",
        },
    )


def _outcome(key: str, requests: list[_Request]) -> OutcomeCounts:
    def n(outcome: str | None) -> int:
        return sum(1 for r in requests if r.outcome == outcome)

    return OutcomeCounts(
        key=key,
        created=len(requests),
        approved=n("approved"),
        denied=n("denied"),
        expired=n("expired"),
        cancelled=n("cancelled"),
        pending=n(None),
        break_glass=sum(1 for r in requests if r.break_glass),
    )


def _sorted_outcomes(groups: Mapping[str, list[_Request]]) -> tuple[OutcomeCounts, ...]:
    items = [_outcome(key, reqs) for key, reqs in groups.items()]
    return tuple(sorted(items, key=lambda o: (-o.created, o.key)))


_HANDLERS: Final[Mapping[str, Callable[[Analyzer, _Event], None]]] = {
    "stage.started": Analyzer._stage_started,
    "stage.completed": Analyzer._stage_completed,
    "approval.given": Analyzer._approval,
    "stage.escalated": Analyzer._escalated,
    "request.approved": Analyzer._final,
    "request.denied": Analyzer._final,
    "request.cancelled": Analyzer._final,
    "request.expired": Analyzer._final,
    "execution.finished": Analyzer._execution_finished,
    "break_glass.used": Analyzer._break_glass,
}


def analyze(
    events: Iterable[EventLike | Mapping[str, Any]],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    now: datetime | None = None,
    thresholds: Thresholds | None = None,
) -> Report:
    """The analytics report over ``events`` (oldest first), for ``[since, until)``.

    ``events`` are :class:`jitgate.store.EventRow` s or mappings with the same
    keys (``at`` a datetime or an ISO 8601 string). ``now`` is only recorded
    as the report's ``generated_at``: the analysis reads no clock.
    """
    analyzer = Analyzer(since=since, until=until, thresholds=thresholds)
    analyzer.feed_all(events)
    return analyzer.report(now=now)


# --- time bounds from the command line / query string ---------------------------------

_RELATIVE_RE: Final = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$", re.IGNORECASE)
_UNITS: Final[Mapping[str, timedelta]] = {
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "w": timedelta(weeks=1),
}


def parse_bound(text: str, now: datetime) -> datetime:
    """A window bound: ``7d``/``24h``/``30m``/``2w``/``90s`` before ``now``, an ISO date
    (midnight UTC) or an ISO datetime (UTC unless it has an offset).

    Raises :class:`ValueError` with a one-line message.
    """
    match = _RELATIVE_RE.match(text)
    if match:
        amount = int(match.group(1))
        if amount > 100_000:
            raise ValueError(f"{text.strip()!r} is too far back")
        return _aware(now) - amount * _UNITS[match.group(2).lower()]
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"invalid time {text!r}: expected e.g. 7d, 24h, 2026-03-01 or 2026-03-01T09:00:00Z"
        ) from None
    return _aware(parsed)
