"""Batch appends: ``store.append_events`` and ``record_statements`` on top of it.

A batch must leave exactly the trail one ``append_event`` per event would
(byte for byte, hashes included), verify like any trail, keep ``seq`` gap-free
when tasks and processes append concurrently (SQLite and PostgreSQL), and
append all of its events or none. The statement records are validated as
before the batch path existed (same errors, same events).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import math
import os
import subprocess
import sys
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from jitgate.actions.model import canonical_environment
from jitgate.audit.chain import (
    ChainEvent,
    canonical_time,
    plain_texts,
    raw_hash,
    seal,
    stored_hash,
    stored_payload,
)
from jitgate.audit.keys import SigningKey, TrustedKeys
from jitgate.gateways import StatementRecord
from jitgate.service import Principal, ServiceError
from jitgate.service import statements as statements_module
from jitgate.service.statements import record_statements, statement_event
from jitgate.store import (
    Database,
    InvalidValueError,
    NewEvent,
    append_event,
    append_events,
)
from jitgate.store import events as events_module
from jitgate.store.audit import verify_store, write_checkpoint
from jitgate.store.database import compact_json
from jitgate.store.tables import AnchorTable

KEY = SigningKey.generate()
TRUSTED = TrustedKeys([KEY.verify_key])
T0 = datetime(2030, 1, 1, tzinfo=UTC)
GW = Principal("gw", is_service_account=True)

#: Every column of the trail as text, as the database holds it.
ROWS_SQL = (
    "SELECT seq, id, CAST(at AS TEXT), type, actor, request_id, CAST(payload AS TEXT), "
    "prev_hash, hash, target, environment FROM events ORDER BY seq"
)


def record(i: int, **fields: Any) -> dict[str, Any]:
    """A typical gateway record (what the pgbench load sends)."""
    return {
        "user": f"user{i % 7}",
        "target": "orders-db",
        "environment": "production",
        "text": f"SELECT id, name FROM customers WHERE id = {i} AND region = 'eu'",
        "decision": "allow",
        "duration_ms": round(0.1 + i % 13 / 8, 3),  # never integral: see ODD_RECORDS
        "tag": "SELECT 1",
        "rows": 1,
        "session": f"s-{i % 5}",
        "client": "10.0.0.7:51234",
        "gateway": "gw-1",
        "at": "2030-01-01T00:00:00.123456+00:00",
        **fields,
    }


#: Records that take every branch of sealing: non-ASCII text (escaped in the
#: stored JSON), floats RFC 8785 spells differently from Python (the exact
#: path), integers beyond 2**53, lone surrogates, extra fields.
ODD_RECORDS = [
    record(1, text="SELECT 'grüße ✓ 😀' -- \x7f\x01\u2028", environment="Prod"),
    record(2, duration_ms=2.0, rows=2**60),
    record(3, duration_ms=1e-7, parameters=["42", None, "\\x00ff", "\ud800"]),
    record(4, duration_ms=0, tag=None, rows=None, error="23503: fk", request_id="req_1"),
    record(5, extra={"é": [1, 2.5, None, True], "a": {"b": "c"}, "big": 2**70}),
    record(6, extra={"\U0001f600": 1, "\uffff": 2}, text='C:\\users\\u00e9 "q"'),
]


async def stored_rows(db: Database) -> list[tuple[Any, ...]]:
    async with db.transaction(readonly=True) as session:
        return [tuple(row) for row in (await session.execute(text(ROWS_SQL))).all()]


async def seqs(db: Database) -> list[int]:
    async with db.transaction(readonly=True) as session:
        return [
            int(s)
            for s in (await session.execute(text("SELECT seq FROM events ORDER BY seq"))).scalars()
        ]


def row_event(row: tuple[Any, ...], at: str) -> ChainEvent:
    seq, id_, _, type_, actor, request_id, payload, prev, digest, target, environment = row
    return ChainEvent(
        seq=seq,
        id=id_,
        at=at,
        type=type_,
        actor=actor,
        request_id=request_id,
        target=target,
        environment=environment,
        payload=json.loads(payload),
        prev_hash=prev,
        hash=digest,
        payload_text=payload,
    )


# --- the trail verifies -----------------------------------------------------------------


async def test_a_batch_appended_trail_verifies(db: Database, tmp_path: Path) -> None:
    assert await record_statements(db, GW, [record(0)], T0) == 1
    assert await record_statements(db, GW, [record(i) for i in range(100)], T0) == 100
    async with db.transaction() as session:
        await append_event(session, "approval.given", "carol", "req_x", {"n": 1}, T0)
    await write_checkpoint(db, KEY, T0 + timedelta(seconds=1))
    batch = [record(i) for i in range(1000 - len(ODD_RECORDS))] + ODD_RECORDS
    later = T0 + timedelta(seconds=2, microseconds=7)
    assert await record_statements(db, GW, batch, later) == 1000
    await write_checkpoint(db, KEY, later + timedelta(seconds=1))

    result = await verify_store(db, TRUSTED)
    assert result.ok, result.problem
    assert result.events == 1102
    assert await seqs(db) == list(range(1, 1103))

    # The verifier's fast loop takes every typical record as it is stored:
    # raw_hash over the stored payload text is the hash it was sealed with.
    rows = await stored_rows(db)
    typical = rows[-1000 : -len(ODD_RECORDS)]
    at_text = canonical_time(later)
    for row in typical:
        seq, id_, _, type_, actor, request_id, payload, prev, digest, target, env = row
        assert raw_hash(
            seq, id_, at_text, type_, actor, request_id, target, env, payload, prev
        ) == (digest)
    # ... and every event, odd ones included, hashes exactly (RFC 8785).
    for row in rows[-len(ODD_RECORDS) :]:
        event = row_event(row, at_text)
        assert event.intact()
        assert seal(**{**event.document(), "at": later}).hash == row[8]
    odd = [json.loads(row[6]) for row in rows[-len(ODD_RECORDS) :]]
    assert odd[1]["rows"] == str(2**60)
    assert odd[2]["parameters"][3] == "\\ud800"

    # The CLI (`jitgate audit verify`) agrees.
    public = tmp_path / "pub.pem"
    public.write_text(KEY.verify_key.pem())
    done = subprocess.run(
        [sys.executable, "-m", "jitgate", "audit", "verify", "--db", db.url, "--public-key",
         str(public)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "JITGATE_DATA_DIR": str(tmp_path)},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "intact: 1102 events" in done.stdout


async def test_a_statement_event_is_what_it_always_was(db: Database) -> None:
    await record_statements(db, GW, [record(3, environment=" PROD ", request_id="")], T0)
    async with db.transaction(readonly=True) as session:
        (row,) = (await session.execute(text(ROWS_SQL))).all()
    _, _, _, type_, actor, request_id, payload, _, _, target, environment = row
    assert (type_, actor, request_id, target) == ("statement.executed", "user3", None, "orders-db")
    assert environment == canonical_environment("prod")
    assert json.loads(payload) == {
        "text": "SELECT id, name FROM customers WHERE id = 3 AND region = 'eu'",
        "decision": "allow",
        "duration_ms": 0.475,
        "tag": "SELECT 1",
        "rows": 1,
        "error": None,
        "parameters": None,
        "session": "s-3",
        "client": "10.0.0.7:51234",
        "gateway": "gw-1",
        "at": "2030-01-01T00:00:00.123456+00:00",
        "recorded_by": "gw",
    }
    assert payload == compact_json(json.loads(payload)), "stored as the engine writes JSON"


# --- concurrency: one gap-free chain --------------------------------------------------------


async def test_concurrent_batches_make_one_gap_free_chain(db: Database) -> None:
    start = asyncio.Barrier(8)

    async def writer(n: int) -> list[range]:
        await start.wait()
        committed = []
        for round_ in range(4):
            size = 1 + (n * 37 + round_ * 11) % 60
            events = [
                NewEvent(
                    type="statement.executed",
                    actor=f"w{n}",
                    request_id=None,
                    payload={"n": n, "round": round_, "i": i},
                    at=datetime.now(UTC),
                )
                for i in range(size)
            ]
            try:
                async with db.transaction() as session:
                    if round_ == 2:  # a single append first: the head is shared
                        await append_event(session, "tick", f"w{n}", None, {}, T0)
                    appended = await append_events(session, events)
                    if (n + round_) % 3 == 0:
                        raise RuntimeError("roll back")
                committed.append(appended)
            except RuntimeError:
                pass
        return committed

    results = await asyncio.gather(*(writer(n) for n in range(8)))
    ranges = [r for rs in results for r in rs]
    total = len(await seqs(db))
    assert await seqs(db) == list(range(1, total + 1))
    assert sorted(s for r in ranges for s in r) == [
        s for s in range(1, total + 1) if s not in _singles(await stored_rows(db))
    ]
    for r in ranges:  # one transaction's batch is one contiguous run
        assert list(r) == list(range(r.start, r.stop))
    result = await verify_store(db, TRUSTED, allow_unsigned=total)
    assert result.ok, result.problem


def _singles(rows: list[tuple[Any, ...]]) -> set[int]:
    return {row[0] for row in rows if row[3] == "tick"}


WRITER = """
import asyncio, sys
from datetime import UTC, datetime
from jitgate.store import Database, NewEvent, append_events

