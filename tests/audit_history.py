"""A deterministic, generated audit trail with known bottlenecks and planted anomalies.

Four weeks of working days (from Monday 2026-03-02, UTC). Ten requesters with
regular hours (eight hours from their start hour), each making one or two
requests a working day at hours that cycle through their working window, with
rules they use from their first days on. Approvers have fixed response times
per approver (cycled), so every duration the analytics report is planted and
recorded in :class:`Truth`.

Planted anomalies (all in week 4 but the break-glass in week 3):

* ``off_hours``: u02 asks at 03:10 on Wednesday of week 4;
* ``burst``: u05 makes 12 requests in 44 minutes on Thursday of week 4;
* ``first_kind``: u04's first ``prod-secrets`` (kind ``http``) request;
* ``repeated_denials``: three of u07's requests denied on Tuesday of week 4;
* ``break_glass``: u03 breaks the glass on Friday of week 3;
* ``rubber_stamp``: rex approves within 12-20 s of the stage starting.

u11 joins on Monday of week 4 and uses four rules in a few days: too new to be
judged, so nothing about u11 may be flagged.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

T0 = datetime(2026, 3, 2, tzinfo=UTC)  # a Monday
WEEKS = 4
MIN = timedelta(minutes=1)
H = timedelta(hours=1)

#: rule -> (action kind, stages as (name, groups))
RULES: dict[str, tuple[str, tuple[tuple[str, tuple[str, ...]], ...]]] = {
    "prod-sql-write": ("sql", (("dba", ("dba",)),)),
    "prod-shell": ("shell", (("sre", ("sre",)),)),
    "prod-deploy": ("deploy", (("lead", ("leads",)), ("sre", ("sre",)))),
    "prod-secrets": ("http", (("security", ("security",)),)),
}

#: group -> approvers taking turns, each with response times (seconds) taken in turn.
APPROVERS: dict[str, tuple[tuple[str, tuple[int, ...]], ...]] = {
    "dba": (("dana", (300, 600, 900)), ("dmitri", (4 * 3600, 5 * 3600, 6 * 3600))),
    "sre": (("sam", (600,)), ("sue", (1200, 1800))),
    "leads": (("lee", (3600, 5400, 7200)),),
    "security": (("sol", (900,)),),
}
RUBBER_STAMPER = ("rex", (12, 15, 20))
ESCALATION = ("dora", "directors", 4 * 3600 + 1800)  # approves 4h30m after the stage started

#: user -> (start hour UTC, rules used in turn)
USERS: dict[str, tuple[int, tuple[str, ...]]] = {
    "u01": (7, ("prod-sql-write", "prod-shell")),
    "u02": (8, ("prod-sql-write", "prod-shell")),
    "u03": (9, ("prod-sql-write", "prod-shell")),
    "u04": (10, ("prod-sql-write", "prod-shell")),
    "u05": (9, ("prod-deploy", "prod-shell")),
    "u06": (8, ("prod-deploy", "prod-shell")),
    "u07": (9, ("prod-deploy", "prod-shell")),
    "u08": (10, ("prod-deploy", "prod-shell")),
    "u09": (7, ("prod-sql-write", "prod-deploy")),
    "u10": (8, ("prod-sql-write", "prod-deploy")),
}
NEW_USER = ("u11", 8, ("prod-sql-write", "prod-shell", "prod-deploy", "prod-secrets"))

WEEK4 = T0 + timedelta(weeks=3)
OFF_HOURS_AT = WEEK4 + timedelta(days=2, hours=3, minutes=10)
BURST_AT = WEEK4 + timedelta(days=3, hours=11)
FIRST_KIND_AT = WEEK4 + timedelta(days=3, hours=13)
DENIALS_DAY = WEEK4 + timedelta(days=1)
BREAK_GLASS_AT = T0 + timedelta(weeks=2, days=4, hours=14)
#: (user, day) pairs without regular requests: the planted ones stand alone.
QUIET_DAYS = {("u05", BURST_AT.date()), ("u07", DENIALS_DAY.date())}


@dataclass
class Truth:
    """What the generator planted, for the tests to compare with."""

    decision_by_rule: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    stage_by_name: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    response_by_approver: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    response_by_group: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    expired: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    escalated: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    outcome: dict[str, str] = field(default_factory=dict)
    requester: dict[str, str] = field(default_factory=dict)
    rules: dict[str, tuple[str, ...]] = field(default_factory=dict)
    created: dict[str, datetime] = field(default_factory=dict)
    #: kind -> {subject: request ids}
    anomalies: dict[str, dict[str, list[str]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list))
    )


class History:
    def __init__(self) -> None:
        self.events: list[tuple[datetime, int, dict[str, Any]]] = []
        self.truth = Truth()
        self._order = 0
        self._ids = 0
        self._turn: dict[str, int] = defaultdict(int)
        self._shell_approvals = 0

    # --- plumbing ---------------------------------------------------------------------

    def emit(
        self, type: str, at: datetime, request_id: str | None, actor: str | None, **payload: Any
    ) -> None:
        self._order += 1
        event = {
            "type": type,
            "at": at,
            "actor": actor,
            "request_id": request_id,
            "target": "db1",
            "environment": "production",
            "payload": {"request_id": request_id, "at": at.isoformat(), **payload},
        }
        self.events.append((at, self._order, event))

    def rows(self) -> list[dict[str, Any]]:
        """The trail as the store returns it: by time of append, with seq and id."""
        out = []
        for seq, (_, _, event) in enumerate(sorted(self.events, key=lambda e: e[:2]), start=1):
            out.append({"seq": seq, "id": f"ev{seq:06d}", **event})
        return out

    def _approver(self, group: str) -> tuple[str, int]:
        members = APPROVERS[group]
        turn = self._turn[group]
        self._turn[group] += 1
        name, times = members[turn % len(members)]
        own = self._turn[name]
        self._turn[name] += 1
        return name, times[own % len(times)]

    # --- one request ------------------------------------------------------------------

    def request(
        self, user: str, at: datetime, rule: str, plan: str = "approve", *, fail: bool = False
    ) -> str:
        self._ids += 1
        rid = f"req_{self._ids:04d}"
        kind, stages = RULES[rule]
        t = self.truth
        t.requester[rid], t.rules[rid], t.created[rid] = user, (rule,), at
        self.emit(
            "request.created",
            at,
            rid,
            user,
            requester=user,
            fingerprint=f"fp{self._ids}",
            target="db1",
            environment="production",
            rules=[rule],
            reasons=[f"{rule} matched"],
            risk="high",
            expires_at=(at + 8 * H).isoformat(),
            submitted_by=user,
            action={
                "kind": kind,
                "text": "do something",
                "payload": {},
                "target": "db1",
                "environment": "production",
                "actor": {"user": user, "groups": ["eng"]},
                "at": at.isoformat(),
                "attributes": {},
            },
        )
        self.emit(
            "stage.started",
            at,
            rid,
            user,
            stage_index=0,
            stage=stages[0][0],
            notify_groups=list(stages[0][1]),
        )
        if plan == "deny":
            name, latency = self._approver(stages[0][1][0])
            end = at + timedelta(seconds=latency)
            self.emit("request.denied", end, rid, name, by=name, reason="no", stage_index=0)
            t.decision_by_rule[rule].append(latency)
            t.response_by_approver[name].append(latency)
            t.outcome[rid] = "denied"
            return rid
        if plan == "cancel":
            self.emit("request.cancelled", at + MIN, rid, user, by=user, reason="", as_admin=False)
            t.outcome[rid] = "cancelled"
            return rid
        if plan == "expire":
            self.emit("request.expired", at + 8 * H, rid, None, reason="ttl")
            t.expired["ttl"].append(rid)
            t.outcome[rid] = "expired"
            return rid
        if plan == "break_glass":
            now = at + 2 * MIN
            self.emit(
                "break_glass.used",
                now,
                rid,
                user,
                by=user,
                justification="site down, <fix> cannot wait",
                notify_groups=["sre"],
            )
            self.emit("request.approved", now, rid, user, break_glass=True)
            self.emit("grant.issued", now, rid, user, scope="action")
            self._execute(rid, user, now, fail=False)
            t.outcome[rid] = "approved"
            t.anomalies["break_glass"][user].append(rid)
            return rid

        now = at
        for index, (stage, groups) in enumerate(stages):
            if index > 0:
                self.emit(
                    "stage.started",
                    now,
                    rid,
                    None,
                    stage_index=index,
                    stage=stage,
                    notify_groups=list(groups),
                )
            started = now
            if index == 0 and plan in ("escalate", "escalate_expire"):
                deadline = started + 4 * H
                self.emit(
                    "stage.timed_out",
                    deadline,
                    rid,
                    None,
                    stage_index=0,
                    stage=stage,
                    escalated=True,
                )
                self.emit(
                    "stage.escalated",
                    deadline,
                    rid,
                    None,
                    stage_index=0,
                    stage=stage,
                    notify_groups=["directors"],
                    deadline=(started + 8 * H).isoformat(),
                )
                t.escalated.append(rid)
                if plan == "escalate_expire":
                    end = started + 8 * H
                    self.emit(
                        "stage.timed_out",
                        end,
                        rid,
                        None,
                        stage_index=0,
                        stage=stage,
                        escalated=False,
                    )
                    self.emit("request.expired", end, rid, None, reason="stage_timeout")
                    t.expired["stage_timeout"].append(rid)
                    t.outcome[rid] = "expired"
                    return rid
                name, group, latency = ESCALATION
            elif groups == ("sre",) and rule == "prod-shell" and self._rubber_stamp_turn():
                name, times = RUBBER_STAMPER
                latency = times[self._turn[name] % len(times)]
                self._turn[name] += 1
                group = "sre"
                t.anomalies["rubber_stamp"][name].append(rid)
            else:
                group = groups[0]
                name, latency = self._approver(group)
            now = started + timedelta(seconds=latency)
            self.emit(
                "approval.given",
                now,
                rid,
                name,
                stage_index=index,
                stage=stage,
                approver=name,
                groups=[group],
                mfa_verified=False,
                comment="",
            )
            self.emit(
                "stage.completed", now, rid, name, stage_index=index, stage=stage, approvers=[name]
            )
            t.response_by_approver[name].append(latency)
            t.response_by_group[group].append(latency)
            t.stage_by_name[stage].append(latency)
        self.emit("request.approved", now, rid, None, break_glass=False)
        self.emit("grant.issued", now, rid, None, scope="action")
        t.decision_by_rule[rule].append((now - at).total_seconds())
        t.outcome[rid] = "approved"
        if plan == "grant_expire":
            self.emit("grant.expired", now + H, rid, None)
            self.emit("request.expired", now + H, rid, None, reason="grant_expired")
            t.expired["grant_expired"].append(rid)
        else:
            self._execute(rid, user, now, fail=fail)
        return rid

    def _rubber_stamp_turn(self) -> bool:
        self._shell_approvals += 1
        return self._shell_approvals % 5 == 2

    def _execute(self, rid: str, user: str, approved: datetime, *, fail: bool) -> None:
        self.emit("grant.consumed", approved + MIN, rid, user, by=user, fingerprint="fp")
        self.emit("execution.started", approved + MIN, rid, user, by=user, fingerprint="fp")
        self.emit(
            "execution.finished",
            approved + 2 * MIN,
            rid,
            user,
            by=user,
            succeeded=not fail,
            exit_code=1 if fail else 0,
            rows_affected=None,
            error="permission denied" if fail else None,
            duration_ms=1000,
            grant_id="g",
        )
        if fail:
            self.truth.failed.append(rid)


def _regular_plan(counter: int, rule: str) -> str:
    if counter % 9 == 4:
        return "deny"
    if counter % 11 == 7:
        return "expire"
    if counter % 13 == 12:
        return "cancel"
    if rule == "prod-deploy" and counter % 10 == 6:
        return "escalate"
    return "approve"


#: (user, regular request counter) -> plan overriding the regular one.
SPECIAL_PLANS = {("u06", 16): "escalate_expire", ("u09", 3): "grant_expire"}
FAILURES = {("u08", 5), ("u01", 20)}


def generate() -> History:
    h = History()
    days = [T0 + timedelta(days=d) for d in range(WEEKS * 7) if d % 7 < 5]
    counters: dict[str, int] = defaultdict(int)
    plans: list[tuple[datetime, str, str, str, bool]] = []
    for day_no, day in enumerate(days):
        for user_no, (user, (start, rules)) in enumerate(USERS.items()):
            if (user, day.date()) in QUIET_DAYS:
                continue
            for _ in range(1 + (day_no + user_no) % 2):
                i = counters[user]
                counters[user] += 1
                at = day + timedelta(hours=start + (i * 3) % 8, minutes=(i * 17) % 60)
                rule = rules[i % len(rules)]
                plan = SPECIAL_PLANS.get((user, i)) or _regular_plan(i, rule)
                plans.append((at, user, rule, plan, (user, i) in FAILURES))
        if day >= WEEK4:
            user, start, rules = NEW_USER
            for k in range(2):
                i = counters[user]
                counters[user] += 1
                at = day + timedelta(hours=start + 2 + 3 * k, minutes=5)
                plans.append((at, user, rules[i % len(rules)], "approve", False))
    # The planted ones.
    plans.append((OFF_HOURS_AT, "u02", "prod-shell", "approve", False))
    plans.extend(
        (BURST_AT + timedelta(minutes=4 * k), "u05", "prod-shell", "cancel", False)
        for k in range(12)
    )
    plans.append((FIRST_KIND_AT, "u04", "prod-secrets", "approve", False))
    plans.extend(
        (DENIALS_DAY + timedelta(hours=hour, minutes=20), "u07", "prod-shell", "deny", False)
        for hour in (10, 12, 14)
    )
    plans.append((BREAK_GLASS_AT, "u03", "prod-shell", "break_glass", False))
    # Requests are made in time order (the rubber-stamper's turns depend on it).
    for at, user, rule, plan, fail in sorted(plans):
        rid = h.request(user, at, rule, plan, fail=fail)
        a = h.truth.anomalies
        if at == OFF_HOURS_AT:
            a["off_hours"][user].append(rid)
        elif user == "u05" and BURST_AT <= at < BURST_AT + H:
            a["burst"][user].append(rid)
        elif at == FIRST_KIND_AT:
            a["first_kind"][user].append(rid)
        elif user == "u07" and at.date() == DENIALS_DAY.date():
            a["repeated_denials"][user].append(rid)
    return h
