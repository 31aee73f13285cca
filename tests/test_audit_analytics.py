"""Approval analytics: bottlenecks, outcomes and anomalies over a generated history.

The history (tests/audit_history.py) plants every duration and six anomalies;
the analytics must find exactly those, with the planted numbers.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import statistics
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Annotated, Any

import pytest
import typer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from audit_history import (
    BREAK_GLASS_AT,
    T0,
    WEEK4,
    History,
    generate,
)
from conftest import ApiEnv
from jitgate.audit.analytics import (
    Analyzer,
    Durations,
    Report,
    Thresholds,
    analyze,
    parse_bound,
    percentile,
)
from jitgate.audit.report import fmt_duration, fmt_rate, render
from jitgate.cli.audit_report import report_command
from jitgate.store import Database, append_event

HISTORY = generate()
ROWS = HISTORY.rows()
TRUTH = HISTORY.truth
REPORT = analyze(ROWS, now=T0 + timedelta(weeks=5))


def nearest_rank_p95(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[-(-95 * len(ordered) // 100) - 1]


def found(report: Report) -> dict[tuple[str, str], tuple[str, ...]]:
    return {(a.kind, a.subject): a.request_ids for a in report.anomalies}


def planted(since: datetime | None = None) -> dict[tuple[str, str], tuple[str, ...]]:
    out = {}
    for kind, subjects in TRUTH.anomalies.items():
        for subject, ids in subjects.items():
            kept = tuple(i for i in ids if since is None or TRUTH.created[i] >= since)
            if kept:
                out[kind, subject] = kept
    return out


def timings(section: Any) -> dict[str, Durations]:
    return {t.key: t.durations for t in section}


def expected(values: dict[str, list[float]]) -> dict[str, Durations]:
    return {k: Durations.of(v) for k, v in values.items() if v}


# --- anomalies ----------------------------------------------------------------------------


def test_every_planted_anomaly_is_found_and_nothing_else() -> None:
    assert found(REPORT) == planted()
    # Spelled out, so a generator change cannot silently empty the expectation.
    kinds = {kind for kind, _ in found(REPORT)}
    assert kinds == {
        "off_hours",
        "burst",
        "first_kind",
        "repeated_denials",
        "break_glass",
        "rubber_stamp",
    }
    subjects = dict(found(REPORT).keys())
    assert subjects == {
        "off_hours": "u02",
        "burst": "u05",
        "first_kind": "u04",
        "repeated_denials": "u07",
        "break_glass": "u03",
        "rubber_stamp": "rex",
    }
    assert len(found(REPORT)[("burst", "u05")]) == 12
    assert len(found(REPORT)[("repeated_denials", "u07")]) == 3


def test_anomaly_evidence_carries_the_numbers() -> None:
    by_kind = {a.kind: a for a in REPORT.anomalies}
    off = by_kind["off_hours"].evidence
    assert off["hour_utc"] == 3
    assert off["prior_in_band"] == 0
    assert off["prior_requests"] >= Thresholds().min_history
    burst = by_kind["burst"].evidence
    assert burst["peak_in_window"] == 12
    assert burst["peak_in_window"] >= burst["factor"] * burst["baseline_per_active_hour"]
    first = by_kind["first_kind"].evidence
    assert (first["new_kinds"], first["new_rules"]) == (["http"], ["prod-secrets"])
    stamp = by_kind["rubber_stamp"].evidence
    rex = TRUTH.anomalies["rubber_stamp"]["rex"]
    assert (stamp["approvals"], stamp["fast_approvals"], stamp["fastest_seconds"]) == (
        len(rex),
        len(rex),
        12.0,
    )
    assert by_kind["break_glass"].evidence["justification"] == "site down, <fix> cannot wait"
    for anomaly in REPORT.anomalies:
        assert anomaly.message, anomaly.kind
        assert anomaly.subject in anomaly.message


def test_a_window_judges_its_requests_against_the_history_before_it() -> None:
    """Events before ``since`` are baselines only: week 4's anomalies are still
    found (u02's hours were learned in weeks 1-3), week 3's break-glass is not
    in the window, and rex is judged on his approvals in the window only: four
    fast ones are below the pattern's minimum of five."""
    report = analyze(ROWS, since=WEEK4)
    expected = planted(since=WEEK4)
    rex = expected.pop(("rubber_stamp", "rex"))
    assert len(rex) == 4
    assert found(report) == expected
    assert ("break_glass", "u03") not in found(report)
    lower = analyze(ROWS, since=WEEK4, thresholds=Thresholds(rubber_stamp_min_count=4))
    assert found(lower) == planted(since=WEEK4)
    assert report.summary.requests == sum(1 for at in TRUTH.created.values() if at >= WEEK4)


def test_until_excludes_the_future() -> None:
    cut = BREAK_GLASS_AT + timedelta(minutes=5)
    report = analyze(ROWS, until=cut)
    rex = tuple(i for i in TRUTH.anomalies["rubber_stamp"]["rex"] if TRUTH.created[i] < cut)
    assert found(report) == {
        ("break_glass", "u03"): tuple(TRUTH.anomalies["break_glass"]["u03"]),
        ("rubber_stamp", "rex"): rex,
    }
    assert report.summary.requests == sum(1 for at in TRUTH.created.values() if at < cut)


def test_a_new_user_is_not_flagged_during_their_first_weeks() -> None:
    """u11 joined in week 4 and used four rules and kinds at once: no history, no news."""
    assert not [a for a in REPORT.anomalies if a.subject == "u11"]
    start = datetime(2026, 1, 5, 9, tzinfo=UTC)
    history = History()
    for i, rule in enumerate(["prod-sql-write", "prod-shell", "prod-deploy", "prod-secrets"] * 4):
        history.request("newbie", start + timedelta(days=i // 2, hours=i % 2 * 14), rule)
    assert analyze(history.rows()).anomalies == ()


def _user_with_history(n: int, *, hour: int = 10) -> History:
    history = History()
    for i in range(n):
        at = T0 + timedelta(days=i, hours=hour + i % 3)
        history.request("ann", at, "prod-shell" if i % 2 else "prod-sql-write", "cancel")
    return history


def test_off_hours_needs_a_baseline() -> None:
    small = _user_with_history(19)
    small.request("ann", T0 + timedelta(days=30, hours=2), "prod-shell", "cancel")
    assert analyze(small.rows()).anomalies == ()
    enough = _user_with_history(20)
    rid = enough.request("ann", T0 + timedelta(days=30, hours=2), "prod-shell", "cancel")
    assert found(analyze(enough.rows())) == {("off_hours", "ann"): (rid,)}


def test_the_band_around_usual_hours_is_not_off_hours() -> None:
    """Worked 10:00-12:59 so far: 09:xx and 13:xx are within one hour of it."""
    history = _user_with_history(30)
    history.request("ann", T0 + timedelta(days=40, hours=9), "prod-shell", "cancel")
    history.request("ann", T0 + timedelta(days=41, hours=13, minutes=50), "prod-shell", "cancel")
    assert analyze(history.rows()).anomalies == ()


def test_first_kind_waits_for_a_week_of_history() -> None:
    """Twenty requests in two days are history enough by count, not by age."""
    history = History()
    for i in range(25):
        history.request("ann", T0 + timedelta(hours=9 + i % 8, days=i // 8), "prod-shell", "cancel")
    history.request("ann", T0 + timedelta(days=3, hours=10), "prod-secrets", "cancel")
    assert found(analyze(history.rows())) == {}
    rid = history.request("ann", T0 + timedelta(days=8, hours=10), "prod-deploy", "cancel")
    assert found(analyze(history.rows())) == {("first_kind", "ann"): (rid,)}


def test_a_single_instant_approval_is_flagged_on_its_own() -> None:
    base = datetime(2026, 1, 5, 10, tzinfo=UTC)
    events = []
    for i, delay in enumerate([600, 900, 3, 1200]):
        at = base + timedelta(days=i)
        rid = f"req_{i}"
        events += [
            {
                "type": "request.created",
                "at": at,
                "request_id": rid,
                "actor": "ann",
                "payload": {"requester": "ann", "rules": ["r"]},
            },
            {
                "type": "approval.given",
                "at": at + timedelta(seconds=delay),
                "request_id": rid,
                "actor": "bob",
                "payload": {"approver": "bob", "stage_index": 0, "groups": ["g"]},
            },
        ]
    report = analyze(events)
    assert found(report) == {("rubber_stamp", "bob"): ("req_2",)}
    evidence = report.anomalies[0].evidence
    assert (evidence["pattern"], evidence["instant_approvals"]) == (False, 1)
    # Four fast approvals are not yet a pattern (5 needed), and none is instant.
    slow = [dict(e) for e in events]
    slow[5] = {**slow[5], "at": slow[4]["at"] + timedelta(seconds=20)}
    assert analyze(slow).anomalies == ()


def test_every_break_glass_is_an_anomaly() -> None:
    history = History()
    ids = [
        history.request("ann", T0 + timedelta(hours=10 + i), "prod-shell", "break_glass")
        for i in range(2)
    ]
    report = analyze(history.rows())
    assert [(a.kind, a.subject, a.request_ids) for a in report.anomalies] == [
        ("break_glass", "ann", (ids[0],)),
        ("break_glass", "ann", (ids[1],)),
    ]
    assert report.summary.break_glass == 2
    assert report.bottlenecks.decision_by_rule == ()  # self-approval is no decision time


def test_denials_spread_out_are_no_pattern() -> None:
    history = History()
    for day in range(6):
        history.request("ann", T0 + timedelta(days=day, hours=10), "prod-shell", "deny")
    assert analyze(history.rows()).anomalies == ()
    history.request("ann", T0 + timedelta(days=5, hours=15), "prod-shell", "deny")
    history.request("ann", T0 + timedelta(days=6, hours=9), "prod-shell", "deny")
    report = analyze(history.rows())
    assert [(a.kind, len(a.request_ids)) for a in report.anomalies] == [("repeated_denials", 3)]


# --- bottlenecks --------------------------------------------------------------------------


def test_bottleneck_numbers_are_the_planted_ones() -> None:
    b = REPORT.bottlenecks
    assert timings(b.decision_by_rule) == expected(TRUTH.decision_by_rule)
    assert timings(b.stage_by_name) == expected(TRUTH.stage_by_name)
    assert timings(b.response_by_group) == expected(TRUTH.response_by_group)
    assert timings(b.response_by_approver) == expected(TRUTH.response_by_approver)
    for key, values in TRUTH.response_by_approver.items():
        d = timings(b.response_by_approver)[key]
        assert d.median == statistics.median(values)
        assert d.p95 == nearest_rank_p95(values)


def test_the_slow_approver_and_the_slow_stage_stand_out() -> None:
    b = REPORT.bottlenecks
    # Slowest first: dmitri takes 4h, 5h, 6h in turn; dora only acts after an escalation.
    assert [t.key for t in b.response_by_approver[:3]] == ["dmitri", "dora", "lee"]
    dmitri = b.response_by_approver[0].durations
    assert (dmitri.median, dmitri.p95, dmitri.min, dmitri.max) == (
        5 * 3600,
        6 * 3600,
        4 * 3600,
        6 * 3600,
    )
    assert timings(b.response_by_approver)["sam"].median == 600
    assert timings(b.response_by_group)["directors"].median == 4 * 3600 + 1800
    assert timings(b.stage_by_name)["security"] == Durations(3, 900, 900, 900, 900)
    # The two-stage deploy waits longest for a decision.
    assert b.decision_by_rule[0].key == "prod-deploy"


def test_expiries_and_escalations() -> None:
    b = REPORT.bottlenecks
    assert {c.key: c.request_ids for c in b.expired_by_reason} == {
        reason: tuple(sorted(ids)) for reason, ids in TRUTH.expired.items()
    }
    assert set(TRUTH.expired) == {"ttl", "stage_timeout", "grant_expired"}
    esc = b.escalations
    assert esc.count == len(TRUTH.escalated) > 0
    assert esc.request_ids == tuple(sorted(TRUTH.escalated))
    assert [(c.key, c.count) for c in esc.by_stage] == [("lead", len(TRUTH.escalated))]
    assert [(c.key, c.count) for c in esc.by_rule] == [("prod-deploy", len(TRUTH.escalated))]


# --- outcomes -----------------------------------------------------------------------------


def test_outcomes_per_rule_and_requester() -> None:
    by_requester = {o.key: o for o in REPORT.outcomes.by_requester}
    for user in {*TRUTH.requester.values()}:
        mine = [r for r, u in TRUTH.requester.items() if u == user]
        o = by_requester[user]
        assert o.created == len(mine)
        for outcome in ("approved", "denied", "expired", "cancelled"):
            assert getattr(o, outcome) == sum(TRUTH.outcome[r] == outcome for r in mine)
        assert o.approval_rate == round(o.approved / o.settled, 4)
    by_rule = {o.key: o for o in REPORT.outcomes.by_rule}
    assert sum(o.created for o in by_rule.values()) == len(TRUTH.requester)
    assert by_rule["prod-secrets"].approved == 3
    s = REPORT.summary
    assert (s.requests, s.pending) == (len(TRUTH.requester), 0)
    assert s.approved + s.denied + s.expired + s.cancelled == s.requests
    # The grant that expired unused was approved first: it stays an approval.
    (lapsed,) = TRUTH.expired["grant_expired"]
    assert TRUTH.outcome[lapsed] == "approved"


def test_failed_executions_are_listed() -> None:
    failed = REPORT.outcomes.failed_executions
    assert [f.request_id for f in failed] == sorted(TRUTH.failed, key=TRUTH.created.__getitem__)
    assert {(f.requester, f.exit_code, f.error) for f in failed} == {
        ("u08", 1, "permission denied"),
        ("u01", 1, "permission denied"),
    }


def test_requests_by_hour() -> None:
    hours = REPORT.summary.requests_by_hour
    assert len(hours) == 24
    assert sum(hours) == len(TRUTH.requester)
    assert hours[3] == 1  # the off-hours request, alone at night
    assert sum(hours[18:]) + sum(hours[:3]) + sum(hours[4:7]) == 0


# --- properties ---------------------------------------------------------------------------


def _by_requester(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    streams: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        owner = TRUTH.requester.get(row["request_id"] or "", "-")
        streams.setdefault(owner, []).append(row)
    return streams


SLOW = settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))


@SLOW
@given(st.randoms(use_true_random=False))
def test_interleaving_other_requesters_events_changes_nothing(rnd: random.Random) -> None:
    """Each requester's events keep their order; how the streams interleave is irrelevant."""
    streams = [list(s) for s in _by_requester(ROWS).values()]
    merged = []
    while streams:
        stream = rnd.choice(streams)
        merged.append(stream.pop(0))
        if not stream:
            streams.remove(stream)
    assert analyze(merged, now=T0 + timedelta(weeks=5)).to_dict() == REPORT.to_dict()


NOISE_TYPES = [
    "action.evaluated",
    "action.denied",
    "auth.failed",
    "request.refused",
    "grant.consumed",
    "review.recorded",
    "user.created",
    "something.new",
]


@SLOW
@given(
    st.lists(
        st.tuples(
            st.integers(0, len(ROWS)),
            st.sampled_from(NOISE_TYPES),
            st.sampled_from([None, "req_ghost", "req_0012"]),
        ),
        max_size=40,
    )
)
def test_noise_events_change_nothing_but_the_event_count(
    noise: list[tuple[int, str, str | None]],
) -> None:
    rows = list(ROWS)
    for position, type_, request_id in sorted(noise, key=lambda n: n[0], reverse=True):
        at = rows[min(position, len(rows) - 1)]["at"]
        rows.insert(
            position,
            {
                "type": type_,
                "at": at,
                "actor": "zed",
                "request_id": request_id,
                "payload": {"decision": {"decision": "allow"}},
            },
        )
    report = analyze(rows, now=T0 + timedelta(weeks=5)).to_dict()
    baseline = REPORT.to_dict()
    assert report["summary"].pop("events") == baseline["summary"].pop("events") + len(noise)
    assert report == baseline


@given(st.lists(st.floats(0, 1e7, allow_nan=False), min_size=1, max_size=200))
def test_percentiles_stay_within_the_data(values: list[float]) -> None:
    d = Durations.of(values)
    assert d.min <= d.median <= d.max
    assert d.min <= d.p95 <= d.max
    assert d.p95 in values
    assert d.count == len(values)
    assert Durations.of(list(reversed(values))) == d
    assert percentile(sorted(values), 100) == max(values)


@SLOW
@given(st.integers(1, 27), st.integers(0, 23))
def test_windows_split_the_requests_between_them(day: int, hour: int) -> None:
    cut = T0 + timedelta(days=day, hours=hour)
    before, after = analyze(ROWS, until=cut), analyze(ROWS, since=cut)
    assert before.summary.requests + after.summary.requests == REPORT.summary.requests
    hours = [
        a + b
        for a, b in zip(
            before.summary.requests_by_hour, after.summary.requests_by_hour, strict=True
        )
    ]
    assert hours == list(REPORT.summary.requests_by_hour)


def test_streaming_equals_one_call_and_reads_rows_or_dicts() -> None:
    analyzer = Analyzer()
    for row in ROWS:
        analyzer.feed({**row, "at": row["at"].isoformat()})
    assert analyzer.report(now=T0 + timedelta(weeks=5)) == REPORT


def test_garbage_is_skipped() -> None:
    report = analyze([{"type": "request.created"}, {"at": "not a time", "type": "x"}, {}])
    assert report.summary.requests == 0
    assert report.anomalies == ()


def test_thresholds_are_validated() -> None:
    with pytest.raises(ValueError, match="min_history"):
        Thresholds(min_history=0)
    with pytest.raises(ValueError, match="share"):
        Thresholds(off_hours_max_share=2)
    with pytest.raises(ValueError, match="since must be before until"):
        analyze([], since=T0, until=T0)


def test_parse_bound() -> None:
    now = datetime(2026, 3, 30, 12, tzinfo=UTC)
    assert parse_bound("7d", now) == now - timedelta(days=7)
    assert parse_bound("24h", now) == now - timedelta(hours=24)
    assert parse_bound("2w", now) == now - timedelta(weeks=2)
    assert parse_bound("2026-03-01", now) == datetime(2026, 3, 1, tzinfo=UTC)
    assert parse_bound("2026-03-01T09:30:00+02:00", now) == datetime(2026, 3, 1, 7, 30, tzinfo=UTC)
    for bad in ("yesterday", "7x", "", "-3d"):
        with pytest.raises(ValueError, match="invalid time"):
            parse_bound(bad, now)


# --- rendering ----------------------------------------------------------------------------


class _Checker(HTMLParser):
    """Tags balance (void elements aside); collects text and tags."""

    VOID = frozenset({"meta", "br", "img", "hr", "input", "link", "rect", "line"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in self.VOID:
            return
        assert self.stack, tag
        assert self.stack[-1] == tag, (tag, self.stack[-5:])
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _malicious_report() -> Report:
    history = History()
    evil = '<script>alert("x")</script>'
    history.request(evil, T0 + timedelta(hours=10), "prod-shell", "break_glass")
    history.request(evil, T0 + timedelta(hours=11), "prod-sql-write")
    rows = history.rows()
    for row in rows:
        if row["type"] == "approval.given":
            row["payload"]["groups"] = ["<b>ops</b>"]
    return analyze(rows)


def test_html_is_well_formed_self_contained_and_escaped() -> None:
    page = render(REPORT, "html")
    checker = _Checker()
    checker.feed(page)
    checker.close()
    assert checker.stack == []
    assert checker.tags.count("svg") >= 4
    assert "script" not in checker.tags
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page
    evil = render(_malicious_report(), "html")
    assert "<script>" not in evil
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in evil
    assert "&lt;b&gt;ops&lt;/b&gt;" in evil
    checker = _Checker()
    checker.feed(evil)
    assert "script" not in checker.tags
    assert checker.tags.count("b") == page_cards(evil)  # only the summary cards' own
    assert '<script>alert("x")</script>' in "".join(checker.text)
    assert "<b>ops</b>" in "".join(checker.text)


def page_cards(page: str) -> int:
    return page.count('<div class="card"><b>')


def test_text_and_json_carry_the_same_numbers() -> None:
    text = render(REPORT, "text")
    data = json.loads(render(REPORT, "json"))
    assert data == json.loads(json.dumps(REPORT.to_dict()))

    def section(title: str) -> list[str]:
        rest = text.split(title, 1)[1]
        return rest.split("\n\n", 1)[0].splitlines()

    for t in data["bottlenecks"]["response_by_approver"]:
        lines = section("Approver response by approver")
        row = next(line for line in lines if line.startswith(t["key"] + " "))
        assert row.split() == [
            t["key"],
            str(t["count"]),
            fmt_duration(t["median_seconds"]),
            fmt_duration(t["p95_seconds"]),
            fmt_duration(t["min_seconds"]),
            fmt_duration(t["max_seconds"]),
        ]
    for o in data["outcomes"]["by_rule"]:
        lines = section("Outcomes by rule")
        row = next(line for line in lines if line.startswith(o["key"] + " "))
        assert row.split()[1:5] == [
            str(o["created"]),
            str(o["approved"]),
            str(o["denied"]),
            str(o["expired"]),
        ]
        assert fmt_rate(o["approval_rate"]) in row
    for a in data["anomalies"]:
        assert a["evidence"]["message"] in text
    assert f"requests {data['summary']['requests']} " in text
    html = render(REPORT, "html")
    for t in data["bottlenecks"]["decision_by_rule"]:
        assert fmt_duration(t["median_seconds"]) in html


def test_text_neutralises_control_characters() -> None:
    history = History()
    history.request("mallory\x1b[2J", T0 + timedelta(hours=10), "prod-shell", "break_glass")
    text = render(analyze(history.rows()), "text")
    assert "\x1b" not in text
    assert "mallory?[2J" in text


def test_unknown_format() -> None:
    with pytest.raises(ValueError, match="unknown format"):
        render(REPORT, "pdf")


# --- the command --------------------------------------------------------------------------

cli = typer.Typer()
cli.command("report")(report_command)


@cli.callback()
def _root(verbose: Annotated[bool, typer.Option()] = False) -> None:
    """Keep ``report`` a sub-command, as under ``jitgate audit``."""


async def _store(url: str, rows: list[dict[str, Any]]) -> None:
    database = Database(url)
    try:
        async with database.transaction() as session:
            for row in rows:
                await append_event(
                    session,
                    row["type"],
                    row["actor"],
                    row["request_id"],
                    row["payload"],
                    row["at"],
                    target=row["target"],
                    environment=row["environment"],
                )
    finally:
        await database.close()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> str:
    path = tmp_path_factory.mktemp("analytics") / "jitgate.db"
    shutil.copyfile(sqlite_template, path)
    url = f"sqlite:///{path}"
    asyncio.run(_store(url, ROWS))
    return url


def test_report_command_reads_the_store(store: str, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["report", "--db", store, "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["summary"]["requests"] == len(TRUTH.requester)
    assert {(a["kind"], a["subject"]): tuple(a["request_ids"]) for a in data["anomalies"]} == (
        planted()
    )
    assert data["bottlenecks"] == REPORT.to_dict()["bottlenecks"]

    out = tmp_path / "report.html"
    result = runner.invoke(
        cli,
        [
            "report",
            "--db",
            store,
            "-f",
            "html",
            "-o",
            str(out),
            "--since",
            "2026-03-23",
            "--until",
            "2026-03-30T00:00:00Z",
        ],
    )
    assert result.exit_code == 0, result.output
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert "<svg" in page
    assert "2026-03-23T00:00:00+00:00" in page

    result = runner.invoke(cli, ["report", "--db", store, "--since", "2026-03-23"])
    assert result.exit_code == 0, result.output
    assert "burst" in result.stdout
    assert "break_glass" not in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "last tuesday"], "invalid time"),
        (["--format", "pdf"], "unknown format"),
        (["--since", "2026-03-02", "--until", "2026-03-01"], "--since must be before"),
    ],
)
def test_report_command_refuses_bad_input(store: str, args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["report", "--db", store, *args])
    assert result.exit_code == 2
    assert message in result.stderr


# --- the API ------------------------------------------------------------------------------


async def test_api_report_over_the_service_trail(api: ApiEnv) -> None:
    view = await api.submit("ann")
    await api.act("carol", view["id"], "approve")
    response = await api.call("audrey", "GET", "/api/v1/audit/report")
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["summary"]["requests"] == 1
    assert data["summary"]["approved"] == 1
    assert [o["key"] for o in data["outcomes"]["by_requester"]] == ["ann"]
    (decision,) = data["bottlenecks"]["decision_by_rule"]
    assert decision["count"] == 1
    assert [t["key"] for t in data["bottlenecks"]["response_by_approver"]] == ["carol"]
    # A window after everything holds nothing.
    response = await api.call("root", "GET", "/api/v1/audit/report?since=2100-01-01")
    assert response.json()["summary"]["requests"] == 0


@pytest.mark.parametrize(
    "query",
    ["since=yesterday", "until=7x", "since=2030-01-02&until=2030-01-01"],
)
async def test_api_report_refuses_bad_windows(api: ApiEnv, query: str) -> None:
    response = await api.call("audrey", "GET", f"/api/v1/audit/report?{query}")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_query"
