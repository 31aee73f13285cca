"""Notifications from a real ApprovalService (SQLite and PostgreSQL) and from a
real server (``serve(notify_path=...)``) to a real HTTP receiver."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import ServiceWorld
from jitgate.notify import Notifier, parse_notify_config, verify_signature
from jitgate.notify.slack import mrkdwn_texts
from jitgate.store import Database, Identity, migrate
from notify_receiver import Receiver, dead_url, running_receiver

SECRET = "e2e-secret-0123456789"


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with running_receiver() as running:
        yield running


def hook_events(receiver: Receiver, path: str = "/hook") -> list[dict[str, Any]]:
    return [r.json() for r in receiver.at(path)]


def types(receiver: Receiver, path: str = "/hook") -> list[str]:
    return [b["event"]["type"] for b in hook_events(receiver, path)]


async def test_submission_and_escalation_notify_the_right_groups(
    world: ServiceWorld, receiver: Receiver
) -> None:
    s, p, clock = world.service, world.p, world.clock
    assert clock is not None
    config = parse_notify_config(
        {
            "sinks": [
                {"type": "webhook", "name": "dead", "url": dead_url(), "secret": SECRET},
                {"type": "webhook", "name": "hook", "url": receiver.url("/hook"), "secret": SECRET},
                {
                    "type": "slack",
                    "name": "slack",
                    "url": receiver.url("/slack"),
                    "base_url": "https://jitgate.example.com",
                },
            ],
            "max_attempts": 4,
            "timeout": 2,
        },
        environ={},
    )
    # The dead sink retries slowly: approvals must not notice.
    notifier = Notifier(config, environ={}, backoff_base=1.0, drain_timeout=0.5)
    notifier.attach(s)
    await notifier.start()
    try:
        started = time.monotonic()
        view = await world.submit("ann", "escalating", text="DELETE FROM invoices")
        assert time.monotonic() - started < 2.0
        rid = view["id"]
        await receiver.wait_for(lambda _: len(receiver.at("/hook")) >= 2)
        assert types(receiver)[:2] == ["request.created", "stage.started"]
        started_event = hook_events(receiver)[1]
        assert started_event["event"]["payload"]["notify_groups"] == ["approvers"]
        assert started_event["event"]["payload"]["stage"] == "approvers"
        assert started_event["event"]["actor"] == "ann"
        assert started_event["request"]["id"] == rid
        assert started_event["request"]["waiting_for"]["groups"] == ["approvers"]
        for got in receiver.at("/hook"):
            assert verify_signature(SECRET, got.headers, got.body)

        await receiver.wait_for(lambda _: len(receiver.at("/slack")) >= 1)
        slack = "\n".join(mrkdwn_texts(receiver.at("/slack")[0].json()))
        assert "`approvers`" in slack
        assert "```DELETE FROM invoices```" in slack
        assert f"https://jitgate.example.com/api/v1/requests/{rid}" in slack

        # Ten minutes without approval: the stage escalates to the leads.
        clock.advance(minutes=11)
        assert await s.run_due() == 1
        await receiver.wait_for(lambda _: "stage.escalated" in types(receiver))
        (escalated,) = [b for b in hook_events(receiver) if b["event"]["type"] == "stage.escalated"]
        assert escalated["event"]["payload"]["notify_groups"] == ["leads"]
        assert escalated["event"]["actor"] is None  # the clock did it
        assert escalated["event"]["payload"]["deadline"]
        assert escalated["request"]["stages"][0]["state"] == "escalated"
        await receiver.wait_for(lambda _: len(receiver.at("/slack")) >= 2)
        slack = "\n".join(mrkdwn_texts(receiver.at("/slack")[1].json()))
        assert "`leads`" in slack

        # A lead approves; the dead sink still has not held anything up.
        started = time.monotonic()
        approved = await s.approve(p["leo"], rid)
        assert time.monotonic() - started < 2.0
        assert approved["status"] == "approved"
        await receiver.wait_for(lambda _: "request.approved" in types(receiver))
        await receiver.wait_for(lambda _: len(receiver.at("/slack")) >= 3)
        assert "approved" in receiver.at("/slack")[2].json()["blocks"][0]["text"]["text"]
    finally:
        await notifier.stop()
    assert notifier.counts["hook", "webhook", "failed"] == 0
    assert notifier.counts["slack", "slack", "delivered"] == 3
    dead = sum(notifier.counts["dead", "webhook", r] for r in ("failed", "abandoned"))
    assert dead == len(types(receiver))  # every event, and none of them delivered
    assert notifier.counts["dead", "webhook", "delivered"] == 0


async def test_a_hook_that_fails_does_not_fail_the_approval(
    world: ServiceWorld, receiver: Receiver
) -> None:
    config = parse_notify_config(
        {"sinks": [{"type": "webhook", "url": receiver.url("/hook"), "secret": SECRET}]},
        environ={},
    )
    notifier = Notifier(config, environ={})
    notifier.attach(world.service)
    # Even a notifier whose queueing breaks leaves the service alone.
    notifier._put = None  # type: ignore[assignment,method-assign]
    view = await world.submit("ann", "one")
    assert view["status"] == "pending"
    await notifier.stop()


# --- the server: serve(notify_path=...) -----------------------------------------------


async def _users(url: str) -> dict[str, str]:
    await migrate(url)
    tokens: dict[str, str] = {}
    async with Database(url) as db, db.transaction() as session:
        identity = Identity(session)
        for name, groups in (("ann", ["dev"]), ("bob", ["approvers"])):
            await identity.add_user(name, groups)
            tokens[name], _ = await identity.create_token(name, "test")
    return tokens


async def test_serve_with_a_notify_file(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jitgate.policy import default_policy
    from jitgate.server.run import serve

    monkeypatch.setenv("E2E_HOOK_SECRET", SECRET)
    notify = tmp_path / "notify.yaml"
    notify.write_text(
        "sinks:\n"
        "  - type: webhook\n"
        f"    url: {receiver.url('/hook')}\n"
        "    secret_env: E2E_HOOK_SECRET\n"
        "    events: [stage.started, request.approved]\n",
        encoding="utf-8",
    )
    url = f"sqlite:///{tmp_path / 'jitgate.db'}"
    tokens = await _users(url)
    ready: list[tuple[str, int]] = []
    stop = asyncio.Event()
    task = asyncio.create_task(
        serve(
            url,
            data_dir=tmp_path,
            port=0,
            policy=default_policy(),
            notify_path=notify,
            log_level="warning",
            install_signal_handlers=False,
            on_ready=lambda host, port: ready.append((host, port)),
            shutdown=stop,
        )
    )
    try:
        async with asyncio.timeout(20):
            while not ready:
                assert not task.done(), task
                await asyncio.sleep(0.01)
        host, port = ready[0]
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=10) as http:
            ann = {"Authorization": f"Bearer {tokens['ann']}"}
            bob = {"Authorization": f"Bearer {tokens['bob']}"}
            held = await http.post(
                "/api/v1/requests",
                json={"kind": "sql", "text": "DROP TABLE invoices", "env": "prod"},
                headers=ann,
            )
            assert held.status_code == 201, held.text
            rid = held.json()["request"]["id"]
            await receiver.wait_for(lambda r: len(r) >= 1)
            first = receiver.received[0]
            assert verify_signature(SECRET, first.headers, first.body)
            assert first.json()["event"]["type"] == "stage.started"
            assert first.json()["event"]["payload"]["notify_groups"] == ["approvers"]
            approved = await http.post(f"/api/v1/requests/{rid}/approve", json={}, headers=bob)
            assert approved.status_code == 200, approved.text
            await receiver.wait_for(lambda r: len(r) >= 2)
            assert receiver.received[1].json()["event"]["type"] == "request.approved"
            metrics = (await http.get("/metrics", headers=ann)).text
            delivered = re.search(
                r'^jitgate_notifications_total\{result="delivered",sink="webhook-1",'
                r'type="webhook"\} (\d+)\.0$',
                metrics,
                re.MULTILINE,
            )
            assert delivered is not None, metrics
            assert int(delivered.group(1)) >= 1
            assert SECRET not in metrics
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


async def test_serve_refuses_a_bad_notify_file(tmp_path: Path) -> None:
    from jitgate.notify import NotifyConfigError
    from jitgate.server.run import serve

    bad = tmp_path / "notify.yaml"
    bad.write_text("sinks: [{type: slack}]\n", encoding="utf-8")
    with pytest.raises(NotifyConfigError, match=r"notify\.yaml"):
        await serve(f"sqlite:///{tmp_path / 'x.db'}", notify_path=bad)
    assert not (tmp_path / "x.db").exists()
