"""Render an analytics :class:`~jitgate.audit.analytics.Report`: text, JSON or HTML.

* ``text``: plain aligned tables, no colour or box drawing, fine in a terminal
  and in CI logs. Control characters in user-controlled text are replaced.
* ``json``: :meth:`Report.to_dict`, indented.
* ``html``: one self-contained file: inline CSS and inline SVG charts drawn
  here, no JavaScript, nothing fetched. Every piece of user-controlled text
  (user, group, rule and stage names, justifications, error messages) goes
  through :func:`html.escape`.

Pure code: strings in, a string out.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime
from html import escape
from typing import Final

from jitgate.audit.analytics import (
    Anomaly,
    Count,
    OutcomeCounts,
    Report,
    Timing,
)

FORMATS: Final = ("text", "json", "html")

#: How many request ids the text and HTML tables show per row (JSON has all).
MAX_IDS: Final = 6


def render(report: Report, format: str) -> str:
    """``report`` in ``format`` (one of :data:`FORMATS`)."""
    renderers: dict[str, Callable[[Report], str]] = {
        "text": render_text,
        "json": render_json,
        "html": render_html,
    }
    renderer = renderers.get(format)
    if renderer is None:
        raise ValueError(f"unknown format {format!r}: expected one of {', '.join(FORMATS)}")
    return renderer(report)


def fmt_duration(seconds: float) -> str:
    """``45s``, ``12m``, ``12m30s``, ``3h05m``, ``2d04h``: whole seconds, rounded."""
    s = round(seconds)
    if s < 0:
        return "-" + fmt_duration(-s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m" + (f"{s % 60:02d}s" if s % 60 else "")
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def fmt_rate(rate: float) -> str:
    return f"{rate * 100:.1f}%"


def _time(at: datetime | None) -> str:
    return "-" if at is None else at.isoformat(timespec="seconds")


def _ids(ids: Sequence[str]) -> str:
    shown = ", ".join(ids[:MAX_IDS])
    return shown + (f" (+{len(ids) - MAX_IDS} more)" if len(ids) > MAX_IDS else "")


def render_json(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n"


# --- text -----------------------------------------------------------------------------


def _clean(text: object) -> str:
    """One line of printable text: control characters (escape sequences,
    newlines) in user-controlled values must not rewrite the terminal."""
    return "".join(c if c.isprintable() else "?" for c in str(text))


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]], numeric: set[int]) -> str:
    cells = [[_clean(h) for h in headers], *[[_clean(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [
            cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _timing_rows(timings: Sequence[Timing]) -> list[list[object]]:
    return [
        [
            t.key,
            t.durations.count,
            fmt_duration(t.durations.median),
            fmt_duration(t.durations.p95),
            fmt_duration(t.durations.min),
            fmt_duration(t.durations.max),
        ]
        for t in timings
    ]


_TIMING_HEADERS: Final = ("COUNT", "MEDIAN", "P95", "MIN", "MAX")
_OUTCOME_HEADERS: Final = (
    "CREATED",
    "APPROVED",
    "DENIED",
    "EXPIRED",
    "CANCELLED",
    "PENDING",
    "BREAK-GLASS",
    "APPROVAL",
    "DENIAL",
)


def _outcome_rows(outcomes: Sequence[OutcomeCounts]) -> list[list[object]]:
    return [
        [
            o.key,
            o.created,
            o.approved,
            o.denied,
            o.expired,
            o.cancelled,
            o.pending,
            o.break_glass,
            fmt_rate(o.approval_rate),
            fmt_rate(o.denial_rate),
        ]
        for o in outcomes
    ]


def _text_section(title: str, body: str) -> str:
    return f"{title}\n{'-' * len(title)}\n{body or '(none)'}\n"


def render_text(report: Report) -> str:
    s, b, o = report.summary, report.bottlenecks, report.outcomes
    out = [
        "jitgate approval analytics",
        f"window: {_time(report.since)} .. {_time(report.until)}"
        f"   generated: {_time(report.generated_at)}",
        f"requests {s.requests}  approved {s.approved}  denied {s.denied}  "
        f"expired {s.expired}  cancelled {s.cancelled}  pending {s.pending}  "
        f"break-glass {s.break_glass}  events {s.events}",
        "",
    ]
    anomalies = (
        _table(
            ("KIND", "SUBJECT", "AT", "REQUESTS", "DETAILS"),
            [
                [a.kind, a.subject, _time(a.at), _ids(a.request_ids), a.message]
                for a in report.anomalies
            ],
            set(),
        )
        if report.anomalies
        else ""
    )
    out.append(_text_section(f"Anomalies ({len(report.anomalies)})", anomalies))
    sections: list[tuple[str, str, Sequence[Timing]]] = [
        ("Time to decision by rule (created -> approved/denied)", "RULE", b.decision_by_rule),
        ("Stage duration by stage (started -> completed)", "STAGE", b.stage_by_name),
        ("Approver response by group (stage started -> approval)", "GROUP", b.response_by_group),
        (
            "Approver response by approver (stage started -> approval/denial)",
            "APPROVER",
            b.response_by_approver,
        ),
    ]
    for title, key, timings in sections:
        body = _table((key, *_TIMING_HEADERS), _timing_rows(timings), {1}) if timings else ""
        out.append(_text_section(title, body))
    expired = (
        _table(
            ("REASON", "COUNT", "REQUESTS"),
            [[c.key, c.count, _ids(c.request_ids)] for c in b.expired_by_reason],
            {1},
        )
        if b.expired_by_reason
        else ""
    )
    out.append(_text_section("Expired requests by reason", expired))
    esc = b.escalations
    esc_rows: list[list[object]] = [["stage", c.key, c.count] for c in esc.by_stage]
    esc_rows += [["rule", c.key, c.count] for c in esc.by_rule]
    esc_body = (
        f"{esc.count} escalation(s)\n" + _table(("BY", "KEY", "COUNT"), esc_rows, {2})
        if esc.count
        else ""
    )
    out.append(_text_section("Escalated stages", esc_body))
    for title, key, rows in (
        ("Outcomes by rule", "RULE", o.by_rule),
        ("Outcomes by requester", "REQUESTER", o.by_requester),
    ):
        body = _table((key, *_OUTCOME_HEADERS), _outcome_rows(rows), set(range(1, 10)))
        out.append(_text_section(title, body if rows else ""))
    failed = (
        _table(
            ("REQUEST", "AT", "REQUESTER", "RULES", "EXIT", "ERROR"),
            [
                [
                    f.request_id,
                    _time(f.at),
                    f.requester or "-",
                    ",".join(f.rules) or "-",
                    "-" if f.exit_code is None else f.exit_code,
                    f.error or "-",
                ]
                for f in o.failed_executions
            ],
            {4},
        )
        if o.failed_executions
        else ""
    )
    out.append(_text_section(f"Failed executions ({len(o.failed_executions)})", failed))
    peak = max(s.requests_by_hour) or 1
    hours = "\n".join(
        f"{h:02d}  {n:>5}  {'#' * round(40 * n / peak)}".rstrip()
        for h, n in enumerate(s.requests_by_hour)
    )
    out.append(_text_section("Requests by hour of day (UTC)", hours))
    return "\n".join(out)


# --- html -----------------------------------------------------------------------------

_CSS: Final = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;
max-width:1100px;padding:0 1rem;color:#1f2328;background:#fff}
h1{font-size:1.6rem;margin:0 0 .2rem}h2{font-size:1.2rem;margin:2rem 0 .6rem;
border-bottom:1px solid #d0d7de;padding-bottom:.3rem}
.meta{color:#57606a}.cards{display:flex;flex-wrap:wrap;gap:.6rem;margin:1rem 0}
.card{border:1px solid #d0d7de;border-radius:6px;padding:.5rem .9rem;min-width:6rem}
.card b{display:block;font-size:1.3rem}
table{border-collapse:collapse;width:100%;margin:.4rem 0 1rem}
th,td{text-align:left;padding:.3rem .6rem;border-bottom:1px solid #eaeef2;vertical-align:top}
th{background:#f6f8fa}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.kind{font-family:ui-monospace,monospace;font-weight:600}
.ids{font-family:ui-monospace,monospace;font-size:12px;color:#57606a}
svg{max-width:100%;height:auto;display:block;margin:.5rem 0}
svg text{font:12px system-ui,sans-serif;fill:#1f2328}
.empty{color:#57606a;font-style:italic}
"""