async def main(url, name, n):
    async with Database(url) as db:
        for b in range(n):
            size = 1 + (b * 53 + len(name) * 7 + int(name[1:]) * 31) % 150
            events = [
                NewEvent(type="load", actor=name, request_id=None,
                         payload={"b": b, "i": i, "text": "SELECT 1"}, at=datetime.now(UTC))
                for i in range(size)
            ]
            try:
                async with db.transaction() as session:
                    await append_events(session, events)
                    if b % 4 == 3:
                        raise RuntimeError("roll back")
            except RuntimeError:
                pass

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


def _writer_committed(name: str, n: int) -> int:
    return sum(
        1 + (b * 53 + len(name) * 7 + int(name[1:]) * 31) % 150 for b in range(n) if b % 4 != 3
    )


async def test_several_processes_append_batches_to_one_gap_free_chain(db: Database) -> None:
    names, batches = [f"w{i}" for i in range(4)], 16
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", WRITER, db.url, name, str(batches),
            stderr=asyncio.subprocess.PIPE,
        )
        for name in names
    ]  # fmt: skip
    for proc in procs:
        _, err = await asyncio.wait_for(proc.communicate(), timeout=180)
        assert proc.returncode == 0, err.decode()
    committed = sum(_writer_committed(name, batches) for name in names)
    assert await seqs(db) == list(range(1, committed + 1))
    rows = await stored_rows(db)
    # Each committed batch is one contiguous run of its writer's events.
    runs = [(row[4], json.loads(row[6])["b"]) for row in rows]
    boundaries = [i for i in range(1, len(runs)) if runs[i] != runs[i - 1]]
    assert len(boundaries) + 1 == sum(1 for _ in names for b in range(batches) if b % 4 != 3)
    result = await verify_store(db, TRUSTED, allow_unsigned=committed)
    assert result.ok, result.problem


