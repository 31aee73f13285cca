"""The batch append's fast path stores exactly what the chain's reference would.

``append_events`` serializes a flat payload of plain values as it is
(:func:`jitgate.audit.chain.flat_plain`, a cached C encoder) and hashes plain
events with :func:`jitgate.audit.chain.raw_hash` directly. None of that may
change a stored byte: every row (payload text, hash, prev hash, id, seq, time,
columns) must be what one :func:`jitgate.store.append_event` per event stores
(the reference: :func:`jitgate.audit.chain.seal` and SQLAlchemy's own INSERT),
what the chain's pure functions compute, and what the code stored before the
fast path (a pinned digest of the rows).
"""

from __future__ import annotations

import enum
import hashlib
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from jitgate.audit.chain import (
    GENESIS,
    canonical_time,
    flat_plain,
    seal,
    stored_payload,
)
from jitgate.audit.keys import SigningKey, TrustedKeys
from jitgate.store import Database, InvalidValueError, NewEvent, append_event, append_events
from jitgate.store import events as events_module
from jitgate.store.audit import verify_store
from jitgate.store.database import compact_json

T0 = datetime(2030, 1, 1, 12, 30, 45, 123456, tzinfo=UTC)
#: The same instant in another zone: stored and hashed as UTC.
T0_ELSEWHERE = T0.astimezone(timezone(timedelta(hours=5, minutes=30)))
ROWS_SQL = (
    "SELECT seq, id, CAST(at AS TEXT), type, actor, request_id, CAST(payload AS TEXT), "
    "prev_hash, hash, target, environment FROM events ORDER BY seq"
)


class Level(enum.IntEnum):
    HIGH = 3


class Name(str):
    pass


def statement(i: int, **fields: Any) -> dict[str, Any]:
    """A statement payload as ``statement_event`` builds it (flat, plain)."""
    return {
        "text": f"SELECT abalance FROM pgbench_accounts WHERE aid = {i}",
        "decision": "allow",
        "duration_ms": 0.1,
        "tag": "SELECT 1",
        "rows": 1,
        "error": None,
        "parameters": None,
        "session": f"s-{i}",
        "client": "10.0.0.7:51234",
        "gateway": "pg-1",
        "at": "2030-01-01T00:00:00.123456+00:00",
        "recorded_by": "pg-gateway",
        **fields,
    }


#: Payloads through every branch: flat and plain (the fast path), flat but
#: not plain (floats RFC 8785 spells apart, non-ASCII keys), flat but
#: normalised (big integers, NaN, lone surrogates), nested, odd types.
PAYLOADS: list[Any] = [
    statement(1),
    statement(2, text="SELECT 'grüße ✓ 😀' -- \x7f\x01\u2028 \\u00e9 \"q\"", error=""),
    statement(3, duration_ms=1e20, rows=2**53 - 1, tag="", session=""),
    statement(4, duration_ms=1e-7),
    statement(5, duration_ms=2.0, rows=-(2**53) + 1),
    statement(6, duration_ms=-0.0, rows=0),
    statement(7, duration_ms=5e-324, rows=True, error=False),
    statement(8, rows=2**60, duration_ms=1.7976931348623157e308),
    statement(9, rows=-(2**53), duration_ms=float("nan")),
    statement(10, duration_ms=float("inf"), text="\ud800 lone"),
    statement(11, text="\udc00\ud83d\ude00"),
    statement(12, extra={"é": [1, 2.5, None, True], "a": {"b": "c"}, "big": 2**70, "e": ""}),
    statement(13, extra={"\U0001f600": 1, "\uffff": 0.1, "n": None, "l": []}),
    statement(14, parameters=["42", None, "\\x00ff", ""]),
    {"é": 1, "a": "b"},
    {"\x7f": "del", "\x00": "nul"},
    {},
    {"level": Level.HIGH, "name": Name("n")},
    {"t": (1, (2, "x")), "f": 0.1, "g": 1e21, "h": 1e-06, "i": 123456789.125},
    MappingProxyType(statement(15)),
]

#: Other columns: ASCII, non-ASCII (escaped nowhere: they are hashed as
#: RFC 8785 writes them), nulls, empty strings.
COLUMNS: list[dict[str, Any]] = [
    {"actor": "app1", "request_id": None, "target": "orders-db", "environment": "production"},
    {"actor": "jürgen", "request_id": "req_1", "target": "tü", "environment": "staging"},
    {"actor": None, "request_id": "", "target": None, "environment": None},
    {"actor": "😀 ü", "request_id": "\u2028", "target": "orders-db", "environment": "Prod"},
    {"actor": "", "request_id": "r", "target": "", "environment": ""},
]


def batch() -> list[NewEvent]:
    events = []
    for i, payload in enumerate(PAYLOADS):
        for j, columns in enumerate(COLUMNS):
            if (i + j) % 2 and j != 3:  # each payload with a few column sets, 3 always
                continue
            events.append(
                NewEvent(
                    type="statement.executed" if j != 4 else "tÿpe",
                    payload=payload,
                    at=T0_ELSEWHERE if i % 3 else T0 + timedelta(microseconds=i),
                    **columns,
                )
            )
    return events


