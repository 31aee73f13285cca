"""The server side of gateways: ``/api/v1/me``, ``/api/v1/policy``,
``POST /api/v1/audit/statements`` and ``ApprovalService.record_statements``.

Who may call each endpoint is in the authorization matrix
(tests/test_server_authz.py); here: what they answer, and the limits.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from conftest import ApiEnv
from jitgate.evaluator import Evaluator
from jitgate.gateways import StatementRecord
from jitgate.policy.catalog import default_catalog_text
from jitgate.policy.compile import compile_policy
from jitgate.service import Principal, ServiceError
from jitgate.store import last_seq, list_events

API = "/api/v1"


def statement(**fields: Any) -> dict[str, Any]:
    return {
        "user": "ann",
        "target": "main",
        "environment": "production",
        "text": "SELECT 1",
        "decision": "allow",
        **fields,
    }


async def statements_since(api: ApiEnv, seq: int) -> list[Any]:
    async with api.db.transaction(readonly=True) as session:
        events = await list_events(session, after_seq=seq)
    return [e for e in events if e.type == "statement.executed"]


async def head(api: ApiEnv) -> int:
    async with api.db.transaction(readonly=True) as session:
        return await last_seq(session)


# --- /me ------------------------------------------------------------------------------------


async def test_me_says_who_the_token_belongs_to(api: ApiEnv) -> None:
    response = await api.call("ann", "GET", f"{API}/me")
    assert response.status_code == 200
    assert response.json() == {
        "user": "ann",
        "groups": ["dev"],
        "roles": {"admin": False, "auditor": False, "service_account": False},
    }
    gw = (await api.call("gw", "GET", f"{API}/me")).json()
    assert gw["roles"] == {"admin": False, "auditor": False, "service_account": True}
    assert (await api.call("root", "GET", f"{API}/me")).json()["roles"]["admin"] is True
    expired = await api.call("ann-expired", "GET", f"{API}/me")
    assert expired.status_code == 401


# --- /policy --------------------------------------------------------------------------------


async def test_policy_is_the_text_in_force_with_its_digest(api: ApiEnv) -> None:
    body = (await api.call("gw", "GET", f"{API}/policy")).json()
    policy = api.service.evaluator.policy
    assert body["text"] == policy.source_text
    assert body["sha256"] == hashlib.sha256(body["text"].encode()).hexdigest()
    assert body["sha256"] == policy.source_sha256  # as policy.loaded records it
    assert body["source"] == "server-tests.yaml"


async def test_policy_of_the_default_catalog(api: ApiEnv) -> None:
    api.service.evaluator = Evaluator()  # the shipped default
    body = (await api.call("audrey", "GET", f"{API}/policy")).json()
    assert body["source"] == "builtin:default"
    assert body["text"] == default_catalog_text()
    assert body["sha256"] == hashlib.sha256(default_catalog_text().encode()).hexdigest()


async def test_a_policy_without_text_is_unavailable(api: ApiEnv) -> None:
    api.service.evaluator = Evaluator(compile_policy(api.service.evaluator.policy.spec))
    response = await api.call("root", "GET", f"{API}/policy")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "policy_unavailable"


# --- POST /audit/statements -----------------------------------------------------------------


async def test_statements_are_recorded_all_or_nothing(api: ApiEnv) -> None:
    before = await head(api)
    batch = [statement(text=f"SELECT {n}", user="dave" if n % 2 else "ann") for n in range(5)]
    response = await api.call("gw", "POST", f"{API}/audit/statements", json={"records": batch})
    assert response.status_code == 202, response.text
    assert response.json() == {"recorded": 5}
    events = await statements_since(api, before)
    assert [e.actor for e in events] == ["ann", "dave", "ann", "dave", "ann"]
    assert {e.payload["recorded_by"] for e in events} == {"gw"}

    before = await head(api)
    bad = [*batch, statement(decision="maybe")]
    response = await api.call("root", "POST", f"{API}/audit/statements", json={"records": bad})
    assert response.status_code == 400
    assert response.json()["error"] == {
        "code": "invalid_body",
        "message": "records[5].decision: must be one of allow, deny, require_approval",
    }
    assert await head(api) == before  # nothing of the batch

    response = await api.call("gw", "POST", f"{API}/audit/statements", json={"records": []})
    assert response.json() == {"recorded": 0}


@pytest.mark.parametrize(
    ("records", "status", "code"),
    [
        ([statement()] * 1001, 413, "too_many_records"),
        ([statement(bogus=1)], 400, "invalid_body"),
        ([statement(rows=-1)], 400, "invalid_body"),
        ([statement(duration_ms="1")], 400, "invalid_body"),
        ([statement(parameters=[1])], 400, "invalid_body"),
        ([statement(target="ma\x00in")], 400, "invalid_body"),
        ([statement(user="  ")], 400, "invalid_body"),
        ([{"user": "ann", "text": "SELECT 1"}], 400, "invalid_body"),
    ],
    ids=["too-many", "unknown-field", "rows", "duration", "parameters", "nul", "blank", "missing"],
)
async def test_invalid_batches_are_refused(
    api: ApiEnv, records: list[dict[str, Any]], status: int, code: str
) -> None:
    before = await head(api)
    response = await api.call("gw", "POST", f"{API}/audit/statements", json={"records": records})
    assert (response.status_code, response.json()["error"]["code"]) == (status, code)
    assert await head(api) == before


# --- the service ----------------------------------------------------------------------------

ANN = Principal("ann", frozenset({"dev"}))
GW = Principal("gw", is_service_account=True)


async def test_service_rules_for_who_records(api: ApiEnv) -> None:
    service = api.service
    record = StatementRecord(user="ann", target="t", environment="prod", text="x", decision="allow")
    assert await service.record_statements(ANN, [record]) == 1  # their own
    with pytest.raises(ServiceError) as refused:
        await service.record_statements(ANN, [statement(user="bob")])
    assert (refused.value.status, refused.value.code) == (403, "forbidden")
    with pytest.raises(ServiceError) as refused:
        await service.record_statements(Principal("audrey", is_auditor=True), [record])
    assert refused.value.status == 403
    assert await service.record_statements(Principal("root", is_admin=True), [record]) == 1
    assert await service.record_statements(GW, [record, statement(user="bob")]) == 2


async def test_service_size_limits(api: ApiEnv) -> None:
    service = api.service
    before = await head(api)
    huge = "x" * (1024 * 1024 + 1)
    with pytest.raises(ServiceError) as refused:
        await service.record_statements(GW, [statement(), statement(text=huge)])
    assert (refused.value.status, refused.value.code) == (413, "statement_too_large")
    assert "records[1].text" in refused.value.message
    # Multi-byte characters count as their UTF-8 bytes.
    with pytest.raises(ServiceError):
        await service.record_statements(GW, [statement(text="é" * (512 * 1024 + 1))])
    with pytest.raises(ServiceError) as refused:
        await service.record_statements(GW, [statement(parameters=[huge])])
    assert refused.value.code == "statement_too_large"
    with pytest.raises(ServiceError) as refused:
        await service.record_statements(GW, [statement()] * 1001)
    assert refused.value.code == "too_many_records"
    with pytest.raises(ServiceError) as refused:
        await service.record_statements(GW, "not a list")  # type: ignore[arg-type]
    assert refused.value.code == "invalid_body"
    assert await head(api) == before
    # Exactly at the limit is fine.
    assert await service.record_statements(GW, [statement(text="x" * 1024 * 1024)]) == 1