_OUTCOME_COLOURS: Final = (
    ("approved", "#2da44e"),
    ("denied", "#cf222e"),
    ("expired", "#bf8700"),
    ("cancelled", "#8c959f"),
    ("pending", "#0969da"),
)


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _html_table(headers: Sequence[str], rows: Sequence[Sequence[object]], numeric: set[int]) -> str:
    if not rows:
        return '<p class="empty">none</p>'
    head = "".join(
        f'<th class="n">{_e(h)}</th>' if i in numeric else f"<th>{_e(h)}</th>"
        for i, h in enumerate(headers)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{_e(c)}</td>' if i in numeric else f"<td>{_e(c)}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def svg_duration_bars(title: str, timings: Sequence[Timing]) -> str:
    """Horizontal bars: p95 (light) behind the median (dark), per key."""
    if not timings:
        return f'<p class="empty">{_e(title)}: no data</p>'
    label_w, bar_w, value_w, row_h, top = 170, 420, 150, 26, 34
    width = label_w + bar_w + value_w
    height = top + row_h * len(timings) + 10
    scale = max(t.durations.p95 for t in timings) or 1.0
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}">',
        f"<title>{_e(title)}</title>",
        f'<text x="0" y="16" font-weight="600">{_e(title)}</text>',
        f'<rect x="{label_w}" y="22" width="10" height="8" fill="#0969da"/>'
        f'<text x="{label_w + 14}" y="30">median</text>'
        f'<rect x="{label_w + 70}" y="22" width="10" height="8" fill="#b6d7ff"/>'
        f'<text x="{label_w + 84}" y="30">p95</text>',
    ]
    for i, t in enumerate(timings):
        d = t.durations
        y = top + i * row_h
        p95_w = max(1.0, bar_w * d.p95 / scale)
        med_w = max(1.0, bar_w * d.median / scale)
        label = t.key if len(t.key) <= 24 else t.key[:23] + "…"
        tip = f"{t.key}: median {fmt_duration(d.median)}, p95 {fmt_duration(d.p95)}, n={d.count}"
        parts.append(
            f"<g><title>{_e(tip)}</title>"
            f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end">{_e(label)}</text>'
            f'<rect x="{label_w}" y="{y + 3}" width="{p95_w:.1f}" height="16" fill="#b6d7ff"/>'
            f'<rect x="{label_w}" y="{y + 7}" width="{med_w:.1f}" height="8" fill="#0969da"/>'
            f'<text x="{label_w + bar_w + 8}" y="{y + 15}">'
            f"{_e(fmt_duration(d.median))} / {_e(fmt_duration(d.p95))} (n={d.count})</text></g>"
        )
    parts.append("</svg>")
    return "".join(parts)


