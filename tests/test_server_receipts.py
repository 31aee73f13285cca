"""Receipts over the API and in the service (SQLite and PostgreSQL).

``GET /api/v1/requests/{id}/receipt`` and ``GET /api/v1/audit/public-key``:
a receipt fetched from the server verifies offline with the exported public
key, is byte-identical on every fetch (also after the action ran), is
refused for requests that were not approved (409), for requests the caller
may not see (404) and by a server without a key (503). The executor's
receipt digest reaches the ``execution.finished`` audit event.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from conftest import ApiEnv
from jitgate.actions.model import Action
from jitgate.audit.chain import canonical_bytes
from jitgate.audit.keys import SigningKey, TrustedKeys, VerifyKey
from jitgate.audit.receipts import receipt_digest, verify_receipt
from jitgate.service import ServiceError
from jitgate.service.codec import RequestMeta, decode_state, encode_state

API = "/api/v1"


@pytest.fixture
def key(api: ApiEnv) -> SigningKey:
    signing = SigningKey.generate()
    api.service.signing_key = signing
    return signing


async def approved(api: ApiEnv) -> dict[str, Any]:
    view = await api.submit("ann")
    return await api.act("bob", view["id"], "approve", {"comment": "ok"})


async def receipt(api: ApiEnv, request_id: str, user: str = "ann") -> Any:
    return await api.call(user, "GET", f"{API}/requests/{request_id}/receipt")


def error_code(response: Any) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


async def test_a_receipt_verifies_offline_with_the_exported_public_key(
    api: ApiEnv, key: SigningKey
) -> None:
    view = await approved(api)
    response = await receipt(api, view["id"])
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    doc = response.json()
    assert response.content == canonical_bytes(doc), "served as its RFC 8785 bytes"

    exported = (await api.call("dave", "GET", f"{API}/audit/public-key")).json()
    assert exported["alg"] == "Ed25519"
    assert exported["key_id"] == key.key_id
    trusted = TrustedKeys([VerifyKey.from_pem(exported["pem"])])
    action = Action.create("sql", view["action"]["text"], target="main", environment="prod")
    check = verify_receipt(doc, trusted, action=action)
    assert check.ok, check
    assert doc["request_id"] == view["id"]
    assert doc["fingerprint"] == view["fingerprint"]
    assert doc["requester"]["user"] == "ann"
    assert [(a["approver"], a["comment"]) for a in doc["approvals"]] == [("bob", "ok")]
    assert doc["approved_at"] == doc["issued_at"]
    without_where = Action.create("sql", "DELETE FROM invoices", target="main", environment="prod")
    assert verify_receipt(doc, trusted, action=without_where).reason == "action_mismatch"
    assert verify_receipt(doc, TrustedKeys([SigningKey.generate().verify_key])).reason == (
        "unknown_key"
    )


async def test_refetching_gives_the_same_bytes_before_and_after_the_run(
    api: ApiEnv, key: SigningKey
) -> None:
    view = await approved(api)
    first = (await receipt(api, view["id"])).content
    assert (await receipt(api, view["id"])).content == first
    assert (await receipt(api, view["id"], "audrey")).content == first, "the same for everyone"
    await api.act("ann", view["id"], "authorize", {"fingerprint": view["fingerprint"]})
    assert (await receipt(api, view["id"])).content == first
    digest = hashlib.sha256(first).hexdigest()
    await api.act("ann", view["id"], "outcome", {"exit_code": 0, "receipt_sha256": digest})
    assert (await receipt(api, view["id"])).content == first
    assert receipt_digest(json.loads(first)) == digest


async def test_requests_that_were_not_approved_have_no_receipt(
    api: ApiEnv, key: SigningKey
) -> None:
    pending = await api.submit("ann")
    assert error_code(await receipt(api, pending["id"])) == (409, "not_approved")
    denied = await api.submit("ann")
    await api.act("bob", denied["id"], "deny", {"reason": "no"})
    assert error_code(await receipt(api, denied["id"])) == (409, "not_approved")
    cancelled = await api.submit("ann")
    await api.act("ann", cancelled["id"], "cancel")
    assert error_code(await receipt(api, cancelled["id"])) == (409, "not_approved")


async def test_invisible_and_unknown_requests_are_not_found(api: ApiEnv, key: SigningKey) -> None:
    view = await approved(api)
    for user in ("dave", "sec", "gw"):
        assert error_code(await receipt(api, view["id"], user)) == (404, "not_found")
    assert error_code(await receipt(api, "req_nope")) == (404, "not_found")
    response = await api.call(None, "GET", f"{API}/requests/{view['id']}/receipt")
    assert error_code(response) == (401, "unauthenticated")


async def test_a_server_without_a_key_issues_no_receipts(api: ApiEnv) -> None:
    api.service.signing_key = None
    view = await approved(api)
    assert error_code(await receipt(api, view["id"])) == (503, "receipts_unavailable")
    response = await api.call("ann", "GET", f"{API}/audit/public-key")
    assert error_code(response) == (503, "receipts_unavailable")
    # who may not see it still gets 404; a pending request is still 409
    assert error_code(await receipt(api, view["id"], "dave")) == (404, "not_found")
    pending = await api.submit("ann")
    assert error_code(await receipt(api, pending["id"])) == (409, "not_approved")


async def test_the_receipt_digest_reaches_the_audit_trail(api: ApiEnv, key: SigningKey) -> None:
    from jitgate.store import list_events

    view = await approved(api)
    doc = (await receipt(api, view["id"])).json()
    digest = receipt_digest(doc)
    await api.act("ann", view["id"], "authorize", {"fingerprint": view["fingerprint"]})
    bad = await api.call(
        "ann", "POST", f"{API}/requests/{view['id']}/outcome", json={"receipt_sha256": "x" * 64}
    )
    assert error_code(bad) == (400, "invalid_body")
    await api.act("ann", view["id"], "outcome", {"exit_code": 0, "receipt_sha256": digest})
    async with api.db.transaction(readonly=True) as session:
        events = await list_events(session, request_id=view["id"])
    finished = [e for e in events if e.type == "execution.finished"]
    assert len(finished) == 1
    assert finished[0].payload["receipt_sha256"] == digest


async def test_an_outcome_without_a_digest_records_none(api: ApiEnv, key: SigningKey) -> None:
    from jitgate.store import list_events

    view = await approved(api)
    await api.act("ann", view["id"], "authorize", {"fingerprint": view["fingerprint"]})
    await api.act("ann", view["id"], "outcome", {"exit_code": 0})
    async with api.db.transaction(readonly=True) as session:
        events = await list_events(session, request_id=view["id"])
    (finished,) = [e for e in events if e.type == "execution.finished"]
    assert finished.payload["receipt_sha256"] is None


async def test_the_service_refuses_a_malformed_digest(api: ApiEnv, key: SigningKey) -> None:
    view = await approved(api)
    await api.act("ann", view["id"], "authorize", {"fingerprint": view["fingerprint"]})
    principal = await api.service.authenticate(api.tokens["ann"])
    assert principal is not None
    for bad in ("ABC", "g" * 64, "A" * 64):
        with pytest.raises(ServiceError) as info:
            await api.service.report_outcome(principal, view["id"], exit_code=0, receipt_sha256=bad)
        assert (info.value.code, info.value.status) == ("invalid_request", 422)


def test_the_digest_is_kept_in_the_state_and_old_states_still_decode() -> None:
    from test_service_codec import _request

    req = _request()
    meta = RequestMeta("ann", "grt_1", 12, "a" * 64)
    state = json.loads(json.dumps(encode_state(req, meta)))
    assert decode_state(state) == (req, meta)
    del state["meta"]["receipt_sha256"]  # stored before receipts existed
    assert decode_state(state) == (req, RequestMeta("ann", "grt_1", 12))
