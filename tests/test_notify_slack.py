"""Slack messages: escaping of user text (property-based), limits, content, and
delivery to a real incoming-webhook stand-in."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jitgate.notify import Notifier, parse_notify_config, slack_message
from jitgate.notify.slack import mrkdwn_texts, request_link
from notify_receiver import Receiver, running_receiver
from test_notify_webhook import change, view

BASE = "https://jitgate.example.com"
#: Every event a Slack message has a template for, with a payload of user text.
TEMPLATES = (
    "request.created", "stage.started", "stage.escalated", "request.approved",
    "request.denied", "request.expired", "request.cancelled", "break_glass.used",
    "execution.finished", "review.recorded",
)  # fmt: skip
ENTITY = re.compile(r"&(amp|lt|gt);")


def unsafe_spots(text: str, allowed_links: list[str]) -> list[str]:
    """Raw ``<``, ``>`` and ``&`` outside entities, once our own links are taken out."""
    for link in allowed_links:
        text = text.replace(link, "")
    rest = ENTITY.sub("", text)
    return [c for c in rest if c in "<>&"]


def event(kind: str, text: str) -> dict[str, Any]:
    return {
        "type": kind,
        "actor": text,
        "at": "2031-03-04T10:00:00+00:00",
        "payload": {
            "stage": text,
            "stage_index": 0,
            "notify_groups": [text, "approvers"],
            "deadline": text,
            "by": text,
            "reason": text,
            "justification": text,
            "error": text,
            "succeeded": False,
            "exit_code": 1,
            "break_glass": True,
            "as_admin": True,
        },
    }


def hostile_view(text: str) -> dict[str, Any]:
    return view(
        "req-" + "x" * 8,
        requester=text,
        action={
            "kind": "sql",
            "text": text,
            "payload": {},
            "target": text,
            "environment": text,
            "attributes": {},
        },
        decision={"decision": "require_approval", "risk": text, "reasons": [text] * 5},
        stages=[{"name": text, "groups": [text], "approvals": [{"user": text}]}],
        waiting_for={"stage": text, "groups": [text], "approvals_needed": 1},
        expires_at=text,
    )


def code_of(message: dict[str, Any]) -> str:
    """The text of the section that holds the action's code block."""
    return next(
        b["text"]["text"]
        for b in message["blocks"]
        if b["type"] == "section" and "text" in b and b["text"]["text"].startswith("```")
    )


def check_limits(message: dict[str, Any]) -> None:
    assert len(message["blocks"]) <= 50
    for block in message["blocks"]:
        if block["type"] == "header":
            assert len(block["text"]["text"]) <= 150
        if block["type"] == "section":
            if "text" in block:
                assert len(block["text"]["text"]) <= 3000
                assert block["text"]["verbatim"] is True
            for field in block.get("fields", []):
                assert len(field["text"]) <= 2000
            assert len(block.get("fields", [])) <= 10
        if block["type"] == "context":
            assert len(block["elements"]) <= 10


user_text = st.text(
    alphabet=st.one_of(
        st.sampled_from("<>&`*_~|!@#;:amplgt\n "),
        st.characters(codec="utf-8"),
        st.characters(categories=["Cs"]),  # lone surrogates
    ),
    max_size=400,
) | st.sampled_from(
    ["<!channel>", "<@U123|boss>", "<https://evil.example|click>", "&lt;!here&gt;",
     "```\n<!everyone>\n```", "&", "&amp", "&#60;", "x" * 5000 + "<!channel>"]
)  # fmt: skip


@given(text=user_text, kind=st.sampled_from(TEMPLATES), linked=st.booleans())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_user_text_never_yields_mentions_links_or_raw_ampersands(
    text: str, kind: str, linked: bool
) -> None:
    base = BASE if linked else None
    request = hostile_view(text)
    message = slack_message(event(kind, text), request, base_url=base)
    link = request_link(base, request["id"])
    allowed = [f"<{link}|Open the request>"] if link else []
    for mrkdwn in mrkdwn_texts(message):
        assert unsafe_spots(mrkdwn, allowed) == [], mrkdwn
        # Code blocks open and close only where the template put them.
        assert mrkdwn.count("```") % 2 == 0
    check_limits(message)
    if link:
        assert any(f"<{link}|Open the request>" in m for m in mrkdwn_texts(message))


@given(text=st.text(max_size=200))
def test_action_text_is_kept_in_a_code_block(text: str) -> None:
    message = slack_message(event("stage.started", "x"), view(action={"text": text}))
    code = code_of(message)
    assert code.startswith("```")
    assert code.endswith("```")
    inner = code[3:-3]
    assert "```" not in inner
    if text and all(c not in "<>&`" for c in text) and text.isprintable():
        assert inner == text