def svg_hour_bars(title: str, counts: Sequence[int]) -> str:
    """Vertical bars: requests per hour of day."""
    bar, gap, left, top, plot_h = 22, 4, 36, 30, 140
    width = left + 24 * (bar + gap) + 10
    height = top + plot_h + 30
    peak = max(counts) if counts and max(counts) > 0 else 1
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}">',
        f"<title>{_e(title)}</title>",
        f'<text x="0" y="16" font-weight="600">{_e(title)}</text>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - 10}" y2="{top + plot_h}" '
        'stroke="#8c959f"/>',
        f'<text x="{left - 6}" y="{top + 10}" text-anchor="end">{peak}</text>',
    ]
    for hour, n in enumerate(counts):
        h = plot_h * n / peak
        x = left + hour * (bar + gap)
        parts.append(
            f"<g><title>{hour:02d}:00 UTC: {n} request(s)</title>"
            f'<rect x="{x}" y="{top + plot_h - h:.1f}" width="{bar}" height="{h:.1f}" '
            'fill="#0969da"/></g>'
        )
        if hour % 3 == 0:
            parts.append(
                f'<text x="{x + bar / 2}" y="{top + plot_h + 16}" text-anchor="middle">'
                f"{hour:02d}</text>"
            )
    parts.append("</svg>")
    return "".join(parts)


