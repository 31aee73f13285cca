"""The REST API over a real service and store (SQLite and PostgreSQL), through httpx.

Happy paths, refusals, bad input (and that it leaves the store untouched),
the body limit, authentication, errors, metrics and the OpenAPI document.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import ApiEnv, make_api_env
from jitgate.store import Database

API = "/api/v1"
MIB = 1024 * 1024


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus text exposition (0 if absent)."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


def error_of(response: httpx.Response) -> tuple[int, str]:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    return response.status_code, body["error"]["code"]


# --- meta endpoints -------------------------------------------------------------------


async def test_healthz_needs_no_token(api: ApiEnv) -> None:
    response = await api.call(None, "GET", "/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_openapi_document(api: ApiEnv) -> None:
    response = await api.call(None, "GET", "/openapi.json")
    assert response.status_code == 200
    doc = response.json()
    paths = doc["paths"]
    assert set(paths) == {
        "/healthz",
        "/metrics",
        f"{API}/evaluate",
        f"{API}/requests",
        f"{API}/requests/{{id}}",
        *(
            f"{API}/requests/{{id}}/{verb}"
            for verb in (
                "approve",
                "deny",
                "cancel",
                "break-glass",
                "review",
                "authorize",
                "outcome",
                "events",
            )
        ),
        f"{API}/requests/{{id}}/receipt",
        f"{API}/audit/public-key",
        f"{API}/audit/report",
        f"{API}/audit",
        f"{API}/grants",
        f"{API}/grants/{{id}}/revoke",
        f"{API}/me",
        f"{API}/policy",
        f"{API}/audit/statements",
    }
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API token (`jitgate admin token create`).",
    }
    approve = paths[f"{API}/requests/{{id}}/approve"]["post"]
    assert approve["security"] == [{"bearer": []}]
    # Errors are documented in our shape; FastAPI's default 422 schema is gone.
    error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
    for status in ("400", "401", "403", "404", "409", "413", "422"):
        assert approve["responses"][status]["content"]["application/json"]["schema"] == error_ref
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    request_body = doc["components"]["schemas"]["ActionBody"]
    assert request_body["additionalProperties"] is False
    events = paths[f"{API}/requests/{{id}}/events"]["get"]
    assert "text/event-stream" in events["responses"]["200"]["content"]
    assert "security" not in paths["/healthz"]["get"]


# --- the happy path -------------------------------------------------------------------


async def test_submit_approve_authorize_report(api: ApiEnv) -> None:
    action = api.action()
    response = await api.call("ann", "POST", f"{API}/requests", json=action)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["decision"]["decision"] == "require_approval"
    assert body["decision"]["rules"] == ["production-dangerous"]
    view = body["request"]
    assert view["status"] == "pending"
    assert view["requester"] == "ann"
    assert view["action"]["text"] == action["text"]
    assert view["action"]["environment"] == "production"
    assert view["waiting_for"] == {"stage": "approvers", "groups": ["approvers"],
                                   "approvals_needed": 1}  # fmt: skip
    request_id = view["id"]

    got = await api.call("ann", "GET", f"{API}/requests/{request_id}")
    assert got.status_code == 200
    assert got.json()["id"] == request_id

    approved = await api.act("bob", request_id, "approve", {"comment": "looks fine"})
    assert approved["status"] == "approved"
    assert approved["stages"][0]["approvals"][0]["user"] == "bob"
    assert approved["stages"][0]["approvals"][0]["comment"] == "looks fine"
    assert approved["grant"]["fingerprint"] == view["fingerprint"]

    executing = await api.act("ann", request_id, "authorize", {"fingerprint": view["fingerprint"]})
    assert executing["status"] == "executing"
    assert executing["grant"]["used_at"] is not None

    done = await api.act(
        "ann", request_id, "outcome", {"exit_code": 0, "rows_affected": 3, "duration_ms": 12}
    )
    assert done["status"] == "executed"
    assert done["execution"]["rows_affected"] == 3
    assert done["execution"]["reported_by"] == "ann"

    # The grant was single use.
    again = await api.call(
        "ann",
        "POST",
        f"{API}/requests/{request_id}/authorize",
        json={"fingerprint": view["fingerprint"]},
    )
    assert error_of(again)[0] == 409


async def test_evaluate_and_unheld_submissions(api: ApiEnv) -> None:
    held = await api.call("ann", "POST", f"{API}/evaluate", json=api.action())
    assert held.status_code == 200
    decision = held.json()
    assert decision["decision"] == "require_approval"
    assert "sql.delete_without_where" in {f["code"] for f in decision["findings"]}
    assert decision["chain"]["stages"][0]["groups"] == ["approvers"]

    allowed = {"kind": "sql", "text": "SELECT 1", "env": "prod", "target": "main"}
    response = await api.call("ann", "POST", f"{API}/requests", json=allowed)
    assert response.status_code == 200
    assert response.json()["decision"]["decision"] == "allow"
    assert response.json()["request"] is None

    denied = api.action(target="forbidden", env="staging")
    response = await api.call("ann", "POST", f"{API}/requests", json=denied)
    assert response.status_code == 200
    assert response.json()["decision"]["decision"] == "deny"
    assert response.json()["decision"]["message"] == "never here"
    assert response.json()["request"] is None

    listed = await api.call("root", "GET", f"{API}/requests")
    assert listed.json() == {"requests": [], "next_cursor": None}


async def test_structured_action(api: ApiEnv) -> None:
    body = {
        "kind": "deploy",
        "payload": {"service": "billing", "version": "1.2.3"},
        "environment": "production",
        "target": "billing",
        "attributes": {"ticket": "OPS-1"},
    }
    response = await api.call("ann", "POST", f"{API}/evaluate", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["decision"] in {"allow", "require_approval", "deny"}


async def test_list_filters_and_pages(api: ApiEnv) -> None:
    ids = [(await api.submit("ann"))["id"] for _ in range(3)]
    other = (await api.submit("dave"))["id"]
    await api.act("bob", ids[0], "deny", {"reason": "not today"})

    async def page(user: str, **params: Any) -> dict[str, Any]:
        response = await api.call(user, "GET", f"{API}/requests", params=params)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    mine = await page("ann")
    assert {v["id"] for v in mine["requests"]} == set(ids)  # not dave's

    first = await page("root", limit=2)
    assert len(first["requests"]) == 2
    assert first["next_cursor"] is not None
    second = await page("root", limit=2, cursor=first["next_cursor"])
    seen = [v["id"] for v in first["requests"] + second["requests"]]
    assert sorted(seen) == sorted([*ids, other])
    # A full page may have a cursor to an empty last one.
    if second["next_cursor"] is not None:
        assert await page("root", limit=2, cursor=second["next_cursor"]) == {
            "requests": [],
            "next_cursor": None,
        }

    pending = await page("bob", status="pending")
    assert {v["id"] for v in pending["requests"]} == {ids[1], ids[2], other}
    several = await page("bob", status="pending,denied")
    assert len(several["requests"]) == 4
    awaiting = await page("bob", awaiting_me="true")
    assert {v["id"] for v in awaiting["requests"]} == {ids[1], ids[2], other}
    assert (await page("ann", awaiting_me="true"))["requests"] == []
    assert {v["id"] for v in (await page("dave", mine="true"))["requests"]} == {other}

    bad = await api.call("bob", "GET", f"{API}/requests", params={"status": "bogus"})
    assert error_of(bad) == (400, "invalid_query")
    bad = await api.call("bob", "GET", f"{API}/requests", params={"limit": "0"})
    assert error_of(bad) == (400, "invalid_query")
    assert "query.limit" in bad.json()["error"]["message"]
    bad = await api.call("bob", "GET", f"{API}/requests", params={"mine": "perhaps"})
    assert error_of(bad) == (400, "invalid_query")


async def test_service_account_submits_for_a_user(api: ApiEnv) -> None:
    response = await api.call("gw", "POST", f"{API}/requests", json=api.action(user="ann"))
    assert response.status_code == 201, response.text
    view = response.json()["request"]
    assert view["requester"] == "ann"
    assert view["submitted_by"] == "gw"
    # The requester may not approve it; an approver may.
    refused = await api.call("ann", "POST", f"{API}/requests/{view['id']}/approve", json={})
    assert error_of(refused) == (403, "self_approval")
    await api.act("bob", view["id"], "approve")
    # The service account runs it for ann and reports.
    assert (await api.act("gw", view["id"], "authorize", {"fingerprint": view["fingerprint"]}))[
        "status"
    ] == "executing"
    done = await api.act("gw", view["id"], "outcome", {"exit_code": 1, "error": "boom"})
    assert done["status"] == "failed"

    # Only service accounts act for others; the user must exist.
    response = await api.call("dave", "POST", f"{API}/requests", json=api.action(user="ann"))
    assert error_of(response) == (403, "forbidden")
    response = await api.call("gw", "POST", f"{API}/requests", json=api.action(user="nobody"))
    assert error_of(response) == (400, "unknown_user")


async def test_refusals_keep_their_codes(api: ApiEnv) -> None:
    view = await api.submit("ann")
    url = f"{API}/requests/{view['id']}"
    cases = [
        ("ann", "approve", {}, 403, "self_approval"),
        ("sec", "approve", {}, 404, "not_found"),
        ("audrey", "approve", {}, 403, "forbidden"),
        ("bob", "deny", {"reason": ""}, 422, "reason_required"),
        ("ann", "authorize", {"fingerprint": view["fingerprint"]}, 409, "not_approved"),
        ("root", "cancel", {}, 422, "reason_required"),
    ]
    for user, verb, body, status, code in cases:
        response = await api.call(user, "POST", f"{url}/{verb}", json=body)
        assert error_of(response) == (status, code), (user, verb, response.text)
    missing = await api.call("ann", "GET", f"{API}/requests/req_doesnotexist")
    assert error_of(missing) == (404, "not_found")
    cancelled = await api.act("root", view["id"], "cancel", {"reason": "cleanup"})
    assert cancelled["status"] == "cancelled"


# --- authentication -------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic YW5uOnNlY3JldA==",
        "Bearer jg_not-a-real-token-at-all",
        "Bearer " + "x" * 5000,
        "expired",
        "revoked",
    ],
    ids=[
        "missing",
        "empty",
        "no-token",
        "blank-token",
        "basic",
        "unknown",
        "huge",
        "expired",
        "revoked",
    ],
)
async def test_unauthenticated(
    api: ApiEnv, authorization: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    if authorization in ("expired", "revoked"):
        authorization = f"Bearer {api.tokens['ann-' + authorization]}"
    headers = {} if authorization is None else {"Authorization": authorization}
    view = await api.submit("ann")
    before = await api.store_dump()
    for method, path, body in [
        ("GET", f"{API}/requests", None),
        ("GET", f"{API}/requests/{view['id']}", None),
        ("POST", f"{API}/requests/{view['id']}/cancel", {}),
        ("POST", f"{API}/evaluate", api.action()),
        ("POST", f"{API}/requests/{view['id']}/approve", {"comment": 42}),  # invalid too
        ("GET", "/metrics", None),
        ("GET", "/no/such/route", None),
    ]:
        response = await api.call(None, method, path, headers=headers, json=body)
        assert error_of(response) == (401, "unauthenticated"), (path, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
        if authorization:
            token = authorization.partition(" ")[2]
            if token:
                assert token not in response.text
    after = await api.store_dump()
    # Only audit records of the failed attempts were added (the service logs
    # invalid tokens as auth.failed events, without token material).
    added = after[len(before) :]
    assert after[: len(before)] == before
    assert all("'auth.failed'" in row for row in added), added
    for secret in (api.tokens["ann-expired"], api.tokens["ann-revoked"]):
        assert not any(secret in row for row in after)
        assert secret not in caplog.text


async def test_tokens_never_logged(api: ApiEnv, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    view = await api.submit("ann")
    await api.act("bob", view["id"], "approve")
    await api.call("ann", "GET", f"{API}/requests/{view['id']}/nope")
    for token in api.tokens.values():
        assert token not in caplog.text


# --- bad input ------------------------------------------------------------------------

JSON = {"Content-Type": "application/json"}

BAD_INPUT = [
    # (user, verb or path, raw body or json, headers, status, code, message part)
    ("bob", "approve", b'{"comment": "x"', JSON, 400, "invalid_json", "malformed JSON"),
    ("bob", "approve", b"\xff\xfe", JSON, 400, "invalid_json", "malformed JSON"),
    ("bob", "approve", b'{"comment": 5}', JSON, 400, "invalid_body",
     "body.comment: input should be a valid string"),
    ("bob", "approve", b'{"comment": "", "otp": 123456}', JSON, 400, "invalid_body", "body.otp"),
    ("bob", "approve", b'{"coment": "typo"}', JSON, 400, "invalid_body",
     "body.coment: extra inputs are not permitted"),
    ("bob", "approve", b"[]", JSON, 400, "invalid_body", "body"),
    ("bob", "approve", b'"yes"', JSON, 400, "invalid_body", "body"),
    ("bob", "approve", b'{"comment": "x"}', {"Content-Type": "text/plain"}, 400, "invalid_body",
     "Content-Type: application/json"),
    ("bob", "deny", b"{}", JSON, 400, "invalid_body", "body.reason: field required"),
    ("bob", "deny", b"", JSON, 400, "invalid_body", "body"),
    ("bob", "deny", b'{"reason": null}', JSON, 400, "invalid_body", "body.reason"),
    ("bob", "deny", b'{"reason": ["a"]}', JSON, 400, "invalid_body", "body.reason"),
    ("ann", "cancel", b'{"force": true}', JSON, 400, "invalid_body", "body.force"),
    ("ann", "break-glass", b"{}", JSON, 400, "invalid_body", "body.justification"),
    ("bob", "review", b'{"verdict": "meh"}', JSON, 400, "invalid_body", "body.verdict"),
    ("ann", "authorize", b'{"fingerprint": 1}', JSON, 400, "invalid_body", "body.fingerprint"),
    ("ann", "authorize", b"{}", JSON, 400, "invalid_body", "body.fingerprint: field required"),
    ("ann", "outcome", b'{"exit_code": "0"}', JSON, 400, "invalid_body", "body.exit_code"),
    ("ann", "outcome", b'{"exit_code": 1.5}', JSON, 400, "invalid_body", "body.exit_code"),
    ("ann", "outcome", b'{"exit_code": true}', JSON, 400, "invalid_body", "body.exit_code"),
    ("ann", "outcome", b'{"duration_ms": -1}', JSON, 400, "invalid_body", "body.duration_ms"),
    ("ann", "outcome", b'{"rows_affected": 1e400}', JSON, 400, "invalid_body",
     "body.rows_affected"),
    ("ann", "outcome", b'{"rows_affected": 99999999999999999999999}', JSON, 400,
     "invalid_body", "body.rows_affected"),
    ("ann", "/requests", b'{"text": "DELETE FROM t"}', JSON, 400, "invalid_body",
     "body.kind: field required"),
    ("ann", "/requests", b'{"kind": "sql", "text": 5, "env": []}', JSON, 400, "invalid_body",
     "body.text: input should be a valid string; body.env"),
    ("ann", "/requests", b'{"kind": "sql", "txt": "x"}', JSON, 400, "invalid_body", "body.txt"),
    ("ann", "/requests", b'{"kind": "sql", "groups": ["approvers"]}', JSON, 400,
     "invalid_body", "body.groups: extra inputs are not permitted"),
    ("ann", "/requests", b'{"kind": "sql", "payload": "x"}', JSON, 400, "invalid_body",
     "body.payload"),
    ("ann", "/requests", b'{"kind": "teleport", "text": "x"}', JSON, 400, "invalid_action",
     "teleport"),
    ("ann", "/requests", b'{"kind": "sql", "env": "prod", "environment": "prod"}', JSON, 400,
     "invalid_action", "env"),
    ("ann", "/evaluate", b'{"kind": "sql", "at": "2030-01-01T00:00:00Z"}', JSON, 400,
     "invalid_body", "body.at"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("user", "where", "content", "headers", "status", "code", "message"),
    BAD_INPUT,
    ids=[f"{case[1]}-{i}" for i, case in enumerate(BAD_INPUT)],
)
async def test_bad_input_changes_nothing(
    api: ApiEnv,
    user: str,
    where: str,
    content: bytes,
    headers: dict[str, str],
    status: int,
    code: str,
    message: str,
) -> None:
    view = await api.submit("ann")
    path = f"{API}{where}" if where.startswith("/") else f"{API}/requests/{view['id']}/{where}"
    before = await api.store_dump()
    response = await api.call(user, "POST", path, content=content, headers=headers)
    assert error_of(response) == (status, code), response.text
    assert message in response.json()["error"]["message"]
    assert await api.store_dump() == before


async def test_validation_messages_do_not_echo_values(api: ApiEnv) -> None:
    view = await api.submit("ann")
    secret = "hunter2-" * 3
    response = await api.call(
        "bob", "POST", f"{API}/requests/{view['id']}/approve", json={"otp": 1, "x": secret}
    )
    assert error_of(response) == (400, "invalid_body")
    assert secret not in response.text


async def test_approving_a_finished_request_changes_nothing(api: ApiEnv) -> None:
    view = await api.submit("ann")
    await api.act("bob", view["id"], "deny", {"reason": "no"})
    before = await api.store_dump()
    for user, verb, body in [
        ("carol", "approve", {}),
        ("carol", "deny", {"reason": "me too"}),
        ("ann", "cancel", {}),
        ("ann", "authorize", {"fingerprint": view["fingerprint"]}),
        ("ann", "outcome", {"exit_code": 0}),
    ]:
        response = await api.call(user, "POST", f"{API}/requests/{view['id']}/{verb}", json=body)
        assert error_of(response)[0] == 409, (verb, response.text)
    response = await api.call("carol", "POST", f"{API}/requests/{view['id']}/approve", json={})
    assert error_of(response) == (409, "not_pending")
    assert await api.store_dump() == before


# --- the body limit -------------------------------------------------------------------


class CountingBody:
    """A streamed (chunked) request body that counts what the server pulled."""

    def __init__(self, total: int, chunk: int = 64 * 1024, prefix: bytes = b'{"comment":"') -> None:
        self.total = total
        self.chunk = chunk
        self.prefix = prefix
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.prefix
        self.sent += len(self.prefix)
        while self.sent < self.total:
            part = b"a" * min(self.chunk, self.total - self.sent)
            self.sent += len(part)
            yield part


async def test_huge_streamed_body_is_refused_unread(api: ApiEnv) -> None:
    view = await api.submit("ann")
    before = await api.store_dump()
    body = CountingBody(5 * MIB)
    response = await api.call(
        "bob", "POST", f"{API}/requests/{view['id']}/approve", content=body, headers=JSON
    )
    assert error_of(response) == (413, "payload_too_large")
    # The server stopped pulling right after the limit: one chunk past it at most.
    assert body.sent <= MIB + body.chunk
    assert await api.store_dump() == before


async def test_huge_declared_body_is_refused_before_reading(api: ApiEnv) -> None:
    view = await api.submit("ann")
    before = await api.store_dump()
    body = CountingBody(5 * MIB)
    response = await api.call(
        "bob",
        "POST",
        f"{API}/requests/{view['id']}/approve",
        content=body,
        headers={**JSON, "Content-Length": str(5 * MIB)},
    )
    assert error_of(response) == (413, "payload_too_large")
    assert body.sent <= len(body.prefix) + body.chunk  # nothing was read
    assert await api.store_dump() == before
    # Also for a plain 5 MB body, and for anyone (the check comes before auth).
    big = json.dumps({"kind": "sql", "text": "x" * (5 * MIB)}).encode()
    for user in ("ann", None):
        response = await api.call(user, "POST", f"{API}/evaluate", content=big, headers=JSON)
        assert error_of(response) == (413, "payload_too_large")


async def test_body_just_under_the_limit_is_read(db: Database) -> None:
    env = await make_api_env(db, max_body=2048)
    async with env.app.router.lifespan_context(env.app):
        text = "SELECT 1 -- " + "x" * 1900
        ok = await env.call("ann", "POST", f"{API}/evaluate", json={"kind": "sql", "text": text})
        assert ok.status_code == 200, ok.text
        too_big = {"kind": "sql", "text": text + "x" * 200}
        refused = await env.call("ann", "POST", f"{API}/evaluate", json=too_big)
        assert error_of(refused) == (413, "payload_too_large")
        assert "2048 bytes" in refused.json()["error"]["message"]
    await env.client.aclose()


# --- other errors ---------------------------------------------------------------------


async def test_unknown_routes_and_methods(api: ApiEnv) -> None:
    response = await api.call("ann", "GET", f"{API}/nothing-here")
    assert error_of(response) == (404, "not_found")
    response = await api.call("ann", "DELETE", f"{API}/requests/req_x")
    assert error_of(response) == (405, "method_not_allowed")
    assert response.headers["allow"] == "GET"
    response = await api.call("ann", "GET", f"{API}/requests/req_x/approve")
    assert error_of(response) == (405, "method_not_allowed")
    assert response.headers["allow"] == "POST"


async def test_unexpected_exception_is_a_bare_500(
    api: ApiEnv, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("database password is s3cret")

    monkeypatch.setattr(api.service, "get", broken)
    response = await api.call("ann", "GET", f"{API}/requests/req_x")
    assert error_of(response) == (500, "internal_error")
    assert "s3cret" not in response.text
    assert "Traceback" not in response.text
    assert "RuntimeError" in caplog.text  # logged on the server side, with the traceback
    metrics = await api.call("ann", "GET", "/metrics")
    assert (
        sample(
            metrics.text,
            "jitgate_http_requests_total",
            method="GET",
            route="/api/v1/requests/{id}",
            status="500",
        )
        == 1
    )


# --- metrics --------------------------------------------------------------------------


async def test_metrics(api: ApiEnv) -> None:
    response = await api.call("ann", "GET", "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    assert sample(response.text, "jitgate_decisions_total", decision="require_approval") == 0

    first = await api.submit("ann")
    second = await api.submit("ann")
    await api.call("ann", "POST", f"{API}/evaluate", json={"kind": "sql", "text": "SELECT 1"})
    await api.act("bob", first["id"], "approve")
    await api.act("bob", second["id"], "deny", {"reason": "no"})
    await api.act("ann", first["id"], "authorize", {"fingerprint": first["fingerprint"]})
    await api.act("ann", first["id"], "outcome", {"exit_code": 0})

    text = (await api.call("root", "GET", "/metrics")).text
    assert sample(text, "jitgate_decisions_total", decision="require_approval") == 2
    assert sample(text, "jitgate_decisions_total", decision="allow") == 1
    assert sample(text, "jitgate_requests_total", status="denied") == 1
    assert sample(text, "jitgate_requests_total", status="executed") == 1
    assert sample(text, "jitgate_requests_total", status="cancelled") == 0
    assert sample(text, "jitgate_time_to_decision_seconds_count") == 2
    assert 0 <= sample(text, "jitgate_time_to_decision_seconds_sum") < 60
    assert (
        sample(
            text,
            "jitgate_http_requests_total",
            method="POST",
            route="/api/v1/requests",
            status="201",
        )
        == 2
    )
    assert (
        sample(
            text,
            "jitgate_http_requests_total",
            method="POST",
            route="/api/v1/requests/{id}/approve",
            status="200",
        )
        == 1
    )
    assert api.app.state.metrics.hooked  # the numbers came from the service's hooks


async def test_metrics_without_service_hooks(db: Database) -> None:
    """A service without ``on_change``: the routes report what they return."""
    env = await make_api_env(db)
    env.service.on_change = ()  # iterable for the service, but no list to subscribe to
    from jitgate.server import create_app

    env.app = create_app(env.service)
    env.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=env.app), base_url="http://t")
    assert not env.app.state.metrics.hooked
    async with env.app.router.lifespan_context(env.app):
        first = await env.submit("ann")
        second = await env.submit("ann")
        await env.act("bob", first["id"], "approve")
        await env.act("bob", second["id"], "deny", {"reason": "no"})
        await env.act("ann", first["id"], "authorize", {"fingerprint": first["fingerprint"]})
        await env.act("ann", first["id"], "outcome", {"exit_code": 0})
        await env.call("ann", "POST", f"{API}/evaluate", json={"kind": "sql", "text": "SELECT 1"})
        text = (await env.call("ann", "GET", "/metrics")).text
    await env.client.aclose()
    assert sample(text, "jitgate_decisions_total", decision="require_approval") == 2
    assert sample(text, "jitgate_decisions_total", decision="allow") == 1
    assert sample(text, "jitgate_requests_total", status="denied") == 1
    assert sample(text, "jitgate_requests_total", status="executed") == 1
    assert sample(text, "jitgate_time_to_decision_seconds_count") == 2


async def test_metrics_may_be_public(db: Database) -> None:
    env = await make_api_env(db, metrics_public=True)
    async with env.app.router.lifespan_context(env.app):
        response = await env.call(None, "GET", "/metrics")
        assert response.status_code == 200
        assert "jitgate_http_requests_total" in response.text
        # ... and only /metrics.
        response = await env.call(None, "GET", f"{API}/requests")
        assert error_of(response) == (401, "unauthenticated")
    await env.client.aclose()


async def test_metrics_registries_are_per_app(db: Database) -> None:
    one = await make_api_env(db)
    from jitgate.server import create_app

    two = create_app(one.service)
    assert one.app.state.metrics.registry is not two.state.metrics.registry
    await one.client.aclose()
