"""``GET /api/v1/audit``: filters, cursor pages, and the chain hashes with each event."""

from __future__ import annotations

from typing import Any

from jitgate.audit.chain import ChainEvent
from jitgate.audit.keys import TrustedKeys
from jitgate.audit.verify import verify_chain


async def pages(api: Any, user: str, **params: Any) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = await api.call(user, "GET", "/api/v1/audit", params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        events.extend(body["events"])
        cursor = body["next_cursor"]
        if cursor is None:
            return events


async def test_auditors_page_through_a_trail_that_verifies(api: Any) -> None:
    for _ in range(3):
        view = await api.submit()
        await api.act("carol", view["id"], "approve", {"comment": "fine"})
    everything = await pages(api, "audrey", limit=2)
    assert [e["seq"] for e in everything] == list(range(1, len(everything) + 1))
    chain = [ChainEvent.from_dict(e) for e in everything]
    assert verify_chain(chain, [], TrustedKeys(), allow_unsigned=len(chain)).ok
    created = [e for e in everything if e["type"] == "request.created"]
    assert len(created) == 3
    assert created[0]["payload"]["action"]["text"].startswith("DELETE FROM invoices_")
    assert created[0]["target"] == "main"
    assert created[0]["environment"] == "production"

    approvals = await pages(api, "root", type="approval.given")
    assert [e["actor"] for e in approvals] == ["carol"] * 3
    family = await pages(api, "audrey", type="request.*")
    assert {e["type"] for e in family} == {"request.created", "request.approved"}
    one = await pages(api, "audrey", request_id=created[1]["request_id"])
    assert {e["request_id"] for e in one} == {created[1]["request_id"]}
    assert await pages(api, "audrey", environment="staging") == []
    later = await pages(api, "audrey", since=everything[-1]["at"])
    assert later
    assert all(e["at"] >= everything[-1]["at"] for e in later)


async def test_bad_queries_are_clear_errors(api: Any) -> None:
    for params, code in (
        ({"cursor": "abc"}, "invalid_query"),
        ({"since": "2030-01-01T00:00:00"}, "invalid_query"),
        ({"limit": "0"}, None),
        ({"limit": "100000"}, None),
        ({"since": "yesterday"}, None),
    ):
        response = await api.call("audrey", "GET", "/api/v1/audit", params=params)
        assert response.status_code == 400, (params, response.text)
        if code is not None:
            assert response.json()["error"]["code"] == code
