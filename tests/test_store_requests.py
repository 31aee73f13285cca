"""Approval requests: round trip, listing, deadlines, optimistic concurrency."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from jitgate.store import (
    Database,
    DuplicateError,
    InvalidValueError,
    RequestRepository,
    RequestRow,
    new_request_id,
)

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def make_row(**changes: Any) -> RequestRow:
    row = RequestRow(
        id=new_request_id(),
        status="pending",
        requester="alice",
        fingerprint="a" * 64,
        kind="sql",
        environment="production",
        target="db:orders",
        created_at=NOW,
        updated_at=NOW,
        expires_at=NOW + timedelta(hours=4),
        next_deadline=NOW + timedelta(minutes=30),
        state={"stages": [{"name": "dba", "approvals": []}], "note": "ünïcødé ✓"},
        decision={"outcome": "require_approval", "rules": ["prod-ddl"], "risk": 3},
    )
    return dataclasses.replace(row, **changes)


async def insert(db: Database, *rows: RequestRow) -> None:
    async with db.transaction() as session:
        for row in rows:
            await RequestRepository(session).insert(row)


async def get(db: Database, request_id: str) -> RequestRow | None:
    async with db.transaction(readonly=True) as session:
        return await RequestRepository(session).get(request_id)


def test_request_ids() -> None:
    ids = {new_request_id() for _ in range(100)}
    assert len(ids) == 100
    for request_id in ids:
        assert request_id.startswith("req_")
        assert len(request_id) == 24


async def test_round_trip(db: Database) -> None:
    row = make_row(decision=None, next_deadline=None)
    other = make_row()
    await insert(db, row, other)
    assert await get(db, row.id) == row
    assert await get(db, other.id) == other
    assert await get(db, "req_missing") is None
    with pytest.raises(DuplicateError):
        await insert(db, make_row(id=row.id))


async def test_update_bumps_the_version(db: Database) -> None:
    row = make_row()
    await insert(db, row)
    approved = dataclasses.replace(
        row,
        status="approved",
        updated_at=NOW + timedelta(minutes=5),
        next_deadline=None,
        state={**row.state, "approved_by": ["bob"]},
    )
    async with db.transaction() as session:
        repo = RequestRepository(session)
        assert await repo.update(approved, expected_version=1) is True
        assert await repo.update(approved, expected_version=1) is False  # stale
        assert await repo.update(make_row(), expected_version=1) is False  # unknown id
    stored = await get(db, row.id)
    assert stored == dataclasses.replace(approved, version=2)
    # id and created_at never change
    async with db.transaction() as session:
        moved = dataclasses.replace(stored, created_at=NOW + timedelta(days=1))
        assert await RequestRepository(session).update(moved, expected_version=2) is True
    again = await get(db, row.id)
    assert again is not None
    assert (again.created_at, again.version) == (NOW, 3)


async def test_concurrent_updates_with_one_expected_version(db: Database) -> None:
    """Ten writers that all read version 1: exactly one update lands."""
    row = make_row()
    await insert(db, row)
    start = asyncio.Barrier(10)

    async def write(n: int) -> bool:
        await start.wait()
        async with db.transaction() as session:
            mine = dataclasses.replace(row, status=f"approved-{n}", state={"writer": n})
            return await RequestRepository(session).update(mine, expected_version=1)

    results = await asyncio.gather(*(write(n) for n in range(10)))
    assert results.count(True) == 1
    winner = results.index(True)
    stored = await get(db, row.id)
    assert stored is not None
    assert (stored.version, stored.status, stored.state) == (
        2,
        f"approved-{winner}",
        {"writer": winner},
    )


async def test_concurrent_last_stage_approvals_make_one_transition(db: Database) -> None:
    """Read, decide, write: the approval service's loop. One transition, no errors."""
    row = make_row()
    await insert(db, row)
    start = asyncio.Barrier(10)

    async def approve(approver: int) -> bool:
        await start.wait()
        async with db.transaction() as session:
            repo = RequestRepository(session)
            current = await repo.get(row.id)
            assert current is not None
            if current.status != "pending":
                return False
            await asyncio.sleep(0)  # let the others read too
            approved = dataclasses.replace(
                current, status="approved", state={"approved_by": approver}
            )
            return await repo.update(approved, expected_version=current.version)

    results = await asyncio.gather(*(approve(n) for n in range(10)))
    assert results.count(True) == 1
    stored = await get(db, row.id)
    assert stored is not None
    assert (stored.status, stored.version) == ("approved", 2)
    assert stored.state == {"approved_by": results.index(True)}


async def test_list_filters_and_pages(db: Database) -> None:
    # Five requests share a creation time: the id breaks the tie.
    rows = [
        make_row(
            created_at=NOW + timedelta(minutes=i // 5),
            requester="alice" if i % 2 else "bob",
            status="pending" if i % 3 else "approved",
        )
        for i in range(12)
    ]
    await insert(db, *rows)
    expected = sorted(rows, key=lambda r: (r.created_at, r.id), reverse=True)
    async with db.transaction(readonly=True) as session:
        repo = RequestRepository(session)
        assert await repo.list() == expected
        pages: list[RequestRow] = []
        cursor: str | None = None
        while page := await repo.list(limit=5, before_cursor=cursor):
            pages.extend(page)
            cursor = page[-1].id
        assert pages == expected
        assert await repo.list(status="approved") == [r for r in expected if r.status == "approved"]
        assert await repo.list(status=["approved", "pending"]) == expected
        assert await repo.list(requester="alice", status="pending") == [
            r for r in expected if r.requester == "alice" and r.status == "pending"
        ]
        some = {rows[0].id, rows[7].id, "req_missing"}
        assert await repo.list(ids=some) == [r for r in expected if r.id in some]
        assert await repo.list(ids=[]) == []
        assert await repo.list(before_cursor="req_missing") == []
        with pytest.raises(InvalidValueError):
            await repo.list(limit=0)


async def test_due(db: Database) -> None:
    soon = make_row(next_deadline=NOW + timedelta(minutes=1))
    later = make_row(next_deadline=NOW + timedelta(hours=1))
    idle = make_row(next_deadline=None)
    exactly = make_row(next_deadline=NOW)
    await insert(db, soon, later, idle, exactly)
    async with db.transaction(readonly=True) as session:
        repo = RequestRepository(session)
        assert await repo.due(NOW - timedelta(seconds=1)) == []
        assert await repo.due(NOW) == [exactly]
        assert await repo.due(NOW + timedelta(minutes=5)) == [exactly, soon]
        assert await repo.due(NOW + timedelta(days=1)) == [exactly, soon, later]
        assert await repo.due(NOW + timedelta(days=1), limit=1) == [exactly]


async def test_state_must_be_a_json_object(db: Database) -> None:
    async with db.transaction() as session:
        with pytest.raises(InvalidValueError):
            await RequestRepository(session).insert(make_row(state=["not", "a", "dict"]))
