"""Slack messages (Block Kit) for approval events, as incoming webhooks take them.

Pure functions, no I/O. Every piece of text that comes from a user or a
client (the action, target, reasons, names, justifications, error messages)
goes through :func:`escape`: Slack's mrkdwn control characters ``&``, ``<``
and ``>`` become ``&amp;``, ``&lt;`` and ``&gt;``, so an action text cannot
smuggle in a mention (``<!channel>``, ``<@U123>``) or a link. Text objects are
sent with ``verbatim: true`` so Slack does not turn bare URLs or channel names
into links either, and backticks in code get a zero-width space after them so
no text can close the code block around it. The only ``<...>`` this module
writes itself is the link to the request, built from the configured
``base_url`` and the request id.

Long text is cut before escaping, on a character boundary, so the result
stays within Slack's limits (3000 characters per section) and never ends
in half an entity.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from jitgate.request_words import bound_parameters

#: Characters of action text shown in the code block (after escaping).
ACTION_LIMIT = 2500
#: Slack's limit for a section's text, less some room.
SECTION_LIMIT = 2900
#: Slack's limit for a header's plain text.
HEADER_LIMIT = 150
FIELD_LIMIT = 1900
ELLIPSIS = "…"
ZWSP = "\u200b"

_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def _printable(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8")


def escape(text: Any) -> str:
    """``text`` with ``&``, ``<``, ``>`` escaped for mrkdwn (lone surrogates as U+FFFD)."""
    return "".join(_ESCAPES.get(c, c) for c in _printable(str(text)))


def clip(text: Any, limit: int, *, code: bool = False) -> str:
    """``text`` escaped (and with backticks broken up when ``code``), at most
    ``limit`` characters long, ending in ``…`` when it had to be cut."""
    out: list[str] = []
    used = 0
    source = _printable(str(text))
    for index, char in enumerate(source):
        piece = _ESCAPES.get(char, char)
        if code and char == "`":
            piece = "`" + ZWSP
        rest = len(source) - index - 1
        room = limit - used - (len(ELLIPSIS) if rest else 0)
        if len(piece) > room:
            out.append(ELLIPSIS)
            return "".join(out)
        out.append(piece)
        used += len(piece)
    return "".join(out)


def _cut(text: str, limit: int) -> str:
    """Already escaped ``text`` cut to ``limit`` characters without splitting an entity."""
    if len(text) <= limit:
        return text
    head = text[: limit - len(ELLIPSIS)]
    amp = head.rfind("&", max(0, len(head) - 5))
    if amp != -1 and ";" not in head[amp:]:
        head = head[:amp]
    return head + ELLIPSIS


def plain(text: Any, limit: int = HEADER_LIMIT) -> str:
    """Plain text (headers, no mrkdwn parsing) cut to ``limit``."""
    value = _printable(str(text))
    return value if len(value) <= limit else value[: limit - 1] + ELLIPSIS


def code_block(text: Any, limit: int = ACTION_LIMIT) -> str:
    body = clip(text, limit, code=True)
    return f"```{body}```" if body else "```(empty)```"


def inline(text: Any, limit: int = 200) -> str:
    """``text`` as inline code."""
    body = clip(text, limit, code=True)
    return f"`{body}`" if body else "``"


def _groups(groups: Any) -> str:
    if not groups:
        return "_nobody_"
    return ", ".join(inline(g, 80) for g in list(groups)[:20])


def _mrkdwn(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": text, "verbatim": True}


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": _mrkdwn(_cut(text, SECTION_LIMIT))}


def _fields(pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    return {
        "type": "section",
        "fields": [
            _mrkdwn(_cut(f"*{label}*\n{value}", FIELD_LIMIT)) for label, value in pairs[:10]
        ],
    }


def _context(parts: Sequence[str]) -> dict[str, Any]:
    return {"type": "context", "elements": [_mrkdwn(_cut(p, FIELD_LIMIT)) for p in parts[:10]]}


def _header(text: str) -> dict[str, Any]:
    return {"type": "header", "text": {"type": "plain_text", "text": plain(text), "emoji": True}}


def _when(value: Any) -> str:
    """An ISO time as ``2031-03-04 10:10 UTC`` (escaped; unknown shapes as they are)."""
    if not isinstance(value, str) or len(value) < 16 or value[10] != "T":
        return escape(value) if value else "-"
    return escape(f"{value[:10]} {value[11:16]} UTC")


def request_link(base_url: str | None, request_id: Any) -> str | None:
    """The URL of the request on the server (``<base_url>/api/v1/requests/<id>``)."""
    if not base_url:
        return None
    return f"{base_url.rstrip('/')}/api/v1/requests/{quote(str(request_id), safe='')}"


def _action_text(action: Mapping[str, Any]) -> str:
    text = action.get("text")
    if isinstance(text, str) and text:
        return text
    payload = action.get("payload")
    if payload:
        return json.dumps(payload, indent=1, ensure_ascii=False, default=str)
    return ""


def _risk(request: Mapping[str, Any]) -> str:
    decision = request.get("decision") or {}
    return str(decision.get("risk") or "unknown")


def _request_blocks(request: Mapping[str, Any], *, with_reasons: bool) -> list[dict[str, Any]]:
    """Who asked for what, where, at which risk; the action in a code block."""
    action = request.get("action") or {}
    blocks = [
        _fields(
            [
                ("Requester", clip(request.get("requester") or "-", 200)),
                ("Risk", clip(_risk(request), 50)),
                ("Kind", clip(action.get("kind") or "-", 50)),
                (
                    "Target",
                    f"{clip(action.get('target') or '-', 300)} · "
                    f"{clip(action.get('environment') or '-', 100)}",
                ),
            ]
        ),
        _section(code_block(_action_text(action))),
    ]
    parameters = bound_parameters(action)
    if parameters:
        blocks.append(_section("Bound parameters:\n" + code_block("\n".join(parameters))))
    reasons = (request.get("decision") or {}).get("reasons") or []
    if with_reasons and reasons:
        shown = [f"• {clip(r, 500)}" for r in list(reasons)[:3]]
        if len(reasons) > 3:
            shown.append(f"… and {len(reasons) - 3} more")
        blocks.append(_section("\n".join(shown)))
    return blocks


def _footer(request: Mapping[str, Any], base_url: str | None, *extra: str) -> dict[str, Any]:
    rid = request.get("id") or "-"
    parts = [f"Request {inline(rid, 100)}", *extra]
    link = request_link(base_url, rid)
    if link is not None:
        parts.append(f"<{link}|Open the request>")
    return _context(parts)


def _stage_name(request: Mapping[str, Any], payload: Mapping[str, Any]) -> tuple[str, str]:
    """The stage's name (escaped) and ``n/m``."""
    index = payload.get("stage_index")
    stages = request.get("stages") or []
    of = f"{index + 1}/{len(stages)}" if isinstance(index, int) else "?"
    return clip(payload.get("stage") or "-", 100), of


