"""Webhook delivery over real HTTP: signatures, retries, Retry-After, dead and
slow sinks, the bounded queue, shutdown, secrets kept out of the logs."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from jitgate.notify import Notifier, parse_notify_config, verify_signature
from notify_receiver import Receiver, dead_url, running_receiver

SECRET = "s3cret-s3cret-s3cret"


def view(request_id: str = "req-1", **extra: Any) -> dict[str, Any]:
    return {
        "id": request_id,
        "status": "pending",
        "requester": "ann",
        "action": {
            "kind": "sql",
            "text": "DELETE FROM invoices",
            "payload": {},
            "target": "main",
            "environment": "production",
            "attributes": {},
        },
        "decision": {"decision": "require_approval", "risk": "high", "reasons": ["no WHERE"]},
        "stages": [{"name": "approvers", "groups": ["approvers"], "approvals": []}],
        "waiting_for": {"stage": "approvers", "groups": ["approvers"], "approvals_needed": 1},
        "expires_at": "2031-03-04T11:00:00Z",
        **extra,
    }


def change(*types: str, request_id: str = "req-1", **payload: Any) -> dict[str, Any]:
    """What the service passes to an ``events`` hook."""
    return {
        "request_id": request_id,
        "request": view(request_id),
        "events": [
            {
                "type": t,
                "actor": "ann",
                "at": "2031-03-04T10:00:00+00:00",
                "payload": {"request_id": request_id, **payload},
            }
            for t in types
        ],
    }


def notifier(sinks: list[dict[str, Any]], **options: Any) -> Notifier:
    settings = {"max_attempts": options.pop("max_attempts", 4), "timeout": 2.0, **options}
    config = parse_notify_config({"sinks": sinks, **settings}, "test.yaml", environ={})
    return Notifier(config, environ={}, backoff_base=0.02, backoff_max=0.1, drain_timeout=5)


def hook_sink(receiver: Receiver, path: str = "/hook", **extra: Any) -> dict[str, Any]:
    return {"type": "webhook", "url": receiver.url(path), "secret": SECRET, **extra}


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with running_receiver() as running:
        yield running


async def test_signature_verifies_with_the_documented_scheme(receiver: Receiver) -> None:
    n = notifier([hook_sink(receiver)])
    await n.start()
    try:
        n.hook("events", change("stage.started", notify_groups=["approvers"], stage_index=0))
        (got,) = await receiver.wait_for(lambda r: len(r) == 1)
    finally:
        await n.stop()
    body = got.json()
    assert body["event"] == {
        "type": "stage.started",
        "actor": "ann",
        "at": "2031-03-04T10:00:00+00:00",
        "payload": {"request_id": "req-1", "notify_groups": ["approvers"], "stage_index": 0},
    }
    assert body["request"]["id"] == "req-1"
    assert got.headers["content-type"] == "application/json"
    assert got.headers["x-jitgate-event"] == "stage.started"
    assert got.headers["x-jitgate-delivery"]
    timestamp = got.headers["x-jitgate-timestamp"]
    assert abs(int(timestamp) - time.time()) < 60

    # docs/notifications.md, by hand: HMAC-SHA256(secret, "<ts>.<delivery>." + body).
    material = f"{timestamp}.{got.headers['x-jitgate-delivery']}.".encode() + got.body
    expected = "sha256=" + hmac.new(SECRET.encode(), material, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(got.headers["x-jitgate-signature"], expected)

    assert verify_signature(SECRET, got.headers, got.body)
    assert not verify_signature("another-secret-entirely", got.headers, got.body)
    assert not verify_signature(SECRET, got.headers, got.body.replace(b"req-1", b"req-2"))
    # A replay: the same delivery long after it was signed (or from the future).
    assert not verify_signature(SECRET, got.headers, got.body, now=int(timestamp) + 301)
    assert not verify_signature(SECRET, got.headers, got.body, now=int(timestamp) - 301)
    assert verify_signature(SECRET, got.headers, got.body, now=int(timestamp) + 299)
    # The delivery id is signed too: a replay under a fresh id does not verify.
    forged = dict(got.headers)
    forged["X-Jitgate-Delivery"] = "another-id"
    assert not verify_signature(SECRET, forged, got.body)
    assert n.counts["webhook-1", "webhook", "delivered"] == 1


async def test_every_event_its_own_delivery_in_order_with_unique_ids(receiver: Receiver) -> None:
    n = notifier([hook_sink(receiver)])
    await n.start()
    try:
        n.hook("status", {"id": "req-1", "status": "pending"})  # other topics: ignored
        n.hook("events", change("request.created", "stage.started"))
        n.hook("events", change("approval.given", "stage.completed", "request.approved"))
        got = await receiver.wait_for(lambda r: len(r) == 5)
    finally:
        await n.stop()
    assert [r.headers["x-jitgate-event"] for r in got] == [
        "request.created", "stage.started", "approval.given", "stage.completed",
        "request.approved",
    ]  # fmt: skip
    assert len({r.headers["x-jitgate-delivery"] for r in got}) == 5


async def test_retries_after_500_then_succeeds(receiver: Receiver) -> None:
    receiver.plan("/hook", (500, {}), (503, {}))
    n = notifier([hook_sink(receiver)])
    await n.start()
    try:
        n.hook("events", change("stage.escalated", notify_groups=["leads"]))
        (got,) = await receiver.wait_for(lambda r: len(r) == 1)
        assert await n.wait_idle()
    finally:
        await n.stop()
    assert receiver.attempts["/hook"] == 3
    assert verify_signature(SECRET, got.headers, got.body)
    assert n.counts["webhook-1", "webhook", "delivered"] == 1
    assert n.counts["webhook-1", "webhook", "failed"] == 0
    assert n.retries["webhook-1", "webhook"] == 2


async def test_429_retry_after_is_honoured(receiver: Receiver) -> None:
    receiver.plan("/hook", (429, {"Retry-After": "1"}))
    n = notifier([hook_sink(receiver)])
    await n.start()
    started = time.monotonic()
    try:
        n.hook("events", change("request.denied", by="bob", reason="no"))
        (got,) = await receiver.wait_for(lambda r: len(r) == 1)
    finally:
        await n.stop()
    # The backoff alone would have retried within 0.1 s.
    assert got.at - started >= 0.95
    assert receiver.attempts["/hook"] == 2
    assert n.retries["webhook-1", "webhook"] == 1


async def test_client_errors_are_not_retried_and_attempts_are_bounded(
    receiver: Receiver,
) -> None:
    receiver.plan("/bad", (400, {}))
    receiver.plan("/down", *[(502, {})] * 10)
    n = notifier(
        [hook_sink(receiver, "/bad", name="bad"), hook_sink(receiver, "/down", name="down")],
        max_attempts=3,
    )
    await n.start()
    try:
        n.hook("events", change("request.expired", reason="ttl"))
        assert await n.wait_idle()
    finally:
        await n.stop()
    assert receiver.attempts == {"/bad": 1, "/down": 3}
    assert n.counts["bad", "webhook", "failed"] == 1
    assert n.counts["down", "webhook", "failed"] == 1
    assert receiver.received == []


async def test_dead_and_slow_sinks_do_not_hold_up_the_others(receiver: Receiver) -> None:
    receiver.delay("/slow", 5)
    n = notifier(
        [
            {"type": "webhook", "name": "dead", "url": dead_url(), "secret": SECRET},
            hook_sink(receiver, "/slow", name="slow"),
            hook_sink(receiver, "/ok", name="ok"),
        ],
        max_attempts=2,
        timeout=0.3,
    )
    await n.start()
    try:
        started = time.monotonic()
        for i in range(3):
            n.hook("events", change("stage.started", request_id=f"r{i}"))
        assert time.monotonic() - started < 0.1  # the hook only queues
        got = await receiver.wait_for(lambda r: len(r) == 3, timeout=5)
        assert time.monotonic() - started < 1.5
        assert [r.json()["request"]["id"] for r in got] == ["r0", "r1", "r2"]
        assert {r.path for r in got} == {"/ok"}
        assert await n.wait_idle(timeout=10)
    finally:
        await n.stop()
    assert n.counts["ok", "webhook", "delivered"] == 3
    assert n.counts["dead", "webhook", "failed"] == 3
    assert n.counts["slow", "webhook", "failed"] == 3


async def test_queue_overflow_drops_the_oldest_and_counts(receiver: Receiver) -> None:
    n = notifier([hook_sink(receiver)], queue_size=3)
    for i in range(5):  # not started yet: everything waits in the queue
        n.hook("events", change("stage.started", request_id=f"r{i}"))
    assert n.pending == 3
    assert n.counts["webhook-1", "webhook", "dropped"] == 2
    await n.start()
    try:
        got = await receiver.wait_for(lambda r: len(r) == 3)
        assert await n.wait_idle()
    finally:
        await n.stop()
    assert [r.json()["request"]["id"] for r in got] == ["r2", "r3", "r4"]
    assert n.counts["webhook-1", "webhook", "delivered"] == 3


async def test_event_filter_per_sink(receiver: Receiver) -> None:
    n = notifier(
        [
            hook_sink(receiver, "/stages", events=["stage.*"]),
            hook_sink(receiver, "/final", events=["request.approved", "request.denied"]),
        ]
    )
    await n.start()
    try:
        n.hook("events", change("request.created", "stage.started"))
        n.hook("events", change("stage.escalated", "approval.given", "request.approved"))
        await receiver.wait_for(lambda r: len(r) == 3)
        assert await n.wait_idle()
    finally:
        await n.stop()
    assert [r.headers["x-jitgate-event"] for r in receiver.at("/stages")] == [
        "stage.started",
        "stage.escalated",
    ]
    assert [r.headers["x-jitgate-event"] for r in receiver.at("/final")] == ["request.approved"]


async def test_stop_drains_the_queue(receiver: Receiver) -> None:
    receiver.plan("/hook", (500, {}))
    n = notifier([hook_sink(receiver)])
    await n.start()
    for i in range(20):
        n.hook("events", change("stage.started", request_id=f"r{i}"))
    await n.stop(timeout=10)
    assert len(receiver.received) == 20
    assert n.counts["webhook-1", "webhook", "delivered"] == 20
    assert n.pending == 0


async def test_stop_gives_up_after_its_timeout() -> None:
    n = notifier([{"type": "webhook", "url": dead_url(), "secret": SECRET}], max_attempts=20)
    n.backoff_base = n.backoff_max = 1.0
    await n.start()
    for i in range(5):
        n.hook("events", change("stage.started", request_id=f"r{i}"))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await n.stop(timeout=0.3)
    assert time.monotonic() - started < 1.0
    assert n.counts["webhook-1", "webhook", "abandoned"] == 5
    n.hook("events", change("stage.started"))  # after stop: counted, not queued
    assert n.pending == 0
    assert n.counts["webhook-1", "webhook", "abandoned"] == 6


async def test_secrets_never_reach_the_logs(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token_path = "/services/T000/B000/XXXXsecretpathXXXX"
    receiver.plan(token_path, (500, {}), (400, {}))
    n = notifier(
        [
            {"type": "webhook", "url": dead_url(token_path), "secret": SECRET},
            {"type": "slack", "url": receiver.url(token_path)},
        ],
        max_attempts=2,
    )
    assert SECRET not in repr(n.config)
    assert "secretpath" not in repr(n.config)
    await n.start()
    try:
        n.hook("events", change("stage.started", notify_groups=["approvers"]))
        assert await n.wait_idle()
    finally:
        await n.stop()
    assert n.counts["webhook-1", "webhook", "failed"] == 1
    assert n.counts["slack-2", "slack", "failed"] == 1
    assert "giving up" in caplog.text
    assert any(r.name == "httpx" and "<redacted>" in r.getMessage() for r in caplog.records)
    assert "secretpath" not in caplog.text
    assert SECRET not in caplog.text


async def test_a_broken_change_never_raises_out_of_the_hook(receiver: Receiver) -> None:
    n = notifier([hook_sink(receiver), {"type": "slack", "url": receiver.url("/slack")}])
    n.hook("events", {"events": "nonsense"})
    n.hook("events", {"events": [{"type": "stage.started", "payload": None}], "request": None})
    n.hook("events", {"events": [{"type": "request.denied", "payload": {"by": object()}}]})
    await n.start()
    try:
        assert await n.wait_idle()
    finally:
        await n.stop()
    # Whatever could be rendered went out; nothing crashed the workers.
    assert all(r.path in ("/hook", "/slack") for r in receiver.received)
    assert json.loads(receiver.at("/hook")[0].body)["event"]["type"] == "stage.started"


def documented_verifier() -> Any:
    """The ``verify`` function of docs/notifications.md, run as written."""
    doc = (Path(__file__).parent.parent / "docs" / "notifications.md").read_text()
    (code,) = [
        block.split("\n", 1)[1]
        for block in doc.split("```")[1::2]
        if block.startswith("python") and "def verify(" in block
    ]
    namespace: dict[str, Any] = {}
    exec(compile(code, "docs/notifications.md", "exec"), namespace)
    return namespace["verify"]


async def test_the_documented_verifier_accepts_once_and_refuses_forgeries(
    receiver: Receiver,
) -> None:
    verify = documented_verifier()
    n = notifier([hook_sink(receiver)])
    await n.start()
    try:
        n.hook("events", change("break_glass.used", justification="prod down"))
        (got,) = await receiver.wait_for(lambda r: len(r) == 1)
    finally:
        await n.stop()
    assert not verify(b"wrong-secret-wrong-secret", got.headers, got.body)
    assert not verify(SECRET.encode(), got.headers, got.body + b" ")
    assert verify(SECRET.encode(), got.headers, got.body)
    assert not verify(SECRET.encode(), got.headers, got.body)  # the replay
