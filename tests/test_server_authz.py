"""The authorization matrix: every endpoint x every role, one test per cell.

Each cell starts from a fresh store with the request in the state where the
endpoint makes sense (pending for approve, approved for authorize, ...), so a
2xx shows who may do it and a 4xx who may not. A refused call must leave the
store exactly as it was.

Roles (tests/conftest.py, SERVER_USERS): ``requester`` ann owns the request;
``other`` dave is another requester; ``approver`` bob is in the chain's group;
``ineligible`` sec is in an unrelated group; ``auditor`` audrey; ``admin``
root; ``service`` gw, a service account unrelated to the request;
``submitter`` gw again, when it submitted the request on ann's behalf;
``anonymous`` sends no token.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from conftest import ApiEnv
from jitgate.audit.keys import SigningKey

API = "/api/v1"

ROLES: dict[str, str | None] = {
    "requester": "ann",
    "other": "dave",
    "approver": "bob",
    "ineligible": "sec",
    "auditor": "audrey",
    "admin": "root",
    "service": "gw",
    "submitter": "gw",
    "anonymous": None,
}

Expected = int | tuple[int, str]
Setup = Callable[[ApiEnv, bool], Awaitable[dict[str, Any] | None]]


# --- request states ----------------------------------------------------------------------


async def no_request(api: ApiEnv, by_service: bool) -> None:
    return None


async def pending(api: ApiEnv, by_service: bool, **fields: Any) -> dict[str, Any]:
    if by_service:
        return await api.submit("gw", user="ann", **fields)
    return await api.submit("ann", **fields)


async def glass_pending(api: ApiEnv, by_service: bool) -> dict[str, Any]:
    return await pending(api, by_service, target="glass", env="staging")


async def glass_broken(api: ApiEnv, by_service: bool) -> dict[str, Any]:
    view = await glass_pending(api, by_service)
    justification = {"justification": "the site is down and the fix cannot wait"}
    return await api.act("ann", view["id"], "break-glass", justification)


async def approved(api: ApiEnv, by_service: bool) -> dict[str, Any]:
    view = await pending(api, by_service)
    return await api.act("carol", view["id"], "approve")


async def executing(api: ApiEnv, by_service: bool) -> dict[str, Any]:
    view = await approved(api, by_service)
    return await api.act("ann", view["id"], "authorize", {"fingerprint": view["fingerprint"]})


async def signing(api: ApiEnv, by_service: bool) -> None:
    """The server has a signing key (receipts, the public key)."""
    api.service.signing_key = SigningKey.generate()


async def signed_approved(api: ApiEnv, by_service: bool) -> dict[str, Any]:
    await signing(api, by_service)
    return await approved(api, by_service)


async def cancelled(api: ApiEnv, by_service: bool) -> dict[str, Any]:
    view = await pending(api, by_service)
    return await api.act("ann", view["id"], "cancel")


async def granted(api: ApiEnv, by_service: bool) -> dict[str, Any]:
    """An approved request's (unused) grant: ``id`` is the grant's id."""
    view = await approved(api, by_service)
    return {**view["grant"], "request_id": view["id"]}


# --- the matrix ------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # {id}: the request's id
    setup: Setup
    body: dict[str, Any] | None
    expected: dict[str, Expected]


def everyone(status: int, anonymous: Expected = (401, "unauthenticated")) -> dict[str, Expected]:
    return dict.fromkeys(ROLES, status) | {"anonymous": anonymous}


UNAUTHENTICATED = (401, "unauthenticated")
NOT_FOUND = (404, "not_found")
FORBIDDEN = (403, "forbidden")

ENDPOINTS: dict[str, Endpoint] = {
    "healthz": Endpoint("GET", "/healthz", no_request, None, everyone(200, anonymous=200)),
    "openapi": Endpoint("GET", "/openapi.json", no_request, None, everyone(200, anonymous=200)),
    "metrics": Endpoint("GET", "/metrics", no_request, None, everyone(200)),
    "evaluate": Endpoint("POST", f"{API}/evaluate", no_request, {}, everyone(200)),
    "submit": Endpoint(
        "POST",
        f"{API}/requests",
        no_request,
        {},
        everyone(201) | {"auditor": FORBIDDEN},
    ),
    "list": Endpoint("GET", f"{API}/requests", pending, None, everyone(200)),
    "get": Endpoint(
        "GET",
        f"{API}/requests/{{id}}",
        pending,
        None,
        {
            "requester": 200,
            "other": NOT_FOUND,
            "approver": 200,
            "ineligible": NOT_FOUND,
            "auditor": 200,
            "admin": 200,
            "service": NOT_FOUND,
            "submitter": 200,
            "anonymous": UNAUTHENTICATED,
        },
    ),
    "approve": Endpoint(
        "POST",
        f"{API}/requests/{{id}}/approve",
        pending,
        {"comment": "ok"},
        {
            "requester": (403, "self_approval"),
            "other": NOT_FOUND,
            "approver": 200,
            "ineligible": NOT_FOUND,
            "auditor": FORBIDDEN,
            "admin": (403, "not_eligible"),
            "service": NOT_FOUND,
            "submitter": (403, "not_eligible"),
            "anonymous": UNAUTHENTICATED,
        },
    ),
    "deny": Endpoint(
        "POST",
        f"{API}/requests/{{id}}/deny",
        pending,
        {"reason": "not now"},
        {
            "requester": (403, "self_denial"),
            "other": NOT_FOUND,
            "approver": 200,
            "ineligible": NOT_FOUND,
            "auditor": FORBIDDEN,
            "admin": (403, "not_eligible"),
            "service": NOT_FOUND,
            "submitter": (403, "not_eligible"),
            "anonymous": UNAUTHENTICATED,
        },
    ),
    "cancel": Endpoint(
        "POST",
        f"{API}/requests/{{id}}/cancel",
        pending,
        {"reason": "not needed any more"},
        {
            "requester": 200,
            "other": NOT_FOUND,
            "approver": (403, "not_requester"),
            "ineligible": NOT_FOUND,
            "auditor": FORBIDDEN,
            "admin": 200,
            "service": NOT_FOUND,
            "submitter": 200,
            "anonymous": UNAUTHENTICATED,
        },
    ),
    "break-glass": Endpoint(
        "POST",
        f"{API}/requests/{{id}}/break-glass",
        glass_pending,
        {"justification": "the site is down and the fix cannot wait"},
        {
            "requester": 200,
            "other": NOT_FOUND,
            "approver": (403, "not_requester"),
            "ineligible": NOT_FOUND,
            "auditor": FORBIDDEN,
            "admin": (403, "not_requester"),
            "service": NOT_FOUND,
            "submitter": (403, "not_requester"),
            "anonymous": UNAUTHENTICATED,
        },
    ),
    "review": Endpoint(
        "POST",
        f"{API}/requests/{{id}}/review",
        glass_broken,
        {"verdict": "ok"},
        {
            "requester": (403, "self_review"),
            "other": NOT_FOUND,
            "approver": 200,
            "ineligible": NOT_FOUND,
            "auditor": FORBIDDEN,
            "admin": (403, "not_eligible"),
            "service": NOT_FOUND,
            "submitter": (403, "not_eligible"),
            "anonymous": UNAUTHENTICATED,
        },
    ),
    "authorize": Endpoint(
        "POST",
        f"{API}/requests/{{id}}/authorize",
        approved,
        {"fingerprint": "{fingerprint}"},
        {
            "requester": 200,
            "other": NOT_FOUND,
            "approver": (403, "not_requester"),
            "ineligible": NOT_FOUND,
            "auditor": FORBIDDEN,
            "admin": (403, "not_requester"),
            "service": NOT_FOUND,
            "submitter": 200,
            "anonymous": UNAUTHENTICATED,
        },
    ),
    "outcome": Endpoint(
        "POST",
        f"{API}/requests/{{id}}/outcome",
        executing,
        {"exit_code": 0, "rows_affected": 1},
        {
            "requester": 200,
            "other": NOT_FOUND,
            "approver": (403, "not_executor"),
            "ineligible": NOT_FOUND,
            "auditor": FORBIDDEN,
            "admin": (403, "not_executor"),
            "service": NOT_FOUND,
            "submitter": 200,
            "anonymous": UNAUTHENTICATED,
        },
    ),
    "audit": Endpoint(
        "GET",
        f"{API}/audit",
        approved,
        None,
        {
            "requester": FORBIDDEN,
            "other": FORBIDDEN,
            "approver": FORBIDDEN,
            "ineligible": FORBIDDEN,
            "auditor": 200,
            "admin": 200,
            "service": FORBIDDEN,
            "submitter": FORBIDDEN,
            "anonymous": UNAUTHENTICATED,
        },
    ),
    "audit-report": Endpoint(
        "GET",
        f"{API}/audit/report?since=7d",
        approved,
        None,
        {
            "requester": FORBIDDEN,
            "other": FORBIDDEN,
            "approver": FORBIDDEN,
            "ineligible": FORBIDDEN,
            "auditor": 200,
            "admin": 200,
            "service": FORBIDDEN,
            "submitter": FORBIDDEN,
            "anonymous": UNAUTHENTICATED,
        },
    ),
    "grants": Endpoint("GET", f"{API}/grants", granted, None, everyone(200)),
    "grant-revoke": Endpoint(
        "POST",
        f"{API}/grants/{{id}}/revoke",
        granted,
        {"reason": "not needed any more"},
        {
            "requester": 200,
            "other": NOT_FOUND,
            "approver": NOT_FOUND,  # only the grant's requester or an admin
            "ineligible": NOT_FOUND,
            "auditor": FORBIDDEN,
            "admin": 200,
            "service": NOT_FOUND,
            "submitter": NOT_FOUND,  # the grant is ann's, not the gateway's
            "anonymous": UNAUTHENTICATED,
        },
    ),
    "events": Endpoint(
        "GET",
        f"{API}/requests/{{id}}/events",
        cancelled,  # a final state: the stream ends after its first event
        None,
        {
            "requester": 200,
            "other": NOT_FOUND,
            "approver": 200,
            "ineligible": NOT_FOUND,
            "auditor": 200,
            "admin": 200,
            "service": NOT_FOUND,
            "submitter": 200,
            "anonymous": UNAUTHENTICATED,
        },
    ),
    "receipt": Endpoint(
        "GET",
        f"{API}/requests/{{id}}/receipt",
        signed_approved,
        None,
        {
            "requester": 200,
            "other": NOT_FOUND,
            "approver": 200,
            "ineligible": NOT_FOUND,
            "auditor": 200,
            "admin": 200,
            "service": NOT_FOUND,
            "submitter": 200,
            "anonymous": UNAUTHENTICATED,
        },
    ),
    "public-key": Endpoint("GET", f"{API}/audit/public-key", signing, None, everyone(200)),
    "me": Endpoint("GET", f"{API}/me", no_request, None, everyone(200)),
    "policy": Endpoint(
        "GET",
        f"{API}/policy",
        no_request,
        None,
        dict.fromkeys(ROLES, FORBIDDEN)
        | {"auditor": 200, "admin": 200, "service": 200, "submitter": 200}
        | {"anonymous": UNAUTHENTICATED},
    ),
    "record-statements": Endpoint(
        "POST",
        f"{API}/audit/statements",
        no_request,
        {
            "records": [
                {
                    "user": "ann",
                    "target": "main",
                    "environment": "production",
                    "text": "SELECT 1",
                    "decision": "allow",
                }
            ]
        },
        dict.fromkeys(ROLES, FORBIDDEN)
        | {"admin": 202, "service": 202, "submitter": 202}
        | {"anonymous": UNAUTHENTICATED},
    ),
}

CELLS = [(endpoint, role) for endpoint in ENDPOINTS for role in ROLES]


def test_matrix_is_complete() -> None:
    for name, endpoint in ENDPOINTS.items():
        assert set(endpoint.expected) == set(ROLES), name


@pytest.mark.parametrize(("endpoint", "role"), CELLS, ids=[f"{e}-{r}" for e, r in CELLS])
async def test_authorization(api: ApiEnv, endpoint: str, role: str) -> None:
    spec = ENDPOINTS[endpoint]
    view = await spec.setup(api, role == "submitter")
    path = spec.path.format(id=view["id"]) if view is not None else spec.path
    body = spec.body
    if endpoint in ("evaluate", "submit"):
        body = api.action(user="ann") if role in ("service", "submitter") else api.action()
    elif body is not None and view is not None:
        body = {k: v.format(**view) if isinstance(v, str) else v for k, v in body.items()}
    before = await api.store_dump()

    response = await api.call(ROLES[role], spec.method, path, json=body)

    expected = spec.expected[role]
    status, code = expected if isinstance(expected, tuple) else (expected, None)
    if status >= 400:
        error = response.json()["error"]
        assert (response.status_code, error["code"]) == (status, code or error["code"]), (
            response.text
        )
        assert await api.store_dump() == before, "a refused call changed the store"
        return
    assert response.status_code == status, response.text
    if endpoint == "events":
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.text.startswith("event: state\ndata: ")
        assert '"status":"cancelled"' in response.text
    elif endpoint == "metrics":
        assert "jitgate_http_requests_total" in response.text
    elif endpoint == "grants":
        # Everybody may ask; only the grant's requester, admins and auditors see it.
        listed = [g["id"] for g in response.json()["grants"]]
        sees = role in ("requester", "admin", "auditor")
        assert listed == ([view["id"]] if sees else []), (role, listed)
    elif endpoint == "me":
        assert response.json()["user"] == ROLES[role]
    elif endpoint == "policy":
        assert "production-dangerous" in response.json()["text"]
    elif endpoint == "record-statements":
        assert response.json() == {"recorded": 1}
    elif endpoint == "grant-revoke":
        assert response.json()["revoked_at"] is not None
        request = await api.call("root", "GET", f"{API}/requests/{view['request_id']}")
        assert request.json()["status"] == "cancelled"
    else:
        assert response.json() is not None