def svg_outcome_bars(title: str, outcomes: Sequence[OutcomeCounts]) -> str:
    """Stacked horizontal bars: each key's requests by outcome, as shares."""
    if not outcomes:
        return f'<p class="empty">{_e(title)}: no data</p>'
    label_w, bar_w, row_h, top = 170, 520, 26, 40
    width = label_w + bar_w + 70
    height = top + row_h * len(outcomes) + 10
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}">',
        f"<title>{_e(title)}</title>",
        f'<text x="0" y="16" font-weight="600">{_e(title)}</text>',
    ]
    x = label_w
    for name, colour in _OUTCOME_COLOURS:
        parts.append(
            f'<rect x="{x}" y="24" width="10" height="8" fill="{colour}"/>'
            f'<text x="{x + 14}" y="32">{name}</text>'
        )
        x += 90
    for i, o in enumerate(outcomes):
        y = top + i * row_h
        label = o.key if len(o.key) <= 24 else o.key[:23] + "…"
        parts.append(f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end">{_e(label)}</text>')
        x0 = float(label_w)
        total = o.created or 1
        for name, colour in _OUTCOME_COLOURS:
            n = int(getattr(o, name))
            if not n:
                continue
            w = bar_w * n / total
            parts.append(
                f"<g><title>{_e(o.key)}: {n} {name} of {o.created}</title>"
                f'<rect x="{x0:.1f}" y="{y + 3}" width="{w:.1f}" height="16" '
                f'fill="{colour}"/></g>'
            )
            x0 += w
        parts.append(f'<text x="{label_w + bar_w + 8}" y="{y + 15}">n={o.created}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _timing_table(key: str, timings: Sequence[Timing]) -> str:
    return _html_table((key, *_TIMING_HEADERS), _timing_rows(timings), {1, 2, 3, 4, 5})


def _count_table(key: str, counts: Sequence[Count]) -> str:
    return _html_table(
        (key, "COUNT", "REQUESTS"), [[c.key, c.count, _ids(c.request_ids)] for c in counts], {1}
    )


def _anomaly_rows(anomalies: Sequence[Anomaly]) -> str:
    if not anomalies:
        return '<p class="empty">no anomalies</p>'
    rows = "".join(
        f'<tr><td class="kind">{_e(a.kind)}</td><td>{_e(a.subject)}</td>'
        f"<td>{_e(_time(a.at))}</td><td>{_e(a.message)}</td>"
        f'<td class="ids">{_e(", ".join(a.request_ids))}</td></tr>'
        for a in anomalies
    )
    return (
        "<table><thead><tr><th>KIND</th><th>SUBJECT</th><th>AT</th><th>DETAILS</th>"
        f"<th>REQUESTS</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def render_html(report: Report) -> str:
    s, b, o = report.summary, report.bottlenecks, report.outcomes
    cards = "".join(
        f'<div class="card"><b>{n}</b>{_e(label)}</div>'
        for label, n in (
            ("requests", s.requests),
            ("approved", s.approved),
            ("denied", s.denied),
            ("expired", s.expired),
            ("cancelled", s.cancelled),
            ("pending", s.pending),
            ("break-glass", s.break_glass),
            ("anomalies", len(report.anomalies)),
            ("escalations", b.escalations.count),
            ("failed executions", len(o.failed_executions)),
        )
    )
    esc = b.escalations
    failed = _html_table(
        ("REQUEST", "AT", "REQUESTER", "RULES", "EXIT", "ERROR"),
        [
            [
                f.request_id,
                _time(f.at),
                f.requester or "-",
                ", ".join(f.rules) or "-",
                "-" if f.exit_code is None else f.exit_code,
                f.error or "-",
            ]
            for f in o.failed_executions
        ],
        {4},
    )
    body = [
        "<h1>jitgate approval analytics</h1>",
        f'<p class="meta">window {_e(_time(report.since))} .. {_e(_time(report.until))}'
        f" · generated {_e(_time(report.generated_at))} · {s.events} events</p>",
        f'<div class="cards">{cards}</div>',
        f"<h2>Anomalies ({len(report.anomalies)})</h2>",
        _anomaly_rows(report.anomalies),
        "<h2>Bottlenecks</h2>",
        svg_duration_bars("Time to decision by rule (median / p95)", b.decision_by_rule),
        _timing_table("RULE", b.decision_by_rule),
        svg_duration_bars("Approver response by group (median / p95)", b.response_by_group),
        _timing_table("GROUP", b.response_by_group),
        svg_duration_bars("Approver response by approver (median / p95)", b.response_by_approver),
        _timing_table("APPROVER", b.response_by_approver),
        svg_duration_bars("Stage duration (median / p95)", b.stage_by_name),
        _timing_table("STAGE", b.stage_by_name),
        "<h2>Expired requests</h2>",
        _count_table("REASON", b.expired_by_reason),
        f"<h2>Escalated stages ({esc.count})</h2>",
        _count_table("STAGE", esc.by_stage),
        _count_table("RULE", esc.by_rule),
        "<h2>Outcomes</h2>",
        svg_outcome_bars("Outcomes by rule", o.by_rule),
        _html_table(("RULE", *_OUTCOME_HEADERS), _outcome_rows(o.by_rule), set(range(1, 10))),
        svg_outcome_bars("Outcomes by requester", o.by_requester),
        _html_table(
            ("REQUESTER", *_OUTCOME_HEADERS), _outcome_rows(o.by_requester), set(range(1, 10))
        ),
        f"<h2>Failed executions ({len(o.failed_executions)})</h2>",
        failed,
        "<h2>Activity</h2>",
        svg_hour_bars("Requests by hour of day (UTC)", s.requests_by_hour),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>jitgate approval analytics</title>"
        f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


__all__ = [
    "FORMATS",
    "fmt_duration",
    "render",
    "render_html",
    "render_json",
    "render_text",
    "svg_duration_bars",
    "svg_hour_bars",
    "svg_outcome_bars",
]