# --- all or nothing ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        ({"text": None}, "invalid_body"),
        ({"rows": -1}, "invalid_body"),
        ({"text": "x" * (1024 * 1024 + 1)}, "statement_too_large"),
        ({"user": "ann\ud800"}, "invalid_body"),  # refused when it is sealed
        ({"target": "main\x00"}, "invalid_body"),
    ],
)
async def test_a_failing_record_leaves_nothing_appended(
    db: Database, bad: dict[str, Any], code: str
) -> None:
    await record_statements(db, GW, [record(i) for i in range(3)], T0)
    before = await stored_rows(db)
    batch = [record(i) for i in range(1000)]
    batch[500] = record(500, **bad)
    with pytest.raises(ServiceError) as refused:
        await record_statements(db, GW, batch, T0)
    assert refused.value.code == code
    assert await stored_rows(db) == before
    await record_statements(db, GW, [record(9)], T0)
    assert await seqs(db) == [1, 2, 3, 4], "no gap after the refused batch"


@pytest.mark.parametrize(
    "bad",
    [
        NewEvent(type="", actor=None, request_id=None, payload={}, at=T0),
        NewEvent(type="x", actor=None, request_id=None, payload={}, at=datetime(2030, 1, 1)),
        NewEvent(type="x", actor=None, request_id=None, payload={"o": object()}, at=T0),
        NewEvent(type="x", actor=None, request_id=None, payload={"k\ud800": 1}, at=T0),
        NewEvent(type="x", actor="\udfff", request_id=None, payload={}, at=T0),
    ],
    ids=["no type", "naive time", "not JSON", "surrogate key", "surrogate actor"],
)
async def test_an_invalid_event_appends_nothing_and_keeps_the_head(
    db: Database, bad: NewEvent
) -> None:
    good = [
        NewEvent(type="x", actor="a", request_id=None, payload={"i": i}, at=T0) for i in range(5)
    ]
    async with db.transaction() as session:
        assert await append_events(session, good[:2]) == range(1, 3)
        with pytest.raises(InvalidValueError):
            await append_events(session, [*good[2:4], bad, good[4]])
        # The transaction goes on from the same head: no gap, no fork.
        assert await append_events(session, good[2:]) == range(3, 6)
    assert await seqs(db) == [1, 2, 3, 4, 5]
    assert (await verify_store(db, TRUSTED, allow_unsigned=5)).ok