def slack_message(
    event: Mapping[str, Any],
    request: Mapping[str, Any],
    *,
    base_url: str | None = None,
) -> dict[str, Any]:
    """The incoming-webhook payload (``text`` fallback and ``blocks``) for ``event``
    of ``request`` (the request view)."""
    kind = str(event.get("type") or "")
    payload: Mapping[str, Any] = event.get("payload") or {}
    action = request.get("action") or {}
    where = f"{clip(action.get('target') or '-', 100)} · {clip(action.get('environment'), 50)}"
    who = clip(request.get("requester") or "-", 100)
    rid = request.get("id") or "-"
    approve = f"`jitgate approve {clip(rid, 100, code=True)}`"

    if kind in ("request.created", "stage.started"):
        waiting = request.get("waiting_for") or {}
        if kind == "stage.started":
            groups = payload.get("notify_groups") or []
            stage, of = _stage_name(request, payload)
        else:
            groups = waiting.get("groups") or []
            stage, of = clip(waiting.get("stage") or "-", 100), ""
        header = ":raised_hand: Approval needed"
        text = (
            f"{who} asks to run a {clip(action.get('kind') or '?', 30)} action on {where}: "
            f"approval needed from {_groups(groups)}"
        )
        blocks = [
            _header(header),
            _section(
                f"*Approvers:* {_groups(groups)}\n*Stage:* {stage}"
                + (f" ({of})" if of else "")
                + f"\n*Expires:* {_when(request.get('expires_at'))}"
            ),
            *_request_blocks(request, with_reasons=True),
            _footer(request, base_url, approve),
        ]
    elif kind == "stage.escalated":
        groups = payload.get("notify_groups") or []
        stage, of = _stage_name(request, payload)
        text = f"Escalated: the approval of {who}'s request now needs {_groups(groups)}"
        blocks = [
            _header(":rotating_light: Approval escalated"),
            _section(
                f"Stage {stage} ({of}) timed out without approval.\n"
                f"*Now eligible:* {_groups(groups)}\n"
                f"*Deadline:* {_when(payload.get('deadline'))}"
            ),
            *_request_blocks(request, with_reasons=False),
            _footer(request, base_url, approve),
        ]
    elif kind == "request.approved":
        glass = bool(payload.get("break_glass"))
        approvers = [
            a.get("user") for s in request.get("stages") or [] for a in s.get("approvals") or []
        ]
        by = ", ".join(clip(a, 80) for a in approvers if a) or "-"
        text = f"Approved: {who}'s action on {where}"
        blocks = [
            _header(":white_check_mark: Request approved" + (" (break-glass)" if glass else "")),
            _section(f"*Approved by:* {by}"),
            *_request_blocks(request, with_reasons=False),
            _footer(request, base_url),
        ]
    elif kind == "request.denied":
        text = f"Denied: {who}'s action on {where}"
        blocks = [
            _header(":no_entry: Request denied"),
            _section(
                f"*Denied by:* {clip(payload.get('by') or '-', 100)}\n"
                f"*Reason:* {clip(payload.get('reason') or '-', 1000)}"
            ),
            *_request_blocks(request, with_reasons=False),
            _footer(request, base_url),
        ]
    elif kind == "request.expired":
        text = f"Expired: {who}'s action on {where}"
        blocks = [
            _header(":hourglass: Request expired"),
            _section(f"*Reason:* {clip(payload.get('reason') or '-', 200)}"),
            *_request_blocks(request, with_reasons=False),
            _footer(request, base_url),
        ]
    elif kind == "request.cancelled":
        text = f"Cancelled: {who}'s action on {where}"
        blocks = [
            _header(":wastebasket: Request cancelled"),
            _section(
                f"*Cancelled by:* {clip(payload.get('by') or '-', 100)}"
                + (" (admin)" if payload.get("as_admin") else "")
                + f"\n*Reason:* {clip(payload.get('reason') or '-', 1000)}"
            ),
            *_request_blocks(request, with_reasons=False),
            _footer(request, base_url),
        ]
    elif kind == "break_glass.used":
        groups = payload.get("notify_groups") or []
        text = f"Break-glass used by {clip(payload.get('by') or '-', 100)} on {where}"
        blocks = [
            _header(":fire: Break-glass used"),
            _section(
                f"*By:* {clip(payload.get('by') or '-', 100)}\n"
                f"*Justification:* {clip(payload.get('justification') or '-', 1500)}\n"
                f"*Needs review by:* {_groups(groups)}"
            ),
            *_request_blocks(request, with_reasons=False),
            _footer(request, base_url),
        ]
    elif kind == "execution.finished":
        ok = bool(payload.get("succeeded"))
        text = f"Execution {'succeeded' if ok else 'FAILED'}: {who}'s action on {where}"
        details = [f"*Executed by:* {clip(payload.get('by') or '-', 100)}"]
        if payload.get("exit_code") is not None:
            details.append(f"*Exit code:* {clip(payload.get('exit_code'), 20)}")
        if payload.get("rows_affected") is not None:
            details.append(f"*Rows affected:* {clip(payload.get('rows_affected'), 20)}")
        if payload.get("error"):
            details.append(f"*Error:* {code_block(payload.get('error'), 1000)}")
        blocks = [
            _header(":white_check_mark: Execution succeeded" if ok else ":x: Execution failed"),
            _section("\n".join(details)),
            *_request_blocks(request, with_reasons=False),
            _footer(request, base_url),
        ]
    else:
        actor = event.get("actor")
        text = f"{clip(kind, 50)} on {who}'s action on {where}" + (
            f" by {clip(actor, 100)}" if actor else ""
        )
        blocks = [_section(text), _footer(request, base_url)]
    return {
        "text": _cut(text, SECTION_LIMIT),
        "blocks": blocks,
        "unfurl_links": False,
        "unfurl_media": False,
    }


def mrkdwn_texts(message: Mapping[str, Any]) -> list[str]:
    """Every mrkdwn string of ``message`` (its fallback ``text`` included), for tests
    and checks: what Slack parses for mentions and links."""
    out = [str(message.get("text", ""))]

    def walk(node: Any) -> None:
        if isinstance(node, Mapping):
            if node.get("type") == "mrkdwn":
                out.append(str(node.get("text", "")))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(message.get("blocks", []))
    return out
