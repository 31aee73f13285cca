"""The audit trail: ordered appends inside the caller's transaction."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from jitgate.store import (
    Database,
    InvalidValueError,
    append_event,
    last_seq,
    list_events,
)

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


async def test_append_and_list(db: Database) -> None:
    async with db.transaction() as session:
        assert await last_seq(session) == 0
        first = await append_event(
            session, "request.created", "alice", "req_1", {"kind": "sql", "n": [1, 2]}, NOW
        )
        second = await append_event(session, "request.expired", None, "req_1", {}, NOW)
        third = await append_event(session, "user.created", "admin", None, {"user": "bob"}, NOW)
        assert first < second < third
        assert await last_seq(session) == third
    async with db.transaction(readonly=True) as session:
        events = await list_events(session)
        assert [e.seq for e in events] == [first, second, third]
        created = events[0]
        assert (created.type, created.actor, created.request_id, created.at) == (
            "request.created",
            "alice",
            "req_1",
            NOW,
        )
        assert created.payload == {"kind": "sql", "n": [1, 2]}
        assert created.prev_hash == "0" * 64
        assert created.hash is not None
        assert events[1].prev_hash == created.hash
        assert len({e.id for e in events}) == 3
        assert [e.seq for e in await list_events(session, request_id="req_1")] == [first, second]
        assert [e.seq for e in await list_events(session, after_seq=first)] == [second, third]
        assert [e.seq for e in await list_events(session, after_seq=first, limit=1)] == [second]
        assert await list_events(session, after_seq=third) == []


async def test_events_roll_back_with_their_transaction(db: Database) -> None:
    async def append_then_fail() -> None:
        async with db.transaction() as session:
            await append_event(session, "request.created", "alice", "req_1", {}, NOW)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await append_then_fail()
    async with db.transaction(readonly=True) as session:
        assert await list_events(session) == []


async def test_bad_events_are_refused(db: Database) -> None:
    async with db.transaction() as session:
        with pytest.raises(InvalidValueError):
            await append_event(session, "", "alice", None, {}, NOW)
        with pytest.raises(InvalidValueError):
            await append_event(session, "x", "alice", None, {}, datetime(2030, 1, 1))
        with pytest.raises(InvalidValueError):
            await list_events(session, limit=0)


async def test_concurrent_appends_are_ordered(db: Database) -> None:
    start = asyncio.Barrier(10)

    async def append(n: int) -> list[int]:
        await start.wait()
        async with db.transaction() as session:
            return [
                await append_event(session, "tick", f"user{n}", None, {"n": n, "i": i}, NOW)
                for i in range(3)
            ]

    batches = await asyncio.gather(*(append(n) for n in range(10)))
    async with db.transaction(readonly=True) as session:
        events = await list_events(session)
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 30
    assert sorted(s for batch in batches for s in batch) == seqs
    # One transaction's events are contiguous: appends serialize per transaction.
    for batch in batches:
        assert batch == list(range(batch[0], batch[0] + 3))


async def test_a_reader_never_sees_a_gap_fill_in_later(db: Database) -> None:
    """An appender waits for an open appending transaction, so seq order is commit order."""
    async with db.transaction() as first:
        mine = await append_event(first, "first", "alice", None, {}, NOW)

        async def second_appender() -> int:
            async with db.transaction() as session:
                return await append_event(session, "second", "bob", None, {}, NOW)

        second = asyncio.create_task(second_appender())
        done, _ = await asyncio.wait({second}, timeout=0.3)
        assert not done, "the second appender must wait for the first transaction"
    assert await asyncio.wait_for(second, timeout=10) > mine


async def test_payload_round_trips_json(db: Database) -> None:
    payload = {
        "text": "DELETE FROM orders; -- ünïcødé ✓",
        "nested": {"list": [1, 2.5, None, True], "empty": {}},
        "big": 2**53,
    }
    async with db.transaction() as session:
        await append_event(session, "x", "alice", None, payload, NOW + timedelta(seconds=1))
    async with db.transaction(readonly=True) as session:
        (event,) = await list_events(session)
    # RFC 8785 carries integers exactly only up to 2**53 - 1: larger ones are
    # kept as their decimal text rather than rounded or refused.
    assert event.payload == {**payload, "big": str(2**53)}
    assert event.at == NOW + timedelta(seconds=1)