def fixed_ids(n: int) -> Iterator[str]:
    return iter(str(uuid.UUID(int=(i + 1) * 7919, version=4)) for i in range(n))


async def stored_rows(db: Database) -> list[tuple[Any, ...]]:
    async with db.transaction(readonly=True) as session:
        return [tuple(row) for row in (await session.execute(text(ROWS_SQL))).all()]


async def appended(db: Database, events: list[NewEvent], batched: bool) -> list[tuple[Any, ...]]:
    """The rows ``events`` leave in an empty trail, with fixed ids, appended as
    one batch or one ``append_event`` at a time (the reference)."""
    async with db.transaction() as session:
        await session.execute(text("DELETE FROM events"))
    ids = fixed_ids(len(events))
    with mock.patch.object(events_module, "_event_ids", lambda n: [next(ids) for _ in range(n)]):
        async with db.transaction() as session:
            if batched:
                assert await append_events(session, events) == range(1, len(events) + 1)
            else:
                for e in events:
                    await append_event(
                        session, e.type, e.actor, e.request_id, e.payload, e.at,
                        target=e.target, environment=e.environment,
                    )  # fmt: skip
    return await stored_rows(db)


def expected_rows(events: list[NewEvent]) -> list[tuple[str, ...]]:
    """What the chain's pure functions make of ``events`` (no store code): the
    hash and normalised payload :func:`seal` gives, the payload stored as its
    ``compact_json`` text."""
    rows: list[tuple[str, ...]] = []
    prev = GENESIS
    for seq, (event, id_) in enumerate(zip(events, fixed_ids(len(events)), strict=True), 1):
        sealed = seal(
            seq=seq,
            id=id_,
            at=event.at,
            type=event.type,
            actor=event.actor,
            request_id=event.request_id,
            target=event.target,
            environment=event.environment,
            payload=event.payload,
            prev_hash=prev,
        )
        rows.append(
            (
                str(seq),
                id_,
                canonical_time(event.at),
                event.type,
                str(event.actor),
                str(event.request_id),
                compact_json(sealed.payload),
                prev,
                sealed.hash,
                str(event.target),
                str(event.environment),
            )
        )
        prev = sealed.hash
    return rows


def _comparable(row: tuple[Any, ...]) -> tuple[str, ...]:
    """A stored row as text, its time parsed (each backend spells it its way)."""
    seq, id_, at, *rest = row
    return (str(seq), id_, canonical_time(datetime.fromisoformat(at).replace(tzinfo=UTC)),
            *(str(v) for v in rest))  # fmt: skip


#: SHA-256 of the batch's rows (each row's fields as text, the time as the
#: chain spells it) as the batch append stored them before its fast path;
#: any change to a stored byte changes it (SQLite and PostgreSQL alike).
PINNED = "0c351f1f6f0177d80ec693f130c674fe76afb3a08b7b64b3fb8a56b7993f83e6"


def rows_digest(rows: list[tuple[str, ...]]) -> str:
    return hashlib.sha256(json.dumps(rows, ensure_ascii=True).encode()).hexdigest()


async def test_a_batch_stores_byte_for_byte_what_the_reference_stores(db: Database) -> None:
    events = batch()
    assert sum(flat_plain(e.payload) for e in events) >= 10  # the fast path is exercised
    assert any(not flat_plain(e.payload) for e in events)
    batched = await appended(db, events, batched=True)
    one_by_one = await appended(db, events, batched=False)
    assert batched == one_by_one
    as_text = [_comparable(row) for row in batched]
    assert as_text == expected_rows(events)
    assert rows_digest(as_text) == PINNED
    verifier = TrustedKeys([SigningKey.generate().verify_key])
    assert (await verify_store(db, verifier, allow_unsigned=len(events))).ok


_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats()
    | st.text()
    | st.sampled_from([0.1, 1e20, 1e21, 1e-7, 2.0, -0.0, 5e-324, 2**53, 2**53 - 1, "", "\ud800"])
)
_flat = st.dictionaries(st.text(max_size=6), _scalars, max_size=12)


@settings(max_examples=1000, deadline=None)
@given(payload=_flat | st.dictionaries(st.text(max_size=3), _scalars | st.lists(_scalars)))
def test_a_flat_plain_payload_is_stored_and_hashed_as_it_is(payload: dict[str, Any]) -> None:
    """What the fast path assumes of a payload :func:`flat_plain` admits:
    normalising it changes nothing, it is plain, and the cached encoder spells
    it as ``compact_json`` does."""
    if not flat_plain(payload):
        return
    normalised, plain = stored_payload(payload)
    assert plain
    assert normalised == payload
    assert events_module._flat_text(payload) == compact_json(payload) == compact_json(normalised)


async def test_a_column_rfc_8785_cannot_carry_refuses_the_batch(db: Database) -> None:
    """A flat, plain payload does not make the event plain: a lone surrogate
    in a column takes the exact path, which refuses it, as the reference does."""
    events = [NewEvent(type="t", actor="\ud800", request_id=None, payload=statement(1), at=T0)]
    for batched in (True, False):
        with pytest.raises(InvalidValueError):
            await appended(db, events, batched=batched)
    assert await stored_rows(db) == []