async def test_a_failing_insert_appends_nothing(db: Database) -> None:
    await record_statements(db, GW, [record(0)], T0)
    before = await stored_rows(db)
    real = events_module._event_ids

    def clashing(n: int) -> list[str]:
        ids = real(n)
        ids[-1] = ids[0]  # the last row breaks the unique id: the database refuses it
        return ids

    with mock.patch.object(events_module, "_event_ids", clashing), pytest.raises(IntegrityError):
        await record_statements(db, GW, [record(i) for i in range(500)], T0)
    assert await stored_rows(db) == before
    assert await record_statements(db, GW, [record(i) for i in range(3)], T0) == 3
    assert await seqs(db) == [1, 2, 3, 4]
    assert (await verify_store(db, TRUSTED, allow_unsigned=4)).ok


async def test_pending_changes_are_written_before_the_batch(db: Database) -> None:
    """Like append_event's INSERT (an autoflush), a batch writes the
    transaction's pending ORM changes first: the events stay the last writes."""
    event = NewEvent(type="x", actor="a", request_id=None, payload={}, at=T0)

    async def pending_then_batch() -> None:
        async with db.transaction() as session:
            await append_events(session, [event])  # the head is now known: no query
            session.add(
                AnchorTable(seq=1, hash="0" * 64, archived_at=T0, events=0, archive_sha256="")
            )
            assert session.new
            await append_events(session, [event])
            assert not session.new
            raise RuntimeError("roll back")

    with pytest.raises(RuntimeError):
        await pending_then_batch()
    assert await seqs(db) == []


# --- byte for byte what append_event writes ----------------------------------------------

ZONES = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]
SAME_INSTANTS = [
    T0,
    T0.astimezone(ZONES[1]),
    T0.astimezone(ZONES[2]),
    T0 + timedelta(microseconds=1),
]

texts = st.text(max_size=10)
odd_texts = st.text(
    alphabet=st.characters(codec="utf-8") | st.characters(categories=["Cs"]), max_size=6
)
keys = texts | st.sampled_from(["text", "é", "\U0001f600", "\uffff", "a b", "A", "_"])
floats = st.floats() | st.sampled_from([0.0, -0.0, 1.0, 2.5, 1e-7, 1e16, 1e21, 123456789.0, 0.1])
integers = st.integers(min_value=-(2**64), max_value=2**64) | st.sampled_from(
    [2**53 - 1, 2**53, -(2**53) + 1, -(2**53)]
)
scalars = st.none() | st.booleans() | integers | floats | texts | odd_texts
json_like = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=3)
        | st.lists(children, max_size=3).map(tuple)
        | st.dictionaries(keys, children, max_size=3)
        | st.dictionaries(st.integers(-3, 3), children, max_size=2)  # keys JSON turns into text
    ),
    max_leaves=12,
)
payloads = st.dictionaries(keys, json_like, max_size=6) | st.sampled_from(
    [record(1), *ODD_RECORDS, {}]
)
fields = st.none() | st.text(alphabet=st.characters(exclude_characters="\x00"), max_size=8)
new_events = st.builds(
    NewEvent,
    type=st.sampled_from(["statement.executed", "approval.given", "é.vent"]),
    actor=fields | st.sampled_from(["alice", "bad\ud800"]),
    request_id=fields,
    payload=payloads,
    at=st.sampled_from(SAME_INSTANTS)
    | st.datetimes(
        min_value=datetime(1990, 1, 1),
        max_value=datetime(2100, 1, 1),
        timezones=st.sampled_from(ZONES),
    ),
    target=fields,
    environment=fields,
)


def fixed_ids(n: int) -> Iterator[str]:
    return iter(str(uuid.UUID(int=i + 1, version=4)) for i in range(n))


