"""Grants over HTTP, the SDK and the CLI: allowed-by-grant answers, listing, revoking.

The server tests' app and users (tests/conftest.py) with the evaluator swapped
for a policy whose chain grants RULE scope: ``DELETE`` on target ``box`` in
production waits for ``approvers`` and, once approved, ann may run further
``DELETE``s there for 30 minutes.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from typer.testing import CliRunner

from conftest import ApiEnv
from jitgate.cli.app import app as cli_app
from jitgate.client import ApiError, Client, ClientError
from jitgate.evaluator import Evaluator
from jitgate.policy import load_policy_text
from test_server_sse import live

API = "/api/v1"
POLICY = """
version: 1
name: grants-api
default: allow
chains:
  box:
    stages: [{name: approvers, groups: [approvers]}]
    grant: {scope: rule, ttl: 30m}
rules:
  - {id: box-delete, match: {targets: [box], statements: [delete]},
     outcome: require_approval, chain: box}
  - {id: box-update, match: {targets: [box], statements: [update]},
     outcome: require_approval, chain: box}
  - {id: box-truncate, match: {targets: [box], statements: ["truncate*"]},
     outcome: deny, message: never}
"""


@pytest.fixture
def box(api: ApiEnv) -> ApiEnv:
    api.service.evaluator = Evaluator(load_policy_text(POLICY, "grants-api.yaml"))
    return api


def action(text: str, **fields: Any) -> dict[str, Any]:
    return {"kind": "sql", "text": text, "env": "prod", "target": "box", **fields}


async def grant_for(api: ApiEnv, user: str = "ann") -> dict[str, Any]:
    """Submit a DELETE as ``user``, bob approves: the approved view."""
    response = await api.call(user, "POST", f"{API}/requests", json=action("DELETE FROM t"))
    assert response.status_code == 201, response.text
    view: dict[str, Any] = await api.act("bob", response.json()["request"]["id"], "approve")
    assert view["grant"]["scope"] == "rule"
    return view


async def test_submit_answers_allowed_by_grant(box: ApiEnv) -> None:
    view = await grant_for(box)
    grant = {
        "id": view["grant"]["id"],
        "request_id": view["id"],
        "expires_at": view["grant"]["expires_at"],
    }

    response = await box.call("ann", "POST", f"{API}/requests", json=action("DELETE FROM t2"))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["decision"]["decision"] == "require_approval"
    assert answer["decision"]["rules"] == ["box-delete"]
    assert answer["request"] is None
    assert answer["grant"] == grant

    evaluated = await box.call("ann", "POST", f"{API}/evaluate", json=action("DELETE FROM t3"))
    assert evaluated.json()["decision"] == "require_approval"
    assert evaluated.json()["grant"] == grant

    # Not for dave, not for another rule, never for a deny: those say grant null.
    for user, body, status, decision in [
        ("dave", action("DELETE FROM t"), 201, "require_approval"),
        ("ann", action("UPDATE t SET a = 1"), 201, "require_approval"),
        ("ann", action("TRUNCATE t"), 200, "deny"),
        ("ann", action("SELECT 1"), 200, "allow"),
    ]:
        response = await box.call(user, "POST", f"{API}/requests", json=body)
        assert response.status_code == status, response.text
        assert response.json()["decision"]["decision"] == decision
        assert response.json()["grant"] is None
        assert (await box.call(user, "POST", f"{API}/evaluate", json=body)).json()["grant"] is None


async def test_list_and_revoke_over_http(box: ApiEnv) -> None:
    view = await grant_for(box)
    grant_id = view["grant"]["id"]

    listed = await box.call("ann", "GET", f"{API}/grants", params={"active": "true"})
    assert [g["id"] for g in listed.json()["grants"]] == [grant_id]
    assert listed.json()["grants"][0]["rules"] == ["box-delete"]
    assert (await box.call("dave", "GET", f"{API}/grants")).json() == {"grants": []}

    missing = await box.call("ann", "POST", f"{API}/grants/{grant_id}/revoke", json={})
    assert (missing.status_code, missing.json()["error"]["code"]) == (400, "invalid_body")
    blank = await box.call("ann", "POST", f"{API}/grants/{grant_id}/revoke", json={"reason": " "})
    assert (blank.status_code, blank.json()["error"]["code"]) == (422, "reason_required")
    unknown = await box.call("root", "POST", f"{API}/grants/grt_x/revoke", json={"reason": "x"})
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "not_found")

    revoked = await box.call(
        "ann", "POST", f"{API}/grants/{grant_id}/revoke", json={"reason": "done"}
    )
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["revoked_by"] == "ann"
    assert revoked.json()["active"] is False
    again = await box.call(
        "root", "POST", f"{API}/grants/{grant_id}/revoke", json={"reason": "again"}
    )
    assert (again.status_code, again.json()["error"]["code"]) == (409, "grant_revoked")
    held = await box.call("ann", "POST", f"{API}/requests", json=action("DELETE FROM t9"))
    assert held.status_code == 201
    assert held.json()["grant"] is None
    assert (await box.call("ann", "GET", f"{API}/grants", params={"active": "true"})).json() == {
        "grants": []
    }


async def test_sdk_and_cli(box: ApiEnv) -> None:
    view = await grant_for(box)
    grant_id = view["grant"]["id"]
    runner = CliRunner()
    async with live(box) as (url, _server):

        def sdk() -> None:
            with Client(url, box.tokens["ann"]) as ann:
                submission = ann.submit(action("DELETE FROM sdk"))
                assert submission["request"] is None
                assert submission["grant"]["id"] == grant_id
                assert [g["id"] for g in ann.list_grants(active=True)] == [grant_id]
                with pytest.raises(ClientError):
                    ann.revoke_grant("../requests", "x")
            with Client(url, box.tokens["dave"]) as dave:
                with pytest.raises(ApiError) as hidden:
                    dave.revoke_grant(grant_id, "not mine")
                assert hidden.value.code == "not_found"

        def cli(user: str, *args: str) -> Any:
            env = {"JITGATE_URL": url, "JITGATE_TOKEN": box.tokens[user], "COLUMNS": "250"}
            return runner.invoke(cli_app, list(args), env=env)

        await asyncio.to_thread(sdk)
        listed = await asyncio.to_thread(cli, "ann", "grants", "list", "--json")
        assert listed.exit_code == 0, listed.output
        assert [g["id"] for g in json.loads(listed.stdout)] == [grant_id]
        table = await asyncio.to_thread(cli, "root", "grants", "list")
        assert table.exit_code == 0
        assert grant_id in table.stdout
        assert "active" in table.stdout

        blank = await asyncio.to_thread(cli, "ann", "grants", "revoke", grant_id, "--reason", " ")
        assert blank.exit_code == 2
        no_reason = await asyncio.to_thread(cli, "ann", "grants", "revoke", grant_id)
        assert no_reason.exit_code == 2
        refused = await asyncio.to_thread(
            cli, "dave", "grants", "revoke", grant_id, "--reason", "mine now"
        )
        assert refused.exit_code == 1
        assert "not_found" in refused.output

        request = await asyncio.to_thread(
            cli, "ann", "request", "DELETE FROM cli", "--env", "prod", "--target", "box"
        )
        assert request.exit_code == 0, request.output
        assert f"allowed by grant {grant_id}" in request.stdout

        done = await asyncio.to_thread(
            cli, "ann", "grants", "revoke", grant_id, "--reason", "done", "--json"
        )
        assert done.exit_code == 0, done.output
        assert json.loads(done.stdout)["revoked_at"] is not None
        active = await asyncio.to_thread(cli, "ann", "grants", "list", "--json")
        assert json.loads(active.stdout) == []
        everything = await asyncio.to_thread(cli, "ann", "grants", "list", "--all", "--json")
        assert [g["id"] for g in json.loads(everything.stdout)] == [grant_id]
