"""The approval port, the same behaviour through both adapters.

``InProcessApprovals`` calls the ApprovalService of the ``api`` fixture
directly; ``RemoteApprovals`` calls the same app on a real uvicorn server
with the gateway's service-account token (``gw``). Each behavioural test runs
against both, on both store backends. Approvers act through the API, as
people would.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from conftest import ApiEnv
from jitgate.actions.model import Action
from jitgate.audit.keys import TrustedKeys
from jitgate.evaluator import Evaluator
from jitgate.gateways import (
    ApprovalPort,
    ApprovalUnavailable,
    GatewayRefused,
    GatewayUser,
    StatementRecord,
)
from jitgate.gateways.inprocess import InProcessApprovals
from jitgate.gateways.records import PartiallyRecorded
from jitgate.gateways.remote import RemoteApprovals
from jitgate.policy import load_policy_text
from jitgate.policy.compile import compile_policy
from jitgate.service import ApprovalService
from jitgate.store import Database, Identity, last_seq, list_events
from jitgate.store.audit import verify_store
from test_server_sse import live

ANN = GatewayUser("ann", frozenset({"dev"}))
GATEWAY = "pg-test"


@dataclass
class GatewayEnv:
    api: ApiEnv
    port: Any  # the adapter (an ApprovalPort)
    kind: str
    #: The ``recorded_by`` of statements this adapter records.
    recorded_by: str
    url: str = ""


@pytest.fixture(params=["inprocess", "remote"])
async def gw(request: pytest.FixtureRequest, api: ApiEnv) -> AsyncIterator[GatewayEnv]:
    if request.param == "inprocess":
        port: ApprovalPort = InProcessApprovals(api.service, gateway=GATEWAY)
        try:
            yield GatewayEnv(api, port, "inprocess", f"gateway:{GATEWAY}")
        finally:
            await port.close()
        return
    async with live(api) as (url, _server):
        remote = RemoteApprovals(url, api.tokens["gw"], gateway=GATEWAY, policy_refresh=0)
        await remote.start()
        try:
            yield GatewayEnv(api, remote, "remote", "gw", url)
        finally:
            await remote.close()


async def add_user(api: ApiEnv, name: str, groups: tuple[str, ...] = ()) -> str:
    async with api.db.transaction() as session:
        identity = Identity(session)
        await identity.add_user(name, groups)
        token, _ = await identity.create_token(name, "test")
    return token


async def trail_since(db: Database, seq: int) -> list[Any]:
    async with db.transaction(readonly=True) as session:
        return await list_events(session, after_seq=seq)


async def head(db: Database) -> int:
    async with db.transaction(readonly=True) as session:
        return await last_seq(session)


def held(api: ApiEnv) -> dict[str, Any]:
    """An action the server policy holds for `approvers` (a DELETE in production)."""
    action = api.action()
    return {k: action[k] for k in ("kind", "text", "env", "target")}


async def request_of(api: ApiEnv, request_id: str) -> dict[str, Any]:
    response = await api.call("root", "GET", f"/api/v1/requests/{request_id}")
    assert response.status_code == 200, response.text
    view: dict[str, Any] = response.json()
    return view


# --- authentication ------------------------------------------------------------------------


async def test_authenticate_accepts_only_the_users_own_valid_token(gw: GatewayEnv) -> None:
    api, port = gw.api, gw.port
    assert await port.authenticate("ann", api.tokens["ann"], "10.1.2.3") == ANN
    # Twice (the remote adapter answers the second from its cache).
    assert await port.authenticate("ann", api.tokens["ann"], "10.1.2.3") == ANN
    assert await port.authenticate("bob", api.tokens["bob"], "") == GatewayUser(
        "bob", frozenset({"approvers"})
    )
    # Somebody else's token, a wrong one, expired, revoked, a disabled user's.
    assert await port.authenticate("ann", api.tokens["bob"], "10.1.2.3") is None
    assert await port.authenticate("bob", api.tokens["ann"], "10.1.2.3") is None
    before = await head(api.db)
    assert await port.authenticate("ann", "jg_not-a-real-token-at-all", "10.1.2.3") is None
    assert await port.authenticate("ann", api.tokens["ann-expired"], "10.1.2.3") is None
    assert await port.authenticate("ann", api.tokens["ann-revoked"], "10.1.2.3") is None
    assert await port.authenticate("ann", "", "10.1.2.3") is None
    zed = await add_user(api, "zed", ("dev",))
    assert await port.authenticate("zed", zed, "") == GatewayUser("zed", frozenset({"dev"}))
    async with api.db.transaction() as session:
        await Identity(session).disable_user("zed")
    if gw.kind == "remote":
        port._auth.clear()  # a success is remembered for 30 s (tested below)
    assert await port.authenticate("zed", zed, "") is None

    # The failure is recorded against the user's address, not the gateway's.
    failed = [e for e in await trail_since(api.db, before) if e.type == "auth.failed"]
    assert failed, "no auth.failed event"
    assert failed[0].payload["client"] == "10.1.2.3"
    # The token itself is kept nowhere in the adapter.
    assert api.tokens["ann"] not in repr(vars(port))


# --- submit ------------------------------------------------------------------------------


async def test_submit_allow_deny_and_require_approval(gw: GatewayEnv) -> None:
    api, port = gw.api, gw.port
    # The gateway decides with the server's policy locally.
    assert port.evaluator.policy.source_sha256 == api.service.evaluator.policy.source_sha256

    allowed = await port.submit(
        ANN, {"kind": "sql", "text": "SELECT 1", "env": "prod", "target": "main"}
    )
    assert allowed.outcome == "allow"
    assert allowed.request is None

    denied = await port.submit(
        ANN, {"kind": "sql", "text": "SELECT 1", "env": "staging", "target": "forbidden"}
    )
    assert denied.outcome == "deny"
    assert denied.request is None
    assert denied.decision["message"] == "never here"

    submitted = await port.submit(ANN, held(api))
    assert submitted.outcome == "require_approval"
    assert submitted.request is not None
    view = await request_of(api, submitted.request["id"])
    assert view["status"] == "pending"
    assert view["requester"] == "ann"
    assert view["action"]["environment"] == "production"


# --- the whole approval ------------------------------------------------------------------


async def test_watch_until_approved_then_authorize_and_report(gw: GatewayEnv) -> None:
    api, port = gw.api, gw.port
    submitted = await port.submit(ANN, held(api))
    assert submitted.request is not None
    request_id = submitted.request["id"]
    statuses: list[str] = []
    approved = asyncio.Event()

    async def follow() -> None:
        async for view in port.watch(ANN, request_id):
            statuses.append(view["status"])
            if view["status"] == "approved":
                approved.set()

    watching = asyncio.create_task(follow())
    try:
        async with asyncio.timeout(10):
            while not statuses:
                await asyncio.sleep(0.01)
        assert statuses == ["pending"]
        await api.act("bob", request_id, "approve", {"comment": "go"})
        await asyncio.wait_for(approved.wait(), 10)

        with pytest.raises(GatewayRefused) as refused:
            await port.authorize(ANN, request_id, "sha256:" + "0" * 64)
        assert refused.value.code == "grant_mismatch"

        view = await port.authorize(ANN, request_id, submitted.request["fingerprint"])
        assert view["status"] == "executing"
        await port.report_outcome(ANN, request_id, rows_affected=3, duration_ms=12)
        await asyncio.wait_for(watching, 10)
    finally:
        watching.cancel()
    assert statuses[0] == "pending"
    assert "approved" in statuses
    assert statuses[-1] == "executed"

    final = await request_of(api, request_id)
    assert final["status"] == "executed"
    assert final["execution"]["rows_affected"] == 3
    # The grant is single use.
    with pytest.raises(GatewayRefused):
        await port.authorize(ANN, request_id, submitted.request["fingerprint"])


async def test_a_statement_without_a_row_count_reports_success(gw: GatewayEnv) -> None:
    api, port = gw.api, gw.port
    submitted = await port.submit(ANN, held(api))
    assert submitted.request is not None
    request_id = submitted.request["id"]
    await api.act("bob", request_id, "approve")
    await port.authorize(ANN, request_id, submitted.request["fingerprint"])
    await port.report_outcome(ANN, request_id, duration_ms=1)
    assert (await request_of(api, request_id))["status"] == "executed"


async def test_cancel_and_refusals(gw: GatewayEnv) -> None:
    api, port = gw.api, gw.port
    submitted = await port.submit(ANN, held(api))
    assert submitted.request is not None
    request_id = submitted.request["id"]
    await port.cancel(ANN, request_id)
    assert (await request_of(api, request_id))["status"] == "cancelled"
    views = [view async for view in port.watch(ANN, request_id)]
    assert [v["status"] for v in views] == ["cancelled"]

    with pytest.raises(GatewayRefused) as refused:
        await port.cancel(ANN, request_id)
    assert refused.value.code == "not_pending"
    with pytest.raises(GatewayRefused) as refused:
        [view async for view in port.watch(ANN, "req_doesnotexist")]
    assert refused.value.code == "not_found"
    with pytest.raises(GatewayRefused) as refused:
        await port.submit(ANN, {"kind": "sql", "text": "SELECT 1", "bogus": 1})
    assert refused.value.code == "invalid_body"


# --- the audit trail -----------------------------------------------------------------------


async def test_record_statements_appends_to_a_verifiable_trail(gw: GatewayEnv) -> None:
    api, port = gw.api, gw.port
    before = await head(api.db)
    records = [
        StatementRecord(
            user="ann",
            target="main",
            environment="prod",
            text="SELECT * FROM invoices WHERE id = $1",
            decision="allow",
            duration_ms=1.25,
            tag="SELECT 1",
            rows=1,
            parameters=["42", None, "\\x00ff"],
            session="s-1",
            client="10.0.0.7",
            gateway=GATEWAY,
            at="2031-03-04T10:00:00.123456+00:00",
        ),
        StatementRecord(
            user="bob",
            target="main",
            environment="production",
            text="DELETE FROM invoices WHERE id = 7",
            decision="require_approval",
            tag=None,
            error="23503: update or delete violates a foreign key constraint",
            request_id="req_released",
            session="s-2",
        ),
        StatementRecord(
            user="ann",
            target="main",
            environment="production",
            text="SELECT 'grüße ✓ 😀'",
            decision="deny",
            extra={"note": "refused locally"},
        ),
    ]
    await port.record_statements(records)

    events = await trail_since(api.db, before)
    assert [e.type for e in events] == ["statement.executed"] * 3
    first, second, third = events
    assert (first.actor, first.target, first.environment) == ("ann", "main", "production")
    assert first.request_id is None
    assert first.payload == {
        "text": "SELECT * FROM invoices WHERE id = $1",
        "decision": "allow",
        "duration_ms": 1.25,
        "tag": "SELECT 1",
        "rows": 1,
        "error": None,
        "parameters": ["42", None, "\\x00ff"],
        "session": "s-1",
        "client": "10.0.0.7",
        "gateway": GATEWAY,
        "at": "2031-03-04T10:00:00.123456+00:00",
        "recorded_by": gw.recorded_by,
    }
    assert second.actor == "bob"
    assert second.request_id == "req_released"
    assert second.payload["error"].startswith("23503")
    assert third.payload["text"] == "SELECT 'grüße ✓ 😀'"
    assert third.payload["extra"] == {"note": "refused locally"}

    assert (await verify_store(api.db, TrustedKeys(), allow_unsigned=10**6)).ok
    # Through the audit API too.
    listed = await api.call("audrey", "GET", "/api/v1/audit", params={"type": "statement.*"})
    assert [e["actor"] for e in listed.json()["events"]] == ["ann", "bob", "ann"]


async def test_an_oversized_statement_is_recorded_cut_with_its_digest(gw: GatewayEnv) -> None:
    api, port = gw.api, gw.port
    before = await head(api.db)
    text = "SELECT '" + "x" * (1536 * 1024) + "'"
    small = StatementRecord(
        user="ann", target="t", environment="dev", text="SELECT 2", decision="allow"
    )
    big = StatementRecord(user="ann", target="t", environment="dev", text=text, decision="allow")
    await port.record_statements([small, big, small])

    events = await trail_since(api.db, before)
    assert [e.payload["text"] for e in events][::2] == ["SELECT 2", "SELECT 2"]
    cut = events[1].payload
    assert text.startswith(cut["text"])
    assert 900 * 1024 < len(cut["text"]) <= 1024 * 1024
    assert cut["extra"] == {
        "text_truncated": True,
        "text_bytes": len(text),
        "text_sha256": hashlib.sha256(text.encode()).hexdigest(),
    }
    assert (await verify_store(api.db, TrustedKeys(), allow_unsigned=10**6)).ok


# --- failing closed ------------------------------------------------------------------------


async def test_in_process_store_down_is_unavailable() -> None:
    db = Database("postgresql://postgres@127.0.0.1:1/jitgate_nowhere")
    service = ApprovalService(db, Evaluator())
    port = InProcessApprovals(service, gateway=GATEWAY)
    try:
        with pytest.raises(ApprovalUnavailable):
            await port.authenticate("ann", "jg_whatever-token", "10.0.0.1")
        with pytest.raises(ApprovalUnavailable):
            await port.submit(ANN, {"kind": "sql", "text": "DELETE FROM t", "env": "prod"})
        record = StatementRecord(
            user="ann", target="t", environment="dev", text="x", decision="allow"
        )
        with pytest.raises(ApprovalUnavailable):
            await port.record_statements([record])
    finally:
        await port.close()
        await db.close()


async def test_remote_server_down_is_unavailable_and_denies_everything() -> None:
    port = RemoteApprovals("http://127.0.0.1:1", "jg_token", gateway=GATEWAY, timeout=2)
    try:
        with pytest.raises(ApprovalUnavailable):
            await port.start()
        action = Action.from_record({"kind": "sql", "text": "SELECT 1", "env": "dev"})
        assert port.evaluator.evaluate(action).outcome.label == "deny"
        with pytest.raises(ApprovalUnavailable):
            await port.authenticate("ann", "jg_some-token", "")
        with pytest.raises(ApprovalUnavailable):
            await port.submit(ANN, {"kind": "sql", "text": "DELETE FROM t"})
        with pytest.raises(ApprovalUnavailable):
            [v async for v in port.watch(ANN, "req_x")]
    finally:
        await port.close()


def mock_port(handler: Any, **options: Any) -> RemoteApprovals:
    return RemoteApprovals(
        "http://jitgate",
        "jg_gateway-token",
        gateway=GATEWAY,
        transport=httpx.MockTransport(handler),
        **options,
    )


def error(status: int, code: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": f"{code}!"}})


async def test_remote_maps_statuses() -> None:
    answers = {
        "/api/v1/requests": error(500, "internal_error"),
        "/api/v1/requests/req_1/cancel": error(409, "not_pending"),
        "/api/v1/requests/req_2/cancel": error(401, "unauthenticated"),
        "/api/v1/requests/req_3/cancel": error(503, "unavailable"),
        "/api/v1/me": error(429, "too_many_failures"),
    }
    port = mock_port(lambda request: answers[request.url.path])
    try:
        with pytest.raises(ApprovalUnavailable):
            await port.submit(ANN, {"kind": "sql", "text": "x"})
        with pytest.raises(GatewayRefused) as refused:
            await port.cancel(ANN, "req_1")
        assert (refused.value.code, refused.value.message) == ("not_pending", "not_pending!")
        with pytest.raises(ApprovalUnavailable, match="refused the gateway's token"):
            await port.cancel(ANN, "req_2")
        with pytest.raises(ApprovalUnavailable):
            await port.cancel(ANN, "req_3")
        with pytest.raises(GatewayRefused) as refused:
            await port.authenticate("ann", "jg_token", "")
        assert refused.value.code == "too_many_failures"
        with pytest.raises(GatewayRefused):
            await port.cancel(ANN, "../audit")
        # Not a token: refused without asking anybody.
        assert await port.authenticate("ann", "a b", "") is None
        assert await port.authenticate("ann", "pässword", "") is None
    finally:
        await port.close()


# --- remote only: the policy, the authentication cache, batching ---------------------------

OTHER_POLICY = """
version: 1
name: other
default: deny
"""


async def test_remote_policy_is_swapped_only_when_it_changed(api: ApiEnv) -> None:
    async with live(api) as (url, _server):
        port = RemoteApprovals(url, api.tokens["gw"], gateway=GATEWAY, policy_refresh=0.05)
        await port.start()
        try:
            first = port.evaluator
            assert port.policy_sha256 == api.service.evaluator.policy.source_sha256
            assert await port.refresh_policy() is False
            assert port.evaluator is first

            api.service.evaluator = Evaluator(load_policy_text(OTHER_POLICY, "other.yaml"))
            async with asyncio.timeout(10):  # the background refresh picks it up
                while port.evaluator is first:
                    await asyncio.sleep(0.02)
            assert port.evaluator.policy.name == "other"
            assert port.policy_source == "other.yaml"
            swapped = port.evaluator

            # A server whose policy has no text: the refresh fails, the policy stays.
            api.service.evaluator = Evaluator(compile_policy(swapped.policy.spec))
            errors = port.policy_errors
            async with asyncio.timeout(10):
                while port.policy_errors == errors:
                    await asyncio.sleep(0.02)
            assert port.evaluator is swapped
        finally:
            await port.close()


async def test_remote_authentication_is_cached_for_a_while(api: ApiEnv) -> None:
    now = [1000.0]
    async with live(api) as (url, _server):
        port = RemoteApprovals(
            url, api.tokens["gw"], gateway=GATEWAY, policy_refresh=0, clock=lambda: now[0]
        )
        try:
            zed = await add_user(api, "zed")
            assert await port.authenticate("zed", zed, "") == GatewayUser("zed")
            async with api.db.transaction() as session:
                await Identity(session).disable_user("zed")
            now[0] += 29
            assert await port.authenticate("zed", zed, "") == GatewayUser("zed")
            # The cached token still only authenticates its own user.
            assert await port.authenticate("ann", zed, "") is None
            now[0] += 2
            assert await port.authenticate("zed", zed, "") is None
            assert zed not in repr(vars(port))
        finally:
            await port.close()


async def test_remote_splits_batches_to_fit_and_reports_partial_writes() -> None:
    bodies: list[Mapping[str, Any]] = []
    fail_from = [99]

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v1/audit/statements"
        assert len(request.content) <= 10_000
        if len(bodies) >= fail_from[0]:
            return error(503, "unavailable")
        body = json.loads(request.content)
        bodies.append(body)
        return httpx.Response(202, json={"recorded": len(body["records"])})

    port = mock_port(handler, max_request_bytes=10_000)
    try:
        records = [
            StatementRecord(
                user="ann", target="t", environment="dev", text="x" * 3000, decision="allow"
            )
            for _ in range(7)
        ]
        await port.record_statements(records)
        assert [len(b["records"]) for b in bodies] == [3, 3, 1]

        bodies.clear()
        fail_from[0] = 1
        with pytest.raises(PartiallyRecorded) as partial:
            await port.record_statements(records)
        assert partial.value.recorded == 3
        assert isinstance(partial.value.cause, ApprovalUnavailable)

        bodies.clear()
        fail_from[0] = 99
        huge = StatementRecord(
            user="ann", target="t", environment="dev", text="é\n" * 20_000, decision="allow"
        )
        await port.record_statements([huge])
        (sent,) = bodies[0]["records"]
        assert sent["extra"]["text_truncated"] is True
        assert sent["extra"]["text_bytes"] == len(huge.text.encode())
        assert huge.text.startswith(sent["text"])
    finally:
        await port.close()


async def test_remote_watch_follows_a_request_across_a_reconnection() -> None:
    def sse(*statuses: str) -> httpx.Response:
        body = "".join(
            f'event: state\ndata: {{"id": "req_1", "status": "{s}"}}\n\n' for s in statuses
        )
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, text=body)

    streams = [sse("pending"), sse("pending", "approved"), sse("approved", "executed")]
    port = mock_port(lambda request: streams.pop(0))
    try:
        views = [v["status"] async for v in port.watch(ANN, "req_1")]
    finally:
        await port.close()
    assert views == ["pending", "approved", "executed"]  # each state once
    assert streams == []


async def test_in_process_rereads_the_principal_after_its_ttl(api: ApiEnv) -> None:
    now = [0.0]
    port = InProcessApprovals(api.service, gateway=GATEWAY, clock=lambda: now[0])
    zed_token = await add_user(api, "zed", ("dev",))
    zed = await port.authenticate("zed", zed_token, "")
    assert zed == GatewayUser("zed", frozenset({"dev"}))
    async with api.db.transaction() as session:
        await Identity(session).disable_user("zed")
    action = {"kind": "sql", "text": "SELECT 1", "env": "prod", "target": "main"}
    assert (await port.submit(zed, action)).outcome == "allow"  # the principal it had
    now[0] += 31
    with pytest.raises(GatewayRefused) as refused:
        await port.submit(zed, action)
    assert refused.value.code == "unauthenticated"
    # A user the adapter never saw is read from the store.
    assert (await port.submit(GatewayUser("dave"), action)).outcome == "allow"
