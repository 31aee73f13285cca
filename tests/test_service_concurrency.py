"""Racing commands: one transition, one grant, no orphan events (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from conftest import SERVICE_USERS, ServiceWorld, make_world
from jitgate.service import ServiceError
from jitgate.store import Database, GrantRepository, RequestRepository, RequestRow
from jitgate.store.tables import RequestTable


def outcomes(results: list[Any]) -> Counter[str]:
    """``ok`` for views, the error code for refusals; anything else fails the test."""
    seen: Counter[str] = Counter()
    for result in results:
        if isinstance(result, ServiceError):
            assert result.status == 409, (result.code, result.message)
            seen[result.code] += 1
        elif isinstance(result, BaseException):
            raise result
        else:
            seen["ok"] += 1
    return seen


async def trail(world: ServiceWorld, rid: str) -> Counter[str]:
    return Counter(e.type for e in await world.events(rid))


async def grants(world: ServiceWorld, rid: str) -> int:
    async with world.db.transaction(readonly=True) as session:
        return len(await GrantRepository(session).for_request(rid))


async def test_two_approvals_of_the_last_stage_at_the_same_instant(world: ServiceWorld) -> None:
    s, p = world.service, world.p
    for _ in range(3):
        rid = (await world.submit("ann"))["id"]
        results = await asyncio.gather(
            s.approve(p["bob"], rid), s.approve(p["bea"], rid), return_exceptions=True
        )
        assert outcomes(results) == {"ok": 1, "not_pending": 1}
        events = await trail(world, rid)
        assert events["request.approved"] == 1
        assert events["grant.issued"] == 1
        assert events["approval.given"] == 1
        assert await grants(world, rid) == 1
        view = await s.get(p["ann"], rid)
        assert view["status"] == "approved"
        assert len(view["stages"][0]["approvals"]) == 1


CROWD = {f"c{i}": (("approvers", "crowd"), ()) for i in range(10)}


@pytest.fixture
async def crowd(db: Database) -> Any:
    built = await make_world(db, users={**SERVICE_USERS, **CROWD})
    try:
        yield built
    finally:
        await built.service.stop()


async def test_ten_concurrent_approvals_one_needed(crowd: ServiceWorld) -> None:
    s, p = crowd.service, crowd.p
    rid = (await crowd.submit("ann", "crowd"))["id"]
    results = await asyncio.gather(
        *(s.approve(p[name], rid) for name in CROWD), return_exceptions=True
    )
    assert outcomes(results) == {"ok": 1, "not_pending": 9}
    events = await trail(crowd, rid)
    assert (events["approval.given"], events["request.approved"], events["grant.issued"]) == (
        1,
        1,
        1,
    )
    assert await grants(crowd, rid) == 1


async def test_ten_concurrent_approvals_three_needed(crowd: ServiceWorld) -> None:
    s, p = crowd.service, crowd.p
    rid = (await crowd.submit("ann", "three"))["id"]
    results = await asyncio.gather(
        *(s.approve(p[name], rid) for name in CROWD), return_exceptions=True
    )
    assert outcomes(results) == {"ok": 3, "not_pending": 7}
    print(f"{crowd.db.backend}: {s.stats.lost_races} lost optimistic races retried")
    events = await trail(crowd, rid)
    assert (events["approval.given"], events["request.approved"], events["grant.issued"]) == (
        3,
        1,
        1,
    )
    view = await s.get(p["ann"], rid)
    assert len(view["stages"][0]["approvals"]) == 3


async def test_concurrent_authorize_uses_the_grant_once(world: ServiceWorld) -> None:
    s, p = world.service, world.p
    view = await world.submit("svc", user="ann")
    rid = view["id"]
    await s.approve(p["bob"], rid)
    results = await asyncio.gather(
        s.authorize(p["ann"], rid, view["fingerprint"]),
        s.authorize(p["svc"], rid, view["fingerprint"]),
        s.authorize(p["ann"], rid, view["fingerprint"]),
        return_exceptions=True,
    )
    assert outcomes(results) == {"ok": 1, "grant_used": 2}
    events = await trail(world, rid)
    assert events["grant.consumed"] == 1
    assert events["execution.started"] == 1


async def test_concurrent_use_of_one_totp_code(world: ServiceWorld) -> None:
    s, p = world.service, world.p
    first = (await world.submit("ann", "two"))["id"]
    second = (await world.submit("ann", "two"))["id"]
    await s.approve(p["bob"], first)
    await s.approve(p["bea"], second)
    code = world.otp("dan")
    results = await asyncio.gather(
        s.approve(p["dan"], first, otp=code), s.approve(p["dan"], second, otp=code),
        return_exceptions=True,
    )  # fmt: skip
    codes = sorted("ok" if isinstance(r, dict) else r.code for r in results)
    assert codes == ["mfa_replayed", "ok"]
    assert all(not isinstance(r, ServiceError) or r.status == 403 for r in results)
    events = (await trail(world, first)) + (await trail(world, second))
    assert events["approval.given"] == 3  # bob, bea, and dan once


async def test_mfa_code_replay_and_refused_approvals_do_not_burn_codes(
    world: ServiceWorld,
) -> None:
    s, p, clock = world.service, world.p, world.clock
    assert clock is not None
    first = (await world.submit("ann", "two"))["id"]
    second = (await world.submit("ann", "two"))["id"]
    await s.approve(p["bob"], first)
    code = world.otp("dan")
    # second is still in its first stage: dan is not eligible there, his code stays fresh
    with pytest.raises(ServiceError) as caught:
        await s.approve(p["dan"], second, otp=code)
    assert caught.value.code == "not_eligible"
    await s.approve(p["dan"], first, otp=code)
    await s.approve(p["bea"], second)
    with pytest.raises(ServiceError) as caught:
        await s.approve(p["dan"], second, otp=code)
    assert (caught.value.code, caught.value.status) == ("mfa_replayed", 403)
    clock.advance(seconds=30)
    view = await s.approve(p["dan"], second, otp=world.otp("dan"))
    assert view["stages"][1]["approvals"][0]["mfa"] is True


async def test_an_otp_on_a_stage_without_mfa_is_ignored(world: ServiceWorld) -> None:
    s, p = world.service, world.p
    rid = (await world.submit("ann", "two"))["id"]
    view = await s.approve(p["bob"], rid, otp="not a code")
    assert view["stages"][0]["approvals"][0]["mfa"] is False


async def test_a_lost_race_is_retried_without_orphan_events(world: ServiceWorld) -> None:
    s, p = world.service, world.p
    rid = (await world.submit("ann"))["id"]
    calls = 0

    async def bump_once(session: AsyncSession, row: RequestRow) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:  # somebody else commits first
            await session.execute(
                update(RequestTable)
                .where(RequestTable.id == row.id)
                .values(version=RequestTable.version + 1)
            )

    s._before_update = bump_once
    view = await s.approve(p["bob"], rid)
    assert calls == 2
    assert view["status"] == "approved"
    events = await trail(world, rid)
    assert (events["approval.given"], events["request.approved"], events["grant.issued"]) == (
        1,
        1,
        1,
    )
    assert await grants(world, rid) == 1


async def test_always_losing_gives_up_and_leaves_nothing(world: ServiceWorld) -> None:
    s, p = world.service, world.p
    rid = (await world.submit("ann"))["id"]
    async with world.db.transaction(readonly=True) as session:
        before = await RequestRepository(session).get(rid)
    events_before = await world.events(rid)

    async def always(session: AsyncSession, row: RequestRow) -> None:
        await session.execute(
            update(RequestTable)
            .where(RequestTable.id == row.id)
            .values(version=RequestTable.version + 1)
        )

    s._before_update = always
    with pytest.raises(ServiceError) as caught:
        await s.approve(p["bob"], rid)
    assert (caught.value.code, caught.value.status) == ("conflict", 409)
    s._before_update = None
    async with world.db.transaction(readonly=True) as session:
        assert await RequestRepository(session).get(rid) == before
    assert await world.events(rid) == events_before
    assert await grants(world, rid) == 0