async def _clear(db: Database) -> None:
    async with db.transaction() as session:
        await session.execute(text("DELETE FROM events"))


async def _trail(
    db: Database, events: list[NewEvent], prefix: bool, split: int | None
) -> list[tuple[Any, ...]] | None:
    """The stored rows after appending ``events`` one by one (``split`` None) or
    the first ``split`` one by one and the rest as a batch, in one transaction;
    None if the append was refused (then nothing may be stored)."""
    await _clear(db)
    ids = fixed_ids(len(events) + 1)
    with mock.patch.object(events_module, "_event_ids", lambda n: [next(ids) for _ in range(n)]):
        if prefix:
            async with db.transaction() as session:
                await append_event(session, "prefix", "p", None, {"p": 1}, T0)
        try:
            async with db.transaction() as session:
                singles = events if split is None else events[:split]
                for e in singles:
                    await append_event(
                        session, e.type, e.actor, e.request_id, e.payload, e.at,
                        target=e.target, environment=e.environment,
                    )  # fmt: skip
                if split is not None:
                    appended = await append_events(session, events[split:])
                    assert len(appended) == len(events) - split
        except InvalidValueError:
            assert len(await stored_rows(db)) == int(prefix)
            return None
    return await stored_rows(db)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    events=st.lists(new_events, min_size=1, max_size=8),
    prefix=st.booleans(),
    split=st.integers(min_value=0, max_value=8),
)
async def test_a_batch_stores_the_rows_one_by_one_appends_store(
    db: Database, events: list[NewEvent], prefix: bool, split: int
) -> None:
    split = min(split, len(events))
    one_by_one = await _trail(db, events, prefix, None)
    batched = await _trail(db, events, prefix, split)
    assert batched == one_by_one
    if batched is not None:
        assert (await verify_store(db, TRUSTED, allow_unsigned=len(batched))).ok


# --- sealing without the database ---------------------------------------------------------


class Level(enum.IntEnum):
    HIGH = 3


class Name(str):
    pass


@settings(max_examples=500, deadline=None)
@given(
    payload=payloads
    | st.builds(lambda d: MappingProxyType(d), st.dictionaries(keys, json_like, max_size=3))
    | st.builds(
        lambda d: {"odd": [Level.HIGH, Name("n"), OrderedDict(d), (1, (2,))], **d},
        st.dictionaries(keys, json_like, max_size=3),
    ),
    actor=st.none() | odd_texts,
    at=st.sampled_from(SAME_INSTANTS),
)
def test_stored_hash_is_seal_s_hash(
    payload: Mapping[str, Any], actor: str | None, at: datetime
) -> None:
    """The batch path's normalisation, stored text and hash are seal's (RFC 8785)."""
    fields = {"type": "t", "actor": actor, "request_id": None, "target": "x", "environment": None}

    def batch_path() -> tuple[dict[str, Any], str]:
        plain_payload, plain = stored_payload(payload)
        digest = stored_hash(
            seq=7, id="id-7", at=canonical_time(at), payload=plain_payload,
            payload_text=compact_json(plain_payload), prev_hash="f" * 64,
            plain=plain and plain_texts(*fields.values()), **fields,
        )  # fmt: skip
        return plain_payload, digest

    try:
        sealed = seal(seq=7, id="id-7", at=at, payload=payload, prev_hash="f" * 64, **fields)
    except (TypeError, ValueError):
        with pytest.raises((TypeError, ValueError)):
            batch_path()
        return
    plain_payload, digest = batch_path()
    assert plain_payload == sealed.payload
    assert compact_json(plain_payload) == compact_json(dict(sealed.payload))
    assert digest == sealed.hash


def test_plain_payloads_are_the_common_case() -> None:
    assert stored_payload(record(1))[1]
    assert stored_payload({"n": 1.5, "l": [None, True, "é"], "d": {"k": -3}})[1]
    for odd in ({"f": 1.0}, {"f": 1e-7}, {"f": 1e21}, {"é": 1}, {"t": (1.0,)}, {1: "x"}):
        assert not stored_payload(odd)[1], odd  # type: ignore[arg-type]
    assert stored_payload({"n": math.nan, "i": math.inf})[0] == {"n": "nan", "i": "inf"}


