"""``POST /api/v1/audit/statements`` with bodies that do not fit.

The endpoint hands the parsed records to the service, which checks each of
them, instead of validating them with :class:`StatementsBody` first; the
model still documents the body and answers a body it refuses, so every
answer here is what it was when the model validated the body: same status,
code and message (tests/test_gateway_api.py has the service's own refusals).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from conftest import ApiEnv
from jitgate.server import create_app
from jitgate.service import Principal, ServiceError
from jitgate.store import last_seq, list_events
from test_gateway_api import statement  # the same minimal record

PATH = "/api/v1/audit/statements"
JSON = {"Content-Type": "application/json"}
GW = Principal("gw", is_service_account=True)


def with_raw(record: dict[str, Any], field: str, raw: str) -> bytes:
    """``{"records": [record]}`` with ``field`` spelled as ``raw`` (NaN, 1e400...)."""
    text = json.dumps({"records": [{**record, field: "@@"}]})
    return text.replace('"@@"', raw).encode()


def body(*records: Any) -> bytes:
    return json.dumps({"records": list(records)}).encode()


async def head(api: ApiEnv) -> int:
    async with api.db.transaction(readonly=True) as session:
        return await last_seq(session)


async def post(api: ApiEnv, user: str, content: bytes, headers: dict[str, str]) -> Any:
    return await api.call(user, "POST", PATH, content=content, headers=headers)


LIST_MESSAGE = "body.records: input should be a valid list"
OBJECT_MESSAGE = "input should be a valid dictionary or object to extract fields from"

CASES: list[tuple[str, bytes, dict[str, str], int, str, str]] = [
    ("empty", b"", JSON, 400, "invalid_body", "body: a JSON object is required"),
    ("no-content-type", body(statement()), {}, 400, "invalid_body",
     "body: expected a JSON object (send Content-Type: application/json)"),
    ("text-plain", body(statement()), {"Content-Type": "text/plain"}, 400, "invalid_body",
     "body: expected a JSON object (send Content-Type: application/json)"),
    ("malformed", b'{"records": [}', JSON, 400, "invalid_json",
     "malformed JSON body: Expecting value at position 13"),
    ("not-utf8", b'{"records": ["\xff"]}', JSON, 400, "bad_request",
     "There was an error parsing the body"),
    ("null", b"null", JSON, 400, "invalid_body", f"body: {OBJECT_MESSAGE}"),
    ("list", b"[]", JSON, 400, "invalid_body", f"body: {OBJECT_MESSAGE}"),
    ("string", b'"records"', JSON, 400, "invalid_body", f"body: {OBJECT_MESSAGE}"),
    ("nan", b"NaN", JSON, 400, "invalid_body", f"body: {OBJECT_MESSAGE}"),
    ("no-records", b"{}", JSON, 400, "invalid_body", "body.records: field required"),
    ("unknown-key", json.dumps({"records": [], "more": 1}).encode(), JSON, 400,
     "invalid_body", "body.more: extra inputs are not permitted"),
    ("records-null", b'{"records": null}', JSON, 400, "invalid_body", LIST_MESSAGE),
    ("records-object", b'{"records": {}}', JSON, 400, "invalid_body", LIST_MESSAGE),
    ("records-string", b'{"records": "ab"}', JSON, 400, "invalid_body", LIST_MESSAGE),
    ("record-number", body(1), JSON, 400, "invalid_body", f"body.records[0]: {OBJECT_MESSAGE}"),
    ("record-list", body([]), JSON, 400, "invalid_body", f"body.records[0]: {OBJECT_MESSAGE}"),
    ("record-null", body(statement(), None), JSON, 400, "invalid_body",
     f"body.records[1]: {OBJECT_MESSAGE}"),
    ("duration-nan", with_raw(statement(), "duration_ms", "NaN"), JSON, 400, "invalid_body",
     "body.records[0].duration_ms: input should be greater than or equal to 0"),
    ("duration-infinity", with_raw(statement(), "duration_ms", "Infinity"), JSON, 400,
     "invalid_body", "records[0].duration_ms: must be a non-negative number"),
    ("duration-1e400", with_raw(statement(), "duration_ms", "1e400"), JSON, 400,
     "invalid_body", "records[0].duration_ms: must be a non-negative number"),
    ("duration-huge-int", with_raw(statement(), "duration_ms", "1" + "0" * 400), JSON, 400,
     "invalid_body", "body.records[0].duration_ms: input should be a valid number"),
    ("duration-null", body(statement(duration_ms=None)), JSON, 400, "invalid_body",
     "body.records[0].duration_ms: input should be a valid number"),
    ("duration-bool", body(statement(duration_ms=True)), JSON, 400, "invalid_body",
     "body.records[0].duration_ms: input should be a valid number"),
    ("rows-nan", with_raw(statement(), "rows", "NaN"), JSON, 400, "invalid_body",
     "body.records[0].rows: input should be a valid integer"),
    ("rows-float", body(statement(rows=1.0)), JSON, 400, "invalid_body",
     "body.records[0].rows: input should be a valid integer"),
    ("extra-nan", with_raw(statement(), "extra", '{"x": NaN}'), JSON, 400, "invalid_body",
     "records[0].extra: must be JSON data"),
    ("extra-null", body(statement(extra=None)), JSON, 400, "invalid_body",
     "body.records[0].extra: input should be a valid dictionary"),
    ("extra-list", body(statement(extra=[])), JSON, 400, "invalid_body",
     "body.records[0].extra: input should be a valid dictionary"),
    ("session-null", body(statement(session=None)), JSON, 400, "invalid_body",
     "body.records[0].session: input should be a valid string"),
    ("parameters-string", body(statement(parameters="ab")), JSON, 400, "invalid_body",
     "body.records[0].parameters: input should be a valid list"),
    ("unknown-field", body(statement(bogus=1)), JSON, 400, "invalid_body",
     "body.records[0].bogus: extra inputs are not permitted"),
    ("missing", body({"user": "ann", "text": "x"}), JSON, 400, "invalid_body",
     "body.records[0].target: field required; body.records[0].environment: field required; "
     "body.records[0].decision: field required"),
    # The model's refusal comes first, as when it validated the body before the service.
    ("too-many-and-bad", body(*[statement()] * 1000, statement(rows=-1)), JSON, 400,
     "invalid_body", "body.records[1000].rows: input should be greater than or equal to 0"),
    # What the model takes but the service does not: the service's words.
    ("nul", body(statement(target="ma\x00in")), JSON, 400, "invalid_body",
     "records[0].target: must not contain NUL characters"),
    ("too-many", body(*[statement()] * 1001), JSON, 413, "too_many_records",
     "at most 1000 records per call, not 1001"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("content", "headers", "status", "code", "message"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
async def test_bodies_that_do_not_fit_are_refused_as_always(
    api: ApiEnv, content: bytes, headers: dict[str, str], status: int, code: str, message: str
) -> None:
    before = await head(api)
    response = await post(api, "gw", content, headers)
    assert response.status_code == status, response.text
    assert response.json() == {"error": {"code": code, "message": message}}
    assert await head(api) == before


async def test_many_problems_are_listed_as_the_model_lists_them(api: ApiEnv) -> None:
    bad = statement(rows=-1, duration_ms="1", tag=1, error=2, request_id=3, session=None)
    response = await post(api, "root", body(bad), JSON)
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert message.startswith("body.records[0].duration_ms: input should be a valid number; ")
    assert message.endswith("; and 1 more")


async def test_a_bad_body_is_400_before_the_role_is_403(api: ApiEnv) -> None:
    for user in ("ann", "audrey"):
        response = await post(api, user, body(statement(rows=-1)), JSON)
        assert (response.status_code, response.json()["error"]["code"]) == (400, "invalid_body")
        response = await post(api, user, b"[]", JSON)
        assert (response.status_code, response.json()["error"]["code"]) == (400, "invalid_body")
        # What only the service refuses: the role first.
        response = await post(api, user, body(statement(decision="maybe")), JSON)
        assert (response.status_code, response.json()["error"]["code"]) == (403, "forbidden")
        response = await post(api, user, body(statement()), JSON)
        assert (response.status_code, response.json()["error"]["code"]) == (403, "forbidden")
    response = await api.call(None, "POST", PATH, content=b"[]", headers=JSON)
    assert response.status_code == 401


async def test_what_the_model_takes_is_recorded_as_it_recorded_it(api: ApiEnv) -> None:
    before = await head(api)
    duplicate = b'{"records": [], "records": [' + json.dumps(statement()).encode() + b"]}"
    response = await post(api, "gw", duplicate, JSON)  # the last one counts
    assert response.json() == {"recorded": 1}
    before = await head(api)
    records = [
        statement(duration_ms=3, rows=2**70, tag=None, error=None, parameters=["1", None]),
        statement(extra={"k": [1, 2.5, None]}, session="s", client="c", gateway="g", at="t"),
    ]
    content = json.dumps({"records": records}).encode()
    headers = {"Content-Type": "application/vnd.jitgate+json; charset=utf-8"}
    response = await post(api, "gw", content, headers)
    assert (response.status_code, response.json()) == (202, {"recorded": 2})
    async with api.db.transaction(readonly=True) as session:
        events = await list_events(session, after_seq=before)
    first, second = (e.payload for e in events)
    assert type(first["duration_ms"]) is float  # as the model made it
    assert first["duration_ms"] == 3.0
    assert first["rows"] == str(2**70)  # beyond 2**53: text in the trail, as always
    assert first["parameters"] == ["1", None]
    assert second["extra"] == {"k": [1, 2.5, None]}
    assert (second["session"], second["client"], second["gateway"], second["at"]) == (
        "s",
        "c",
        "g",
        "t",
    )


async def test_the_service_keeps_its_own_leniency(api: ApiEnv) -> None:
    """In process (not strict): null duration and extra as before; an integer
    duration stays one; an integer beyond any float is refused, not a crash."""
    service = api.service
    assert await service.record_statements(GW, [statement(duration_ms=None, extra=None)]) == 1
    for record in (statement(duration_ms=None), statement(extra=None), statement(extra=[])):
        with pytest.raises(ServiceError) as refused:
            await service.record_statements(GW, [record], strict=True)
        assert (refused.value.status, refused.value.code) == (400, "invalid_body")
    for strict in (False, True):
        with pytest.raises(ServiceError) as refused:
            await service.record_statements(GW, [statement(duration_ms=10**400)], strict=strict)
        assert refused.value.message == "records[0].duration_ms: must be a non-negative number"
    before = await head(api)
    assert await service.record_statements(GW, [statement(duration_ms=3)]) == 1
    async with api.db.transaction(readonly=True) as session:
        (event,) = await list_events(session, after_seq=before)
    assert type(event.payload["duration_ms"]) is int


async def test_the_body_limit_still_applies(api: ApiEnv) -> None:
    app = create_app(api.service, max_body=4096)
    transport = httpx.ASGITransport(app=app)
    headers = {**api.headers("gw"), **JSON}
    big = body(*[statement(text=f"SELECT {n}") for n in range(100)])
    assert len(big) > 4096

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
        for start in range(0, len(big), 1000):
            yield big[start : start + 1000]

    async with httpx.AsyncClient(transport=transport, base_url="http://jitgate") as client:
        for content in (big, chunks()):
            response = await client.post(PATH, content=content, headers=headers)
            assert response.status_code == 413
            assert response.json()["error"] == {
                "code": "payload_too_large",
                "message": "the request body is larger than 4096 bytes",
            }
        response = await client.post(PATH, content=body(statement()), headers=headers)
        assert response.json() == {"recorded": 1}


async def test_the_openapi_document_still_describes_the_body(api: ApiEnv) -> None:
    document = (await api.call(None, "GET", "/openapi.json")).json()
    operation = document["paths"][PATH]["post"]
    schema = {"$ref": "#/components/schemas/StatementsBody"}
    assert operation["requestBody"] == {
        "content": {"application/json": {"schema": schema}},
        "required": True,
    }
    schemas = document["components"]["schemas"]
    assert schemas["StatementsBody"]["required"] == ["records"]
    assert schemas["StatementsBody"]["properties"]["records"]["items"] == {
        "$ref": "#/components/schemas/StatementIn"
    }
    assert schemas["StatementIn"]["required"] == [
        "user",
        "target",
        "environment",
        "text",
        "decision",
    ]
    assert schemas["StatementIn"]["additionalProperties"] is False
