"""The authorization matrix: every role x operation x own/other request.

``own``: a request the principal submitted (the service account submits on
behalf of ann); ``other``: dave's request. Each case gets a fresh request in
the state the operation needs; a refusal must leave the store untouched (same
row version, no new events).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from conftest import ServiceWorld
from jitgate.service import ServiceError
from jitgate.store import RequestRepository

OK = "ok"
NF = ("not_found", 404)
FORBIDDEN = ("forbidden", 403)

OPERATIONS = ("get", "approve", "deny", "cancel", "authorize", "report_outcome")
#: The status a request must be in for the operation to make sense.
NEEDS = {
    "get": "pending",
    "approve": "pending",
    "deny": "pending",
    "cancel": "pending",
    "authorize": "approved",
    "report_outcome": "executing",
}

REQUESTER_OWN = {
    "get": OK,
    "approve": ("self_approval", 403),
    "deny": ("self_denial", 403),
    "cancel": OK,
    "authorize": OK,
    "report_outcome": OK,
}
EXPECTED: dict[tuple[str, str], dict[str, Any]] = {
    ("ann", "own"): REQUESTER_OWN,
    ("ann", "other"): dict.fromkeys(OPERATIONS, NF),
    ("bob", "own"): REQUESTER_OWN,
    ("bob", "other"): {
        "get": OK,
        "approve": OK,
        "deny": OK,
        "cancel": ("not_requester", 403),
        "authorize": ("not_requester", 403),
        "report_outcome": ("not_executor", 403),
    },
    ("carol", "own"): REQUESTER_OWN,
    ("carol", "other"): dict.fromkeys(OPERATIONS, NF),
    ("aud", "other"): {**dict.fromkeys(OPERATIONS, FORBIDDEN), "get": OK},
    ("adm", "own"): REQUESTER_OWN,
    ("adm", "other"): {
        "get": OK,
        "approve": ("not_eligible", 403),
        "deny": ("not_eligible", 403),
        "cancel": OK,
        "authorize": ("not_requester", 403),
        "report_outcome": ("not_executor", 403),
    },
    ("svc", "own"): {
        "get": OK,
        "approve": ("not_eligible", 403),
        "deny": ("not_eligible", 403),
        "cancel": OK,
        "authorize": OK,
        "report_outcome": OK,
    },
    ("svc", "other"): dict.fromkeys(OPERATIONS, NF),
}
#: What a successful operation leaves the request in.
AFTER = {
    "get": "pending",
    "approve": "approved",
    "deny": "denied",
    "cancel": "cancelled",
    "authorize": "executing",
    "report_outcome": "executed",
}


async def prepare(world: ServiceWorld, principal: str, whose: str, status: str) -> dict[str, Any]:
    s, p = world.service, world.p
    if whose == "other":
        submitter, requester, body_extra = "dave", "dave", {}
    elif principal == "svc":
        submitter, requester, body_extra = "svc", "ann", {"user": "ann"}
    else:
        submitter, requester, body_extra = principal, principal, {}
    view = await world.submit(submitter, **body_extra)
    if status in ("approved", "executing"):
        view = dict(await s.approve(p["bea"], view["id"]))
    if status == "executing":
        view = dict(await s.authorize(p[requester], view["id"], view["fingerprint"]))
    assert view["status"] == status
    return view


def operation(
    world: ServiceWorld, name: str, who: str, view: dict[str, Any]
) -> Callable[[], Awaitable[Any]]:
    s, principal, rid = world.service, world.p[who], view["id"]
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "get": lambda: s.get(principal, rid),
        "approve": lambda: s.approve(principal, rid, comment="ok"),
        "deny": lambda: s.deny(principal, rid, "no"),
        "cancel": lambda: s.cancel(principal, rid, reason="by the matrix"),
        "authorize": lambda: s.authorize(principal, rid, view["fingerprint"]),
        "report_outcome": lambda: s.report_outcome(principal, rid, exit_code=0),
    }
    return calls[name]


async def snapshot(world: ServiceWorld, rid: str) -> tuple[int, int]:
    async with world.db.transaction(readonly=True) as session:
        row = await RequestRepository(session).get(rid)
    assert row is not None
    return row.version, len(await world.events(rid))


@pytest.mark.parametrize("who", ["ann", "bob", "carol", "aud", "adm", "svc"])
async def test_authorization_matrix(world: ServiceWorld, who: str) -> None:
    mismatches = []
    for whose in ("own", "other"):
        expected_row = EXPECTED.get((who, whose))
        if expected_row is None:
            continue
        for name in OPERATIONS:
            view = await prepare(world, who, whose, NEEDS[name])
            before = await snapshot(world, view["id"])
            expected = expected_row[name]
            try:
                result = await operation(world, name, who, view)()
            except ServiceError as err:
                got: Any = (err.code, err.status)
                if await snapshot(world, view["id"]) != before:
                    mismatches.append((whose, name, "a refusal changed the store"))
            else:
                got = OK
                if result["status"] != AFTER[name]:
                    mismatches.append((whose, name, f"left the request {result['status']}"))
            if got != expected:
                mismatches.append((whose, name, f"expected {expected}, got {got}"))
    assert mismatches == []


async def test_auditors_cannot_submit_or_act_but_see_everything(world: ServiceWorld) -> None:
    s, p = world.service, world.p
    body = {"kind": "sql", "text": "DELETE FROM t", "env": "prod", "target": "one"}
    with pytest.raises(ServiceError) as caught:
        await s.submit(p["aud"], body)
    assert (caught.value.code, caught.value.status) == FORBIDDEN
    rid = (await world.submit("dave"))["id"]
    for call in (
        s.break_glass(p["aud"], rid, "a long enough justification"),
        s.review(p["aud"], rid, "ok"),
    ):
        with pytest.raises(ServiceError) as caught:
            await call
        assert caught.value.code == "forbidden"
    views, _ = await s.list(p["aud"])
    assert [v["id"] for v in views] == [rid]
    assert (await s.evaluate(p["aud"], body)).outcome.label == "require_approval"