def test_escaping_examples() -> None:
    text = "DELETE FROM t; -- <!channel> & <@U42> <https://evil|x> ``` done"
    message = slack_message(event("stage.started", "sec"), view(action={"text": text}))
    flat = "\n".join(mrkdwn_texts(message))
    assert "&lt;!channel&gt;" in flat
    assert "&lt;@U42&gt;" in flat
    assert "&amp;" in flat
    assert "<!channel>" not in flat
    assert "<https://evil" not in flat


def test_long_action_text_is_cut_safely() -> None:
    text = "&" * 10_000
    message = slack_message(event("stage.started", "g"), view(action={"text": text}))
    check_limits(message)
    code = code_of(message)
    assert code.endswith("…```")
    assert unsafe_spots(code, []) == []


def test_approval_needed_message_says_who_what_and_where() -> None:
    request = view("req-42")
    message = slack_message(
        {
            "type": "stage.started",
            "actor": "ann",
            "at": "2031-03-04T10:00:00+00:00",
            "payload": {"stage": "security", "stage_index": 0, "notify_groups": ["dba", "sec"]},
        },
        request,
        base_url=BASE + "/",
    )
    flat = "\n".join(mrkdwn_texts(message))
    assert message["blocks"][0]["text"]["text"] == ":raised_hand: Approval needed"
    assert "`dba`, `sec`" in flat
    assert "security" in flat
    assert "ann" in flat
    assert "high" in flat  # the risk
    assert "```DELETE FROM invoices```" in flat
    assert "main · production" in flat
    assert "jitgate approve req-42" in flat
    assert f"<{BASE}/api/v1/requests/req-42|Open the request>" in flat
    assert "no WHERE" in flat  # the reasons
    assert message["unfurl_links"] is False


def test_escalation_message_names_the_groups_and_the_deadline() -> None:
    message = slack_message(
        {
            "type": "stage.escalated",
            "actor": None,
            "at": "2031-03-04T10:10:00+00:00",
            "payload": {
                "stage": "approvers",
                "stage_index": 0,
                "notify_groups": ["leads"],
                "deadline": "2031-03-04T11:00:00+00:00",
            },
        },
        view(),
    )
    flat = "\n".join(mrkdwn_texts(message))
    assert "escalated" in message["blocks"][0]["text"]["text"].lower()
    assert "`leads`" in flat
    assert "2031-03-04 11:00 UTC" in flat


def test_break_glass_and_failed_execution_messages() -> None:
    glass = slack_message(
        {
            "type": "break_glass.used",
            "actor": "ann",
            "at": "x",
            "payload": {"by": "ann", "justification": "prod down", "notify_groups": ["sec"]},
        },
        view(),
    )
    flat = "\n".join(mrkdwn_texts(glass))
    assert "prod down" in flat
    assert "review" in flat.lower()
    assert "`sec`" in flat
    failed = slack_message(
        {
            "type": "execution.finished",
            "actor": "ann",
            "at": "x",
            "payload": {"by": "ann", "succeeded": False, "exit_code": 2, "error": "boom"},
        },
        view(),
    )
    assert failed["blocks"][0]["text"]["text"] == ":x: Execution failed"
    assert "boom" in "\n".join(mrkdwn_texts(failed))


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with running_receiver() as running:
        yield running


async def test_slack_sink_gets_one_message_per_change_and_failures_only(
    receiver: Receiver,
) -> None:
    config = parse_notify_config(
        {"sinks": [{"type": "slack", "url": receiver.url("/slack"), "base_url": BASE}]},
        environ={},
    )
    n = Notifier(config, environ={}, backoff_base=0.01)
    await n.start()
    try:
        # Creation: request.created + stage.started make ONE message.
        n.hook("events", change("request.created", "stage.started", notify_groups=["approvers"]))
        n.hook("events", change("approval.given", "stage.completed"))  # not for Slack
        n.hook("events", change("execution.started", "execution.finished", succeeded=True))
        n.hook("events", change("execution.finished", succeeded=False, error="exit 1"))
        got = await receiver.wait_for(lambda r: len(r) == 2)
        assert await n.wait_idle()
    finally:
        await n.stop()
    assert len(receiver.received) == 2
    first, second = (r.json() for r in got)
    assert first["blocks"][0]["text"]["text"] == ":raised_hand: Approval needed"
    assert "`approvers`" in "\n".join(mrkdwn_texts(first))
    assert second["blocks"][0]["text"]["text"] == ":x: Execution failed"
    assert "x-jitgate-signature" not in got[0].headers
    assert n.counts["slack-1", "slack", "delivered"] == 2