def test_event_ids_are_time_ordered_uuid7_text() -> None:
    before = time.time_ns() // 1_000_000
    ids = events_module._event_ids(2000)
    later = events_module._event_ids(1)[0]
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == 2000
    stamps = []
    for id_ in [*ids, later]:
        parsed = uuid.UUID(id_)
        assert str(parsed) == id_
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
        stamps.append(parsed.int >> 80)  # the first 48 bits: Unix time in ms
    assert all(before <= stamp <= after for stamp in stamps)
    assert stamps == sorted(stamps)  # appended at the right edge of the unique index
    # The 74 bits after the timestamp are random: no two ids share them.
    assert len({uuid.UUID(id_).int & ((1 << 80) - 1) for id_ in ids}) == 2000


# --- validation: cheaper, not different ------------------------------------------------------


def _reference_event(
    index: int, record: object, recorded_by: str, max_text: int, max_rest: int
) -> dict[str, Any]:
    """How records were checked before the batch path (jitgate 0.x, one
    ``append_event`` per record), kept as the oracle for the faster checks."""
    m = statements_module
    if isinstance(record, Mapping):
        fields = dict(record)
    elif dataclasses.is_dataclass(record) and not isinstance(record, type):
        fields = {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
    else:
        raise ServiceError("invalid_body", f"records[{index}]: a record must be an object", 400)
    unknown = sorted(str(k) for k in fields if k not in m.FIELDS)
    if unknown:
        raise ServiceError(
            "invalid_body", f"records[{index}]: unknown field(s): {', '.join(unknown)}", 400
        )

    def invalid(field: str, message: str) -> ServiceError:
        return ServiceError("invalid_body", f"records[{index}].{field}: {message}", 400)

    def size(value: str, limit: int) -> int:
        return (
            len(value) if 4 * len(value) <= limit else len(value.encode("utf-8", "surrogatepass"))
        )

    for name in m._REQUIRED:
        if fields.get(name) is None:
            raise invalid(name, "required")
    for name in (*m._REQUIRED, *m._PLAIN_TEXT):
        if not isinstance(fields.get(name, ""), str):
            raise invalid(name, "must be a string")
    for name in m._OPTIONAL_TEXT:
        value = fields.get(name)
        if value is not None and not isinstance(value, str):
            raise invalid(name, "must be a string or null")
    for name in m._COLUMNS:
        value = fields.get(name)
        if isinstance(value, str) and "\x00" in value:
            raise invalid(name, "must not contain NUL characters")
    user = fields["user"]
    if not user.strip():
        raise invalid("user", "must not be blank")
    decision = fields["decision"]
    if decision not in m.DECISIONS:
        raise invalid("decision", f"must be one of {', '.join(sorted(m.DECISIONS))}")
    duration = fields.get("duration_ms", 0.0)
    if duration is None:
        duration = 0.0
    if (
        isinstance(duration, bool)
        or not isinstance(duration, int | float)
        or not math.isfinite(duration)
        or duration < 0
    ):
        raise invalid("duration_ms", "must be a non-negative number")
    rows = fields.get("rows")
    if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 0):
        raise invalid("rows", "must be a non-negative integer or null")
    parameters = fields.get("parameters")
    if parameters is not None:
        if isinstance(parameters, str | bytes | Mapping) or not isinstance(parameters, Sequence):
            raise invalid("parameters", "must be a list of strings or nulls")
        parameters = list(parameters)
        if not all(p is None or isinstance(p, str) for p in parameters):
            raise invalid("parameters", "must be a list of strings or nulls")
    extra = fields.get("extra") or {}
    if not isinstance(extra, Mapping) or not all(isinstance(k, str) for k in extra):
        raise invalid("extra", "must be an object")
    try:
        extra_size = (
            len(json.dumps(dict(extra), allow_nan=False, ensure_ascii=False)) if extra else 0
        )
    except (TypeError, ValueError):
        raise invalid("extra", "must be JSON data") from None
    if size(fields["text"], max_text) > max_text:
        raise ServiceError(
            "statement_too_large", f"records[{index}].text: larger than {max_text} bytes", 413
        )
    rest = [fields.get(name) or "" for name in (*m._OPTIONAL_TEXT, *m._PLAIN_TEXT)]
    rest += [user, fields["target"], fields["environment"]]
    rest += [p for p in parameters or () if p is not None]
    if extra_size + sum(size(s, max_rest) for s in rest) > max_rest:
        raise ServiceError(
            "statement_too_large",
            f"records[{index}]: its fields other than text are larger than {max_rest} bytes",
            413,
        )
    payload: dict[str, Any] = {
        "text": fields["text"],
        "decision": decision,
        "duration_ms": duration,
        "tag": fields.get("tag"),
        "rows": rows,
        "error": fields.get("error"),
        "parameters": parameters,
        "session": fields.get("session", ""),
        "client": fields.get("client", ""),
        "gateway": fields.get("gateway", ""),
        "at": fields.get("at", ""),
        "recorded_by": recorded_by,
    }
    if extra:
        payload["extra"] = dict(extra)
    return {
        "actor": user,
        "request_id": fields.get("request_id") or None,
        "target": fields["target"],
        "environment": canonical_environment(fields["environment"]),
        "payload": payload,
    }


