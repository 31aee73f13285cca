"""Waiters: woken at once in-process, and across processes through LISTEN/NOTIFY."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import asyncpg
import pytest

from conftest import ServiceWorld, make_world, service_evaluator
from jitgate.service import ApprovalService, ServiceError
from jitgate.service.listener import asyncpg_dsn
from jitgate.store import Database


class Waiter:
    """Consumes ``service.watch`` in a task, timestamping every view."""

    def __init__(self, views: AsyncIterator[Mapping[str, Any]]) -> None:
        self.views = views
        self.got: list[tuple[float, Mapping[str, Any]]] = []
        self.changed = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async with contextlib.aclosing(self.views) as views:
            async for view in views:
                self.got.append((time.perf_counter(), view))
                self.changed.set()

    async def until(self, status: str, timeout: float = 5.0) -> float:
        """When (perf_counter) the waiter received a view with ``status``."""
        async with asyncio.timeout(timeout):
            while True:
                for at, view in self.got:
                    if view["status"] == status:
                        return at
                self.changed.clear()
                await self.changed.wait()

    @property
    def statuses(self) -> list[str]:
        return [view["status"] for _, view in self.got]


async def test_waiter_wakes_at_once_and_ends_after_a_final_status(world: ServiceWorld) -> None:
    s, p = world.service, world.p
    view = await world.submit("ann")
    rid = view["id"]
    waiter = Waiter(s.watch(p["ann"], rid))
    await waiter.until("pending")

    await asyncio.sleep(0.05)  # the waiter is parked, not spinning
    assert waiter.statuses == ["pending"]
    approved = await s.approve(p["bob"], rid)
    returned = time.perf_counter()
    woke = await waiter.until("approved")
    latency_ms = (woke - returned) * 1000
    print(f"\n{world.db.backend}: in-process wake-up {latency_ms:.3f} ms after approve returned")
    assert latency_ms < 1000
    assert waiter.got[-1][1] == approved

    await s.authorize(p["ann"], rid, view["fingerprint"])
    await s.report_outcome(p["ann"], rid, exit_code=0)
    await asyncio.wait_for(waiter.task, 5)
    assert waiter.statuses == ["pending", "approved", "executing", "executed"]
    assert s._hub.watched() == []


async def test_many_waiters_all_wake(world: ServiceWorld) -> None:
    s, p = world.service, world.p
    rid = (await world.submit("ann"))["id"]
    waiters = [Waiter(s.watch(p[u], rid)) for u in ("ann", "bob", "bea", "aud", "adm") * 4]
    for waiter in waiters:
        await waiter.until("pending")
    await s.deny(p["bob"], rid, "no")
    await asyncio.wait_for(asyncio.gather(*(w.task for w in waiters)), 5)
    assert all(w.statuses == ["pending", "denied"] for w in waiters)


async def test_watching_a_finished_or_invisible_request(world: ServiceWorld) -> None:
    s, p = world.service, world.p
    rid = (await world.submit("ann"))["id"]
    await s.cancel(p["ann"], rid)
    views = [v async for v in s.watch(p["ann"], rid)]
    assert [v["status"] for v in views] == ["cancelled"]
    for user, request_id in (("carol", rid), ("ann", "req_missing")):
        with pytest.raises(ServiceError) as caught:
            await anext(s.watch(p[user], request_id))
        assert caught.value.code == "not_found"
    assert s._hub.watched() == []


async def test_waiter_wakes_on_expiry_from_the_background_ticker(db: Database) -> None:
    """Real clock: a 1 s ttl; the ticker sleeps until the deadline, not a poll period."""
    world = await make_world(db, clock=False)
    s, p = world.service, world.p
    s.tick_cap = 30.0  # only the deadline itself can wake it in time
    await s.start()
    try:
        rid = (await world.submit("ann", "short"))["id"]
        started = time.perf_counter()
        waiter = Waiter(s.watch(p["ann"], rid))
        woke = await waiter.until("expired", timeout=5)
        print(f"\n{db.backend}: expired {woke - started:.3f} s after submission (ttl 1 s)")
        assert 0.5 < woke - started < 3
    finally:
        await s.stop()


# --- PostgreSQL: several processes ------------------------------------------------


@pytest.fixture
async def pg_world(pg_db: Database) -> AsyncIterator[ServiceWorld]:
    built = await make_world(pg_db)
    try:
        yield built
    finally:
        await built.service.stop()


@pytest.fixture
async def other_process(pg_world: ServiceWorld) -> AsyncIterator[ApprovalService]:
    """A second service on the same database with its own Database (engine, pool)."""
    database = Database(pg_world.db.url)
    other = ApprovalService(database, service_evaluator(), clock=pg_world.clock)
    try:
        yield other
    finally:
        await other.stop()
        await database.close()


async def test_waiter_on_one_server_wakes_when_another_approves(
    pg_world: ServiceWorld, other_process: ApprovalService
) -> None:
    a, p = pg_world.service, pg_world.p
    await a.start(ticker=False)
    rid = (await pg_world.submit("ann"))["id"]
    waiter = Waiter(a.watch(p["ann"], rid))
    await waiter.until("pending")

    await other_process.approve(p["bob"], rid)
    returned = time.perf_counter()
    woke = await waiter.until("approved")
    latency_ms = (woke - returned) * 1000
    print(f"\npostgresql: cross-process (LISTEN/NOTIFY) wake-up {latency_ms:.3f} ms")
    assert latency_ms < 1000
    assert waiter.got[-1][1] == await a.get(p["ann"], rid)
    fingerprint = waiter.got[-1][1]["fingerprint"]
    await other_process.authorize(p["ann"], rid, fingerprint)
    await other_process.report_outcome(p["ann"], rid, exit_code=1)
    await asyncio.wait_for(waiter.task, 5)
    assert waiter.statuses == ["pending", "approved", "executing", "failed"]


async def test_listener_reconnects_and_catches_up(
    pg_world: ServiceWorld, other_process: ApprovalService
) -> None:
    a, p = pg_world.service, pg_world.p
    await a.start(ticker=False)
    listener = a.listener
    assert listener is not None
    pid = listener.backend_pid
    assert pid is not None
    rid = (await pg_world.submit("ann"))["id"]
    waiter = Waiter(a.watch(p["ann"], rid))
    await waiter.until("pending")

    conn = await asyncpg.connect(asyncpg_dsn(pg_world.db.url))
    try:
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await conn.close()
    # The change lands while (or before) the listener is down: the re-read on
    # reconnect must deliver it.
    await other_process.approve(p["bob"], rid)
    await waiter.until("approved", timeout=10)
    assert listener.connections >= 2
    assert listener.backend_pid not in (None, pid)
    view = await other_process.authorize(p["ann"], rid, waiter.got[-1][1]["fingerprint"])
    assert view["status"] == "executing"
    await waiter.until("executing", timeout=5)


async def test_a_new_request_elsewhere_wakes_the_ticker(
    pg_world: ServiceWorld, other_process: ApprovalService
) -> None:
    """Server B's submission reaches server A's ticker through NOTIFY (version 1)."""
    a = pg_world.service
    await a.start(ticker=False)
    a._wake.clear()  # (connecting sets it: changes may have gone unheard)
    await other_process.submit(pg_world.p["ann"], {
        "kind": "sql", "text": "DELETE FROM t", "env": "prod", "target": "one",
    })  # fmt: skip
    async with asyncio.timeout(5):
        while not a._wake.is_set():
            await asyncio.sleep(0.01)


async def test_stop_is_prompt_right_after_a_wake_up(db: Database) -> None:
    """Regression: on 3.11 asyncio.wait_for could swallow stop()'s cancellation."""
    world = await make_world(db, clock=False)
    s = world.service
    for _ in range(5):
        await s.start()
        await world.submit("ann")  # wakes the ticker
        started = time.perf_counter()
        await asyncio.wait_for(s.stop(), 2)
        assert time.perf_counter() - started < 1
    if db.backend == "postgresql":
        conn = await asyncpg.connect(asyncpg_dsn(db.url))
        try:
            listening = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND query LIKE 'LISTEN%'"
            )
        finally:
            await conn.close()
        assert listening == 0
