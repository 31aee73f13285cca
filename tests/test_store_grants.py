"""Grants: single use under concurrency, revocation, rule-scope lookups."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError

from jitgate.store import (
    SCOPE_ACTION,
    SCOPE_RULE,
    Database,
    DuplicateError,
    GrantRepository,
    GrantRow,
    InvalidValueError,
    RequestRepository,
    RequestRow,
    new_grant_id,
    new_request_id,
)

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


@pytest.fixture
async def request_id(db: Database) -> str:
    row = RequestRow(
        id=new_request_id(),
        status="approved",
        requester="alice",
        fingerprint="f" * 64,
        kind="sql",
        environment="production",
        target="db:orders",
        created_at=NOW,
        updated_at=NOW,
        expires_at=NOW + HOUR,
        state={},
    )
    async with db.transaction() as session:
        await RequestRepository(session).insert(row)
    return row.id


def make_grant(request_id: str, **changes: Any) -> GrantRow:
    grant = GrantRow(
        id=new_grant_id(),
        request_id=request_id,
        fingerprint="f" * 64,
        scope=SCOPE_ACTION,
        requester="alice",
        target="db:orders",
        environment="production",
        rule_ids=("prod-ddl", "prod-delete"),
        issued_at=NOW,
        expires_at=NOW + HOUR,
    )
    return dataclasses.replace(grant, **changes)


async def insert(db: Database, *grants: GrantRow) -> None:
    async with db.transaction() as session:
        for grant in grants:
            await GrantRepository(session).insert(grant)


async def test_round_trip(db: Database, request_id: str) -> None:
    grant = make_grant(request_id, break_glass=True)
    other = make_grant(request_id, scope=SCOPE_RULE, issued_at=NOW + timedelta(seconds=1))
    await insert(db, grant, other)
    async with db.transaction(readonly=True) as session:
        repo = GrantRepository(session)
        assert await repo.get(grant.id) == grant
        assert await repo.get("grt_missing") is None
        assert await repo.for_request(request_id) == [grant, other]
    with pytest.raises(DuplicateError):
        await insert(db, make_grant(request_id, id=grant.id))


async def test_grants_belong_to_a_request(db: Database) -> None:
    with pytest.raises(IntegrityError):
        await insert(db, make_grant("req_missing"))


@pytest.mark.parametrize(
    "changes",
    [
        {"scope": "forever"},
        {"expires_at": NOW},
        {"issued_at": datetime(2030, 1, 1, 12, 0)},
    ],
)
async def test_bad_grants_are_refused(
    db: Database, request_id: str, changes: dict[str, Any]
) -> None:
    with pytest.raises(InvalidValueError):
        await insert(db, make_grant(request_id, **changes))


async def test_consume_once(db: Database, request_id: str) -> None:
    grant = make_grant(request_id)
    await insert(db, grant)
    async with db.transaction() as session:
        repo = GrantRepository(session)
        assert await repo.consume(grant.id, NOW - timedelta(seconds=1)) is False  # not yet
        assert await repo.consume(grant.id, NOW + HOUR) is False  # expired
        assert await repo.consume("grt_missing", NOW) is False
        assert await repo.consume(grant.id, NOW + timedelta(minutes=1)) is True
        assert await repo.consume(grant.id, NOW + timedelta(minutes=2)) is False
        stored = await repo.get(grant.id)
    assert stored is not None
    assert stored.used_at == NOW + timedelta(minutes=1)


async def test_revoked_grants_cannot_be_consumed(db: Database, request_id: str) -> None:
    grant = make_grant(request_id)
    await insert(db, grant)
    async with db.transaction() as session:
        repo = GrantRepository(session)
        assert await repo.revoke(grant.id, NOW, by="carol", reason="wrong target") is True
        assert await repo.revoke(grant.id, NOW, by="dave") is False
        assert await repo.revoke("grt_missing", NOW) is False
        assert await repo.consume(grant.id, NOW) is False
        stored = await repo.get(grant.id)
    assert stored is not None
    assert (stored.revoked_at, stored.revoked_by, stored.revoke_reason) == (
        NOW,
        "carol",
        "wrong target",
    )


async def test_concurrent_consumers_one_winner(db: Database, request_id: str) -> None:
    grant = make_grant(request_id)
    await insert(db, grant)
    start = asyncio.Barrier(10)

    async def consume(n: int) -> bool:
        await start.wait()
        async with db.transaction() as session:
            return await GrantRepository(session).consume(grant.id, NOW + timedelta(seconds=n))

    results = await asyncio.gather(*(consume(n) for n in range(10)))
    assert results.count(True) == 1
    async with db.transaction(readonly=True) as session:
        stored = await GrantRepository(session).get(grant.id)
    assert stored is not None
    assert stored.used_at == NOW + timedelta(seconds=results.index(True))


async def test_active_rule_grants(db: Database, request_id: str) -> None:
    rule = make_grant(request_id, scope=SCOPE_RULE, rule_ids=("prod-ddl",))
    newer = make_grant(
        request_id,
        scope=SCOPE_RULE,
        issued_at=NOW + timedelta(minutes=10),
        expires_at=NOW + 2 * HOUR,
    )
    used = make_grant(request_id, scope=SCOPE_RULE, used_at=NOW)
    action = make_grant(request_id)  # action scope: never a rule grant
    revoked = make_grant(request_id, scope=SCOPE_RULE, revoked_at=NOW, revoked_by="carol")
    elsewhere = make_grant(request_id, scope=SCOPE_RULE, target="db:users")
    staging = make_grant(request_id, scope=SCOPE_RULE, environment="staging")
    bob = make_grant(request_id, scope=SCOPE_RULE, requester="bob")
    await insert(db, rule, newer, used, action, revoked, elsewhere, staging, bob)

    async with db.transaction(readonly=True) as session:
        repo = GrantRepository(session)

        async def active(at: datetime, **kwargs: Any) -> set[str]:
            found = await repo.active_rule_grants("alice", "db:orders", at, **kwargs)
            return {g.id for g in found}

        prod = {"environment": "production"}
        assert await active(NOW + timedelta(minutes=1), **prod) == {rule.id, used.id}
        assert await active(NOW + timedelta(minutes=20), **prod) == {rule.id, used.id, newer.id}
        assert await active(NOW + timedelta(minutes=20)) == {rule.id, used.id, newer.id, staging.id}
        assert await active(NOW + HOUR, **prod) == {newer.id}
        assert await active(NOW + 2 * HOUR, **prod) == set()
        assert await active(NOW - timedelta(seconds=1), **prod) == set()
        covering = {"environment": "production", "rule_ids": ["prod-ddl", "prod-delete"]}
        assert await active(NOW + timedelta(minutes=20), **covering) == {used.id, newer.id}
        ordered = await repo.active_rule_grants(
            "alice", "db:orders", NOW + timedelta(minutes=20), environment="production"
        )
        assert ordered[0].id == newer.id  # newest first