SMALL_TEXT, SMALL_REST = 40, 120
sizes = st.text(alphabet="aé😀\ud800", max_size=SMALL_REST // 2)
field_values = (
    st.none()
    | st.booleans()
    | st.integers(-2, 2)
    | st.floats()
    | sizes
    | st.sampled_from(["", " ", "allow", "deny", "prod", "a\x00", "ann"])
    | st.lists(st.none() | sizes, max_size=4)
    | st.lists(st.none() | sizes, max_size=2).map(tuple)
    | st.dictionaries(st.text(max_size=3), st.none() | st.integers() | sizes, max_size=2)
    | st.just({1: "x"})
    | st.just({"f": math.nan})
)
record_fields = st.dictionaries(
    st.sampled_from([*sorted(statements_module.FIELDS), "bogus"]), field_values, max_size=8
)


@settings(max_examples=1500, deadline=None)
@given(
    base=st.sampled_from([record(1), record(2, extra={"k": "v"}, parameters=["1", None])]),
    changes=record_fields,
    removed=st.sets(st.sampled_from(sorted(statements_module.FIELDS)), max_size=2),
    as_record=st.booleans(),
)
def test_validation_is_what_it_always_was(
    base: dict[str, Any], changes: dict[str, Any], removed: set[str], as_record: bool
) -> None:
    fields = {k: v for k, v in {**base, **changes}.items() if k not in removed}
    candidate: object = fields
    if as_record:
        assume("bogus" not in fields and all(k in fields for k in ("user", "target", "text")))
        assume(all(k in fields for k in ("environment", "decision")))
        candidate = StatementRecord(**fields)
    with (
        mock.patch.object(statements_module, "MAX_TEXT_BYTES", SMALL_TEXT),
        mock.patch.object(statements_module, "MAX_REST_BYTES", SMALL_REST),
    ):
        expected = _outcome(_reference_event, 4, candidate, "gw", SMALL_TEXT, SMALL_REST)
        actual = _outcome(_new_event, 4, candidate)
    assert actual == expected


def _outcome(check: Callable[..., dict[str, Any]], *args: Any) -> tuple[Any, ...]:
    try:
        return ("event", check(*args))
    except ServiceError as error:
        return ("refused", error.code, error.message, error.status)


def _new_event(index: int, candidate: object) -> dict[str, Any]:
    event = statement_event(index, candidate, "gw", T0)
    assert (event.type, event.at) == ("statement.executed", T0)
    return {
        "actor": event.actor,
        "request_id": event.request_id,
        "target": event.target,
        "environment": event.environment,
        "payload": event.payload,
    }


def test_size_limits_are_what_they_always_were() -> None:
    """Every length around the limits, in characters of every UTF-8 width."""
    with (
        mock.patch.object(statements_module, "MAX_TEXT_BYTES", SMALL_TEXT),
        mock.patch.object(statements_module, "MAX_REST_BYTES", SMALL_REST),
    ):
        for char in ("a", "é", "✓", "😀", "\ud800"):
            for n in range(SMALL_REST + 2):
                for where in ("session", "parameters", "extra", "text"):
                    small = {"user": "u", "target": "t", "environment": "e", "text": "x"}
                    value: Any = char * n
                    if where == "parameters":
                        value = [None, value[: n // 2], value[n // 2 :]]
                    elif where == "extra":
                        value = {"k": value}
                    candidate = {**small, "decision": "deny", where: value}
                    expected = _outcome(
                        _reference_event, 0, candidate, "gw", SMALL_TEXT, SMALL_REST
                    )
                    assert _outcome(_new_event, 0, candidate) == expected, (char, n, where)
